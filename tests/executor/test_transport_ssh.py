"""What only the SSH transport does, against a real SSH server on 127.0.0.1
(testkit/fakes/ssh_server.py): command quoting, settings, one reused connection, host
keys, dropped connections, the remote helper's kill mode and error words.

The server runs each command with /bin/sh on this machine, so the "remote" processes
are visible in /proc: every test that stops a run checks that none of them is left.
Tests marked `codex` run the real codex binary over SSH against the stub model. What
every transport must do runs over SSH and locally in test_transport_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.engine import CodexEngine, RunRequest
from executor.factory import ConfigError, build_pipeline
from executor.settings import ExecutorSettings
from executor.ssh_compat import asyncssh
from executor.transport import SpawnError, TransportError
from executor.transport_local import TAG_VAR
from executor.transport_ssh import (
    MAX_COMMAND_BYTES,
    REMOTE_HELPER,
    HostKeyError,
    SshConnectionError,
    SshSettingError,
    SshTransport,
    check_settings,
    kill_command,
    run_command,
)
from testkit.fakes.model_server import StubModelServer
from testkit.fakes.ssh_server import FakeSshServer, SshKeys
from testkit.procs import processes_under
from tests.executor.helpers import (
    NASTY,
    SPAWNER,
    WAIT_S,
    Recorder,
    assert_no_process_left,
    run_lines,
    wait_no_process_left,
)

Settings = Callable[..., ExecutorSettings]


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
def ssh_executor_settings(executor_settings: Settings, ssh_settings: dict[str, Any]) -> Settings:
    """ExecutorSettings for EXEC_TRANSPORT=ssh against the test's SSH server."""

    def make(**overrides: Any) -> ExecutorSettings:
        return executor_settings(**{**ssh_settings, **overrides})

    return make


@pytest.fixture
async def ssh(ssh_executor_settings: Settings) -> AsyncIterator[SshTransport]:
    """An SSH transport to the test's server, closed after the test."""
    async with SshTransport.from_settings(ssh_executor_settings()) as transport:
        yield transport


# --- the command line, pure -------------------------------------------------------------


def test_run_command_quotes_every_word() -> None:
    """The remote command splits back into exactly the helper, its arguments and argv."""
    argv = ["/opt/codex bin/codex", "exec", "--", *NASTY]
    command = run_command(
        argv, {"CODEX_HOME": "/home/x/my $HOME"}, "/srv/work dir", tag="t1", grace_s=2.0
    )
    words = shlex.split(command)
    assert words[0] == "exec" and words[1:3] == ["/bin/sh", "-c"]
    assert words[4:] == [
        "codex-hub",
        "run",
        "t1",
        "2000",
        "/srv/work dir",
        "1",
        "CODEX_HOME=/home/x/my $HOME",
        *argv,
    ]
    assert shlex.split(kill_command("t1", 123, grace_s=0.5))[4:] == [
        "codex-hub",
        "kill",
        "t1",
        "123",
        "500",
    ]


def test_run_command_refuses_bad_env_names() -> None:
    """An environment name a shell cannot export is refused, not smuggled in."""
    with pytest.raises(ValueError, match="invalid environment variable name"):
        run_command(["codex"], {"A;touch pwned;B": "x"}, None, tag="t", grace_s=1.0)


# --- settings, checked at start-up -------------------------------------------------------


def test_settings_need_ssh_host(ssh_executor_settings: Settings) -> None:
    """SSH_HOST unset fails at start-up, naming SSH_HOST."""
    with pytest.raises(SshSettingError, match="SSH_HOST") as info:
        check_settings(ssh_executor_settings(ssh_host=""))
    assert info.value.setting == "SSH_HOST"
    assert isinstance(info.value, ConfigError)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME (no ~/.ssh) and no ssh-agent, for the defaults of the SSH settings."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return path


def test_settings_need_a_readable_unencrypted_key(
    ssh_executor_settings: Settings, tmp_path: Path, ssh_keys: SshKeys, home: Path
) -> None:
    """A key missing, not a file, not a key or encrypted fails, naming SSH_KEY_PATH."""
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    encrypted = tmp_path / "encrypted"
    ssh_keys.client_key.write_private_key(
        str(encrypted), format_name="pkcs8-pem", passphrase="s3cret-passphrase"
    )
    cases = {
        tmp_path / "missing": "no such file",
        tmp_path: "no such file",  # a directory
        garbage: "not a usable private key",
        encrypted: "encrypted",
        # Unset, with neither an agent nor a default key to fall back on.
        None: "set SSH_KEY_PATH",
    }
    for path, message in cases.items():
        with pytest.raises(SshSettingError, match=message) as info:
            check_settings(ssh_executor_settings(ssh_key_path=path))
        assert info.value.setting == "SSH_KEY_PATH"
        assert "s3cret-passphrase" not in str(info.value)


def test_settings_need_known_hosts_unless_insecure(
    ssh_executor_settings: Settings, tmp_path: Path, home: Path
) -> None:
    """A known_hosts file (SSH_KNOWN_HOSTS, else ~/.ssh/known_hosts) must exist, unless the
    check is turned off on purpose."""
    with pytest.raises(SshSettingError, match="SSH_INSECURE_NO_HOST_KEY_CHECK") as info:
        check_settings(ssh_executor_settings(ssh_known_hosts=None))
    assert info.value.setting == "SSH_KNOWN_HOSTS"
    assert f"SSH_KNOWN_HOSTS is unset and {home}/.ssh/known_hosts: no such file" in str(info.value)
    with pytest.raises(SshSettingError, match="no such file") as info:
        check_settings(ssh_executor_settings(ssh_known_hosts=tmp_path / "nope"))
    assert info.value.setting == "SSH_KNOWN_HOSTS"

    target = check_settings(
        ssh_executor_settings(ssh_known_hosts=None, ssh_insecure_no_host_key_check=True)
    )
    assert target.known_hosts is None


async def test_unset_key_and_known_hosts_use_the_ssh_defaults(
    ssh_executor_settings: Settings, ssh_server: FakeSshServer, home: Path
) -> None:
    """SSH_KEY_PATH and SSH_KNOWN_HOSTS unset: ~/.ssh/id_ed25519 and ~/.ssh/known_hosts."""
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir()
    keys = ssh_server.keys
    (ssh_dir / "id_ed25519").write_bytes(keys.client_key_path.read_bytes())
    (ssh_dir / "id_ed25519").chmod(0o600)
    (ssh_dir / "known_hosts").write_text(keys.known_hosts_line(ssh_server.port))
    settings = ssh_executor_settings(ssh_key_path=None, ssh_known_hosts=None)
    async with SshTransport.from_settings(settings) as transport:
        assert transport.target.known_hosts == ssh_dir / "known_hosts"
        lines, result = await run_lines(transport, ["echo", "defaults"])
    assert lines == ["defaults"] and result.exit_code == 0


async def test_build_pipeline_reports_the_setting(executor_settings: Settings) -> None:
    """The factory's ConfigError names the SSH setting; a local executor never checks them."""
    with pytest.raises(ConfigError, match="SSH_HOST"):
        build_pipeline(executor_settings(exec_transport="ssh"))
    pipeline, transport = build_pipeline(executor_settings(exec_transport="local"))
    try:
        assert not isinstance(transport, SshTransport)
    finally:
        await pipeline.aclose()
        await transport.close()


async def test_factory_passes_the_remote_codex_bin(
    ssh_executor_settings: Settings,
) -> None:
    """With SSH, CODEX_BIN is the remote path; empty means `codex` on the remote PATH."""
    pipeline, transport = build_pipeline(ssh_executor_settings(codex_bin="/remote/bin/codex"))
    try:
        assert isinstance(transport, SshTransport)
        assert pipeline.engine.codex_bin == "/remote/bin/codex"
    finally:
        await pipeline.aclose()
        await transport.close()
    async with SshTransport.from_settings(ssh_executor_settings(codex_bin="")) as transport:
        assert transport.codex_bin == "codex"


# --- the SSH transport on its own --------------------------------------------------------


async def test_remote_spawn_errors_say_why(ssh: SshTransport, tmp_path: Path) -> None:
    """The remote helper says what is missing on the host; a command longer than the
    remote shell accepts is refused before it is sent."""
    with pytest.raises(SpawnError, match="no such executable"):
        await run_lines(ssh, ["/nonexistent/codex", "exec"])
    with pytest.raises(SpawnError, match="no such directory"):
        await run_lines(ssh, ["true"], cwd=str(tmp_path / "missing"))
    with pytest.raises(SpawnError, match="remote shell accepts"):
        await run_lines(ssh, ["echo", "x" * MAX_COMMAND_BYTES])


async def test_temp_dirs_are_fresh_and_none_is_left_after_close(
    ssh_executor_settings: Settings, codex_tmpdir: Path
) -> None:
    """Each temp dir is new (the next one is made ahead); close removes the unused one."""
    async with SshTransport.from_settings(ssh_executor_settings()) as transport:
        made = [await transport.make_tempdir() for _ in range(3)]
        assert len(set(made)) == 3
        assert all(Path(path).parent == codex_tmpdir for path in made)
        for path in made:
            await transport.remove_tree(path)
    assert list(codex_tmpdir.iterdir()) == []  # noqa: ASYNC240


async def test_connection_is_reused_by_sequential_and_concurrent_runs(
    ssh: SshTransport, ssh_server: FakeSshServer
) -> None:
    """Runs share one connection, opened on the first run, also when they overlap."""
    assert ssh_server.connections_made == 0  # lazy
    for _ in range(2):
        _, result = await run_lines(ssh, ["true"])
        assert result.exit_code == 0
    results = await asyncio.gather(*(run_lines(ssh, ["echo", str(i)]) for i in range(4)))
    assert [lines for lines, _ in results] == [["0"], ["1"], ["2"], ["3"]]
    assert ssh_server.connections_made == 1 and ssh.connections_opened == 1


async def test_helper_kill_mode_terms_then_kills_every_tagged_group(
    ssh: SshTransport, tmp_path: Path
) -> None:
    """The kill the transport sends on cancel/timeout ends codex's group and tagged sessions.

    The run's own EOF backstop would hide a broken kill mode, so it is driven on its own
    here, against a tree started outside any SSH session: a group leader that traps
    SIGTERM (to prove SIGTERM comes first), its child, and a tagged grandchild in a
    session of its own.
    """
    tag = "killmode" + os.urandom(4).hex()
    script = (
        "trap 'echo bye > trapped.txt; exit 0' TERM; "
        f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(43)' & "
        "setsid sleep 44 & touch ready; wait"
    )
    tree = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        script,
        cwd=tmp_path,
        env={**os.environ, TAG_VAR: tag},
        start_new_session=True,
    )
    try:
        ready = tmp_path / "ready"
        async with asyncio.timeout(WAIT_S):
            while not ready.exists():  # noqa: ASYNC110 - another process's file
                await asyncio.sleep(0.01)
        assert len(processes_under([tmp_path])) >= 3
        kill = ["/bin/sh", "-c", REMOTE_HELPER, "codex-hub", "kill", tag, str(tree.pid), "2000"]
        _, result = await run_lines(ssh, kill)
        assert result.exit_code == 0
        assert_no_process_left(tmp_path)
        assert (tmp_path / "trapped.txt").read_text() == "bye\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tree.pid, 9)
        await tree.wait()


async def test_close_kills_live_runs(ssh_executor_settings: Settings, tmp_path: Path) -> None:
    """Closing the transport stops the runs still going; later calls are refused."""
    transport = SshTransport.from_settings(ssh_executor_settings())
    lines = Recorder()
    run = asyncio.create_task(
        transport.run(
            [sys.executable, "-c", SPAWNER, "60"],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=lines,
            timeout_s=30,
        )
    )
    await lines.wait_for(lambda line: line == "started")
    await transport.close()
    await transport.close()
    with contextlib.suppress(TransportError):
        await run
    await wait_no_process_left(tmp_path)
    with pytest.raises(TransportError, match="closed"):
        await run_lines(transport, ["true"])


async def test_dropped_connection_fails_the_run_then_reconnects(
    ssh: SshTransport, ssh_server: FakeSshServer, tmp_path: Path
) -> None:
    """A connection cut mid-run fails it clearly; nothing is left; the next run reconnects."""
    lines = Recorder()
    run = asyncio.create_task(
        ssh.run(
            [sys.executable, "-c", SPAWNER, "60"],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=lines,
            timeout_s=30,
        )
    )
    await lines.wait_for(lambda line: line == "started")
    assert await ssh_server.drop_connections() == 1
    with pytest.raises(SshConnectionError, match="lost"):
        await run
    # The helper on the "remote" side saw its channel close and reaped the run.
    await wait_no_process_left(tmp_path)

    lines_after, result = await run_lines(ssh, ["echo", "again"])
    assert lines_after == ["again"] and result.exit_code == 0
    assert ssh_server.connections_made == 2


async def test_connection_refused_is_a_clear_error(
    ssh_executor_settings: Settings, unreachable_port: int
) -> None:
    """Nothing listening on SSH_PORT fails the call with an error naming host and port."""
    settings = ssh_executor_settings(ssh_port=unreachable_port)
    async with SshTransport.from_settings(settings) as transport:
        with pytest.raises(SshConnectionError, match=f"SSH_PORT={unreachable_port}"):
            await transport.make_tempdir()


async def test_wrong_client_key_is_refused(ssh_executor_settings: Settings, tmp_path: Path) -> None:
    """A key the server does not accept fails with an error naming SSH_KEY_PATH."""
    other = tmp_path / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other))
    async with SshTransport.from_settings(ssh_executor_settings(ssh_key_path=other)) as t:
        with pytest.raises(SshConnectionError, match="SSH_KEY_PATH"):
            await t.make_tempdir()


# --- host keys ---------------------------------------------------------------------------


async def test_unknown_host_key_is_refused(
    ssh_executor_settings: Settings, ssh_server: FakeSshServer
) -> None:
    """A server whose key SSH_KNOWN_HOSTS does not list is refused, naming the file."""
    ssh_server.keys.known_hosts_path.write_text("")
    async with SshTransport.from_settings(ssh_executor_settings()) as transport:
        with pytest.raises(HostKeyError) as info:
            await transport.make_tempdir()
    message = str(info.value)
    assert f"SSH_KNOWN_HOSTS={ssh_server.keys.known_hosts_path}" in message
    assert "unknown" in message and not info.value.changed
    assert info.value.fingerprint == ssh_server.keys.host_key.get_fingerprint()
    assert ssh_server.commands == []


async def test_changed_host_key_is_refused(
    ssh_executor_settings: Settings, ssh_server: FakeSshServer
) -> None:
    """A server presenting another key than the listed one is refused as changed."""
    ssh_server.trust(asyncssh.generate_private_key("ssh-ed25519"))
    async with SshTransport.from_settings(ssh_executor_settings()) as transport:
        with pytest.raises(HostKeyError, match="does NOT match") as info:
            await transport.run(
                ["true"], env_overrides={}, cwd=None, on_stdout_line=print, timeout_s=10
            )
    assert info.value.changed
    assert "SSH_KNOWN_HOSTS=" in str(info.value)
    assert ssh_server.commands == []


async def test_refused_host_key_fails_the_run_naming_known_hosts(
    ssh_executor_settings: Settings, ssh_server: FakeSshServer, ssh: SshTransport
) -> None:
    """Through the engine, a refused host key is a transport_error naming SSH_KNOWN_HOSTS."""
    ssh_server.keys.known_hosts_path.write_text("")
    settings = ssh_executor_settings()
    outcome = await CodexEngine(settings, ssh, codex_bin=ssh.codex_bin).run(
        RunRequest("r1", "hi"), Recorder()
    )
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "transport_error"
    assert f"SSH_KNOWN_HOSTS={ssh_server.keys.known_hosts_path}" in outcome.error["message"]


async def test_insecure_setting_skips_the_host_key_check(
    ssh_executor_settings: Settings, ssh_server: FakeSshServer
) -> None:
    """SSH_INSECURE_NO_HOST_KEY_CHECK=true connects to a server with an unlisted key."""
    ssh_server.keys.known_hosts_path.write_text("")
    settings = ssh_executor_settings(ssh_known_hosts=None, ssh_insecure_no_host_key_check=True)
    async with SshTransport.from_settings(settings) as transport:
        lines, result = await run_lines(transport, ["echo", "in"])
    assert lines == ["in"] and result.exit_code == 0


# --- the real codex over SSH ------------------------------------------------------------


@pytest.fixture
def ssh_engine(
    ssh_executor_settings: Settings, ssh: SshTransport, codex_bin: str
) -> Callable[..., CodexEngine]:
    """Build a CodexEngine on the SSH transport; CODEX_BIN is the "remote" binary."""

    def make(**overrides: Any) -> CodexEngine:
        settings = ssh_executor_settings(codex_bin=codex_bin, **overrides)
        return CodexEngine(settings, ssh, codex_bin=codex_bin)

    return make


@pytest.mark.codex
async def test_codex_run_fails_when_the_connection_drops_and_the_next_succeeds(
    ssh_engine: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    ssh_server: FakeSshServer,
    tmp_path: Path,
) -> None:
    """A drop mid-run fails that run as a transport error; the next run reconnects."""
    engine = ssh_engine(codex_home=codex_home)
    model_server.reply_hang()
    run = asyncio.create_task(engine.run(RunRequest("r1", "hang"), Recorder()))
    await model_server.wait_for_requests(1)
    await ssh_server.drop_connections()
    outcome = await run
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "transport_error"
    assert "SSH connection to 127.0.0.1" in outcome.error["message"]
    assert "lost" in outcome.error["message"]
    await wait_no_process_left(tmp_path)

    model_server.reply_text("Back again.")
    outcome = await engine.run(RunRequest("r2", "again"), Recorder())
    assert outcome.status == "succeeded", outcome.error
    assert outcome.answer == "Back again."
    assert ssh_server.connections_made == 2


@pytest.mark.codex
async def test_cli_exec_over_ssh(
    codex_home: Path,
    codex_bin: str,
    model_server: StubModelServer,
    ssh_server: FakeSshServer,
    tmp_path: Path,
) -> None:
    """`codex-hub exec --transport ssh --env-file F` prints codex's answer, run over SSH."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    keys = ssh_server.keys
    env_file = tmp_path / "ssh.env"
    env_file.write_text(
        "\n".join(
            [
                f"CODEX_BIN={codex_bin}",
                f"CODEX_HOME={codex_home}",
                f"EXEC_WORKDIR={workdir}",
                "EXEC_TIMEOUT_S=30",
                "SSH_HOST=127.0.0.1",
                f"SSH_PORT={ssh_server.port}",
                f"SSH_KEY_PATH={keys.client_key_path}",
                f"SSH_KNOWN_HOSTS={keys.known_hosts_path}",
                "",
            ]
        )
    )
    model_server.reply_text("Answer from the far side.")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codex_hub",
        "exec",
        "--transport",
        "ssh",
        "--env-file",
        str(env_file),
        "say hi",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "CODEX_BIN": codex_bin},
    )
    try:
        async with asyncio.timeout(45):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode() == "Answer from the far side.\n"
    assert ssh_server.connections_made == 1
    assert any("codex-hub run" in command for command in ssh_server.commands)
    assert_no_process_left(tmp_path)


async def test_remote_bytes_are_private_and_a_failure_says_cannot_write(
    ssh: SshTransport,
) -> None:
    """write_bytes makes the remote file with mode 0600, and a failed write says so."""
    directory = Path(await ssh.make_tempdir())
    written = directory / "image-0.png"
    await ssh.write_bytes(str(written), b"secret-ish")
    assert written.stat().st_mode & 0o777 == 0o600
    with pytest.raises(OSError, match="cannot write"):
        await ssh.write_bytes(str(directory / "missing" / "x.json"), b"{}")
    await ssh.remove_tree(str(directory))
