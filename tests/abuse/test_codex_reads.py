"""What codex's commands can read: no secret of codex-hub, and what they print is masked
(issue #13, point 5).

The real codex runs a command (the stub model asks for it with an ``exec_command``
tool call) that hunts for credentials the way a prompt-injected task would: every
ancestor's ``/proc/<pid>/environ``, every process's environment and command line, its
own environment, any ``.env`` above or below its working directory, and the executor's
home. The command's raw output, as codex sends it back to the model, must hold no
secret but the executor's own. Each secret is random per test, so no other process of
the machine can hold it by chance.

Two deployments, with ``CODEX_SANDBOX=danger-full-access`` (the command runs as the
executor's user, unsandboxed): ``codex-hub up`` (one process, one user, secrets in its
environment and in a ``.env`` beside it), and the split one compose.yaml describes (hub,
executor, Telegram bridge as separate processes, each with only its own settings; the
executor's node token as a ``*_FILE`` in its home). The tests run as root in CI, whose
capabilities read any process's memory: every codex-hub process starts without them,
as it would run as an ordinary user.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import string
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kernel.credentials import derive
from testkit.fakes.model_server import StubModelServer
from testkit.fakes.telegram import FakeTelegram
from testkit.procs import Proc, Procs, clean_env
from tests.conftest import free_port
from tests.faults.stack import Stack

pytestmark = [pytest.mark.codex, pytest.mark.timeout(120)]

#: Prefixed to every codex-hub process when the tests run as root: root without any
#: capability reads a non-dumpable process's /proc files no better than the ordinary
#: user codex-hub is meant to run as (with them it reads every process's memory).
DROP_CAPABILITIES = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]

# The hunt: ancestors' environments (marked readable or denied), every process's
# command line and environment, its own, .env files up and down, and $HOME. All of it
# goes to hunt.out in the workdir, which the test reads whole (codex shortens a long
# output before the model sees it); the command itself prints the end of it and a
# GitHub token, as `gh auth token` would.
HUNT = r"""
{
echo hunt-start
p=$$
while [ "$p" -gt 1 ]; do
  comm=$(cat /proc/$p/comm 2>/dev/null)
  if e=$(tr '\0' '\n' < /proc/$p/environ 2>/dev/null); then
    echo "ancestor $p $comm environ=readable"; echo "$e"
  else
    echo "ancestor $p $comm environ=denied"
  fi
  p=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2)
done
for d in /proc/[0-9]*; do
  tr '\0' ' ' < $d/cmdline 2>/dev/null; echo
  tr '\0' '\n' < $d/environ 2>/dev/null
done
env
d=$PWD
while :; do
  [ -f "$d/.env" ] && { echo "found $d/.env"; cat "$d/.env"; }
  [ "$d" = / ] && break
  d=$(dirname "$d")
done
find . -name .env -exec cat {} + 2>/dev/null
find "$HOME" -type f -exec cat {} + 2>/dev/null
echo hunt-end
} > hunt.out 2>&1
tail -c 1500 hunt.out
echo "$GHP_PRINTED"
"""


def _random(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


def github_token() -> str:
    """A token in GitHub's personal-access-token format."""
    return "ghp_" + _random(36)


class UnprivilegedProcs(Procs):
    """Procs whose processes start without any capability when the tests run as root."""

    def add(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Proc:
        proc = super().add(name, args, env)
        if os.geteuid() == 0:
            proc.argv = [*DROP_CAPABILITIES, *proc.argv]
        return proc


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Procs]:
    """This test's codex-hub processes, none of which (nor what they start) survives it."""
    env = clean_env(LOG_LEVEL="DEBUG", PYTHONUNBUFFERED="1")
    owned = UnprivilegedProcs(tmp_path / "procs", env)
    try:
        yield owned
    finally:
        left = await owned.close()
        assert not left, f"processes outlived the test's codex-hub processes: {left}"


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    """A fake Bot API server for a bot whose token is random."""
    fake = FakeTelegram(token=f"{secrets.randbelow(10**9) + 10**9}:{_random(35)}")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def hunt_output(workdir: Path, model: StubModelServer) -> str:
    """What the hunt found (hunt.out, raw) and everything codex sent the model."""
    path = workdir / "hunt.out"
    text = path.read_text(errors="replace") if path.exists() else ""
    assert "hunt-start" in text and "hunt-end" in text, f"the hunt did not run:\n{text[-3000:]}"
    return text + "\n".join(request.text for request in model.requests)


def found(secrets_by_name: Mapping[str, str], text: str) -> list[str]:
    """The names of the secrets whose value is in `text`."""
    return sorted(name for name, value in secrets_by_name.items() if value in text)


def denied_ancestors(text: str) -> list[str]:
    """The ancestor lines of codex-hub processes whose environment the hunt could not read."""
    return [
        line
        for line in text.splitlines()
        if line.startswith("ancestor ") and line.endswith("environ=denied")
    ]


def store_text(db: Path) -> str:
    """Every value of every table of the hub's store, as one text."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        parts = []
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                parts.append(repr(row))
    return "\n".join(parts)


async def api_get(port: int, path: str, key: str) -> Any:
    """GET `path` from the hub's API with `key`; the JSON body (status 200 asserted)."""
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp,
    ):
        assert resp.status == 200, f"GET {path}: {resp.status} {await resp.text()}"
        return await resp.json()


async def test_in_up_codex_reads_no_secret_from_its_parents_or_a_dotenv(
    procs: Procs,
    model_server: StubModelServer,
    codex_home: Path,
    codex_bin: str,
    telegram: FakeTelegram,
    tmp_path: Path,
) -> None:
    """In `codex-hub up`, a command reading its parents' /proc/<pid>/environ and looking
    for .env finds no secret, and a GitHub token it prints reaches the answer masked."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    home = tmp_path / "home"  # the one user's home, where codex's commands look too
    home.mkdir()
    port = free_port()
    values = {
        "HUB_TOKEN": _random(40),
        "HUB_API_KEYS": _random(40),
        "OPENAI_API_KEY": "sk-" + _random(40),
        "TELEGRAM_BOT_TOKEN": telegram.token,
    }
    ghp = github_token()
    env = {
        "HUB_PORT": str(port),
        "HUB_DB": str(tmp_path / "data" / "hub.db"),
        "HUB_TOKEN": values["HUB_TOKEN"],
        "CODEX_BIN": codex_bin,
        "CODEX_HOME": str(codex_home),
        "CODEX_SANDBOX": "danger-full-access",
        "EXEC_WORKDIR": str(workdir),
        "EXEC_TIMEOUT_S": "60",
        "TELEGRAM_BOT_TOKEN": values["TELEGRAM_BOT_TOKEN"],
        "TELEGRAM_API_BASE_URL": telegram.base_url,
        "TELEGRAM_ALLOWED_CHATS": "*",
        "GHP_PRINTED": ghp,  # what a `gh auth token` would print
        "HOME": str(home),
    }
    up = procs.add("up", ["up"], env)
    up.cwd.mkdir(parents=True)
    # The .env of the one-user set-up, beside the process and outside EXEC_WORKDIR.
    (up.cwd / ".env").write_text(
        f"HUB_API_KEYS={values['HUB_API_KEYS']}\nOPENAI_API_KEY={values['OPENAI_API_KEY']}\n"
    )
    model_server.reply_exec(HUNT, then=f"the hunt found {ghp}")
    mark = up.mark()
    await up.start()
    await up.wait_for(r"executor \S+ connected", since=mark)
    await up.wait_for(r"Telegram bridge is up", since=mark)

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "codex", "messages": [{"role": "user", "content": "hunt"}]},
            headers={"Authorization": f"Bearer {values['HUB_API_KEYS']}"},
        ) as resp,
    ):
        body = await resp.json()
        run_id = resp.headers["X-Run-ID"]
    assert resp.status == 200, body

    output = hunt_output(workdir, model_server)
    assert found(values, output) == [], output[-4000:]
    assert denied_ancestors(output), f"the hunt never reached codex-hub:\n{output[:3000]}"
    answer = body["choices"][0]["message"]["content"]
    assert ghp not in answer and "ghp_***" in answer
    run = await api_get(port, f"/api/runs/{run_id}", values["HUB_API_KEYS"])
    events = json.dumps(run)
    assert ghp not in events and "ghp_***" in events
    assert found(values, events) == []


async def test_split_deployment_codex_finds_no_credential_but_the_executors_own(
    procs: Procs,
    model_server: StubModelServer,
    codex_home: Path,
    codex_bin: str,
    telegram: FakeTelegram,
    tmp_path: Path,
) -> None:
    """Hub, executor and bridge as separate processes with only their own settings: an
    unsandboxed command walking /proc, the environment, the workdir and the executor's
    home finds only the executor's node token, and a GitHub token it prints is masked in
    the chat reply, the store and the monitor's API."""
    stack = Stack(procs, tmp_path, telegram=telegram)
    hub_token = _random(40)
    api_key = _random(40)
    others = {"HUB_API_KEYS": api_key, "TELEGRAM_BOT_TOKEN": telegram.token}
    ghp = github_token()

    home = tmp_path / "executor-home"
    home.mkdir()
    # The executor holds only its own credential (`codex-hub token executor`), as a file.
    executor_token = derive(hub_token, "executor")
    token_file = home / "hub-token"
    token_file.write_text(executor_token + "\n")
    token_file.chmod(0o600)

    workdir = stack.workdir("exec-a")
    # An operator's key: only operators see the chat bridges' runs.
    await stack.start_hub(
        HUB_TOKEN=hub_token, HUB_API_KEYS=api_key, HUB_OPERATOR_KEYS=api_key, HUB_AUTH="keys"
    )
    await stack.start_executor(
        workdir=workdir,
        codex_bin=codex_bin,
        codex_home=codex_home,
        HOME=str(home),
        HUB_TOKEN="",
        HUB_TOKEN_FILE=str(token_file),
        CODEX_SANDBOX="danger-full-access",
        GHP_PRINTED=ghp,
    )
    bridge = await stack.start_telegram(HUB_TOKEN=derive(hub_token, "telegram"))

    model_server.reply_exec(HUNT, then=f"the hunt found {ghp}")
    run_id = await stack.ask(bridge, 4242, "hunt for credentials")
    reply = await stack.wait_reply(4242, "the hunt found", timeout=60)

    output = hunt_output(workdir, model_server)
    assert found({**others, "HUB_TOKEN": hub_token}, output) == [], output[-4000:]
    assert executor_token in output, "the executor's own token file was not reached"
    assert denied_ancestors(output), f"the hunt never reached codex-hub:\n{output[:3000]}"

    assert ghp not in (reply.text or "") and "ghp_***" in (reply.text or "")
    run = await api_get(stack.port, f"/api/runs/{run_id}", api_key)
    shown = json.dumps(run)
    assert ghp not in shown and "ghp_***" in shown
    assert found({**others, "HUB_TOKEN": hub_token}, shown) == []
    stored = store_text(stack.db)
    assert ghp not in stored and "ghp_***" in stored
    assert found({**others, "HUB_TOKEN": hub_token}, stored) == []
