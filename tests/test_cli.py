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
    """The parser offers exactly the commands DESIGN.md promises."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"up", "serve", "executor", "bridge", "exec", "doctor"}


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


def test_a_secret_too_short_or_common_is_refused_at_start_up(tmp_path: Path) -> None:
    """HUB_TOKEN=codex-hub stops the hub with exit 2, naming the setting and the reason."""
    (tmp_path / ".env").write_text("HUB_TOKEN=codex-hub\n")
    done = run_cli("serve", cwd=tmp_path)
    assert done.returncode == 2
    assert "HUB_TOKEN: 9 characters is too short for a credential" in done.stderr


def test_a_missing_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    """A *_FILE naming no file stops the command with exit 2, naming setting and path."""
    (tmp_path / ".env").write_text(f"HUB_TOKEN_FILE={tmp_path / 'nope'}\n")
    done = run_cli("serve", cwd=tmp_path)
    assert done.returncode == 2
    assert f"HUB_TOKEN_FILE={tmp_path / 'nope'}: no such file" in done.stderr


def test_a_secret_file_is_read(tmp_path: Path) -> None:
    """A secret given as a file is used: a weak one in the file is refused like any."""
    (tmp_path / "token").write_text("short\n")
    (tmp_path / ".env").write_text(f"HUB_TOKEN_FILE={tmp_path / 'token'}\n")
    done = run_cli("serve", cwd=tmp_path)
    assert done.returncode == 2
    assert "HUB_TOKEN: 5 characters is too short" in done.stderr


@pytest.mark.parametrize(
    ("dotenv", "named"),
    [
        ("HUB_DB={tmp}/data/hub.db\n", "the settings file .env"),
        ("EXEC_WORKDIR={tmp}/work\nHUB_DB={tmp}/work/.hub/hub.db\n", "the hub's data directory"),
    ],
)
def test_up_refuses_a_workdir_holding_the_env_file_or_the_store(
    tmp_path: Path, dotenv: str, named: str
) -> None:
    """codex-hub up will not let codex work where .env or the store is."""
    (tmp_path / "work").mkdir()
    (tmp_path / ".env").write_text("EXEC_DRY_RUN=true\nHUB_PORT=0\n" + dotenv.format(tmp=tmp_path))
    done = run_cli("up", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "EXEC_WORKDIR=" in done.stderr and named in done.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "work" / ".hub").exists()
