"""The codex-hub command line, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from codex_hub.cli import build_parser
from testkit.procs import Proc, codex_hub_argv
from tests.conftest import free_port

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


def test_an_executor_with_a_label_that_is_not_one_is_refused_at_start(tmp_path: Path) -> None:
    """A bad EXEC_LABELS stops `codex-hub executor` with exit 2, naming the setting, the
    label and what a label may hold."""
    (tmp_path / ".env").write_text("EXEC_LABELS=prod,GPU box\nEXEC_DRY_RUN=true\n")
    done = run_cli("executor", cwd=tmp_path)
    assert done.returncode == 2
    assert "EXEC_LABELS" in done.stderr and "'GPU box' is not a label" in done.stderr
    assert "lowercase letters, digits, '-' and '_'" in done.stderr


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
        ("EXEC_WORKDIR=.\nHUB_DB={tmp}/data/hub.db\n", "the settings file .env"),
        ("WORKSPACE_ROOT={tmp}\nHUB_DB={tmp}/data/hub.db\n", "the settings file .env"),
        ("EXEC_WORKDIR={tmp}/work\nHUB_DB={tmp}/work/.hub/hub.db\n", "the hub's data directory"),
    ],
)
def test_up_refuses_a_workdir_holding_the_env_file_or_the_store(
    tmp_path: Path, dotenv: str, named: str
) -> None:
    """codex-hub up will not let codex work where .env or the store is: in EXEC_WORKDIR
    when it is set, else under WORKSPACE_ROOT."""
    (tmp_path / "work").mkdir()
    (tmp_path / ".env").write_text("EXEC_DRY_RUN=true\nHUB_PORT=0\n" + dotenv.format(tmp=tmp_path))
    done = run_cli("up", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "EXEC_WORKDIR=" in done.stderr and named in done.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "work" / ".hub").exists()


def _hub_env(tmp_path: Path, codex_bin: str, port: int) -> dict[str, str]:
    """The environment of `make run` in a fresh directory: no HUB_ setting at all (HOME
    is the test's, so the default HUB_DB, and the credentials beside it, are too; codex
    works in a directory of its own, as `up` insists)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHONWARNINGS", "HUB_", "XDG_"))
    }
    (tmp_path / "work").mkdir(exist_ok=True)
    env.update(
        HOME=str(tmp_path / "home"),
        EXEC_WORKDIR=str(tmp_path / "work"),
        HUB_PORT=str(port),
        CODEX_BIN=codex_bin,
        CODEX_HOME=str(tmp_path),
        EXEC_DRY_RUN="true",
    )
    return env


async def _up_until_linked(tmp_path: Path, env: dict[str, str]) -> tuple[str, str]:
    """Start `codex-hub up`, wait for the sign-in lines, check the executor is connected,
    stop it: (link, everything it printed)."""
    async with Proc("up", codex_hub_argv("up"), env=env, cwd=tmp_path) as up:
        await up.wait_for("API key for clients")
        (signin,) = up.matches(r"sign in to the monitor: (\S+)")
        link = signin.group(1)
        key = link.split("#key=", 1)[1]
        url = f"http://127.0.0.1:{env['HUB_PORT']}/api/nodes"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            deadline = time.monotonic() + 20
            while True:  # the local executor connects with the credential `up` gave it
                async with http.get(url) as resp:
                    nodes = (await resp.json())["nodes"]
                if any(n["role"] == "executor" for n in nodes) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        assert [n["role"] for n in nodes] == ["executor"]
    return link, up.output


async def test_up_with_nothing_configured_prints_a_sign_in_link_and_keeps_its_key(
    tmp_path: Path, codex_bin: str
) -> None:
    """`codex-hub up` in a fresh directory writes codex-hub.credentials (0600), prints the
    monitor's link with the key in the fragment and where the key is, and its executor
    connects; a second start prints the same key; `codex-hub token` prints the executor's
    credential from the same file."""
    port = free_port()
    env = _hub_env(tmp_path, codex_bin, port)
    link, err = await _up_until_linked(tmp_path, env)
    path = tmp_path / "home" / ".local" / "share" / "codex-hub" / "codex-hub.credentials"
    data = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert link == f"http://127.0.0.1:{port}/#key={data['api_key']}"
    assert f'"api_key" in {path}' in err
    assert data["secret"] not in err and data["executor"] not in err
    again, _ = await _up_until_linked(tmp_path, env)
    assert again == link
    token = await asyncio.to_thread(
        subprocess.run,
        [*CLI, "token", "executor"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert token.stdout == data["executor"] + "\n"


def test_token_refuses_a_node_credential_as_the_secret(tmp_path: Path) -> None:
    """Run where HUB_TOKEN is already a node's credential, `codex-hub token` says to run it
    where the hub runs instead of printing a credential no hub accepts."""
    (tmp_path / ".env").write_text(f"HUB_TOKEN=executor.{'3f9a0c7e' * 8}\n")
    done = run_cli("token", "slack", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "where the hub runs" in done.stderr
