"""The Slack Web API as the Slack bridge uses it: one client, its calls, its errors.

Every call goes to ``SLACK_API_BASE_URL`` through one ``AsyncWebClient`` that waits out
429s (Retry-After, :data:`RATE_LIMIT_RETRIES` times) and is time-boxed
(:data:`CALL_TIMEOUT_S`). The best-effort calls (status message, reactions, reading a
thread) log a failure and never raise; posting a part of a reply raises
:class:`ReplyDeferred` (may pass: the hub re-sends it) or :class:`Undeliverable`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bridges import common, core
from bridges.common import BridgeError
from bridges.slack import convert
from bridges.slack.convert import ButtonPart, FilePart, ReplyPart, Target, TextPart
from bridges.slack.settings import SlackSettings

log = logging.getLogger(__name__)

#: One Web API request over HTTP.
HTTP_TIMEOUT_S = 15
#: One Web API call, 429 waits (Retry-After) included.
CALL_TIMEOUT_S = 60.0
#: 429 answers waited out per call before the call counts as failed.
RATE_LIMIT_RETRIES = 3
#: Connecting to Slack (auth.test, apps.connections.open, the socket) at start-up.
CONNECT_TIMEOUT_S = 15.0
#: Threads read page by page (``conversations.replies``) when looking for earlier parts.
THREAD_PAGES = 5
#: Slack errors that say a reaction is already as wanted.
_REACTION_NOOPS = frozenset({"already_reacted", "no_reaction"})
APPLICATION_OCTET = "application/octet-stream"
#: What a failed Slack call raises, besides Slack's own errors.
CALL_ERRORS = (SlackClientError, aiohttp.ClientError, OSError, TimeoutError)


class SlackBridgeError(BridgeError):
    """Root of the Slack bridge's errors.

    - :class:`SlackRefused`: Slack refused a token at start-up; a person must fix it.
    - :class:`ReplyDeferred`: Slack did not take a reply now; the hub re-sends it.
    - :class:`Undeliverable`: Slack refused a reply for good; it is dropped.
    """


class SlackRefused(SlackBridgeError):
    """Slack refused ``SLACK_BOT_TOKEN`` or ``SLACK_APP_TOKEN``; ``setting`` names which."""

    def __init__(self, setting: str, error: str) -> None:
        super().__init__(f"Slack refused {setting}: {error}; check the token")
        self.setting = setting
        self.error = error


class ReplyDeferred(SlackBridgeError, core.ReplyDeferred):
    """Slack did not take a reply now (rate limit, outage, credentials); it comes back."""


class Undeliverable(SlackBridgeError, core.Undeliverable):
    """Slack refused a reply for good (unknown or archived channel, bad request)."""


def describe(exc: BaseException) -> str:
    """A short, token-free account of a failed Slack call."""
    if isinstance(exc, SlackApiError):
        error = exc.response.get("error") if exc.response is not None else None
        status = exc.response.status_code if exc.response is not None else "?"
        return f"{error or 'error'} (HTTP {status})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def may_succeed_later(exc: BaseException) -> bool:
    """True when a failed Slack call is worth making again later."""
    if isinstance(exc, SlackApiError):
        if exc.response is None:
            return True
        return convert.may_succeed_later(
            str(exc.response.get("error") or ""), int(exc.response.status_code)
        )
    # A failed upload, a dropped connection, a time-out: Slack may take it next time.
    return isinstance(exc, SlackRequestError | aiohttp.ClientError | OSError | TimeoutError)


def _slack_error(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError) and exc.response is not None:
        return str(exc.response.get("error") or "")
    return ""


def refusal(setting: str, exc: SlackApiError) -> SlackRefused | None:
    """A start-up call's failure as a refused token; None when it is Slack's own trouble."""
    status = exc.response.status_code if exc.response is not None else 500
    if status == 429 or status >= 500:
        return None
    return SlackRefused(setting, describe(exc))


def web_client(token: str, base_url: str, session: aiohttp.ClientSession) -> AsyncWebClient:
    """The bridge's one Web API client: 429s and dropped connections retried."""
    return AsyncWebClient(
        token=token,
        base_url=base_url,
        timeout=HTTP_TIMEOUT_S,
        session=session,
        logger=logging.getLogger("slack_sdk.web"),
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(),
            AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
        ],
    )


class SocketMode:
    """Slack's events over Socket Mode: slack-bolt's ``AsyncApp`` on the bridge's client,
    embedded (``connect_async`` / ``close_async``: it never owns the loop)."""

    def __init__(self, client: AsyncWebClient, app_token: str, ping_interval: float) -> None:
        self.app = AsyncApp(
            client=client,
            name="codex-hub",
            logger=logging.getLogger("slack_bolt"),
            # Socket Mode needs no signing secret; bolt must not read one from the env.
            signing_secret="",
            # HTTP-mode and workflow middleware that a Socket Mode bot never needs.
            request_verification_enabled=False,
            ssl_check_enabled=False,
            url_verification_enabled=False,
            attaching_function_token_enabled=False,
        )
        self.client = client
        self.handler = AsyncSocketModeHandler(self.app, app_token, ping_interval=ping_interval)

    async def connect(self) -> tuple[str, str]:
        """Check both tokens and open the socket; the bot's user id and bot id.

        Raises :class:`SlackRefused` when Slack refuses a token."""
        socket = self.handler.client
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            try:
                auth = await self.client.auth_test()
            except SlackApiError as exc:
                refused = refusal("SLACK_BOT_TOKEN", exc)
                if refused is None:
                    raise
                raise refused from exc
            try:
                # Fetched here, not inside connect_async, which would retry a refused
                # token forever; connect_async then uses this URL.
                socket.wss_uri = await socket.issue_new_wss_url()
            except SlackApiError as exc:
                refused = refusal("SLACK_APP_TOKEN", exc)
                if refused is None:
                    raise
                raise refused from exc
            await self.handler.connect_async()
        return str(auth.get("user_id") or ""), str(auth.get("bot_id") or "")

    async def close(self) -> None:
        """Leave Socket Mode."""
        await self.handler.close_async()

    async def finish(self) -> None:
        """Wait for the socket client's tasks: close_async cancels them without waiting."""
        socket = self.handler.client
        leftovers = [
            t for t in (socket.message_processor, socket.current_session_monitor) if t is not None
        ]
        if socket.message_receiver is not None:
            leftovers.append(socket.message_receiver)
        await asyncio.gather(*leftovers, return_exceptions=True)


class SlackApi:
    """The Web API calls of the Slack bridge, on one client."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def post(self, target: Target, text: str, **extra: Any) -> str:
        """Post ``text`` in the target's thread; the new message's ts."""
        async with asyncio.timeout(CALL_TIMEOUT_S):
            response = await self.client.chat_postMessage(
                channel=target.channel,
                thread_ts=target.thread_ts,
                text=text,
                unfurl_links=False,
                unfurl_media=False,
                **extra,
            )
        return str(response.get("ts") or "")

    async def post_status(self, target: Target, text: str) -> str | None:
        """Best effort: post the request's status message; its ts, or None."""
        try:
            return await self.post(target, text, metadata=convert.status_metadata(target.ts))
        except CALL_ERRORS as exc:
            log.warning("could not post a status message in %s: %s", target.channel, describe(exc))
            return None

    async def edit_status(self, target: Target, ts: str, text: str) -> bool:
        """Best effort: replace the status message's text; True when Slack took it."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self.client.chat_update(channel=target.channel, ts=ts, text=text)
        except CALL_ERRORS as exc:
            log.info("status message not updated: %s", describe(exc))
            return False
        return True

    async def post_ephemeral(self, target: Target, user: str, text: str) -> None:
        """Best effort: a message in the target's thread that only ``user`` sees."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self.client.chat_postEphemeral(
                    channel=target.channel, user=user, thread_ts=target.thread_ts, text=text
                )
        except CALL_ERRORS as exc:
            log.warning("could not refuse a press in %s: %s", target.channel, describe(exc))

    async def replace_button(self, target: Target, text: str) -> None:
        """Best effort: the message at ``target.ts`` (a button's) becomes ``text``."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self.client.chat_update(
                    channel=target.channel, ts=target.ts, text=text, blocks=[]
                )
        except CALL_ERRORS as exc:
            log.warning("could not update the button in %s: %s", target.channel, describe(exc))

    async def post_approval(self, target: Target, approval: core.Approval) -> str | None:
        """Post codex's approval request with its buttons; the message's ts."""
        ts = await self.post(
            target, convert.approval_text(approval), blocks=convert.approval_blocks(approval)
        )
        return ts or None

    async def edit_approval(self, target: Target, ts: str, approval: core.Approval) -> None:
        """The approval message ``ts`` says who decided; raises when Slack may take it later."""
        text = convert.approval_decided_text(approval)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self.client.chat_update(
                    channel=target.channel,
                    ts=ts,
                    text=text,
                    blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                )
        except CALL_ERRORS as exc:
            if may_succeed_later(exc):
                raise  # the hub sends the decision again
            # Deleted, or no longer the bot's to change: nothing left to update.
            log.warning("approval message %s not updated for good: %s", ts, describe(exc))

    async def read_thread(self, target: Target) -> list[dict[str, Any]]:
        """The thread's messages with their metadata; empty when it cannot be read."""
        messages: list[dict[str, Any]] = []
        cursor: str | None = None
        try:
            for _ in range(THREAD_PAGES):
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    response = await self.client.conversations_replies(
                        channel=target.channel,
                        ts=target.thread_ts,
                        include_all_metadata=True,
                        limit=200,
                        cursor=cursor,
                    )
                messages.extend(response.get("messages") or [])
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    break
        except CALL_ERRORS as exc:
            log.info("could not read thread %s: %s", target.thread_ts, describe(exc))
        return messages

    async def react(self, target: Target, name: str, *, remove: bool = False) -> None:
        """Best effort: add (or remove) the bot's reaction on the request."""
        if not target.ts:
            return
        call = self.client.reactions_remove if remove else self.client.reactions_add
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await call(channel=target.channel, timestamp=target.ts, name=name)
        except CALL_ERRORS as exc:
            if _slack_error(exc) not in _REACTION_NOOPS:
                done = "removed" if remove else "added"
                log.info("reaction %s not %s: %s", name, done, describe(exc))

    async def close_reactions(
        self, target: Target, outcome: str, eyes: asyncio.Task[Any] | None
    ) -> None:
        """Swap :eyes: on the request (added by the task ``eyes``) for the outcome's."""
        if eyes is not None:
            # Removing :eyes: before it was added would leave it there for good.
            await asyncio.wait({eyes}, timeout=CALL_TIMEOUT_S)
        await asyncio.gather(
            self.react(target, convert.WORKING_REACTION, remove=True),
            self.react(target, convert.closing_reaction(outcome)),
        )

    async def post_part(
        self, target: Target, run_id: str, part: ReplyPart, index: int, count: int
    ) -> None:
        """Post one part of a reply; raises ReplyDeferred or Undeliverable when Slack refuses."""
        try:
            if isinstance(part, FilePart):
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await self.client.files_upload_v2(
                        channel=target.channel,
                        thread_ts=target.thread_ts,
                        content=part.content,
                        filename=part.filename,
                        title=part.title,
                        initial_comment=part.comment,
                    )
            elif isinstance(part, TextPart):
                await self.post(
                    target, part.text, metadata=convert.reply_metadata(run_id, index, count)
                )
            elif isinstance(part, ButtonPart):
                await self.post(
                    target,
                    part.text,
                    blocks=part.blocks(),
                    metadata=convert.reply_metadata(run_id, index, count),
                )
        except CALL_ERRORS as exc:
            what = f"part {index + 1}/{count}: {describe(exc)}"
            if may_succeed_later(exc):
                raise ReplyDeferred(what) from exc
            raise Undeliverable(what) from exc


class AttachmentRefused(common.AttachmentRefused):
    """A shared file that may not be attached; the message is the reply to its sender."""


async def download(
    session: aiohttp.ClientSession, files: list[dict[str, Any]], settings: SlackSettings
) -> list[common.Attachment]:
    """The files shared with a message, downloaded with the bot token; raises
    AttachmentRefused, with the reply, for one over the limits or unreadable."""
    token = settings.bot_token.get_secret_value()
    limits = (settings.attachment_max_bytes, settings.attachment_types)
    api_host = urlsplit(settings.api_base_url).hostname
    found: list[common.Attachment] = []
    total = 0
    for file in files:
        name = str(file.get("name") or file.get("id") or "file")
        mime = str(file.get("mimetype") or APPLICATION_OCTET)
        size = file.get("size") if isinstance(file.get("size"), int) else None
        refused = common.attachment_refusal(name, mime, size, *limits, total=total)
        if refused is not None:
            raise AttachmentRefused(refused)
        url = str(file.get("url_private_download") or file.get("url_private") or "")
        host = urlsplit(url).hostname or ""
        # The bot token goes to Slack only: its file host, or the configured API's.
        if urlsplit(url).scheme not in ("https", "http") or not (
            host == api_host or host == "slack.com" or host.endswith(".slack.com")
        ):
            raise AttachmentRefused(f"{name} was not used: it is not a file on Slack.")
        data = await _fetch_file(session, token, name, url, limits[0] - total)
        refused = common.attachment_refusal(name, mime, len(data), *limits, total=total)
        if refused is not None:
            raise AttachmentRefused(refused)
        total += len(data)
        found.append(common.Attachment(name, mime, data))
    return found


async def _fetch_file(
    session: aiohttp.ClientSession, token: str, name: str, url: str, room: int
) -> bytes:
    """The bytes at ``url`` (a file's url_private), read up to ``room`` + 1 bytes."""
    try:
        async with (
            asyncio.timeout(CALL_TIMEOUT_S),
            session.get(
                url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False
            ) as response,
        ):
            if response.status != 200:
                raise AttachmentRefused(
                    f"{name} could not be downloaded from Slack (HTTP {response.status})."
                )
            return await response.content.read(room + 1)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("could not download a shared file: %s", describe(exc))
        raise AttachmentRefused(f"{name} could not be downloaded from Slack.") from exc
