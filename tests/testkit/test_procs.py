"""The process helper the tests and the bench share (testkit/procs.py), on small children."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from testkit.procs import Proc, ProcExited, clean_env, processes_under

#: A child that prints a line, leaves a grandchild in its group, and waits to be stopped.
_PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(45)"])
print("ready", flush=True)
time.sleep(60)
"""


def python(
    name: str,
    script: str,
    cwd: Path,
    *,
    log_path: Path | None = None,
    capture: bool = True,
    group: bool = False,
) -> Proc:
    """A Proc running `script` with this interpreter in `cwd`."""
    argv = [sys.executable, "-c", script]
    return Proc(
        name, argv, env=dict(os.environ), cwd=cwd, log_path=log_path, capture=capture, group=group
    )


async def test_a_captured_line_is_waited_for_kept_and_logged(tmp_path: Path) -> None:
    """wait_for returns the matching line; the output is kept in memory and in the log."""
    log = tmp_path / "child.log"
    script = "import time; print('hello 42', flush=True); time.sleep(60)"
    async with python("child", script, tmp_path, log_path=log) as child:
        (match,) = await child.wait_for(r"hello (\d+)")
        assert match.group(1) == "42"
    assert "hello 42" in child.output
    assert "hello 42" in log.read_text()


async def test_waiting_for_a_line_fails_at_once_when_the_process_ends_first(tmp_path: Path) -> None:
    """A process that exits before logging what is awaited fails the wait, with its output."""
    async with python("quitter", "print('bye'); raise SystemExit(3)", tmp_path) as quitter:
        with pytest.raises(ProcExited, match=r"quitter exited \(3\)[\s\S]*bye"):
            await quitter.wait_for("never printed")
        with pytest.raises(ProcExited, match="exited with code 3"):
            quitter.check_alive()


async def test_uncaptured_output_goes_to_the_log_alone(tmp_path: Path) -> None:
    """Without capture the child writes straight to its log, with no line of ours in it."""
    log = tmp_path / "bench.log"
    proc = python("bench", "print('only this')", tmp_path, log_path=log, capture=False)
    await proc.start()
    assert await proc.wait() == 0
    assert log.read_text() == "only this\n"
    assert proc.tail(5) == "only this"
    with pytest.raises(RuntimeError, match="not captured"):
        await proc.wait_for("only")


async def test_a_group_stop_ends_what_the_child_left_in_its_group(tmp_path: Path) -> None:
    """With group=True, stop ends the child's whole process group, its grandchild too."""
    async with python("parent", _PARENT, tmp_path, group=True) as parent:
        await parent.wait_for("^ready$")
        assert len(processes_under([tmp_path])) == 2
    assert parent.returncode is not None
    assert processes_under([tmp_path]) == {}


async def test_a_killed_process_restarts_with_the_same_settings(tmp_path: Path) -> None:
    """kill is a crash (SIGKILL); restart starts the same command again and counts it."""
    proc = python("again", "import time; print('up', flush=True); time.sleep(60)", tmp_path)
    await proc.start()
    await proc.wait_for("^up$")
    since = proc.mark()
    await proc.restart()
    await proc.wait_for("^up$", since=since)
    assert proc.starts == 2
    assert proc.matches(r"--- exited with -9")
    await proc.stop()


def test_clean_env_drops_project_settings_and_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child's environment holds no codex-hub setting or proxy of the shell's."""
    monkeypatch.setenv("HUB_TOKEN", "from-the-shell")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid")
    monkeypatch.setenv("CODEX_HOME", "/somewhere")
    env = clean_env(LOG_LEVEL="DEBUG")
    assert "HUB_TOKEN" not in env and "https_proxy" not in env and "CODEX_HOME" not in env
    assert env["LOG_LEVEL"] == "DEBUG" and env["PATH"] == os.environ["PATH"]
