"""Images a client attaches to a message, turned into bytes codex can be given.

A ``data:`` URL is decoded; an ``http(s)`` URL is fetched by the hub, within limits of
size (``HUB_IMAGE_MAX_BYTES``), time (``HUB_IMAGE_FETCH_TIMEOUT_S``) and type (PNG,
JPEG, GIF, WebP, told by the bytes themselves). The hub refuses to fetch from
loopback, private, link-local and other non-public addresses (a request must not make
the hub probe its own network) unless ``HUB_IMAGE_ALLOWED_NETWORKS`` names them. The
check is made on the address the connection uses, after DNS, on every redirect.

ImageError (a BadRequest: 400, code ``invalid_image``)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from hub.errors import BadRequest
from hub.settings import Network

#: Redirects followed; each target is checked like the first URL.
MAX_REDIRECTS = 3
MAX_IMAGES = 8


class ImageError(BadRequest):
    code = "invalid_image"


@dataclass(frozen=True)
class Image:
    """An image's MIME type and bytes."""

    mime: str
    data: bytes

    def option(self) -> dict[str, str]:
        """The image as the assign frame's ``options.images`` carries it."""
        return {"mime": self.mime, "data": base64.b64encode(self.data).decode()}


def sniff(data: bytes) -> str | None:
    """The image type of ``data`` from its first bytes; None if not one codex takes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def refused(address: str, allowed: tuple[Network, ...]) -> bool:
    """True when the hub must not connect to ``address`` to fetch an image."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allowed):
        return False
    return not ip.is_global or ip.is_multicast


def _refusal(host: str) -> ImageError:
    return ImageError(
        f"the image URL's host {host} is a loopback, private or link-local address, which "
        "the hub does not fetch from (HUB_IMAGE_ALLOWED_NETWORKS can allow a network)",
        param="image_url",
    )


class _CheckedResolver(AbstractResolver):
    """Resolves like the system, then drops every address the hub must not reach."""

    def __init__(self, allowed: tuple[Network, ...]) -> None:
        self._allowed = allowed
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if not refused(r["host"], self._allowed)]
        if not kept:
            raise _refusal(host)
        return kept

    async def close(self) -> None:
        await self._inner.close()


class ImageFetcher:
    """Turns image URLs into :class:`Image`; one HTTP session, closed with :meth:`close`."""

    def __init__(self, *, max_bytes: int, timeout_s: float, allowed: tuple[Network, ...]) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.allowed = allowed
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_CheckedResolver(self.allowed), limit=8)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def load_all(self, urls: list[str]) -> list[Image]:
        """Every image of a request, in order."""
        if len(urls) > MAX_IMAGES:
            raise ImageError(f"at most {MAX_IMAGES} images per request", param="image_url")
        return list(await asyncio.gather(*(self.load(url) for url in urls)))

    async def load(self, url: str) -> Image:
        """One image, from a ``data:`` or ``http(s)`` URL; :class:`ImageError` otherwise."""
        if url.startswith("data:"):
            return self._decode(url)
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise ImageError(
                f"an image URL must be data:, http: or https:, not {scheme or 'relative'}",
                param="image_url",
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise ImageError(
                f"fetching the image at {_short(url)} took longer than {self.timeout_s:g} s",
                param="image_url",
            ) from None
        except aiohttp.ClientError as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ImageError(
                f"the image at {_short(url)} could not be fetched: {reason}", param="image_url"
            ) from None

    def _check_literal(self, url: str) -> None:
        """A host written as an address skips DNS, so the resolver's check: check it here."""
        host = (urlsplit(url).hostname or "").strip("[]")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return  # a name: the resolver checks every address it resolves to
        if refused(host, self.allowed):
            raise _refusal(host)

    async def _fetch(self, url: str) -> Image:
        for _ in range(MAX_REDIRECTS + 1):
            self._check_literal(url)
            async with self._http().get(url, allow_redirects=False) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    url = str(resp.url.join(aiohttp.client.URL(resp.headers["Location"])))
                    continue
                if resp.status != 200:
                    raise ImageError(
                        f"the image at {_short(url)} answered HTTP {resp.status}",
                        param="image_url",
                    )
                if (resp.content_length or 0) > self.max_bytes:
                    raise self._too_big(url)
                data = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise self._too_big(url)
                return self._image(bytes(data), _short(url))
        raise ImageError(f"the image at {_short(url)} redirects too often", param="image_url")

    def _too_big(self, url: str) -> ImageError:
        return ImageError(
            f"the image at {_short(url)} is larger than {self.max_bytes} bytes "
            "(HUB_IMAGE_MAX_BYTES)",
            param="image_url",
        )

    def _decode(self, url: str) -> Image:
        head, _, payload = url.partition(",")
        if not head.endswith(";base64"):
            raise ImageError(
                "a data: image URL must be base64 (data:image/png;base64,...)", param="image_url"
            )
        if len(payload) * 3 // 4 > self.max_bytes:
            raise self._too_big("data: URL")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("a data: image URL holds invalid base64", param="image_url") from None
        return self._image(data, "data: URL")

    def _image(self, data: bytes, where: str) -> Image:
        mime = sniff(data)
        if mime is None:
            raise ImageError(
                f"the image from {where} is not PNG, JPEG, GIF or WebP", param="image_url"
            )
        return Image(mime, data)


def _short(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:120]


def describe(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` as kept in a run's origin: images counted, not stored."""
    kept = {k: v for k, v in options.items() if k != "images"}
    if options.get("images"):
        kept["images"] = len(options["images"])
    return kept
