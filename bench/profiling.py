"""Sampling profiles of bench processes with py-spy, and what they say in tables.

py-spy attaches to a running process by pid, so the hub and the executor are profiled
as they run in the bench, unchanged. Only samples of threads that are on the CPU are
kept (py-spy's default), so shares are shares of CPU time.

A frame is ``function (file:line)``. Time in a C function (pydantic-core's validation,
``json.dumps``, sqlite3, zlib) shows as its Python caller's line, which is why the
"self" table keeps line numbers: the line names the call.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_THREAD = re.compile(r"^thread \((?P<id>[^)]*)\)(?::\s*(?P<name>.*))?$")

#: The project's own packages: their functions are the ones a change would touch.
PROJECT_PACKAGES = frozenset({"wire", "kernel", "hub", "executor", "bridges", "codex_hub"})


def py_spy() -> str | None:
    """The py-spy executable beside this Python or on PATH, or None."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 250) -> Path:
    """Sample ``pid`` for ``seconds`` into ``out`` (collapsed stacks, one per line)."""
    exe = py_spy()
    if exe is None:
        raise FileNotFoundError("py-spy is not installed")
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", str(rate), "--format", "raw", "--threads", "--nonblocking"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "--output",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(seconds + 30):
            output, _ = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError):
        # Never leave a profiler attached behind us.
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {output.decode()[-500:]}")
    return out


@dataclass(frozen=True)
class Frame:
    """One stack frame as py-spy names it."""

    func: str
    file: str
    line: int | None

    @classmethod
    def parse(cls, text: str) -> Frame:
        match = _FRAME.match(text)
        if match is None:
            return cls(text, "", None)
        line = match.group("line")
        return cls(match.group("func"), match.group("file"), int(line) if line else None)

    @property
    def where(self) -> str:
        """``func (file)``, without the line."""
        return f"{self.func} ({self.file})" if self.file else self.func

    @property
    def at(self) -> str:
        """``func (file:line)``."""
        return f"{self.func} ({self.file}:{self.line})" if self.line else self.where

    @property
    def package(self) -> str:
        """The top-level package or stdlib module of the frame's file."""
        path = self.file.replace("\\", "/")
        for marker in ("site-packages/", "/lib/python3"):
            if marker in path:
                path = path.split(marker, 1)[1]
                if marker == "/lib/python3":
                    path = path.split("/", 1)[1] if "/" in path else path
        parts = [p for p in path.split("/") if p]
        if not parts:
            return self.func
        head = parts[0]
        return head.removesuffix(".py")


@dataclass(frozen=True)
class Stack:
    """One collapsed stack: the thread's name, its frames (root first), its samples."""

    thread: str
    frames: tuple[Frame, ...]
    count: int


@dataclass
class Profile:
    """Collapsed stacks of one process."""

    stacks: list[Stack] = field(default_factory=list)

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Profile:
        """Read py-spy's ``--format raw`` output (with or without ``--threads``)."""
        profile = cls()
        for line in lines:
            text, _, count = line.rpartition(" ")
            if not text or not count.isdigit():
                continue
            parts = [p for p in text.split(";") if p]
            thread = ""
            if parts and (match := _THREAD.match(parts[0])):
                thread = match.group("name") or match.group("id")
                parts = parts[1:]
            if parts:
                frames = tuple(Frame.parse(p) for p in parts)
                profile.stacks.append(Stack(thread, frames, int(count)))
        return profile

    @classmethod
    def load(cls, path: Path) -> Profile:
        return cls.parse(path.read_text(errors="replace").splitlines())

    @property
    def total(self) -> int:
        return sum(s.count for s in self.stacks)

    def select(self, keep: Callable[[Stack], bool]) -> Profile:
        """The stacks ``keep`` accepts."""
        return Profile([s for s in self.stacks if keep(s)])

    def by_thread(self) -> Counter[str]:
        """Samples by thread name; the store's writer thread is ``Store:<path>``."""
        return self._count(lambda s: [s.thread.split(":", 1)[0] or "?"])

    def self_by_line(self) -> Counter[str]:
        """Samples by innermost frame, with its line."""
        return self._count(lambda s: [s.frames[-1].at])

    def self_by_package(self) -> Counter[str]:
        """Samples by the package of the innermost frame."""
        return self._count(lambda s: [s.frames[-1].package])

    def inclusive(self, packages: frozenset[str] = PROJECT_PACKAGES) -> Counter[str]:
        """Samples by function of ``packages`` anywhere on the stack (once per stack)."""
        return self._count(
            lambda s: list(dict.fromkeys(f.where for f in s.frames if f.package in packages))
        )

    def _count(self, keys: Callable[[Stack], list[str]]) -> Counter[str]:
        counter: Counter[str] = Counter()
        for stack in self.stacks:
            for key in keys(stack):
                counter[key] += stack.count
        return counter
