"""The codex-hub command line, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from codex_hub.cli import build_parser

CLI = [sys.executable, "-m", "codex_hub"]


def run_cli(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_every_documented_subcommand_exists() -> None:
    """The parser offers exactly the commands DESIGN.md promises, and `token`."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"up", "serve", "executor", "bridge", "exec", "doctor", "token"}


def test_exec_prints_only_the_answer(tmp_path: Path) -> None:
    """On success stdout holds the raw answer and nothing else."""
    done = run_cli("exec", "--dry-run", "say exactly this", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "say exactly this\n"


def test_exec_reads_dotenv_in_the_working_directory(tmp_path: Path) -> None:
    """Without --env-file, ./.env is loaded when present."""
    (tmp_path / ".env").write_text("EXEC_DRY_RUN=true\n")
    done = run_cli("exec", "from dotenv", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "from dotenv\n"), done.stderr


def test_exec_reads_the_env_file_it_is_given(tmp_path: Path) -> None:
    """--env-file F loads F instead of ./.env."""
    (tmp_path / "custom.env").write_text("EXEC_DRY_RUN=true\n")
    done = run_cli("exec", "--env-file", "custom.env", "from custom", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "from custom\n"), done.stderr


def test_a_missing_env_file_is_an_error(tmp_path: Path) -> None:
    """A missing --env-file is named on stderr with exit 2, nothing on stdout."""
    done = run_cli("exec", "--env-file", "nope.env", "x", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "nope.env: no such file" in done.stderr


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ("EXEC_TIMEOUT_S=-1\n", "EXEC_TIMEOUT_S"),
        ("CODEX_SANDBOX=yolo\n", "CODEX_SANDBOX"),
        ("HUB_HOST=0.0.0.0\n", "HUB_TOKEN"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, env: str, needle: str) -> None:
    """An invalid setting fails with exit 2 and names the setting."""
    (tmp_path / ".env").write_text(env)
    command = "serve" if "HUB_HOST" in env else "exec"
    args = [command] if command == "serve" else [command, "x"]
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert needle in done.stderr
