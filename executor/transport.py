"""Where codex runs: the small interface every transport (local, SSH) implements.

The engine only talks to a `Transport`; it never starts processes itself. Errors:

    TransportError            anything a transport could not do
     └── SpawnError           the program could not be started (missing binary, bad cwd)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class TransportError(Exception):
    """A transport could not do what was asked."""


class SpawnError(TransportError):
    """The program could not be started at all."""

    def __init__(self, program: str, reason: str) -> None:
        super().__init__(f"cannot start {program}: {reason}")
        self.program = program
        self.reason = reason


@dataclass(frozen=True)
class ProcessResult:
    """How a process ended: exit code (None if unknown), stderr's tail, timed out or not.

    A run that returned at the caller's ``answered`` while its program still ran has
    ``exit_code`` None and ``ended``: a future of the program's exit status (None if
    unknown), resolved once the transport's clean-up of the run is done (its processes
    gone, its output read).
    """

    exit_code: int | None
    stderr_tail: str
    timed_out: bool = False
    ended: asyncio.Future[int | None] | None = None


@dataclass(frozen=True)
class LoginStatus:
    """Whether codex is logged in, with a short detail that never contains a secret."""

    logged_in: bool
    detail: str


class Transport(Protocol):
    """Runs codex and handles its files on some machine (this one, or one over SSH)."""

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
        """Run `argv` with stdin empty, calling `on_stdout_line` per line; kill on timeout.

        ``answered``, set by the caller (from `on_stdout_line`) once the output so far is
        all it needs, returns at once (see `ProcessResult.ended`); the program's exit and
        the clean-up of its processes go on without the caller.
        """
        ...

    async def read_text(self, path: str) -> str:
        """The text of the file at `path` (UTF-8, invalid bytes replaced)."""
        ...

    async def write_bytes(self, path: str, data: bytes) -> None:
        """Write `data` to a new file at `path` (in a directory from `make_tempdir`)."""
        ...

    async def make_tempdir(self) -> str:
        """A fresh private directory; the caller removes it with `remove_tree`."""
        ...

    async def remove_tree(self, path: str) -> None:
        """Remove `path` and everything under it; a missing path is fine."""
        ...

    async def login_status(self, codex_bin: str, env_overrides: Mapping[str, str]) -> LoginStatus:
        """Ask `codex login status`; raises SpawnError when codex cannot start."""
        ...

    async def close(self) -> None:
        """Release what the transport holds; idempotent."""
        ...


class Session(Protocol):
    """A long-lived process whose stdin this side writes (codex's app-server)."""

    @property
    def pid(self) -> int | None:
        """The program's pid where it runs (None when unknown)."""
        ...

    async def send(self, data: bytes) -> None:
        """Write `data` to its stdin; raises TransportError once it is gone."""
        ...

    async def wait(self) -> ProcessResult:
        """Wait until it has exited and its stdout is read; how it ended."""
        ...

    async def close(self) -> None:
        """Close its stdin (it should exit), then end whatever is left; idempotent."""
        ...


class SessionTransport(Transport, Protocol):
    """A transport that can also start long-lived processes with a stdin pipe."""

    async def start(
        self,
        argv: Sequence[str],
        *,
        env_overrides: Mapping[str, str],
        cwd: str | None,
        on_stdout_line: Callable[[str], None],
    ) -> Session:
        """Start `argv` (own process group) with stdin a pipe this side holds.

        `on_stdout_line` is called for each stdout line until it ends; raises
        SpawnError when `argv[0]` or `cwd` is unusable.
        """
        ...
