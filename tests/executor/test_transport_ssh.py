"""The SSH transport against a real SSH server on 127.0.0.1 (testkit/fakes/ssh_server.py).

The server runs each command with /bin/sh on this machine, so the "remote" processes
are visible in /proc: every test that stops a run checks that none of them is left.
Tests marked `codex` run the real codex binary over SSH against the stub model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.engine import CodexEngine, RunRequest
from executor.factory import ConfigError, build_pipeline
from executor.run_io import STDERR_TAIL_BYTES
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
from testkit.fakes.model_server import STUB_USAGE, StubModelServer
from testkit.fakes.ssh_server import FakeSshServer, SshKeys

Settings = Callable[..., ExecutorSettings]

#: The longest a test waits for something it expects to happen.
WAIT_S = 20.0


# --- helpers ---------------------------------------------------------------------------


def processes_under(marker: Path) -> list[int]:
    """Live pids (not zombies) whose cwd, command line or environment mentions `marker`."""
    needle = os.fsencode(marker)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    continue
            cwd = os.fsencode(os.readlink(f"/proc/{entry}/cwd"))
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue  # gone meanwhile
        if cwd.startswith(needle) or needle in cmdline or needle in environ:
            found.append(int(entry))
    return found


def describe(pids: list[int]) -> dict[int, str]:
    """The command lines of `pids`, for a failure message."""
    described = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                described[pid] = fh.read().replace(b"\0", b" ").decode(errors="replace")[-300:]
        except OSError as exc:
            described[pid] = f"gone ({exc})"
    return described


def assert_no_process_left(marker: Path) -> None:
    """Nothing this test started (codex, the helper, its commands) still runs."""
    assert describe(processes_under(marker)) == {}


async def wait_no_process_left(marker: Path) -> None:
    """Wait (at most WAIT_S) until nothing started under `marker` runs any more."""
    # Nothing to await for processes on the "remote" side: look at /proc every 20 ms.
    deadline = time.monotonic() + WAIT_S
    while processes_under(marker) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert_no_process_left(marker)


@contextlib.contextmanager
def fifo_signal(path: Path) -> Iterator[asyncio.Event]:
    """An Event set when something writes to the FIFO made at `path`."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, event.set)
    try:
        yield event
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class Recorder:
    """Collects emitted events (or lines) and wakes waiters when one matches."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        self._changed.set()

    def codex_types(self) -> list[str]:
        """The `type` of every codex event, in order."""
        return [e["data"]["type"] for e in self.events if e["kind"] == "codex"]

    async def wait_for(self, match: Callable[[Any], bool]) -> Any:
        """The first event that satisfies `match`, waiting (at most WAIT_S) for it."""
        async with asyncio.timeout(WAIT_S):
            while True:
                for event in self.events:
                    if match(event):
                        return event
                self._changed.clear()
                await self._changed.wait()


#: A child that leaves a grandchild in its group and a great-grandchild in a new session.
SPAWNER = """
import subprocess, sys, time
subprocess.Popen(["sleep", "41"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(42)"], start_new_session=True)
print("started", flush=True)
time.sleep(float(sys.argv[1]))
"""


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


async def run_lines(
    transport: SshTransport,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float = 20.0,
) -> tuple[list[str], Any]:
    """Run `argv` over `transport`; its stdout lines and the ProcessResult."""
    lines: list[str] = []
    result = await transport.run(
        argv, env_overrides=env or {}, cwd=cwd, on_stdout_line=lines.append, timeout_s=timeout_s
    )
    return lines, result


# --- the command line, pure -------------------------------------------------------------

NASTY = [
    "it's",
    'say "hi"',
    "$(touch pwned)",
    "`touch pwned`",
    "a; touch pwned",
    "*",
    "-n",
    "line one\nline two",
    "",
    "tab\tand \\ backslash",
    "ünïcødé ✓",
]


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


# --- the transport on its own ------------------------------------------------------------


async def test_words_env_and_cwd_arrive_intact(ssh: SshTransport, tmp_path: Path) -> None:
    """argv, env values and the cwd reach the remote process exactly, and nothing runs twice."""
    workdir = tmp_path / "it's a -dir"
    workdir.mkdir()
    script = (
        "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['X_Y'], os.getcwd()]))"
    )
    value = "$HOME `id` 'q' \"d\"\nnext"
    lines, result = await run_lines(
        ssh, [sys.executable, "-c", script, *NASTY], env={"X_Y": value}, cwd=str(workdir)
    )
    assert result.exit_code == 0, result.stderr_tail
    assert json.loads(lines[0]) == [NASTY, value, str(workdir)]
    assert not (workdir / "pwned").exists()
    assert not Path("pwned").exists()  # noqa: ASYNC240


async def test_streams_long_lines_and_keeps_stderr_tail(ssh: SshTransport) -> None:
    """Lines far beyond 64 KiB arrive whole; only the end of stderr is kept; the code too."""
    script = (
        "import sys\n"
        "print('a' * 300_000)\n"
        "print('short', flush=True)\n"
        "sys.stderr.write('e' * 10_000 + 'THE END')\n"
        "sys.exit(3)\n"
    )
    lines, result = await run_lines(ssh, [sys.executable, "-c", script])
    assert lines == ["a" * 300_000, "short"]
    assert result.exit_code == 3 and not result.timed_out
    assert result.stderr_tail.endswith("THE END")
    assert len(result.stderr_tail) == STDERR_TAIL_BYTES


async def test_lines_stream_before_the_end(ssh: SshTransport, tmp_path: Path) -> None:
    """A line arrives while the remote process still runs."""
    gate = tmp_path / "gate.fifo"
    os.mkfifo(gate)
    lines = Recorder()
    run = asyncio.create_task(
        ssh.run(
            ["sh", "-c", f"echo first; cat {gate}; echo second"],
            env_overrides={},
            cwd=None,
            on_stdout_line=lines,
            timeout_s=20,
        )
    )
    await lines.wait_for(lambda line: line == "first")
    assert not run.done()
    await asyncio.to_thread(gate.write_text, "")
    result = await run
    assert result.exit_code == 0 and lines.events == ["first", "second"]


async def test_remote_spawn_errors(ssh: SshTransport, tmp_path: Path) -> None:
    """A missing executable or cwd on the host is a SpawnError, as locally."""
    with pytest.raises(SpawnError, match="no such executable") as info:
        await run_lines(ssh, ["/nonexistent/codex", "exec"])
    assert info.value.program == "/nonexistent/codex"
    with pytest.raises(SpawnError, match="no such directory"):
        await run_lines(ssh, ["true"], cwd=str(tmp_path / "missing"))
    with pytest.raises(SpawnError, match="remote shell accepts"):
        await run_lines(ssh, ["echo", "x" * MAX_COMMAND_BYTES])


async def test_files(ssh: SshTransport) -> None:
    """Temp dirs are made (0700) and removed remotely; text is read back; errors are OSError."""
    directory = Path(await ssh.make_tempdir())
    assert directory.name.startswith("codex-hub-")
    assert directory.stat().st_mode & 0o777 == 0o700  # noqa: ASYNC240
    (directory / "f.txt").write_bytes(b"caf\xc3\xa9 \xff")
    assert await ssh.read_text(str(directory / "f.txt")) == "café \ufffd"
    with pytest.raises(OSError, match="cannot read"):
        await ssh.read_text(str(directory / "missing.txt"))
    await ssh.remove_tree(str(directory))
    assert not directory.exists()  # noqa: ASYNC240
    await ssh.remove_tree(str(directory))


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


async def test_timeout_kills_the_group_and_setsid_children(
    ssh: SshTransport, tmp_path: Path
) -> None:
    """On timeout every remote descendant dies, also one that left the process group."""
    started = time.monotonic()
    _, result = await run_lines(
        ssh, [sys.executable, "-c", SPAWNER, "60"], cwd=str(tmp_path), timeout_s=1.0
    )
    assert result.timed_out
    assert time.monotonic() - started < 1.0 + 20.0  # long before the child's 60 s
    assert_no_process_left(tmp_path)


async def test_normal_exit_kills_leftovers(ssh: SshTransport, tmp_path: Path) -> None:
    """A normal exit returns, and its clean-up kills what the child left, in any session."""
    lines, result = await run_lines(ssh, [sys.executable, "-c", SPAWNER, "0"], cwd=str(tmp_path))
    assert result.exit_code == 0 and not result.timed_out and lines == ["started"]
    await ssh.settled()
    assert_no_process_left(tmp_path)


async def test_cancel_kills_and_reraises(ssh: SshTransport, tmp_path: Path) -> None:
    """Cancelling the caller kills every remote process of the run, then re-raises."""
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
    assert processes_under(tmp_path), "the spawner should be running now"
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert_no_process_left(tmp_path)


async def test_callback_error_kills_the_run(ssh: SshTransport, tmp_path: Path) -> None:
    """If the line callback raises, the remote processes are killed and the error propagates."""

    def explode(line: str) -> None:
        raise RuntimeError("consumer broke")

    with pytest.raises(RuntimeError, match="consumer broke"):
        await ssh.run(
            [sys.executable, "-c", SPAWNER, "60"],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=explode,
            timeout_s=30,
        )
    assert_no_process_left(tmp_path)


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
        assert len(processes_under(tmp_path)) >= 3
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
async def test_codex_plain_answer_over_ssh(
    ssh_engine: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    ssh_server: FakeSshServer,
    tmp_path: Path,
    ssh: SshTransport,
) -> None:
    """codex run over SSH answers like a local one: answer, thread, usage, events."""
    model_server.reply_text("Hello over SSH.\nSecond line.")
    events = Recorder()
    prompt = "it's a prompt with $(no expansion), `none` either; and * no glob"
    outcome = await ssh_engine(codex_home=codex_home).run(RunRequest("r1", prompt), events)

    assert outcome.status == "succeeded", outcome.error
    assert outcome.answer == "Hello over SSH.\nSecond line."
    assert outcome.thread_id and outcome.usage == STUB_USAGE
    assert events.codex_types()[0] == "thread.started"
    assert "turn.completed" in events.codex_types()
    (request,) = model_server.requests
    assert prompt in request.text
    assert ssh_server.connections_made == 1
    await ssh.settled()  # the remote reap follows the answer
    assert_no_process_left(tmp_path)


@pytest.mark.codex
async def test_codex_events_stream_before_the_end(
    ssh_engine: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
    ssh: SshTransport,
) -> None:
    """Events arrive while codex still works: a command codex runs is seen before it ends."""
    gate = tmp_path / "work" / "go.fifo"
    engine = ssh_engine(codex_home=codex_home)
    model_server.reply_exec("echo ready > ready.fifo && cat go.fifo", then="All done.")
    os.mkfifo(gate)
    events = Recorder()
    with fifo_signal(tmp_path / "work" / "ready.fifo") as command_started:
        run = asyncio.create_task(engine.run(RunRequest("r1", "run it"), events))
        async with asyncio.timeout(WAIT_S):
            await command_started.wait()
        await events.wait_for(
            lambda e: (
                e["kind"] == "codex"
                and e["data"]["type"] == "item.started"
                and e["data"]["item"]["type"] == "command_execution"
            )
        )
        assert "thread.started" in events.codex_types()
        assert not run.done()
        async with asyncio.timeout(WAIT_S):
            await asyncio.to_thread(gate.write_text, "go\n")
        outcome = await run
    assert outcome.status == "succeeded", outcome.error
    assert outcome.answer == "All done."
    await ssh.settled()  # the remote reap follows the answer
    assert_no_process_left(tmp_path)


@pytest.mark.codex
async def test_codex_timeout_over_ssh_leaves_nothing(
    ssh_engine: Callable[..., CodexEngine],
    codex_home: Path,
    unreachable_port: int,
    tmp_path: Path,
) -> None:
    """codex hangs on a closed model port; the timeout kills it and all it started, remotely."""
    engine = ssh_engine(
        codex_home=codex_home,
        exec_timeout_s=3.0,
        codex_extra_args=(
            f'-c model_providers.stub.base_url="http://127.0.0.1:{unreachable_port}/v1"'
        ),
    )
    started = time.monotonic()
    outcome = await engine.run(RunRequest("r1", "hi"), Recorder())

    assert outcome.status == "timed_out"
    assert outcome.error == {"code": "timeout", "message": "codex did not finish within 3 s"}
    assert time.monotonic() - started < 3.0 + 20.0  # stopped, not hung (room for a slow box)
    assert_no_process_left(tmp_path)


@pytest.mark.codex
async def test_codex_cancel_while_a_command_runs(
    ssh_engine: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
) -> None:
    """Cancelling kills remote codex and its sandboxed command (in its own session) too."""
    model_server.reply_exec("echo ready > ready.fifo && exec sleep 45", then="never sent")
    engine = ssh_engine(codex_home=codex_home)
    with fifo_signal(tmp_path / "work" / "ready.fifo") as command_started:
        run = asyncio.create_task(engine.run(RunRequest("r1", "wait"), Recorder()))
        async with asyncio.timeout(WAIT_S):
            await command_started.wait()
    assert processes_under(tmp_path / "work"), "the command should be running now"

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert_no_process_left(tmp_path)


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
async def test_codex_not_logged_in_over_ssh(
    ssh_engine: Callable[..., CodexEngine],
    codex_home_logged_out: Path,
    model_server: StubModelServer,
) -> None:
    """`codex login status` runs remotely with CODEX_HOME; logged out fails the run."""
    outcome = await ssh_engine(codex_home=codex_home_logged_out).run(
        RunRequest("r1", "hi"), Recorder()
    )
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "codex_not_logged_in"
    assert model_server.requests == []


async def test_missing_remote_codex_is_codex_not_found(
    ssh_executor_settings: Settings, ssh: SshTransport
) -> None:
    """A CODEX_BIN missing on the host fails the run with codex_not_found."""
    settings = ssh_executor_settings(codex_bin="/nonexistent/codex")
    outcome = await CodexEngine(settings, ssh, codex_bin=settings.codex_bin).run(
        RunRequest("r1", "hi"), Recorder()
    )
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "codex_not_found"
    assert "/nonexistent/codex" in outcome.error["message"]


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


async def test_bytes_are_written_remotely_private_and_whole(ssh: SshTransport) -> None:
    """write_bytes puts a file (an output schema, an image) in a remote temp dir, mode 0600."""
    directory = Path(await ssh.make_tempdir())
    data = bytes(range(256)) * 4000
    await ssh.write_bytes(str(directory / "image-0.png"), data)
    written = directory / "image-0.png"
    assert written.read_bytes() == data
    assert written.stat().st_mode & 0o777 == 0o600
    with pytest.raises(OSError, match="cannot write"):
        await ssh.write_bytes(str(directory / "missing" / "x.json"), b"{}")
    await ssh.remove_tree(str(directory))
