"""Credentials: one per node role, derived from the hub's secret, and the file that holds
what a hub generated because it was given none.

A credential per role
---------------------
The hub keeps one secret: ``HUB_TOKEN``, or the one it generated. Each role's credential
is derived from it, ``<role>.<hex HMAC-SHA256(secret, role)>``, for the roles
:data:`ROLES` (``executor``, and one per chat platform). A node presents its own as
``HUB_TOKEN``; ``codex-hub token ROLE`` prints it where the hub's secret is. A split
deployment gives each service only its own: a bridge's credential gets no runs and
speaks only for its platform, and none of them lets a node derive another's.

A node that presents the raw secret itself is still let in as any role, with a
WARNING at each connection, for one release (deployments that gave every service the
same ``HUB_TOKEN`` keep working while they move): whoever holds the secret can derive
every role's credential anyway, so refusing it would protect nothing from that node.

The credentials file
--------------------
With ``HUB_API_KEYS`` or ``HUB_TOKEN`` empty, the hub generates what is missing at its
first start and keeps it beside its store (``HUB_DB`` with the suffix ``.credentials``,
e.g. ``codex-hub.credentials``), a JSON object::

    {"api_key": "...", "secret": "...", "executor": "executor.<hex>",
     "slack": "slack.<hex>", "telegram": "telegram.<hex>"}

It is created at once whole (``O_EXCL``, mode 0600, linked into place) and never used
when it is a symbolic link, not a regular file, owned by another user, or open to the
group or others. Later starts reuse it; a node with ``HUB_TOKEN`` empty and the same
``HUB_DB`` reads its own role's entry from it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Roles with a credential of their own: executors, and each chat platform's bridges.
BRIDGE_PLATFORMS = ("slack", "telegram")
ROLES = ("executor", *BRIDGE_PLATFORMS)
#: What :func:`credential_role` answers for the hub's raw secret (deprecated for nodes).
MASTER = "master"
#: Suffix of the credentials file, beside ``HUB_DB``.
SUFFIX = ".credentials"


class CredentialsError(Exception):
    """The credentials file cannot be used; the message says why and what to do."""


def derive(secret: str, role: str) -> str:
    """The credential of ``role`` for a hub whose secret is ``secret``."""
    mac = hmac.new(_bytes(secret), f"codex-hub node:{role}".encode(), hashlib.sha256)
    return f"{role}.{mac.hexdigest()}"


def looks_derived(token: str) -> bool:
    """True when ``token`` has the shape of a role credential (not a hub's secret)."""
    role, dot, mac = token.partition(".")
    return bool(dot) and role in ROLES and len(mac) == 64


def credential_role(presented: str, secret: str) -> str | None:
    """The role ``presented`` is the credential of, :data:`MASTER` for the secret itself,
    or None (wrong, or empty). Compared in constant time."""
    if not presented or not secret:
        return None
    given = _bytes(presented)
    role = presented.partition(".")[0]
    if role in ROLES and hmac.compare_digest(given, _bytes(derive(secret, role))):
        return role
    if hmac.compare_digest(given, _bytes(secret)):
        return MASTER
    return None


def _bytes(text: str) -> bytes:
    # A frame's stray bytes arrive as surrogates: they must compare unequal, not raise.
    return text.encode("utf-8", "surrogatepass")


def credentials_path(db: Path) -> Path:
    """Where the credentials of the hub whose store is ``db`` live."""
    return Path(f"{db}{SUFFIX}") if db.suffix == SUFFIX else db.with_suffix(SUFFIX)


@dataclass(frozen=True)
class Credentials:
    """What a hub generated: an API key and the secret node credentials derive from."""

    path: Path
    api_key: str
    secret: str

    def node(self, role: str) -> str:
        """The credential of ``role``."""
        return derive(self.secret, role)


def read_file(path: Path) -> dict[str, Any] | None:
    """The credentials file's content, or None when there is none.

    Raises :class:`CredentialsError` when it is not safe to use or not readable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"cannot open the credentials file {path}: {exc}") from None
    try:
        _check_safe(fd, path)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(64 * 1024)
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
    except ValueError:
        raise CredentialsError(
            f"the credentials file {path} is not valid JSON: remove it to have the hub "
            "write a new one (nodes and API clients then need the new credentials)"
        ) from None
    if not isinstance(data, dict):
        raise CredentialsError(f"the credentials file {path} does not hold a JSON object")
    return data


def _check_safe(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise CredentialsError(f"the credentials file {path} is not a regular file")
    if info.st_uid != os.geteuid():
        raise CredentialsError(
            f"the credentials file {path} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.geteuid()}): it is not used; remove it, or run as its owner"
        )
    if info.st_mode & 0o077:
        raise CredentialsError(
            f"the credentials file {path} is open to other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): it is not used; run `chmod 600 {path}` "
            "and consider its credentials leaked"
        )


def load_or_create(path: Path) -> tuple[Credentials, bool]:
    """The credentials in ``path``, generated and written first if there are none.

    Returns them and whether they were created now. Two hubs starting at once agree:
    the file is linked into place only if none exists, else the other's is read.
    """
    data = read_file(path)
    created = False
    if data is None:
        new_secret = secrets.token_urlsafe(32)
        data = {
            "api_key": secrets.token_urlsafe(32),
            "secret": new_secret,
            **{role: derive(new_secret, role) for role in ROLES},
        }
        created = _create(path, data)
        if not created:
            data = read_file(path) or {}
    api_key, secret = data.get("api_key"), data.get("secret")
    if not isinstance(api_key, str) or not api_key or not isinstance(secret, str) or not secret:
        raise CredentialsError(
            f"the credentials file {path} lacks 'api_key' or 'secret': remove it to have "
            "the hub write a new one"
        )
    return Credentials(path, api_key, secret), created


def _create(path: Path, data: dict[str, Any]) -> bool:
    """Write ``path`` whole, mode 0600; False when another process wrote it first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask said
            os.write(fd, (json.dumps(data, indent=2) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if the file exists: never overwrites one
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def node_token(token: str, db: Path, role: str) -> str:
    """What a node of ``role`` presents: ``HUB_TOKEN`` when set, else its entry in the
    credentials file of a hub whose store is ``db`` ('' when there is none to read)."""
    if token:
        return token
    path = credentials_path(db)
    try:
        data = read_file(path)
    except CredentialsError as exc:
        log.error("no node credential: %s", exc)
        return ""
    if data is None:
        return ""
    value = data.get(role)
    if not isinstance(value, str) or not value:
        secret = data.get("secret")
        value = derive(secret, role) if isinstance(secret, str) and secret else ""
    return value
