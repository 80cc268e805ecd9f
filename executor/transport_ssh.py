"""The SSH transport: codex runs on ``SSH_HOST`` over one shared asyncssh connection.

It mirrors `executor.transport_local.LocalTransport` (same `Transport` protocol, same
semantics: stdin empty, stdout streamed line by line, the tail of stderr kept, every
process of a run gone on every path out of `run`), with the remote machine doing what
the local transport does with its own process table. Paths (``CODEX_BIN``,
``CODEX_HOME``, ``EXEC_WORKDIR``) are paths on the machine where codex runs, so with
``EXEC_TRANSPORT=ssh`` they name files on ``SSH_HOST``; ``CODEX_BIN`` empty means
``codex`` on the remote ``PATH``.

The remote command. Every run is one exec request, ``exec /bin/sh -c HELPER codex-hub
run TAG GRACE_MS CWD N NAME=VALUE... ARGV...``, with each word quoted by
`shlex.quote`: the prompt, paths and values never meet a shell unquoted, and the
helper (a fixed POSIX sh script, `executor.run_helper`, which the local transport runs
too) only ever expands them inside double quotes. The helper, on the remote side:

- changes to CWD, exports the overrides and a tag variable unique to the run
  (``CODEX_HUB_PROCESS_TAG``, as the local transport does), and starts ARGV with stdin
  from /dev/null under ``setsid``, so codex leads a process group (and session) of its
  own; its first stdout line is ``codex-hub-pid PID`` (or ``codex-hub-error REASON``
  when ARGV or CWD is unusable), read here before codex's own lines;
- waits for codex, then "reaps": SIGTERM to codex's group and to the group of every
  process still carrying the tag (codex's sandboxed commands start sessions of their
  own), SIGKILL after a grace period, and only then exits, so the channel closes once
  nothing of the run is left;
- watches its stdin, the channel: EOF there (the client gave up, or the connection
  dropped and sshd closed the pipes) reaps at once. A dropped connection therefore
  leaves nothing running either.

On timeout or cancellation this side runs ``/bin/sh -c HELPER codex-hub kill TAG PGID
GRACE_MS`` over the same connection (a plain exec channel delivers no signal reliably),
waits for it, and also sends EOF as a backstop. The remote needs Linux ``/proc``, a
POSIX ``/bin/sh``, util-linux ``setsid`` and GNU ``grep``; the login shell of
``SSH_USER`` must be POSIX-like (sh, bash, dash, zsh, ksh).

The connection. One `asyncssh.SSHClientConnection`, opened on first use and shared by
concurrent runs (one channel each; keep ``EXEC_CONCURRENCY`` below the server's
``MaxSessions``, 10 by default in OpenSSH). A connection that dropped is noticed
(asyncssh's ``connection_lost``, keepalives for a silent peer) and re-opened by the
next step; a run in flight when it drops fails with `SshConnectionError`. Public-key
authentication only, never a password or ~/.ssh/config: the key of ``SSH_KEY_PATH``
alone, or, when it is unset, ssh-agent and ``~/.ssh/id_*`` as ssh would. The host key
must be listed in ``SSH_KNOWN_HOSTS`` (unset: ``~/.ssh/known_hosts``) unless
``SSH_INSECURE_NO_HOST_KEY_CHECK`` turns the check off, explicitly. Settings are
checked when the transport is built (`check_settings`), so a mistake stops start-up.

Errors, in addition to `executor.transport`'s::

    TransportError
     ├── SpawnError              (remote: no such executable, no such directory)
     └── SshConnectionError      cannot connect, refused login, connection lost
          └── HostKeyError       the host key is unknown to, or differs from, SSH_KNOWN_HOSTS
    executor.settings.ConfigError (ValueError)
     └── SshSettingError         an SSH_* setting is missing or wrong, checked at start-up
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shlex
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from executor.run_helper import (
    HELPER,
    Launch,
    kill_words,
    reap_bound_s,
    run_words,
    serve_words,
)
from executor.run_io import (
    CHUNK_BYTES,
    DRAIN_S,
    KILL_GRACE_S,
    CleanUps,
    Reader,
    check_started,
    codex_login_status,
    ended_after,
    follow,
    keep_tail,
    pump_lines,
)
from executor.settings import ConfigError, ExecutorSettings
from executor.ssh_compat import asyncssh
from executor.transport import LoginStatus, ProcessResult, SpawnError, TransportError

log = logging.getLogger(__name__)

#: Opening the connection: TCP, key exchange, authentication.
CONNECT_TIMEOUT_S = 15.0
#: A short remote command (mktemp, cat, rm) and opening a channel.
COMMAND_TIMEOUT_S = 30.0
#: Keepalive requests notice a peer that vanished without closing the TCP connection.
KEEPALIVE_INTERVAL_S = 15.0
KEEPALIVE_COUNT_MAX = 3
#: sshd hands the command to the login shell as one argv element, which Linux caps.
MAX_COMMAND_BYTES = 128 * 1024 - 1
#: What a broken connection raises from a channel's reads, writes and opens.
_CONNECTION_ERRORS = (asyncssh.DisconnectError, asyncssh.ChannelOpenError, ConnectionError)

#: The helper every run goes through (see `executor.run_helper`), as the remote runs it.
REMOTE_HELPER = HELPER


# --- errors ---------------------------------------------------------------------------


class SshSettingError(ConfigError):
    """An SSH setting is missing or wrong; `setting` names it (e.g. ``SSH_KEY_PATH``)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class SshConnectionError(TransportError):
    """The SSH connection could not be opened, was refused, or was lost."""


class HostKeyError(SshConnectionError):
    """The server's host key is not the one ``SSH_KNOWN_HOSTS`` lists for it.

    `changed` is True when the file lists other keys for the host (a changed key, or a
    man in the middle), False when it lists none; `fingerprint` is the presented key's.
    """

    def __init__(self, message: str, *, changed: bool, fingerprint: str) -> None:
        super().__init__(message)
        self.changed = changed
        self.fingerprint = fingerprint


# --- pure parts: settings and the remote command ---------------------------------------


#: Where ssh (and asyncssh) look when SSH_KNOWN_HOSTS / SSH_KEY_PATH are unset.
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
DEFAULT_KEY_NAMES = ("id_ed25519_sk", "id_ecdsa_sk", "id_ed448", "id_ed25519", "id_ecdsa", "id_rsa")


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect: validated, ready for asyncssh."""

    host: str
    port: int
    username: str | None
    #: The key of SSH_KEY_PATH; None: ssh-agent and the default ~/.ssh/id_* keys.
    key_path: Path | None
    client_key: asyncssh.SSHKey | None
    #: None: the host key is not checked (SSH_INSECURE_NO_HOST_KEY_CHECK, explicitly).
    known_hosts: Path | None

    @property
    def where(self) -> str:
        """``user@host:port`` for messages."""
        user = f"{self.username}@" if self.username else ""
        return f"{user}{self.host}:{self.port}"

    @property
    def key_description(self) -> str:
        """Which key(s) this target logs in with, for messages."""
        if self.key_path is not None:
            return f"the key SSH_KEY_PATH={self.key_path}"
        return "the ssh-agent's keys and ~/.ssh/id_* (SSH_KEY_PATH is unset)"


def _path_setting(value: Path | None) -> Path | None:
    """A path setting, None when unset or empty (``SSH_KEY_PATH=`` reads as ``.``)."""
    if value is None or str(value).strip() in ("", "."):
        return None
    return value


def _read_key(key_path: Path) -> asyncssh.SSHKey:
    """The private key at SSH_KEY_PATH; SshSettingError when it is missing or unusable."""
    if not key_path.is_file():
        raise SshSettingError("SSH_KEY_PATH", f"SSH_KEY_PATH={key_path}: no such file")
    try:
        return asyncssh.read_private_key(key_path)
    except OSError as exc:
        raise SshSettingError(
            "SSH_KEY_PATH", f"SSH_KEY_PATH={key_path}: cannot read it ({exc.strerror or exc})"
        ) from None
    except (asyncssh.KeyImportError, ValueError) as exc:
        # The reason never quotes the key; no passphrase is ever asked for or logged.
        hint = (
            " (it is encrypted: use an unencrypted key readable only by this user, or "
            "leave SSH_KEY_PATH unset and load the key into ssh-agent)"
            if "passphrase" in str(exc).lower()
            else ""
        )
        raise SshSettingError(
            "SSH_KEY_PATH", f"SSH_KEY_PATH={key_path}: not a usable private key: {exc}{hint}"
        ) from None


def _check_default_keys(agent_socket: str | None) -> None:
    """With SSH_KEY_PATH unset, an agent or a default key must exist to log in with."""
    if agent_socket:
        return
    ssh_dir = Path("~/.ssh").expanduser()
    if any((ssh_dir / name).is_file() for name in DEFAULT_KEY_NAMES):
        return
    raise SshSettingError(
        "SSH_KEY_PATH",
        "EXEC_TRANSPORT=ssh needs a key to log in with: set SSH_KEY_PATH to a private "
        f"key file (no ssh-agent is running and {ssh_dir} has no id_* key)",
    )


def _check_known_hosts(path: Path, unset: bool) -> None:
    """The known_hosts file must exist and parse; SshSettingError naming SSH_KNOWN_HOSTS."""
    label = f"SSH_KNOWN_HOSTS is unset and {path}" if unset else f"SSH_KNOWN_HOSTS={path}"
    if not path.is_file():
        raise SshSettingError(
            "SSH_KNOWN_HOSTS",
            f"{label}: no such file. List the host's key there (check its fingerprint "
            "first), or set SSH_INSECURE_NO_HOST_KEY_CHECK=true to skip the check, which "
            "lets a man in the middle in",
        )
    try:
        asyncssh.read_known_hosts(str(path))
    except OSError as exc:
        raise SshSettingError(
            "SSH_KNOWN_HOSTS", f"{label}: cannot read it ({exc.strerror or exc})"
        ) from None
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise SshSettingError(
            "SSH_KNOWN_HOSTS", f"{label}: not a known_hosts file: {exc}"
        ) from None


def check_settings(settings: ExecutorSettings, *, agent_socket: str | None = None) -> SshTarget:
    """Validate the ``SSH_*`` settings; raises `SshSettingError` naming the bad setting.

    ``SSH_KEY_PATH`` set: that key alone (no agent), read now, and it must not be
    encrypted (there is no passphrase setting). Unset: ssh-agent (`agent_socket`, the
    caller's ``SSH_AUTH_SOCK``) and the default ``~/.ssh/id_*`` keys, as ssh does; one of
    them must exist. ``SSH_KNOWN_HOSTS`` unset means ``~/.ssh/known_hosts``; either way
    the file must exist and parse, unless ``SSH_INSECURE_NO_HOST_KEY_CHECK`` is on.
    Mistakes show at start-up rather than on the first run.
    """
    host = settings.ssh_host.strip()
    if not host:
        raise SshSettingError(
            "SSH_HOST", "EXEC_TRANSPORT=ssh needs SSH_HOST, the machine where codex runs"
        )
    key_path = _path_setting(settings.ssh_key_path)
    client_key: asyncssh.SSHKey | None = None
    if key_path is not None:
        key_path = key_path.expanduser()
        client_key = _read_key(key_path)
    else:
        _check_default_keys(agent_socket)
    known_hosts: Path | None = None
    if settings.ssh_insecure_no_host_key_check:
        log.warning(
            "SSH_INSECURE_NO_HOST_KEY_CHECK is on: the host key of %s is not verified", host
        )
    else:
        configured = _path_setting(settings.ssh_known_hosts)
        known_hosts = (configured or DEFAULT_KNOWN_HOSTS).expanduser()
        _check_known_hosts(known_hosts, unset=configured is None)
    return SshTarget(
        host=host,
        port=settings.ssh_port,
        username=settings.ssh_user.strip() or None,
        key_path=key_path,
        client_key=client_key,
        known_hosts=known_hosts,
    )


def quote_command(words: Sequence[str]) -> str:
    """One shell command line of `words`, each quoted with `shlex.quote`."""
    return " ".join(shlex.quote(word) for word in words)


def run_command(
    argv: Sequence[str],
    env_overrides: Mapping[str, str],
    cwd: str | None,
    *,
    tag: str,
    grace_s: float,
) -> str:
    """The remote command line of one run: the helper in ``run`` mode, every word quoted.

    Raises ValueError for an environment name a shell could not export (it would
    otherwise be read as something else).
    """
    return "exec " + quote_command(run_words(argv, env_overrides, cwd, tag=tag, grace_s=grace_s))


def kill_command(tag: str, pgid: int | None, *, grace_s: float) -> str:
    """The remote command line that ends every process of run `tag` (group `pgid`)."""
    return "exec " + quote_command(kill_words(tag, pgid, grace_s=grace_s))


# --- reading the channel ---------------------------------------------------------------


async def _read_all(reader: Reader) -> bytes:
    """Everything until EOF (in chunks: asyncssh's read(-1) may miss data when stdout
    and stderr are read at the same time)."""
    data = bytearray()
    while chunk := await reader.read(CHUNK_BYTES):
        data += chunk
    return bytes(data)


class _ChannelReader:
    """A channel's stdout or stderr whose connection errors become SshConnectionError."""

    def __init__(self, reader: Reader, lost: Callable[[BaseException], TransportError]) -> None:
        self._reader = reader
        self._lost = lost

    async def read(self, n: int = -1) -> bytes:
        try:
            return await self._reader.read(n)
        except _CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None


# --- the connection ---------------------------------------------------------------------


class _Client(asyncssh.SSHClient):
    """Remembers the key a server presented when it failed the known_hosts check."""

    def __init__(self) -> None:
        self.rejected_key: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.rejected_key = key
        return False


def _close_abandoned(opening: asyncio.Future[asyncssh.SSHClientProcess[bytes]]) -> None:
    """Close a channel nobody waits for any more (its helper then reaps)."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # no new runs; cleanup may still use the connection
    CLOSED = "closed"


class _Run:
    """A run in flight: its process, tag and (once known) codex's pid."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[bytes],
        tag: str,
        launch: Launch,
    ) -> None:
        self.conn = conn
        self.process = process
        self.tag = tag
        self.launch = launch


class SshTransport:
    """Runs codex on an SSH host over one lazily opened, shared, re-opened connection."""

    def __init__(
        self,
        target: SshTarget,
        *,
        codex_bin: str = "codex",
        kill_grace_s: float = KILL_GRACE_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
    ) -> None:
        self._target = target
        self._codex_bin = codex_bin
        self._kill_grace_s = kill_grace_s
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._keepalive_interval_s = keepalive_interval_s
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._live: set[_Run] = set()
        #: Clean-ups of runs that answered before their channel closed.
        self._cleanups = CleanUps("SshTransport")
        self._spare_dir: asyncio.Task[str] | None = None
        self._state = _State.OPEN
        self.connections_opened = 0
        # asyncssh logs every channel at INFO, with the whole command line (the prompt
        # included); keep that out of the logs unless someone set its level on purpose.
        ssh_log = logging.getLogger("asyncssh")
        if ssh_log.level == logging.NOTSET:
            ssh_log.setLevel(logging.WARNING)

    @classmethod
    def from_settings(cls, settings: ExecutorSettings) -> SshTransport:
        """The transport ``EXEC_TRANSPORT=ssh`` asks for; raises `SshSettingError`."""
        target = check_settings(settings, agent_socket=os.environ.get("SSH_AUTH_SOCK"))
        return cls(target, codex_bin=settings.codex_bin.strip() or "codex")

    @property
    def codex_bin(self) -> str:
        """The codex binary on the remote host (``CODEX_BIN``, else ``codex`` on PATH)."""
        return self._codex_bin

    @property
    def target(self) -> SshTarget:
        """Where this transport connects."""
        return self._target

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- connection ------------------------------------------------------------------

    async def _connection(self) -> tuple[asyncssh.SSHClientConnection, bool]:
        """The open connection, opening one if there is none; True if it is new."""
        if self._state is _State.CLOSED:
            raise TransportError("transport is closed")
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn, False
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and not conn.is_closed():
                return conn, False
            if conn is not None:
                log.info("SSH connection to %s was lost; reconnecting", self._target.where)
            self._conn = None
            conn = await self._connect()
            if self._state is _State.CLOSED:  # closed while we connected
                conn.close()
                raise TransportError("transport is closed")
            self._conn = conn
            return conn, True

    async def _connect(self) -> asyncssh.SSHClientConnection:
        target = self._target
        client = _Client()
        options: dict[str, Any] = {
            "port": target.port,
            "known_hosts": str(target.known_hosts) if target.known_hosts else None,
            # Exactly the configured key and host check, never ~/.ssh/config's.
            "config": [],
            "preferred_auth": "publickey",
            "password_auth": False,
            "kbdint_auth": False,
            "x509_trusted_certs": None,
            "connect_timeout": self._connect_timeout_s,
            "login_timeout": self._connect_timeout_s,
            "keepalive_interval": self._keepalive_interval_s,
            "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        }
        if target.client_key is not None:
            options["client_keys"] = [target.client_key]
            options["agent_path"] = None  # SSH_KEY_PATH's key alone
        if target.username:
            options["username"] = target.username
        try:
            async with asyncio.timeout(self._connect_timeout_s + 1):
                conn = await asyncssh.connect(target.host, client_factory=lambda: client, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise self._host_key_error(client.rejected_key, exc) from None
        except asyncssh.PermissionDenied:
            raise SshConnectionError(
                f"SSH login to {target.where} refused: the server accepts none of "
                f"{target.key_description} for SSH_USER={target.username or '(local user)'}"
            ) from None
        except TimeoutError:
            raise SshConnectionError(
                f"cannot connect to SSH_HOST={target.host} SSH_PORT={target.port}: "
                f"no answer within {self._connect_timeout_s:g} s"
            ) from None
        except (OSError, asyncssh.Error, ValueError) as exc:
            # ValueError: asyncssh found no local user name to log in as.
            hint = "; set SSH_USER" if isinstance(exc, ValueError) else ""
            raise SshConnectionError(
                f"cannot connect to SSH_HOST={target.host} SSH_PORT={target.port}: {exc}{hint}"
            ) from None
        self.connections_opened += 1
        log.info("SSH connection to %s open", target.where)
        return conn

    def _host_key_error(
        self, key: asyncssh.SSHKey | None, exc: asyncssh.HostKeyNotVerifiable
    ) -> HostKeyError:
        target = self._target
        fingerprint = key.get_fingerprint() if key is not None else "unknown"
        algorithm = key.get_algorithm() if key is not None else "?"
        known = str(target.known_hosts)
        changed = False
        with contextlib.suppress(OSError, ValueError, asyncssh.KeyImportError):
            listed = asyncssh.read_known_hosts(known).match(target.host, target.host, target.port)
            changed = bool(listed[0] or listed[1])
        presented = f"the server presented {algorithm} {fingerprint}"
        if changed:
            message = (
                f"SSH host key of {target.host}:{target.port} does NOT match the one in "
                f"SSH_KNOWN_HOSTS={known}: {presented}. It changed, or someone is in the "
                "middle; refusing to connect. If the change is expected, replace the "
                "host's entry in that file."
            )
        else:
            message = (
                f"SSH host key of {target.host}:{target.port} is unknown: SSH_KNOWN_HOSTS="
                f"{known} lists no key for it ({presented}); refusing to connect. Add the "
                "host's key to that file after checking its fingerprint, or set "
                "SSH_INSECURE_NO_HOST_KEY_CHECK=true to skip the check."
            )
        log.debug("host key check failed: %s", exc)
        return HostKeyError(message, changed=changed, fingerprint=fingerprint)

    async def _open(
        self, command: str, *, stdin: Any = asyncssh.PIPE
    ) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess[bytes]]:
        """Start `command` on a channel; re-opens a connection found dead, once.

        A channel whose opening is abandoned (timeout, cancellation) is closed as soon
        as it exists, so that the helper sees EOF and reaps whatever it started.
        """
        for attempt in (1, 2):
            conn, fresh = await self._connection()
            opening = asyncio.ensure_future(
                conn.create_process(command, encoding=None, stdin=stdin)
            )
            try:
                async with asyncio.timeout(self._command_timeout_s):
                    process = await asyncio.shield(opening)
                return conn, process
            except (asyncssh.ChannelOpenError, asyncssh.DisconnectError, ConnectionError) as exc:
                if conn.is_closed() or not isinstance(exc, asyncssh.ChannelOpenError):
                    # The command never started, so a fresh connection may try again.
                    if not fresh and attempt == 1:
                        self._discard(conn)
                        continue
                    raise self._lost(exc) from None
                reason = getattr(exc, "reason", str(exc))
                raise SshConnectionError(
                    f"SSH host {self._target.where} refused a session: {reason} "
                    "(more concurrent runs than the server's MaxSessions?)"
                ) from None
            except TimeoutError:
                opening.add_done_callback(_close_abandoned)
                raise SshConnectionError(
                    f"SSH host {self._target.where} did not open a session within "
                    f"{self._command_timeout_s:g} s"
                ) from None
            except BaseException:
                opening.add_done_callback(_close_abandoned)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _discard(self, conn: asyncssh.SSHClientConnection) -> None:
        """Forget `conn` (it misbehaved); the next step opens a new one."""
        if self._conn is conn:
            self._conn = None
        conn.abort()

    def _lost(self, exc: BaseException | None) -> SshConnectionError:
        reason = f": {exc}" if exc is not None and str(exc) else ""
        return SshConnectionError(f"SSH connection to {self._target.where} lost{reason}")

    async def _exec(self, words: Sequence[str], timeout_s: float) -> tuple[int | None, bytes, str]:
        """Run a short remote command (stdin empty): exit code, stdout, stderr text."""
        conn, process = await self._open("exec " + quote_command(words), stdin=asyncssh.DEVNULL)
        try:
            async with asyncio.timeout(timeout_s):
                stdout, stderr = await asyncio.gather(
                    _read_all(process.stdout), _read_all(process.stderr)
                )
                await process.wait_closed()
        except TimeoutError:
            raise SshConnectionError(
                f"`{words[0]}` on {self._target.where} did not finish within {timeout_s:g} s"
            ) from None
        except _CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None
        finally:
            process.close()
        if process.exit_status is None and conn.is_closed():
            raise self._lost(None)
        return process.returncode, stdout, stderr.decode("utf-8", errors="replace").strip()

    # --- Transport ---------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        *,
        env_overrides: Mapping[str, str],
        cwd: str | None,
        on_stdout_line: Callable[[str], None],
        timeout_s: float,
        answered: asyncio.Event | None = None,
    ) -> ProcessResult:
        """Run `argv` on the host (stdin /dev/null, own process group), streaming stdout.

        On timeout the remote processes are killed and `timed_out` is set; on
        cancellation (or if `on_stdout_line` raises) they are killed before re-raising.
        Raises SpawnError when the executable or `cwd` does not exist remotely and
        SshConnectionError when the connection fails or drops during the run.

        A run returns when the caller sets `answered` (codex's turn end), or when the
        helper says its program exited with status 0; the program's exit, the remote
        reap and the channel's end follow in a task `close` awaits (`settled`).
        """
        if self._state is not _State.OPEN:
            raise TransportError("transport is closed")
        tag = uuid.uuid4().hex
        try:
            command = run_command(argv, env_overrides, cwd, tag=tag, grace_s=self._kill_grace_s)
        except ValueError as exc:
            raise SpawnError(argv[0] if argv else "(nothing)", str(exc)) from None
        if len(command.encode()) > MAX_COMMAND_BYTES:
            raise SpawnError(
                argv[0],
                f"the remote command is {len(command.encode())} bytes, more than the "
                f"{MAX_COMMAND_BYTES + 1} a remote shell accepts (shorten the prompt)",
            )
        conn, process = await self._open(command)
        early = answered if answered is not None else asyncio.Event()

        def on_exit(status: int) -> None:
            if status == 0:
                early.set()

        launch = Launch(on_stdout_line, on_exit)
        run = _Run(conn, process, tag, launch)
        self._live.add(run)
        later: asyncio.Task[None] | None = None

        def clean_up_later(rest: Coroutine[Any, Any, None]) -> None:
            nonlocal later
            later = self._clean_up(run, rest)

        try:
            # A read's SshConnectionError stops the run too, and propagates.
            timed_out, tail = await follow(
                _ChannelReader(process.stdout, self._lost),
                _ChannelReader(process.stderr, self._lost),
                process.wait_closed(),
                launch.feed,
                timeout_s=timeout_s,
                stop=lambda: self._stop(run),
                # The helper has reaped by the time the channel closes.
                stop_after_exit=False,
                name=f"SshTransport:{tag[:8]}",
                # codex exited with 0: answer now; the helper reaps, the channel closes.
                answered=early,
                clean_up_later=clean_up_later,
                end_bound_s=reap_bound_s(self._kill_grace_s) + self._command_timeout_s,
            )
        finally:
            if later is None:
                self._live.discard(run)
                process.close()
        if later is not None:
            if launch.exit_status is not None:
                return ProcessResult(exit_code=launch.exit_status, stderr_tail=tail)

            def exit_status() -> int | None:
                return launch.exit_status if launch.exit_status is not None else process.returncode

            return ProcessResult(
                exit_code=None, stderr_tail=tail, ended=ended_after(later, exit_status)
            )
        if process.exit_status is None and process.exit_signal is None and not timed_out:
            # The channel ended without an exit status: the connection went away.
            raise self._lost(None)
        check_started(
            launch,
            argv[0],
            timed_out=timed_out,
            exit_code=process.returncode,
            stderr_tail=tail,
            starter=f"the remote shell on {self._target.where}",
        )
        return ProcessResult(exit_code=process.returncode, stderr_tail=tail, timed_out=timed_out)

    async def start(
        self,
        argv: Sequence[str],
        *,
        env_overrides: Mapping[str, str],
        cwd: str | None,
        on_stdout_line: Callable[[str], None],
    ) -> SshSession:
        """Start a long-lived `argv` on the host whose stdin is the channel (the app-server).

        Through the helper's ``serve`` mode: the program reads the channel, exits on its
        EOF (`SshSession.close`, or a dropped connection), and the helper reaps what it
        left. Raises SpawnError when the executable or `cwd` does not exist remotely.
        """
        if self._state is not _State.OPEN:
            raise TransportError("transport is closed")
        tag = uuid.uuid4().hex
        try:
            words = serve_words(argv, env_overrides, cwd, tag=tag, grace_s=self._kill_grace_s)
        except ValueError as exc:
            raise SpawnError(argv[0] if argv else "(nothing)", str(exc)) from None
        conn, process = await self._open("exec " + quote_command(words))
        session = SshSession(self, _Run(conn, process, tag, Launch(on_stdout_line)), argv[0])
        self._live.add(session.run)
        try:
            await session.started()
        except BaseException:
            await session.close()
            raise
        return session

    async def _stop(self, run: _Run) -> None:
        """End every remote process of `run`: the helper's kill mode, then EOF, bounded.

        The kill goes over the run's own connection; if that is gone, sshd has closed
        the run's stdin and the helper's watchdog reaps instead. EOF is sent on every
        path out (also a second cancellation) as that backstop.
        """
        try:
            if not run.conn.is_closed():
                command = kill_command(run.tag, run.launch.pid, grace_s=self._kill_grace_s)
                async with asyncio.timeout(2 * self._kill_grace_s + self._command_timeout_s):
                    killer = await run.conn.create_process(
                        command, encoding=None, stdin=asyncssh.DEVNULL
                    )
                    try:
                        await killer.wait_closed()
                    finally:
                        killer.close()
        except (TimeoutError, *_CONNECTION_ERRORS) as exc:
            log.warning("could not stop the run's processes on %s: %s", self._target.where, exc)
        finally:
            with contextlib.suppress(*_CONNECTION_ERRORS, RuntimeError):
                run.process.stdin.write_eof()
        with contextlib.suppress(TimeoutError, *_CONNECTION_ERRORS):
            async with asyncio.timeout(DRAIN_S):
                await run.process.wait_closed()

    async def read_text(self, path: str) -> str:
        """The remote file's text (UTF-8, invalid bytes replaced); OSError if unreadable."""
        code, stdout, stderr = await self._exec(["cat", "--", path], self._command_timeout_s)
        if code != 0:
            raise OSError(f"cannot read {path} on {self._target.host}: {stderr or code}")
        return stdout.decode("utf-8", errors="replace")

    async def write_bytes(self, path: str, data: bytes) -> None:
        """Write the remote file through `cat` on stdin (the path as its own word)."""
        words = ["sh", "-c", 'umask 077 && cat > "$1"', "sh", path]
        _conn, process = await self._open("exec " + quote_command(words))
        try:
            async with asyncio.timeout(self._command_timeout_s):
                process.stdin.write(data)
                process.stdin.write_eof()
                stderr = await _read_all(process.stderr)
                await process.wait_closed()
        except TimeoutError:
            raise SshConnectionError(
                f"writing {path} on {self._target.where} did not finish within "
                f"{self._command_timeout_s:g} s"
            ) from None
        except _CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None
        finally:
            process.close()
        if process.returncode != 0:
            detail = stderr.decode("utf-8", errors="replace").strip() or process.returncode
            raise OSError(f"cannot write {path} on {self._target.host}: {detail}")

    async def make_tempdir(self) -> str:
        """A fresh directory (mode 0700) under the remote ``$TMPDIR`` or /tmp.

        The next one is made in the background meanwhile, so that a run's temp dir
        costs no round trip on its critical path (`close` removes an unused one).
        """
        spare, self._spare_dir = self._spare_dir, None
        path: str | None = None
        if spare is not None:
            with contextlib.suppress(TransportError):
                path = await spare
        if path is None:
            path = await self._mktemp()
        if self._spare_dir is None and self._state is _State.OPEN:
            self._spare_dir = asyncio.create_task(self._mktemp(), name="SshTransport:spare-dir")
            # Retrieved here too, so that a spare nobody takes never warns about its error.
            self._spare_dir.add_done_callback(lambda task: task.cancelled() or task.exception())
        return path

    async def _mktemp(self) -> str:
        words = ["mktemp", "-d", "-t", "codex-hub-XXXXXXXXXX"]
        code, stdout, stderr = await self._exec(words, self._command_timeout_s)
        path = stdout.decode("utf-8", errors="replace").strip()
        if code != 0 or not path.startswith("/"):
            raise TransportError(f"mktemp failed on {self._target.host}: {stderr or code}")
        return path

    async def _drop_spare_dir(self) -> None:
        """Remove the temp dir made ahead of time, if any (bounded)."""
        spare, self._spare_dir = self._spare_dir, None
        if spare is None:
            return
        try:
            async with asyncio.timeout(self._command_timeout_s):
                path = await spare
        except (TransportError, TimeoutError):
            return
        await self.remove_tree(path)

    async def remove_tree(self, path: str) -> None:
        """Remove the remote `path` recursively, ignoring errors (they are logged)."""
        if not path.strip() or path.rstrip("/") == "":
            return
        try:
            code, _, stderr = await self._exec(["rm", "-rf", "--", path], self._command_timeout_s)
        except TransportError as exc:
            log.warning("could not remove %s on %s: %s", path, self._target.host, exc)
            return
        if code != 0:
            log.warning("could not remove %s on %s: %s", path, self._target.host, stderr)

    async def login_status(self, codex_bin: str, env_overrides: Mapping[str, str]) -> LoginStatus:
        """Run `codex login status` remotely; the detail never holds the masked key."""
        return await codex_login_status(self, codex_bin, env_overrides)

    def _clean_up(self, run: _Run, rest: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Finish a run that answered (its channel's end, a kill if it does not come)
        in a task of our own, which `close` awaits; the task."""

        def finish() -> None:
            self._live.discard(run)
            run.process.close()

        return self._cleanups.start(rest, finish, run.tag[:8])

    async def settled(self) -> None:
        """Return once the clean-ups of runs that already answered are done."""
        await self._cleanups.settled()

    async def close(self) -> None:
        """Finish the clean-ups under way, stop every run still going, then close the
        connection; idempotent."""
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSING
        await self.settled()
        live, self._live = list(self._live), set()
        await asyncio.gather(self._drop_spare_dir(), *(self._stop(run) for run in live))
        self._state = _State.CLOSED
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S):
                    await conn.wait_closed()


class SshSession:
    """A long-lived remote process started by `SshTransport.start`."""

    def __init__(self, transport: SshTransport, run: _Run, program: str) -> None:
        self.run = run
        self._transport = transport
        self._program = program
        self._tail = bytearray()
        self._marked = asyncio.Event()
        self._closed = False
        launch = run.launch

        def feed(line: str) -> None:
            launch.feed(line)
            if launch.pid is not None or launch.error is not None:
                self._marked.set()

        lost = transport._lost
        process = run.process
        name = f"SshSession:{run.tag[:8]}"
        self._stdout = asyncio.create_task(
            pump_lines(_ChannelReader(process.stdout, lost), feed), name=f"{name}:stdout"
        )
        self._stderr = asyncio.create_task(
            keep_tail(_ChannelReader(process.stderr, lost), self._tail), name=f"{name}:stderr"
        )
        for task in (self._stdout, self._stderr):
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @property
    def pid(self) -> int | None:
        """The program's pid on the host, once the helper said it."""
        return self.run.launch.pid

    async def started(self) -> None:
        """Return once the program runs; SpawnError when the helper could not start it."""
        marked = asyncio.ensure_future(self._marked.wait())
        try:
            await asyncio.wait((marked, self._stdout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            marked.cancel()
        launch = self.run.launch
        if launch.pid is None or launch.error is not None:
            result = await self.wait()
            check_started(
                launch,
                self._program,
                timed_out=False,
                exit_code=result.exit_code,
                stderr_tail=result.stderr_tail,
                starter=f"the remote shell on {self._transport.target.where}",
            )

    async def send(self, data: bytes) -> None:
        """Write to the channel; TransportError once it is closed or the connection lost."""
        stdin = self.run.process.stdin
        try:
            stdin.write(data)
            await stdin.drain()
        except (*_CONNECTION_ERRORS, BrokenPipeError, RuntimeError) as exc:
            raise TransportError(
                f"{self._program} on {self._transport.target.where}: {exc}"
            ) from None

    async def wait(self) -> ProcessResult:
        """Wait until the channel closes and its output is read (bounded)."""
        process = self.run.process
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await process.wait_closed()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await asyncio.gather(
                    asyncio.shield(self._stdout),
                    asyncio.shield(self._stderr),
                    return_exceptions=True,
                )
        tail = self._tail.decode("utf-8", errors="replace")
        if process.exit_status is None and process.exit_signal is None:
            tail = f"{tail}\nSSH connection to {self._transport.target.where} lost".strip()
        return ProcessResult(exit_code=process.returncode, stderr_tail=tail)

    async def close(self) -> None:
        """EOF on its stdin (it exits), then the helper's kill mode for what is left."""
        if self._closed:
            return
        self._closed = True
        process = self.run.process
        try:
            with contextlib.suppress(*_CONNECTION_ERRORS, RuntimeError, OSError):
                process.stdin.write_eof()
            with contextlib.suppress(TimeoutError, *_CONNECTION_ERRORS):
                async with asyncio.timeout(self._transport._kill_grace_s):
                    await process.wait_closed()
            if process.exit_status is None and process.exit_signal is None:
                await self._transport._stop(self.run)
        finally:
            self._transport._live.discard(self.run)
            process.close()
            for task in (self._stdout, self._stderr):
                task.cancel()
            await asyncio.gather(self._stdout, self._stderr, return_exceptions=True)
