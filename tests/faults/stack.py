"""The whole product as separate processes on 127.0.0.1, for the fault tests.

:class:`Stack` starts ``codex-hub serve`` on a fixed free port with its store in the
test's tmp_path, ``codex-hub executor`` nodes (the real codex with a stub model, or
the dry-run engine) and ``codex-hub bridge telegram|slack`` nodes talking to the fake
platforms of testkit/fakes, all configured through their environment. Each ``start_*``
returns once the hub has registered the process, which it says in its log; the test
then kills and restarts them at will (:class:`testkit.procs.Proc`). :class:`HubApi`
reads the hub's HTTP API.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.fakes.slack import FakeSlack, SlackMessage
from testkit.fakes.telegram import Call, FakeTelegram
from testkit.procs import WAIT_S, Proc, Procs
from tests.conftest import free_port, node_token

#: Settings of every hub here: replies re-sent every half second; executors that
#: vanish keep their runs for 15 s (tests of a lost executor shorten it); the API needs
#: no key (these tests are about faults, tests/abuse about keys).
HUB_DEFAULTS = {"HUB_EXECUTOR_GRACE_S": "15", "HUB_REDELIVER_S": "0.5", "HUB_AUTH": "none"}

#: A fault test that runs the real codex runs once per engine (ids ``[exec]`` and
#: ``[app-server]``): it overrides the ``engine`` fixture the ``stack`` is built with.
BOTH_ENGINES = pytest.mark.parametrize("engine", ["exec", "app-server"])


class HubApi:
    """The hub's HTTP API, one connection per request (the hub may have restarted)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def get(self, path: str) -> Any:
        """GET `path` and return its JSON body; fails on any other status than 200."""
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as resp:
            assert resp.status == 200, f"GET {path}: {resp.status} {await resp.text()}"
            return await resp.json()

    async def run(self, run_id: str) -> dict[str, Any]:
        """The stored run (``run``) and its ``events``."""
        data: dict[str, Any] = await self.get(f"/api/runs/{run_id}")
        return data

    async def runs(self, query: str = "") -> list[dict[str, Any]]:
        """Run summaries, newest first (``query`` is the URL's query string)."""
        data = await self.get(f"/api/runs?{query}")
        return list(data["runs"])

    async def outbox_pending(self) -> int:
        """Replies the hub holds until a bridge acknowledges them (from /metrics)."""
        async with aiohttp.ClientSession() as session, session.get(self.base + "/metrics") as resp:
            text = await resp.text()
        found = re.search(r"^codex_hub_outbox_pending (\S+)$", text, re.MULTILINE)
        assert found, "no codex_hub_outbox_pending in /metrics"
        return int(float(found.group(1)))

    async def wait_outbox_empty(self, timeout: float = WAIT_S) -> None:
        """Wait until every reply was acknowledged by a bridge.

        An acknowledgement shows nowhere but in the outbox gauge, so /metrics is read
        every 50 ms, for at most `timeout`.
        """
        async with asyncio.timeout(timeout):
            while await self.outbox_pending():  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.05)


class Stack:
    """One hub, its executors and bridges as processes (see the module docstring)."""

    def __init__(
        self,
        procs: Procs,
        tmp: Path,
        *,
        telegram: FakeTelegram | None = None,
        slack: FakeSlack | None = None,
        engine: str = "exec",
    ) -> None:
        self.procs = procs
        #: EXEC_ENGINE of the executors that run the real codex.
        self.engine = engine
        self.tmp = tmp
        self.telegram = telegram
        self.slack = slack
        self.port = free_port()
        self.db = tmp / "hub.db"
        self.api = HubApi(self.port)
        self.hub_env: dict[str, str] = {
            "HUB_PORT": str(self.port),
            "HUB_DB": str(self.db),
            **HUB_DEFAULTS,
        }

    @property
    def hub_url(self) -> str:
        """The node websocket of the hub."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def hub(self) -> Proc:
        """The hub process (started by :meth:`start_hub`)."""
        return self.procs.all["hub"]

    def workdir(self, name: str) -> Path:
        """A fresh EXEC_WORKDIR; every process found there later is a leftover."""
        path = self.tmp / f"work-{name}"
        path.mkdir(parents=True, exist_ok=True)
        self.procs.markers.append(path)
        return path

    async def start_hub(self, **env: str) -> Proc:
        """Start ``codex-hub serve`` (again, after a kill); returns once it listens."""
        proc = self.procs.all.get("hub")
        if proc is None:
            proc = self.procs.add("hub", ["serve"], {**self.hub_env, **env})
        mark = proc.mark()
        await proc.start()
        await proc.wait_for(r"hub listening on", since=mark)
        return proc

    async def restart_hub(self) -> Proc:
        """SIGKILL the hub (if it runs) and start it again on the same port and store."""
        await self.hub.kill()
        return await self.start_hub()

    async def start_executor(
        self,
        name: str = "exec-a",
        *,
        workdir: Path,
        codex_bin: str | None = None,
        codex_home: Path | None = None,
        **env: str,
    ) -> Proc:
        """Start ``codex-hub executor`` (the dry-run engine without `codex_home`).

        With `codex_home` it runs the real codex with the stack's engine (EXEC_ENGINE).
        Returns once the hub has registered it.
        """
        settings = {
            "HUB_URL": self.hub_url,
            "HUB_TOKEN": node_token("executor"),
            "NODE_NAME": name,
            "EXEC_WORKDIR": str(workdir),
            "EXEC_TIMEOUT_S": "120",
            "EXEC_CONCURRENCY": "4",
        }
        if codex_home is None:
            settings["EXEC_DRY_RUN"] = "true"
        else:
            assert codex_bin is not None
            settings.update(
                CODEX_BIN=codex_bin, CODEX_HOME=str(codex_home), EXEC_ENGINE=self.engine
            )
        proc = self.procs.all.get(name) or self.procs.add(name, ["executor"], {**settings, **env})
        return await self._start_node(proc, rf"executor {re.escape(name)} connected")

    async def start_telegram(self, name: str = "tg", **env: str) -> Proc:
        """Start ``codex-hub bridge telegram`` on the fake; returns once hub and fake see it."""
        assert self.telegram is not None
        proc = self.procs.all.get(name)
        if proc is None:
            settings = {
                "HUB_URL": self.hub_url,
                "HUB_TOKEN": node_token("telegram"),
                "NODE_NAME": name,
                "TELEGRAM_BOT_TOKEN": self.telegram.token,
                "TELEGRAM_API_BASE_URL": self.telegram.base_url,
                "TELEGRAM_ALLOWED_CHATS": "*",
                # No status message: a reply is then the only message a run sends.
                "TELEGRAM_STATUS_DELAY_S": "600",
            }
            proc = self.procs.add(name, ["bridge", "telegram"], {**settings, **env})
        mark = proc.mark()
        await self._start_node(
            proc, rf"bridge telegram-bridge-{re.escape(name)} \(telegram\) connected"
        )
        await proc.wait_for(r"Telegram bridge is up", since=mark)
        return proc

    async def start_slack(self, name: str = "sl", **env: str) -> Proc:
        """Start ``codex-hub bridge slack`` on the fake; returns once hub and fake see it."""
        assert self.slack is not None
        proc = self.procs.all.get(name)
        if proc is None:
            settings = {
                "HUB_URL": self.hub_url,
                "HUB_TOKEN": node_token("slack"),
                "NODE_NAME": name,
                "SLACK_BOT_TOKEN": self.slack.bot_token,
                "SLACK_APP_TOKEN": self.slack.app_token,
                "SLACK_API_BASE_URL": self.slack.api_url,
                "SLACK_ALLOWED_USERS": "*",
                "SLACK_ALLOWED_CHANNELS": "*",
                "SLACK_STATUS_EDIT_INTERVAL_S": "600",
            }
            proc = self.procs.add(name, ["bridge", "slack"], {**settings, **env})
        connections = self.slack.connection_count
        await self._start_node(proc, rf"bridge slack-bridge-{re.escape(name)} \(slack\) connected")
        await self.slack.wait_connected(connections + 1, timeout=WAIT_S)
        return proc

    async def _start_node(self, proc: Proc, registered: str) -> Proc:
        hub_mark = self.hub.mark()
        await proc.start()
        await self.hub.wait_for(registered, since=hub_mark)
        return proc

    # --- Telegram users ------------------------------------------------------------

    async def ask(self, bridge: Proc, chat: int, text: str) -> str:
        """The user of private chat `chat` sends `text`; returns the id of the run it made."""
        assert self.telegram is not None
        mark = bridge.mark()
        self.telegram.push_message(chat, text)
        pattern = rf"chat {chat} asked; position \d+ run_id=(\S+)"
        (found,) = await bridge.wait_for(pattern, since=mark)
        return found.group(1)

    def replies(self, chat: int, needle: str) -> list[Call]:
        """sendMessage calls Telegram accepted in `chat` whose text holds `needle`."""
        assert self.telegram is not None
        return [
            call
            for call in self.telegram.calls("sendMessage")
            if call.ok and str(call.chat_id) == str(chat) and needle in (call.text or "")
        ]

    async def wait_reply(self, chat: int, needle: str, timeout: float = WAIT_S) -> Call:
        """The first accepted message in `chat` holding `needle`, waiting for it."""
        assert self.telegram is not None
        return await self.telegram.wait_for_call(
            "sendMessage",
            lambda call: call.ok and str(call.chat_id) == str(chat) and needle in (call.text or ""),
            timeout=timeout,
        )

    # --- Slack users ---------------------------------------------------------------

    async def mention(self, bridge: Proc, text: str, channel: str = "C0GENERAL") -> str:
        """A user mentions the bot in `channel` with `text`; returns the run's id."""
        assert self.slack is not None
        mark = bridge.mark()
        await self.slack.send_event(self.slack.mention(text, channel=channel), timeout=WAIT_S)
        pattern = rf"asked in {re.escape(channel)}; position \d+ run_id=(\S+)"
        (found,) = await bridge.wait_for(pattern, since=mark)
        return found.group(1)

    def slack_posts(self, needle: str) -> list[SlackMessage]:
        """Messages the bot has in Slack (as they are now) whose text holds `needle`."""
        assert self.slack is not None
        return [message for message in self.slack.posted() if needle in message.text]

    async def wait_slack_post(self, needle: str, timeout: float = WAIT_S) -> SlackMessage:
        """The first message of the bot in Slack holding `needle`, waiting for it."""
        assert self.slack is not None

        def holds(message: SlackMessage) -> bool:
            return needle in message.text

        return await self.slack.wait_for_post(predicate=holds, timeout=timeout)
