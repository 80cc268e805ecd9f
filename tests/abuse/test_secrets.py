"""No configured secret leaks, on any path, into logs, the store, API answers, the feed
or a chat (issue #8, point 7).

Every token and key gets a recognisable value (a canary) that is *not* shaped like a
real credential, so only the hub's own handling can keep it out, not the log filter's
patterns (Slack's and Telegram's tokens must keep their shapes). Then every path runs,
failures included: wrong key, wrong token, a monitor with a wrong key, the optimizer's
upstream answering 401 with the key quoted in its message, each of the optimizer's key
fallbacks, a Telegram and a Slack token that the platform refuses, and a codex that
fails quoting every canary on stderr and in its events. The prompt is user data: a
canary is never put in one.

Two tests: one process composed like ``codex-hub up`` (hub, executors, bridges, every
settings object's secrets registered as the command line does), with all logging at
DEBUG through ``kernel.logs.configure_logging``; and the real processes
(``codex-hub serve``, ``executor``, ``bridge telegram``) with LOG_LEVEL=DEBUG, where
each process knows only its own settings, as deployed.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bridges.slack.bridge import SlackBridge, SlackRefused
from bridges.slack.settings import SlackSettings
from bridges.telegram.bridge import TelegramBridge, TokenRefused
from bridges.telegram.settings import TelegramSettings
from executor.factory import build_pipeline
from executor.node import ExecutorNode
from executor.settings import ExecutorSettings
from hub.app import HubServer
from hub.appkeys import STORE
from hub.settings import HubSettings
from kernel.logs import configure_logging, forget_secrets, register_settings_secrets
from testkit.fakes.chat_model import CHAT_MODEL, StubChatModel
from testkit.fakes.slack import FakeSlack
from testkit.fakes.telegram import FakeTelegram
from testkit.procs import Proc, clean_env, codex_hub_argv, start_hub
from tests.abuse.conftest import make
from tests.abuse.feed import feed_messages

pytestmark = pytest.mark.timeout(180)

HUB_TOKEN = "canary-hub-token-5f1e2d3c4b"
API_KEY_1 = "canary-api-key-one-8a7b6c5d4e"
API_KEY_2 = "canary-api-key-two-0f9e8d7c6b"
OPENAI_KEY = "canary-openai-key-2b4d6f8h0j"
OPENWEBUI_KEY = "canary-openwebui-key-1a3c5e7g9i"
LITELLM_KEY = "canary-litellm-key-9z7x5v3b1n"
TELEGRAM_TOKEN = "7000000002:canary-telegram-token_9c8d7e6f5a4b"
TELEGRAM_REFUSED = "7000000003:canary-refused-telegram_0a1b2c3d4e5f"
SLACK_BOT = "xoxb-canary-slack-bot-1a2b3c4d"
SLACK_APP = "xapp-canary-slack-app-5e6f7a8b"
SLACK_BOT_REFUSED = "xoxb-canary-refused-slack-bot-9f8e7d"

CANARIES = {
    "HUB_TOKEN": HUB_TOKEN,
    "HUB_API_KEYS[0]": API_KEY_1,
    "HUB_API_KEYS[1]": API_KEY_2,
    "OPENAI_API_KEY": OPENAI_KEY,
    "OPENWEBUI_API_KEY": OPENWEBUI_KEY,
    "LITELLM_API_KEY": LITELLM_KEY,
    "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
    "TELEGRAM_BOT_TOKEN (refused)": TELEGRAM_REFUSED,
    "SLACK_BOT_TOKEN": SLACK_BOT,
    "SLACK_APP_TOKEN": SLACK_APP,
    "SLACK_BOT_TOKEN (refused)": SLACK_BOT_REFUSED,
}
USER = 4242


def leaks(where: str, text: str) -> list[str]:
    """``where: NAME`` for each canary found in ``text``."""
    return [f"{where}: {name}" for name, value in CANARIES.items() if value in text]


def store_text(db: Path) -> str:
    """Every table of the store, read with SQLite, plus the raw bytes of its files."""
    parts = []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):  # names from SQLite itself
                parts.append(json.dumps(row, default=str))
    for path in db.parent.glob(db.name + "*"):
        parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    assert len(parts) > 2
    return "\n".join(parts)


def fake_codex(tmp_path: Path, quoted: list[str]) -> tuple[Path, Path]:
    """A codex stand-in: logged in; answers, or (prompt with FAIL) fails quoting the
    ``quoted`` secrets on stderr and in its events. It records the environment it got."""
    env_dump = tmp_path / "codex-env.jsonl"
    script = tmp_path / "fake-codex"
    canaries = " ".join(quoted)
    script.write_text(
        f"""#!{sys.executable}
import json, os, sys
CANARIES = {canaries!r}
with open({str(env_dump)!r}, "a") as fh:
    fh.write(json.dumps(dict(os.environ)) + "\\n")
args = sys.argv[1:]
if args[:2] == ["login", "status"]:
    print("Logged in using an API key - " + CANARIES, file=sys.stderr)
    sys.exit(0)
prompt = args[-1]
out = args[args.index("-o") + 1]
def emit(event):
    print(json.dumps(event), flush=True)
emit({{"type": "thread.started", "thread_id": "thread-fake"}})
emit({{"type": "turn.started"}})
if "FAIL" in prompt:
    emit({{"type": "item.completed", "item": {{"id": "i1", "type": "command_execution",
          "command": "cat .env", "aggregated_output": CANARIES, "exit_code": 0,
          "status": "completed"}}}})
    emit({{"type": "error", "message": "refused: " + CANARIES}})
    emit({{"type": "turn.failed", "error": {{"message": "failed: " + CANARIES}}}})
    sys.stderr.write("fatal: " + CANARIES + "\\n")
    sys.exit(1)
emit({{"type": "item.completed", "item": {{"id": "i2", "type": "agent_message",
      "text": "answer: " + prompt}}}})
emit({{"type": "turn.completed", "usage": {{"input_tokens": 1, "cached_input_tokens": 0,
      "output_tokens": 1}}}})
with open(out, "w") as fh:
    fh.write("answer: " + prompt)
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, env_dump


class Witness:
    """Keeps everything the outside world got from the hub: answers, feed, closes."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.seen: list[str] = []
        self.feed: list[str] = []
        self.nodes: list[dict[str, Any]] = []
        self.http: aiohttp.ClientSession | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def until_nodes(self, executors: int, platforms: set[str], timeout: float = 20) -> None:
        """Wait (on the feed) until these nodes are connected."""

        def there() -> bool:
            roles = [n["role"] for n in self.nodes]
            found = {n.get("platform") for n in self.nodes if n["role"] == "bridge"}
            return roles.count("executor") >= executors and platforms <= found

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(there)

    async def request(
        self, method: str, path: str, key: str | None = API_KEY_1, **kw: Any
    ) -> tuple[int, str]:
        """One HTTP request; status and body, both remembered with the headers."""
        assert self.http is not None
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.http.request(method, self.base_url + path, headers=headers, **kw) as r:
            body = await r.text()
            self.seen.append(f"{r.status} {dict(r.headers)} {body}")
            return r.status, body

    async def chat(self, prompt: str, *, stream: bool = False, key: str = API_KEY_1) -> str:
        """A chat completion; the raw body."""
        body: dict[str, Any] = {
            "model": "codex",
            "messages": [{"role": "user", "content": prompt}],
        }
        if stream:
            body["stream"] = True
        status, text = await self.request("POST", "/v1/chat/completions", key, json=body)
        return f"{status} {text}"

    async def dump_api(self) -> None:
        """Every read the API offers, every run with its events."""
        _, runs = await self.request("GET", "/api/runs?limit=500")
        for run in json.loads(runs)["runs"]:
            await self.request("GET", f"/api/runs/{run['id']}")
        for path in ("/api/nodes", "/metrics", "/readyz", "/openapi.json", "/healthz"):
            await self.request("GET", path)

    async def ws_close(self, path: str, first: dict[str, Any]) -> str:
        """Open a websocket, send one frame, and return how the hub answered or closed."""
        url = self.base_url.replace("http", "ws", 1) + path
        async with connect(url) as ws:
            await ws.send(json.dumps(first))
            try:
                answer = await ws.recv()
            except ConnectionClosed as exc:
                answer = f"closed {exc.rcvd.code if exc.rcvd else None} {exc.rcvd}"
        self.seen.append(str(answer))
        return str(answer)

    async def __aenter__(self) -> Witness:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        url = self.base_url.replace("http", "ws", 1) + "/api/feed"
        ready = asyncio.Event()

        async def follow() -> None:
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "auth", "key": API_KEY_2}))
                async for raw in ws:
                    self.feed.append(str(raw))
                    async with self._changed:
                        for message in feed_messages(raw):
                            self.nodes = message.get("nodes", self.nodes)
                        self._changed.notify_all()
                    ready.set()

        self._feed_task = asyncio.create_task(follow(), name="Witness:feed")
        async with asyncio.timeout(10):
            await ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._feed_task is not None:
            self._feed_task.cancel()
            await asyncio.gather(self._feed_task, return_exceptions=True)
        if self.http is not None:
            await self.http.close()


@contextmanager
def debug_log() -> Iterator[io.StringIO]:
    """Every record of the process, at DEBUG, through the hub's own logging set-up."""
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "httpx", "httpcore")}
    factory = logging.getLogRecordFactory()
    stream = io.StringIO()
    handler = configure_logging("DEBUG", "text", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        logging.setLogRecordFactory(factory)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@asynccontextmanager
async def executor(hub: HubServer, tmp_path: Path, **values: Any) -> AsyncIterator[ExecutorNode]:
    """An executor node with these settings, its secrets registered like the CLI does."""
    settings = make(
        ExecutorSettings,
        HUB_URL=f"ws://127.0.0.1:{hub.port}/ws",
        HUB_TOKEN=HUB_TOKEN,
        EXEC_WORKDIR=tmp_path,
        MODEL=CHAT_MODEL,
        **values,
    )
    register_settings_secrets(settings)
    pipeline, transport = build_pipeline(settings)
    node = ExecutorNode(settings, pipeline)
    try:
        await node.start()
        async with asyncio.timeout(10):
            await node.client.connected.wait()
        yield node
    finally:
        await node.close()
        await pipeline.aclose()
        await transport.close()


@pytest.fixture
def registered() -> Iterator[None]:
    """Secrets registered by a test are forgotten after it."""
    forget_secrets()
    yield
    forget_secrets()


async def test_no_secret_leaks_from_any_path_in_one_process(
    tmp_path: Path, registered: None
) -> None:
    """Hub, executors and both bridges in one process (``codex-hub up``), every path."""
    codex_bin, env_dump = fake_codex(tmp_path, list(CANARIES.values()))
    settings = make(
        HubSettings,
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=HUB_TOKEN,
        HUB_API_KEYS=f"{API_KEY_1},{API_KEY_2}",
        HUB_KEEPALIVE_S=0.5,
    )
    found: list[str] = []
    refusals: list[str] = []
    with debug_log() as log:
        register_settings_secrets(settings)
        async with AsyncExitStack() as stack:
            hub = await stack.enter_async_context(HubServer(settings))
            seen = await stack.enter_async_context(Witness(hub.url))
            good = await stack.enter_async_context(StubChatModel(api_key=OPENAI_KEY))
            # A model API that refuses every key and quotes the one it was given.
            echo = await stack.enter_async_context(StubChatModel(api_key="not-any-of-them"))

            # Keys and tokens that are wrong, presented where they are not the right one.
            for key in (HUB_TOKEN, API_KEY_1[:-1], None):
                status, _ = await seen.request("GET", "/api/runs", key)
                assert status == 401
            status, _ = await seen.request("POST", "/v1/chat/completions", HUB_TOKEN, json={})
            assert status == 401
            for token in (API_KEY_1, HUB_TOKEN[:-1], ""):
                hello = {"type": "hello", "role": "executor", "token": token, "node_id": "x"}
                assert "4001" in await seen.ws_close("/ws", hello)
            assert "4001" in await seen.ws_close("/api/feed", {"type": "auth", "key": HUB_TOKEN})

            # The optimizer: its key used, refused with the key quoted, and each fallback.
            async with executor(
                hub, tmp_path, EXEC_DRY_RUN=True, OPTIMIZE_PROMPT=True,
                OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=good.base_url,
            ):  # fmt: skip
                assert "optimized: plain" in await seen.chat("plain")
                assert "optimized: streamed" in await seen.chat("streamed", stream=True)
            assert good.completions[0].authorization == f"Bearer {OPENAI_KEY}"
            for key_setting in (
                {"OPENAI_API_KEY": OPENAI_KEY},
                {"OPENWEBUI_API_KEY": OPENWEBUI_KEY},
                {"LITELLM_API_KEY": LITELLM_KEY},
            ):
                async with executor(
                    hub, tmp_path, EXEC_DRY_RUN=True, OPTIMIZE_PROMPT=True,
                    OPENAI_BASE_URL=echo.base_url, **key_setting,
                ):  # fmt: skip
                    answer = await seen.chat("refused upstream")
                assert "HTTP 401" in answer, answer
            assert len(echo.completions) == 3

            # codex fails and quotes every canary on stderr and in its events.
            async with executor(
                hub, tmp_path, EXEC_DRY_RUN=False, CODEX_BIN=str(codex_bin),
                OPENAI_API_KEY=OPENAI_KEY, OPENWEBUI_API_KEY=OPENWEBUI_KEY,
                LITELLM_API_KEY=LITELLM_KEY,
            ):  # fmt: skip
                failed = await seen.chat("please FAIL")
                assert failed.startswith("502 ") and "codex_failed" in failed, failed
                assert (await seen.chat("works")).startswith("200 ")
                assert "codex_failed" in await seen.chat("please FAIL too", stream=True)

                # The bridges, their tokens accepted and refused.
                telegram = await stack.enter_async_context(FakeTelegram(token=TELEGRAM_TOKEN))
                slack = await stack.enter_async_context(
                    FakeSlack(bot_token=SLACK_BOT, app_token=SLACK_APP)
                )
                async with chat_bridges(hub, telegram, slack):
                    pushed = telegram.push_message(USER, "hello from telegram")
                    await telegram.wait_for_call(
                        "sendMessage", lambda c: "hello from telegram" in (c.text or ""),
                        timeout=15,
                    )  # fmt: skip
                    dm = slack.dm("hello from slack", channel="D0ALICE")
                    await slack.send_event(dm)
                    await slack.wait_for_post(
                        "D0ALICE", dm["ts"], lambda m: "hello from slack" in m.text, timeout=15
                    )
                    assert pushed.message_id
                refusals += await refused_bridges(hub, telegram)

            await seen.dump_api()
            # What users saw in the chats (the platforms themselves get their own token).
            found += leaks("chat: telegram", "\n".join(telegram.sent_texts()))
            found += leaks("chat: slack", "\n".join(m.text for m in slack.posted()))
            found += leaks("api", "\n".join(seen.seen))
            found += leaks("feed", "\n".join(seen.feed))
            found += leaks("refusal", "\n".join(refusals))
            stored = await hub.app[STORE].count_runs()
            assert sum(stored.values()) >= 10
    found += leaks("store", store_text(tmp_path / "hub.db"))
    found += leaks("log", log.getvalue())
    # codex itself never gets them: they are not in its environment.
    found += leaks("codex env", env_dump.read_text())
    text = log.getvalue()
    assert "DEBUG" in text and "bot***/getMe" in text  # httpx's URLs, token masked
    assert "codex_failed" in text or "ended failed" in text
    assert not found, found


@asynccontextmanager
async def chat_bridges(
    hub: HubServer, telegram: FakeTelegram, slack: FakeSlack
) -> AsyncIterator[None]:
    """Both bridges, connected to the fakes and the hub, secrets registered."""
    node = {"HUB_URL": f"ws://127.0.0.1:{hub.port}/ws", "HUB_TOKEN": HUB_TOKEN}
    tg = make(
        TelegramSettings,
        TELEGRAM_BOT_TOKEN=TELEGRAM_TOKEN,
        TELEGRAM_API_BASE_URL=telegram.base_url,
        TELEGRAM_ALLOWED_USERS="*",
        TELEGRAM_STATUS_DELAY_S=60.0,
        **node,
    )
    sl = make(
        SlackSettings,
        SLACK_BOT_TOKEN=SLACK_BOT,
        SLACK_APP_TOKEN=SLACK_APP,
        SLACK_API_BASE_URL=slack.api_url,
        SLACK_ALLOWED_USERS="*",
        SLACK_ALLOWED_CHANNELS="*",
        **node,
    )
    register_settings_secrets(tg, sl)
    async with TelegramBridge(tg) as tg_bridge, AsyncExitStack() as stack:
        sl_bridge = SlackBridge(sl, node_id="slack-secrets")
        stack.push_async_callback(sl_bridge.close)
        await sl_bridge.start()
        async with asyncio.timeout(15):
            await tg_bridge.link.client.connected.wait()
            await sl_bridge.connected.wait()
            await sl_bridge.link.client.connected.wait()
        await telegram.wait_until_polling()
        yield


async def refused_bridges(hub: HubServer, telegram: FakeTelegram) -> list[str]:
    """A Telegram and a Slack bridge whose tokens the platforms refuse: what they said."""
    said = []
    node = {"HUB_URL": f"ws://127.0.0.1:{hub.port}/ws", "HUB_TOKEN": HUB_TOKEN}
    tg = make(
        TelegramSettings,
        TELEGRAM_BOT_TOKEN=TELEGRAM_REFUSED,
        TELEGRAM_API_BASE_URL=telegram.base_url,
        TELEGRAM_ALLOWED_USERS="*",
        **node,
    )
    register_settings_secrets(tg)
    with pytest.raises(TokenRefused) as tg_refused:
        async with TelegramBridge(tg):
            pass
    said.append(repr(tg_refused.value) + str(tg_refused.value))
    async with FakeSlack(bot_token="xoxb-the-only-one", app_token=SLACK_APP) as other_slack:
        sl = make(
            SlackSettings,
            SLACK_BOT_TOKEN=SLACK_BOT_REFUSED,
            SLACK_APP_TOKEN=SLACK_APP,
            SLACK_API_BASE_URL=other_slack.api_url,
            SLACK_ALLOWED_USERS="*",
            SLACK_ALLOWED_CHANNELS="*",
            **node,
        )
        register_settings_secrets(sl)
        bridge = SlackBridge(sl, node_id="slack-refused")
        with pytest.raises(SlackRefused) as sl_refused:
            await bridge.start()
        await bridge.close()
        assert "SLACK_BOT_TOKEN" in str(sl_refused.value)
        said.append(repr(sl_refused.value) + str(sl_refused.value))
    return said


# --- the real processes ---------------------------------------------------------------


async def test_no_secret_in_the_logs_of_the_real_processes(tmp_path: Path) -> None:
    """``codex-hub serve``, ``executor`` and ``bridge telegram|slack`` as processes at
    DEBUG, each with only its own settings: no process writes a secret, whatever path
    runs, and no secret reaches the store, the API, the feed or a chat."""
    codex_bin, env_dump = fake_codex(tmp_path, [HUB_TOKEN, OPENAI_KEY, OPENWEBUI_KEY, LITELLM_KEY])
    debug = {"LOG_LEVEL": "DEBUG"}
    found: list[str] = []
    data: list[str] = []
    async with AsyncExitStack() as stack:
        echo = await stack.enter_async_context(StubChatModel(api_key="not-any-of-them"))
        telegram = await stack.enter_async_context(FakeTelegram(token=TELEGRAM_TOKEN))
        slack = await stack.enter_async_context(FakeSlack(bot_token=SLACK_BOT, app_token=SLACK_APP))
        hub_env = clean_env(
            HUB_TOKEN=HUB_TOKEN,
            HUB_API_KEYS=f"{API_KEY_1},{API_KEY_2}",
            HUB_DB=str(tmp_path / "hub.db"),
            HUB_KEEPALIVE_S="0.5",
            **debug,
        )
        hub, port = await start_hub(tmp_path, hub_env)
        stack.push_async_callback(hub.stop)
        node = {"HUB_URL": f"ws://127.0.0.1:{port}/ws", "HUB_TOKEN": HUB_TOKEN, **debug}
        procs = [hub]
        for name, args, env in (
            (
                "executor",
                ["executor"],
                {
                    "CODEX_BIN": str(codex_bin),
                    "EXEC_WORKDIR": str(tmp_path),
                    "OPENAI_API_KEY": OPENAI_KEY,
                    "OPENWEBUI_API_KEY": OPENWEBUI_KEY,
                    "LITELLM_API_KEY": LITELLM_KEY,
                    "OPENAI_BASE_URL": echo.base_url,
                    "MODEL": CHAT_MODEL,
                },
            ),
            (
                "telegram",
                ["bridge", "telegram"],
                {
                    "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
                    "TELEGRAM_API_BASE_URL": telegram.base_url,
                    "TELEGRAM_ALLOWED_USERS": "*",
                    "TELEGRAM_STATUS_DELAY_S": "60",
                },
            ),
            (
                "slack",
                ["bridge", "slack"],
                {
                    "SLACK_BOT_TOKEN": SLACK_BOT,
                    "SLACK_APP_TOKEN": SLACK_APP,
                    "SLACK_API_BASE_URL": slack.api_url,
                    "SLACK_ALLOWED_USERS": "*",
                    "SLACK_ALLOWED_CHANNELS": "*",
                },
            ),
        ):
            proc = Proc(
                name,
                codex_hub_argv(*args),
                env=clean_env(**node, **env),
                cwd=tmp_path,
                group=True,
            )
            await proc.start()
            stack.push_async_callback(proc.stop)
            procs.append(proc)
        seen = await stack.enter_async_context(Witness(f"http://127.0.0.1:{port}"))
        await seen.until_nodes(1, {"telegram", "slack"})

        # A bridge whose token Telegram refuses stops and says why.
        refused = Proc(
            "telegram-refused",
            codex_hub_argv("bridge", "telegram"),
            env=clean_env(
                **node,
                TELEGRAM_BOT_TOKEN=TELEGRAM_REFUSED,
                TELEGRAM_API_BASE_URL=telegram.base_url,
                TELEGRAM_ALLOWED_USERS="*",
            ),
            cwd=tmp_path,
            group=True,
        )
        await refused.start()
        stack.push_async_callback(refused.stop)
        assert await refused.wait() != 0
        assert "refused TELEGRAM_BOT_TOKEN" in refused.output

        for key in (HUB_TOKEN, API_KEY_1[:-1], None):
            assert (await seen.request("GET", "/api/runs", key))[0] == 401
        for token in (API_KEY_1, HUB_TOKEN[:-1]):
            hello = {"type": "hello", "role": "executor", "token": token, "node_id": "x"}
            assert "4001" in await seen.ws_close("/ws", hello)
        assert "4001" in await seen.ws_close("/api/feed", {"type": "auth", "key": HUB_TOKEN})
        assert (await seen.chat("works")).startswith("200 ")
        optimized = await seen.request(
            "POST",
            "/v1/chat/completions",
            API_KEY_2,
            json={"model": "codex", "messages": [{"role": "user", "content": "optimize me"}]},
            headers={"X-Optimize-Prompt": "true"},
        )
        assert "HTTP 401" in optimized[1], optimized
        assert "codex_failed" in await seen.chat("please FAIL")
        assert "codex_failed" in await seen.chat("please FAIL again", stream=True)
        telegram.push_message(USER, "hello from telegram")
        await telegram.wait_for_call(
            "sendMessage", lambda c: "hello from telegram" in (c.text or ""), timeout=20
        )
        dm = slack.dm("hello from slack", channel="D0ALICE")
        await slack.send_event(dm, timeout=10)
        await slack.wait_for_post(
            "D0ALICE", dm["ts"], lambda m: "hello from slack" in m.text, timeout=20
        )
        await seen.dump_api()
        data += leaks("chat: telegram", "\n".join(telegram.sent_texts()))
        data += leaks("chat: slack", "\n".join(m.text for m in slack.posted()))
        data += leaks("api", "\n".join(seen.seen))
        data += leaks("feed", "\n".join(seen.feed))
        for proc in procs:
            assert await proc.stop() == 0, proc.output[-2000:]
    for proc in [*procs, refused]:
        assert "DEBUG" in proc.output, proc.name
        found += leaks(f"log of {proc.name}", proc.output)
    found += leaks("codex env", env_dump.read_text())
    data += leaks("store", store_text(tmp_path / "hub.db"))
    assert len(echo.completions) == 1
    assert not found, found
    # The hub cannot know the executor's keys (split processes): the executor masks what
    # it sends, so a codex that prints them does not reach the store, the API or the feed.
    assert not data, sorted(set(data))
