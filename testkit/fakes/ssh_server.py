"""A real SSH server on 127.0.0.1 for the SSH transport's tests, made with asyncssh.

Each exec request runs the way sshd runs it: ``/bin/sh -c COMMAND`` as a local child
in a session of its own, its stdin, stdout and stderr piped to the channel, its exit
status sent back. Like sshd, a dropped connection does not kill the child: its pipes
close (stdin reads EOF, writes fail) and it carries on until it exits by itself. The
"remote" is this machine, so a test can look for leftover processes in /proc.

Host and client keys are generated per test in tmp_path, and a known_hosts file lists
the server's key for ``[127.0.0.1]:PORT``.

Fixtures: `ssh_keys` (the key files), `ssh_server` (a started server, stopped after the
test) and `ssh_settings` (SSH_* settings pointing at it, for ExecutorSettings).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from executor.ssh_compat import asyncssh

#: How long the server waits for its children when it stops, before killing them.
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class SshKeys:
    """Key files of one test: the server's host key, the client's key, known_hosts."""

    host_key: asyncssh.SSHKey
    client_key: asyncssh.SSHKey
    host_key_path: Path
    client_key_path: Path
    known_hosts_path: Path

    def known_hosts_line(self, port: int, key: asyncssh.SSHKey | None = None) -> str:
        """The known_hosts line for the server on `port` (or for another `key`)."""
        public = (key or self.host_key).export_public_key().decode().strip()
        return f"[127.0.0.1]:{port} {public}\n"


def make_keys(directory: Path) -> SshKeys:
    """Generate an Ed25519 host key and client key, written 0600 under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key_path = directory / "host_ed25519"
    client_key_path = directory / "id_ed25519"
    host_key.write_private_key(str(host_key_path))
    client_key.write_private_key(str(client_key_path))
    client_key.write_public_key(str(client_key_path) + ".pub")
    for path in (host_key_path, client_key_path):
        path.chmod(0o600)
    known_hosts = directory / "known_hosts"
    known_hosts.write_text("")
    return SshKeys(host_key, client_key, host_key_path, client_key_path, known_hosts)


class _ServerConnection(asyncssh.SSHServer):
    """Counts connections and keeps them, so a test can drop them all."""

    def __init__(self, server: FakeSshServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server.connections_made += 1
        self._server.live_connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._server.live_connections.discard(self._conn)


class FakeSshServer:
    """An asyncssh server that runs every exec request with ``/bin/sh -c`` locally."""

    def __init__(self, keys: SshKeys, *, env: dict[str, str] | None = None) -> None:
        self.keys = keys
        self.env = env
        #: Every command line an exec request asked for, in order.
        self.commands: list[str] = []
        self.connections_made = 0
        self.live_connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._children: set[asyncio.subprocess.Process] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._port = 0

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    async def start(self) -> None:
        """Listen on an ephemeral loopback port; only the test's client key may log in."""
        self._acceptor = await asyncssh.create_server(
            lambda: _ServerConnection(self),
            "127.0.0.1",
            0,
            server_host_keys=[self.keys.host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(
                self.keys.client_key.export_public_key().decode()
            ),
            process_factory=self._handle,
            encoding=None,
            password_auth=False,
            kbdint_auth=False,
            keepalive_interval=0,
        )
        sockets = self._acceptor.sockets
        self._port = int(sockets[0].getsockname()[1])

    def trust(self, key: asyncssh.SSHKey | None = None) -> Path:
        """Write known_hosts listing `key` (default: the real host key) for this server."""
        path = self.keys.known_hosts_path
        path.write_text(self.keys.known_hosts_line(self._port, key))
        return path

    async def drop_connections(self) -> int:
        """Cut every client connection at once, like a network failure; how many."""
        live = list(self.live_connections)
        for conn in live:
            conn.abort()
        return len(live)

    async def close(self) -> None:
        """Stop listening, drop every connection, end every child; safe to call twice."""
        if self._acceptor is not None:
            acceptor, self._acceptor = self._acceptor, None
            acceptor.close()
            await acceptor.wait_closed()
        await self.drop_connections()
        # The children end by themselves once their channel is gone (the helper's
        # watchdog); a test that broke that is not allowed to leak them.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE_S):
                await asyncio.gather(
                    *(child.wait() for child in self._children), return_exceptions=True
                )
        for child in list(self._children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        task = asyncio.create_task(self._serve(process), name="FakeSshServer:session")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run the exec request's command through /bin/sh and pipe it, as sshd does."""
        command = process.command
        if command is None:
            process.stderr.write(b"this test server only runs commands\n")
            process.exit(1)
            return
        self.commands.append(command)
        child = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            start_new_session=True,  # sshd gives each session its own
        )
        self._children.add(child)
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        feed = asyncio.create_task(_feed(process.stdin, child.stdin), name="FakeSshServer:stdin")
        try:
            # Like sshd: all output is sent before the exit status, then the channel closes.
            await asyncio.gather(
                _forward(child, 1, child.stdout, process.stdout),
                _forward(child, 2, child.stderr, process.stderr),
            )
            status = await child.wait()
            with contextlib.suppress(OSError, asyncssh.Error):
                process.exit(status if status >= 0 else 128 - status)  # -N: killed by signal N
            await process.wait_closed()
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
            self._children.discard(child)


async def _feed(source: asyncssh.SSHReader[bytes], stdin: asyncio.StreamWriter) -> None:
    """Channel to the child's stdin; EOF, or the connection's end, closes the pipe."""
    try:
        while chunk := await source.read(65536):
            stdin.write(chunk)
            await stdin.drain()
    except (asyncssh.Error, ConnectionError):
        pass  # the connection went away: sshd closes the pipe then, and so do we
    finally:
        stdin.close()


async def _forward(
    child: asyncio.subprocess.Process,
    fd: int,
    source: asyncio.StreamReader,
    sink: asyncssh.SSHWriter[bytes],
) -> None:
    """The child's output to the channel; once the channel is gone, the pipe is closed."""
    while chunk := await source.read(65536):
        try:
            sink.write(chunk)
            await sink.drain()
        except (asyncssh.Error, ConnectionError, BrokenPipeError):
            # As sshd: the child's next write gets EPIPE instead of blocking for ever.
            pipe = child._transport.get_pipe_transport(fd)  # type: ignore[attr-defined]
            if pipe is not None:
                pipe.close()
            return


@pytest.fixture
def ssh_keys(tmp_path: Path) -> SshKeys:
    """Fresh host and client keys for one test, in tmp_path/ssh."""
    return make_keys(tmp_path / "ssh")


@pytest.fixture
async def ssh_server(ssh_keys: SshKeys) -> AsyncIterator[FakeSshServer]:
    """A started SSH server trusted by ssh_keys.known_hosts_path; stopped after the test."""
    server = FakeSshServer(ssh_keys)
    await server.start()
    server.trust()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def ssh_settings(ssh_server: FakeSshServer) -> dict[str, Any]:
    """SSH_* settings (ExecutorSettings field names) that reach `ssh_server`."""
    return {
        "exec_transport": "ssh",
        "ssh_host": "127.0.0.1",
        "ssh_port": ssh_server.port,
        "ssh_user": "",
        "ssh_key_path": ssh_server.keys.client_key_path,
        "ssh_known_hosts": ssh_server.keys.known_hosts_path,
        "ssh_insecure_no_host_key_check": False,
    }


async def serve(directory: Path) -> None:
    """Make keys in `directory`, print the port once listening, serve until SIGTERM.

    ``python -m testkit.fakes.ssh_server DIR``: the benchmark runs the server in a process
    of its own, as sshd would be, so it does not share the client's event loop.
    """
    keys = make_keys(directory)
    server = FakeSshServer(keys)
    await server.start()
    server.trust()
    print(server.port, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


if __name__ == "__main__":
    import sys

    asyncio.run(serve(Path(sys.argv[1])))
