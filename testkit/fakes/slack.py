"""A fake Slack that the real slack-bolt / slack-sdk talk to over loopback.

One aiohttp server on 127.0.0.1 (ephemeral port) speaks both of Slack's wire protocols:

- the Web API under `/api/{method}`: arguments merged from the query string, a form and
  a JSON body (slack-sdk uses all three); the bot token (`Authorization: Bearer xoxb-...`
  or a `token` argument) is checked on every method except `apps.connections.open`,
  which wants the app-level token; unknown methods answer `unknown_method`;
- Socket Mode at `/link/?ticket=...` (the URL `apps.connections.open` hands out): a
  `hello` frame on connect, events pushed in `events_api` envelopes, acks recorded;
- the upload URL of `files.getUploadURLExternal` at `/upload/v1/{file_id}`;
- `conversations.replies` (a thread, the bot's message metadata included on request),
  so a bridge can look up what it already posted.

Everything is recorded in order (`calls`, `posted`, `uploads`, `envelopes`,
`connections`) and tests *wait* on it (`wait_for_call`, `wait_for_post`, `wait_ack`,
`wait_connected`, `wait_until`), never sleep. Faults: `fail_next` (429 with Retry-After,
5xx, or any Slack error; optionally only for calls whose arguments match),
`send_disconnect`, `go_offline` / `go_online` (the listener closes and comes back on the
same port). Builders (`mention`, `dm`, `message`, `message_changed`, `bot_message`,
`channel_join`) make realistic events; `watchers` see every call as it is recorded.

Fixtures: `fake_slack` (a started `FakeSlack`, closed after the test),
`slack_settings` (a `SlackSettings` pointed at it) and `start_slack_bridge` (a real
`SlackBridge` on the fake and the test's hub). Tokens: `BOT_TOKEN`, `APP_TOKEN`.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import MultiDictProxy
from pydantic import SecretStr

if TYPE_CHECKING:
    from bridges.slack.settings import SlackSettings

#: The bot token the fake accepts (bolt needs the xoxb- prefix to know its bot user).
BOT_TOKEN = "xoxb-test-0000000000-fake-bot-token"
#: The app-level token `apps.connections.open` accepts.
APP_TOKEN = "xapp-test-1-A0FAKEAPP-0000-fake-app-token"
TEAM_ID = "T0FAKETEAM"
BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
APP_ID = "A0FAKEAPP"
#: Slack cuts message text above this many characters.
MAX_TEXT_CHARS = 40_000

T = TypeVar("T")


@dataclass
class SlackCall:
    """One Web API request (or upload) as the fake answered it."""

    method: str
    args: dict[str, Any]
    token: str
    at: float
    status: int
    response: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when Slack would count this call a success (HTTP 200 and `ok: true`)."""
        return self.status == 200 and bool(self.response.get("ok"))


@dataclass
class SlackMessage:
    """A message in a channel: one the bot posted or one a test's event brought in."""

    channel: str
    ts: str
    text: str
    user: str
    thread_ts: str | None = None
    bot_id: str | None = None
    blocks: list[Any] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    markdown: bool = False
    #: Message metadata (`{"event_type", "event_payload"}`) the poster attached.
    metadata: dict[str, Any] | None = None
    #: Earlier texts, oldest first, one per `chat.update`.
    history: list[str] = field(default_factory=list)
    #: Reaction name -> users who added it.
    reactions: dict[str, list[str]] = field(default_factory=dict)

    @property
    def from_bot(self) -> bool:
        """True for messages the bot posted."""
        return self.bot_id == BOT_ID

    def to_api(self, *, with_metadata: bool = False) -> dict[str, Any]:
        """The message object as the Web API returns it (metadata only when asked for)."""
        out: dict[str, Any] = {"type": "message", "text": self.text, "user": self.user}
        out["ts"] = self.ts
        if self.bot_id:
            out["bot_id"] = self.bot_id
            out["app_id"] = APP_ID
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        if self.blocks is not None:
            out["blocks"] = self.blocks
        if self.files:
            out["files"] = self.files
            out["upload"] = True
        if self.history:
            out["edited"] = {"user": self.user, "ts": self.ts}
        if with_metadata and self.metadata is not None:
            out["metadata"] = self.metadata
        out["team"] = TEAM_ID
        return out


@dataclass
class UploadedFile:
    """A file that went through `files.getUploadURLExternal` (and maybe further)."""

    file_id: str
    filename: str
    length: int
    data: bytes | None = None
    title: str = ""
    channel: str | None = None
    thread_ts: str | None = None
    initial_comment: str = ""
    completed: bool = False

    @property
    def text(self) -> str:
        """The uploaded bytes as UTF-8 text."""
        return (self.data or b"").decode("utf-8")

    def to_api(self, base_url: str) -> dict[str, Any]:
        """The file object `files.completeUploadExternal` returns."""
        mimetype = mimetypes.guess_type(self.filename)[0] or "text/plain"
        return {
            "id": self.file_id,
            "name": self.filename,
            "title": self.title or self.filename,
            "mimetype": mimetype,
            "size": len(self.data or b""),
            "user": BOT_USER_ID,
            "url_private": f"{base_url}/files/{self.file_id}/{self.filename}",
            "permalink": f"{base_url}/files/{self.file_id}",
        }


@dataclass
class Envelope:
    """One Socket Mode envelope the fake pushed, and the client's ack when it came."""

    envelope_id: str
    event_id: str
    frame: dict[str, Any]
    connection: int
    sent_at: float
    retry_attempt: int = 0
    ack: dict[str, Any] | None = None
    acked_at: float | None = None

    @property
    def event(self) -> dict[str, Any]:
        """The event inside the envelope."""
        event: dict[str, Any] = self.frame["payload"]["event"]
        return event


@dataclass
class Connection:
    """One Socket Mode websocket the client opened."""

    number: int
    ws: web.WebSocketResponse
    opened_at: float
    closed_at: float | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        """True while the websocket is up."""
        return self.closed_at is None and not self.ws.closed


@dataclass
class _Failure:
    status: int
    error: str
    retry_after: int | None
    match: Callable[[dict[str, Any]], bool] | None = None


class _SlackError(Exception):
    """A Web API method answered `{"ok": false, "error": ...}`."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _need(args: dict[str, Any], key: str, error: str = "invalid_arguments") -> str:
    value = args.get(key)
    if value is None or value == "":
        raise _SlackError(error)
    return str(value)


def _maybe_json(value: Any) -> Any:
    """Form and query arguments carry lists as JSON strings; decode those."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _blocks_text(event_text: str) -> list[dict[str, Any]]:
    section = {"type": "rich_text_section", "elements": [{"type": "text", "text": event_text}]}
    return [{"type": "rich_text", "block_id": uuid.uuid4().hex[:5], "elements": [section]}]


def _channel_type(channel: str) -> str:
    return {"D": "im", "G": "group"}.get(channel[:1], "channel")


class FakeSlack:
    """A Slack Web API + Socket Mode server on 127.0.0.1 for slack-bolt to talk to."""

    def __init__(
        self,
        *,
        bot_token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
        team_id: str = TEAM_ID,
        bot_user_id: str = BOT_USER_ID,
        bot_id: str = BOT_ID,
        bot_name: str = "codex",
        echo_bot_messages: bool = False,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.bot_name = bot_name
        #: When True, every message the bot posts comes back as a `message` event, as it
        #: does on real Slack for DMs and subscribed channels: the bridge must ignore it.
        self.echo_bot_messages = echo_bot_messages
        self.envelopes: dict[str, Envelope] = {}
        self.connections: list[Connection] = []
        self.ephemeral: list[dict[str, Any]] = []
        self.uploads: dict[str, UploadedFile] = {}
        #: Files users shared (`user_file`): id -> (file object, bytes).
        self.user_files: dict[str, tuple[dict[str, Any], bytes]] = {}
        #: Downloads of users' files: (file id, the Authorization header sent).
        self.downloads: list[tuple[str, str]] = []
        self.users: dict[str, dict[str, Any]] = {}
        self._calls: list[SlackCall] = []
        #: Called with every call as it is recorded (a bench under load uses this
        #: instead of re-scanning `calls` on every change).
        self.watchers: list[Callable[[SlackCall], None]] = []
        self._messages: dict[tuple[str, str], SlackMessage] = {}
        self._failures: dict[str, deque[_Failure]] = {}
        self._tickets: set[str] = set()
        self._counter = 0
        self._ts_base = int(time.time())
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen on 127.0.0.1 (an ephemeral port the first time, the same port after)."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_get("/link/", self._handle_socket)
        app.router.add_post("/upload/v1/{file_id}", self._handle_upload)
        app.router.add_get("/private/{file_id}/{name}", self._handle_private_file)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def close(self) -> None:
        """Stop listening, close every websocket and finish the fake's own tasks; idempotent."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError, Exception):
                await task
        await self.go_offline()

    async def go_offline(self) -> None:
        """Close every websocket (GOING_AWAY) and stop listening: connections are refused."""
        for conn in self.connections:
            if not conn.ws.closed:
                await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server going away")
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._touch()

    async def go_online(self) -> None:
        """Listen again on the same port after `go_offline`."""
        await self.start()

    @asynccontextmanager
    async def offline(self) -> AsyncIterator[None]:
        """Refuse connections inside the block; listen again on the same port after it."""
        await self.go_offline()
        try:
            yield
        finally:
            await self.go_online()

    @property
    def port(self) -> int:
        """The TCP port the fake listens on."""
        return self._port

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, without a trailing slash."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        """The Web API base URL to give `AsyncWebClient(base_url=...)` (ends with `/`)."""
        return f"{self.base_url}/api/"

    @property
    def online(self) -> bool:
        """True while the fake accepts connections."""
        return self._runner is not None

    # ------------------------------------------------------------------ ids

    def next_ts(self) -> str:
        """A fresh, increasing Slack message timestamp (`"1700000000.000001"`)."""
        self._counter += 1
        return f"{self._ts_base + self._counter // 1_000_000}.{self._counter % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter:010d}"

    # ------------------------------------------------------------------ waiting

    def _touch(self) -> None:
        """Wake every waiter: something was recorded."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(
        self, check: Callable[[], T | None], timeout: float = 5.0, what: str = ""
    ) -> T:
        """Return `check()` once it is truthy, re-checking whenever the fake records something."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    result = check()
                    if result:
                        return result
                    await self._changed.wait()
        except TimeoutError:
            seen = [f"{c.method}:{c.status}" for c in self._calls]
            raise TimeoutError(
                f"fake Slack: {what or 'condition'} not met within {timeout}s; calls: {seen}"
            ) from None

    def calls(self, method: str | None = None) -> list[SlackCall]:
        """Every recorded call (or those of `method`), in order, failed attempts included."""
        return [c for c in self._calls if method is None or c.method == method]

    def _matching(
        self, method: str, predicate: Callable[[SlackCall], bool] | None, ok: bool | None
    ) -> list[SlackCall]:
        return [
            c
            for c in self.calls(method)
            if (ok is None or c.ok == ok) and (predicate is None or predicate(c))
        ]

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[SlackCall], bool] | None = None,
        *,
        ok: bool | None = True,
        timeout: float = 5.0,
    ) -> SlackCall:
        """The first call of `method` matching `predicate` (successful ones unless `ok=None`)."""
        found = await self.wait_until(
            lambda: self._matching(method, predicate, ok), timeout, f"a {method} call"
        )
        return found[0]

    async def wait_for_calls(
        self,
        method: str,
        count: int,
        predicate: Callable[[SlackCall], bool] | None = None,
        *,
        ok: bool | None = True,
        timeout: float = 5.0,
    ) -> list[SlackCall]:
        """The first `count` calls of `method` matching `predicate`, once there are that many."""

        def enough() -> list[SlackCall]:
            found = self._matching(method, predicate, ok)
            return found[:count] if len(found) >= count else []

        return await self.wait_until(enough, timeout, f"{count} {method} calls")

    async def wait_for_post(
        self,
        channel: str | None = None,
        thread_ts: str | None = None,
        predicate: Callable[[SlackMessage], bool] | None = None,
        *,
        timeout: float = 5.0,
    ) -> SlackMessage:
        """The first bot message in `channel` / `thread_ts` (None: any) matching `predicate`."""
        found = await self.wait_until(
            lambda: [
                m for m in self.posted(channel, thread_ts) if predicate is None or predicate(m)
            ],
            timeout,
            f"a post in {channel or 'any channel'} thread {thread_ts}",
        )
        return found[0]

    # ------------------------------------------------------------------ state

    def posted(
        self, channel: str | None = None, thread_ts: str | None = None
    ) -> list[SlackMessage]:
        """Messages the bot posted (file shares included), in order; None matches any."""
        return [
            m
            for m in self._messages.values()
            if m.from_bot
            and (channel is None or m.channel == channel)
            and (thread_ts is None or m.thread_ts == thread_ts)
        ]

    def get_message(self, channel: str, ts: str) -> SlackMessage:
        """Any known message (the bot's or one an event brought in); KeyError if unknown."""
        return self._messages[(channel, ts)]

    def reactions(self, channel: str, ts: str) -> list[str]:
        """Names of the reactions the bot currently has on a message."""
        msg = self._messages.get((channel, ts))
        if msg is None:
            return []
        return [name for name, users in msg.reactions.items() if self.bot_user_id in users]

    def uploaded_files(
        self, channel: str | None = None, thread_ts: str | None = None
    ) -> list[UploadedFile]:
        """Files whose upload was completed, in order, filtered by channel/thread."""
        return [
            f
            for f in self.uploads.values()
            if f.completed
            and (channel is None or f.channel == channel)
            and (thread_ts is None or f.thread_ts == thread_ts)
        ]

    def add_user(
        self, user_id: str, name: str, *, real_name: str = "", is_bot: bool = False
    ) -> None:
        """Make `users.info` know a user by name."""
        self.users[user_id] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": real_name or name,
            "is_bot": is_bot,
            "profile": {"display_name": name, "real_name": real_name or name},
        }

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        method: str,
        times: int = 1,
        *,
        status: int = 429,
        error: str | None = None,
        retry_after: int = 1,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Make the next `times` calls of `method` fail.

        429 answers `ratelimited` with a `Retry-After: retry_after` header; 5xx answers
        `internal_error` (or `error`); 200 with `error` is a plain Slack error. Use the
        method name `"upload"` for the upload URL. With `match`, only calls whose
        arguments it accepts fail (and use up the failures); others go through.
        """
        default = {429: "ratelimited"}.get(status, "internal_error" if status >= 500 else "")
        failure = _Failure(status, error or default, retry_after if status == 429 else None, match)
        if not failure.error:
            raise ValueError("fail_next needs an error for a status other than 429 and 5xx")
        self._failures.setdefault(method, deque()).extend([failure] * times)

    def clear_failures(self) -> None:
        """Forget every failure `fail_next` queued and no call has used up yet."""
        self._failures.clear()

    def _take_failure(self, method: str, args: dict[str, Any] | None = None) -> _Failure | None:
        queue = self._failures.get(method)
        if not queue:
            return None
        if queue[0].match is not None and not queue[0].match(args or {}):
            return None
        return queue.popleft()

    # ------------------------------------------------------------------ Web API

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._read_args(request)
        token = str(args.pop("token", "") or "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth[len("Bearer ") :].strip()
        status, body, headers = self._dispatch(method, args, token)
        self._record(method, args, token, status, body)
        return web.json_response(body, status=status, headers=headers)

    @staticmethod
    async def _read_args(request: web.Request) -> dict[str, Any]:
        """Query string, then form (urlencoded or multipart), then JSON: later wins."""
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            body = await request.json() if request.can_read_body else None
            if isinstance(body, dict):
                args.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form: MultiDictProxy[Any] = await request.post()
            for key, value in form.items():
                args[key] = value.file.read() if isinstance(value, web.FileField) else value
        return args

    def _dispatch(
        self, method: str, args: dict[str, Any], token: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        handler = self._methods.get(method)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        wanted = self.app_token if method == "apps.connections.open" else self.bot_token
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if token != wanted:
            wrong_kind = token in (self.app_token, self.bot_token)
            return (
                200,
                {"ok": False, "error": "not_allowed_token_type" if wrong_kind else "invalid_auth"},
                {},
            )
        failure = self._take_failure(method, args)
        if failure is not None:
            headers = (
                {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            )
            return failure.status, {"ok": False, "error": failure.error}, headers
        try:
            return 200, {"ok": True, **handler(self, args)}, {}
        except _SlackError as e:
            return 200, {"ok": False, "error": e.error}, {}

    def _record(
        self, method: str, args: dict[str, Any], token: str, status: int, body: dict[str, Any]
    ) -> None:
        call = SlackCall(method, args, token, time.monotonic(), status, body)
        self._calls.append(call)
        for watcher in self.watchers:
            watcher(call)
        self._touch()

    # Each method takes the merged arguments and returns the body after `"ok": true`.

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake-team.slack.com/",
            "team": "Fake Team",
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self._port}/link/?ticket={ticket}&app_id={APP_ID}"}

    def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _need(args, "channel", "channel_not_found")
        text = str(args.get("text") or "")
        markdown = str(args.get("markdown_text") or "")
        blocks = _maybe_json(args.get("blocks"))
        if not (text or markdown or blocks or args.get("attachments")):
            raise _SlackError("no_text")
        msg = SlackMessage(
            channel=channel,
            ts=self.next_ts(),
            text=(text or markdown)[:MAX_TEXT_CHARS],
            user=self.bot_user_id,
            thread_ts=str(args["thread_ts"]) if args.get("thread_ts") else None,
            bot_id=self.bot_id,
            blocks=blocks or None,
            markdown=bool(markdown),
            metadata=_maybe_json(args.get("metadata")) or None,
        )
        self._messages[(channel, msg.ts)] = msg
        self._echo(msg)
        return {"channel": channel, "ts": msg.ts, "message": msg.to_api()}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _need(args, "channel", "channel_not_found")
        msg = self._messages.get((channel, _need(args, "ts", "message_not_found")))
        if msg is None:
            raise _SlackError("message_not_found")
        if not msg.from_bot:
            raise _SlackError("cant_update_message")
        text = str(args.get("text") or args.get("markdown_text") or "")
        blocks = _maybe_json(args.get("blocks"))
        if not (text or blocks):
            raise _SlackError("no_text")
        msg.history.append(msg.text)
        msg.text = text[:MAX_TEXT_CHARS]
        if blocks is not None:
            msg.blocks = blocks or None
        return {"channel": channel, "ts": msg.ts, "text": msg.text, "message": msg.to_api()}

    def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _need(args, "channel", "channel_not_found")
        user = _need(args, "user", "user_not_in_channel")
        if not (args.get("text") or args.get("blocks")):
            raise _SlackError("no_text")
        ts = self.next_ts()
        self.ephemeral.append({**args, "channel": channel, "user": user, "message_ts": ts})
        return {"message_ts": ts}

    def _reaction_target(self, args: dict[str, Any]) -> tuple[SlackMessage, str]:
        channel = _need(args, "channel", "channel_not_found")
        msg = self._messages.get((channel, _need(args, "timestamp", "no_item_specified")))
        if msg is None:
            raise _SlackError("message_not_found")
        name = _need(args, "name", "invalid_name")
        if ":" in name:  # Slack wants "eyes", not ":eyes:"
            raise _SlackError("invalid_name")
        return msg, name

    def _reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        msg, name = self._reaction_target(args)
        users = msg.reactions.setdefault(name, [])
        if self.bot_user_id in users:
            raise _SlackError("already_reacted")
        users.append(self.bot_user_id)
        return {}

    def _reactions_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        msg, name = self._reaction_target(args)
        users = msg.reactions.get(name, [])
        if self.bot_user_id not in users:
            raise _SlackError("no_reaction")
        users.remove(self.bot_user_id)
        if not users:
            del msg.reactions[name]
        return {}

    def _files_get_upload_url_external(self, args: dict[str, Any]) -> dict[str, Any]:
        filename = _need(args, "filename")
        try:
            length = int(_need(args, "length"))
        except ValueError:
            raise _SlackError("invalid_arguments") from None
        file_id = self._next_id("F")
        self.uploads[file_id] = UploadedFile(file_id, filename, length)
        return {"upload_url": f"{self.base_url}/upload/v1/{file_id}", "file_id": file_id}

    def _files_complete_upload_external(self, args: dict[str, Any]) -> dict[str, Any]:
        items = _maybe_json(args.get("files"))
        if not isinstance(items, list) or not items:
            raise _SlackError("invalid_arguments")
        channel = str(args.get("channel_id") or "") or None
        thread_ts = str(args.get("thread_ts") or "") or None
        if thread_ts and not channel:
            raise _SlackError("invalid_arguments")
        done: list[UploadedFile] = []
        for item in items:
            upload = self.uploads.get(str(item.get("id", "")))
            if upload is None or upload.data is None:
                raise _SlackError("file_not_found")
            done.append(upload)
        comment = str(args.get("initial_comment") or "")
        for item, upload in zip(items, done, strict=True):
            upload.title = str(item.get("title") or upload.filename)
            upload.channel, upload.thread_ts, upload.initial_comment = channel, thread_ts, comment
            upload.completed = True
        files = [u.to_api(self.base_url) for u in done]
        if channel:
            msg = SlackMessage(
                channel=channel,
                ts=self.next_ts(),
                text=comment,
                user=self.bot_user_id,
                thread_ts=thread_ts,
                bot_id=self.bot_id,
                files=files,
            )
            self._messages[(channel, msg.ts)] = msg
        return {"files": files}

    def _files_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        # The v1 upload method is retired for new apps; files_upload_v2 must be used.
        raise _SlackError("method_deprecated")

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = _need(args, "user", "user_not_found")
        if user not in self.users:
            if user[:1] not in ("U", "W"):
                raise _SlackError("user_not_found")
            self.add_user(user, user.lower())
        return {"user": self.users[user]}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _need(args, "channel", "channel_not_found")
        ts = _need(args, "ts", "thread_not_found")
        thread = [
            m
            for (chan, _), m in self._messages.items()
            if chan == channel and (m.ts == ts or m.thread_ts == ts)
        ]
        if not thread:
            raise _SlackError("thread_not_found")
        thread.sort(key=lambda m: (m.ts != ts, float(m.ts)))
        start = int(str(args.get("cursor") or "0"))
        limit = int(str(args.get("limit") or "100"))
        page = thread[start : start + limit]
        more = start + limit < len(thread)
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        return {
            "messages": [m.to_api(with_metadata=with_metadata) for m in page],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    _methods: dict[str, Callable[[FakeSlack, dict[str, Any]], dict[str, Any]]] = {
        "auth.test": _auth_test,
        "apps.connections.open": _apps_connections_open,
        "chat.postMessage": _chat_post_message,
        "chat.update": _chat_update,
        "chat.postEphemeral": _chat_post_ephemeral,
        "reactions.add": _reactions_add,
        "reactions.remove": _reactions_remove,
        "files.getUploadURLExternal": _files_get_upload_url_external,
        "files.completeUploadExternal": _files_complete_upload_external,
        "files.upload": _files_upload,
        "users.info": _users_info,
        "conversations.replies": _conversations_replies,
    }

    async def _handle_private_file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        auth = request.headers.get("Authorization", "")
        self.downloads.append((file_id, auth))
        self._touch()
        found = self.user_files.get(file_id)
        if found is None:
            return web.Response(status=404, text="file not found")
        if auth != f"Bearer {self.bot_token}":
            # Slack answers an unauthenticated file URL with its sign-in page.
            return web.Response(status=302, headers={"Location": f"{self.base_url}/signin"})
        return web.Response(body=found[1], content_type=found[0]["mimetype"])

    def user_file(self, name: str, mimetype: str, content: bytes) -> dict[str, Any]:
        """A file a user shares: its file object (as in a `file_share` message event),
        downloadable with the bot token from its `url_private`."""
        file_id = self._next_id("F")
        url = f"{self.base_url}/private/{file_id}/{name}"
        file = {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rpartition(".")[2],
            "size": len(content),
            "user": "U0ALICE",
            "url_private": url,
            "url_private_download": f"{url}?download=1",
        }
        self.user_files[file_id] = (file, content)
        return file

    def file_share(
        self,
        text: str,
        files: list[dict[str, Any]],
        *,
        user: str = "U0ALICE",
        channel: str = "D0ALICE",
    ) -> dict[str, Any]:
        """A direct message with files shared (`message`, subtype `file_share`)."""
        event = self._base_event("message", text, user, channel, None, None)
        event.update(channel_type="im", subtype="file_share", files=files, upload=False)
        return event

    async def _handle_upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        data = await request.read()
        upload = self.uploads.get(file_id)
        failure = self._take_failure("upload")
        if upload is None:
            status, text = 404, "file not found"
        elif failure is not None:
            status, text = failure.status, failure.error
        else:
            upload.data = data
            status, text = 200, f"OK - {len(data)}"
        self._record(
            "upload", {"file_id": file_id, "size": len(data)}, "", status, {"ok": status == 200}
        )
        return web.Response(status=status, text=text, content_type="text/plain")

    # ------------------------------------------------------------------ Socket Mode

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("ticket") not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Connection(len(self.connections) + 1, ws, time.monotonic())
        self.connections.append(conn)
        self._touch()
        try:
            await ws.send_json(
                {
                    "type": "hello",
                    "num_connections": sum(c.open for c in self.connections),
                    "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
                    "connection_info": {"app_id": APP_ID},
                }
            )
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_frame(conn, msg.data)
        finally:
            conn.closed_at = time.monotonic()
            self._touch()
        return ws

    def _on_frame(self, conn: Connection, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            frame = {"unparsed": raw}
        conn.frames.append(frame)
        envelope = self.envelopes.get(str(frame.get("envelope_id", "")))
        if envelope is not None and envelope.ack is None:
            envelope.ack, envelope.acked_at = frame, time.monotonic()
        self._touch()

    @property
    def connection_count(self) -> int:
        """How many Socket Mode connections were ever opened."""
        return len(self.connections)

    @property
    def open_connections(self) -> int:
        """How many Socket Mode connections are up now."""
        return sum(c.open for c in self.connections)

    async def wait_connected(self, count: int = 1, timeout: float = 5.0) -> Connection:
        """The newest open connection, once `count` connections were ever opened and one is up."""

        def ready() -> Connection | None:
            return self._newest_open() if self.connection_count >= count else None

        return await self.wait_until(ready, timeout, f"socket connection #{count}")

    def _newest_open(self) -> Connection | None:
        return next((c for c in reversed(self.connections) if c.open), None)

    async def send_frame(self, frame: dict[str, Any], timeout: float = 5.0) -> Connection:
        """Send a raw frame on the newest open connection (waiting for one); return it."""
        conn = await self.wait_connected(timeout=timeout)
        await conn.ws.send_json(frame)
        return conn

    async def send_event(
        self,
        event: dict[str, Any],
        event_id: str | None = None,
        *,
        retry_attempt: int = 0,
        retry_reason: str = "",
        wait_ack: bool = True,
        timeout: float = 5.0,
    ) -> str:
        """Push `event` in an events_api envelope; wait for the ack unless told not to.

        Returns the envelope id. Passing an `event_id` already sent is Slack's retry:
        same event, new envelope (see also `redeliver`).
        """
        event_id = event_id or self._next_id("Ev")
        self._remember_event_message(event)
        envelope_id = str(uuid.uuid4())
        frame = {
            "envelope_id": envelope_id,
            "payload": {
                "token": "fake-verification-token",
                "team_id": self.team_id,
                "api_app_id": APP_ID,
                "event": event,
                "type": "event_callback",
                "event_id": event_id,
                "event_time": int(time.time()),
                "authorizations": [
                    {
                        "enterprise_id": None,
                        "team_id": self.team_id,
                        "user_id": self.bot_user_id,
                        "is_bot": True,
                        "is_enterprise_install": False,
                    }
                ],
                "is_ext_shared_channel": False,
                "event_context": f"4-fake-{event_id}",
            },
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": retry_reason,
        }
        conn = await self.wait_connected(timeout=timeout)
        # Registered before sending: the ack can arrive before send_json returns.
        self.envelopes[envelope_id] = Envelope(
            envelope_id, event_id, frame, conn.number, time.monotonic(), retry_attempt
        )
        await conn.ws.send_json(frame)
        if wait_ack:
            await self.wait_ack(envelope_id, timeout)
        return envelope_id

    async def press_button(
        self,
        channel: str,
        ts: str,
        action_id: str,
        *,
        user: str = "U0ALICE",
        timeout: float = 5.0,
    ) -> str:
        """Press the button ``action_id`` on the bot's message ``ts``: a ``block_actions``
        payload in an ``interactive`` envelope, as Slack sends it. Waits for the ack;
        returns the envelope id."""
        msg = self._messages[(channel, ts)]
        button = next(
            element
            for block in msg.blocks or []
            for element in block.get("elements") or []
            if element.get("action_id") == action_id
        )
        envelope_id = str(uuid.uuid4())
        frame = {
            "envelope_id": envelope_id,
            "payload": {
                "type": "block_actions",
                "user": {"id": user, "username": user.lower(), "team_id": self.team_id},
                "api_app_id": APP_ID,
                "token": "fake-verification-token",
                "container": {
                    "type": "message",
                    "message_ts": ts,
                    "channel_id": channel,
                    "is_ephemeral": False,
                    **({"thread_ts": msg.thread_ts} if msg.thread_ts else {}),
                },
                "trigger_id": self._next_id("trigger"),
                "team": {"id": self.team_id, "domain": "fake"},
                "enterprise": None,
                "is_enterprise_install": False,
                "channel": {"id": channel, "name": channel.lower()},
                "message": msg.to_api(),
                "response_url": f"{self.base_url}/actions/{envelope_id}",
                "actions": [
                    {
                        "action_id": action_id,
                        "block_id": self._next_id("B"),
                        "text": button.get("text"),
                        "value": button.get("value"),
                        "type": "button",
                        "action_ts": self.next_ts(),
                    }
                ],
            },
            "type": "interactive",
            "accepts_response_payload": False,
        }
        conn = await self.wait_connected(timeout=timeout)
        self.envelopes[envelope_id] = Envelope(
            envelope_id, "", frame, conn.number, time.monotonic()
        )
        await conn.ws.send_json(frame)
        await self.wait_ack(envelope_id, timeout)
        return envelope_id

    async def redeliver(
        self,
        envelope_id: str,
        *,
        reason: str = "timeout",
        wait_ack: bool = True,
        timeout: float = 5.0,
    ) -> str:
        """Resend an earlier envelope's event as Slack retries it; return the new envelope id."""
        old = self.envelopes[envelope_id]
        return await self.send_event(
            old.event,
            old.event_id,
            retry_attempt=old.retry_attempt + 1,
            retry_reason=reason,
            wait_ack=wait_ack,
            timeout=timeout,
        )

    async def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> Envelope:
        """The envelope, once the client has acked it."""
        envelope = self.envelopes[envelope_id]
        await self.wait_until(lambda: envelope.ack is not None, timeout, f"ack of {envelope_id}")
        return envelope

    async def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Send Slack's `disconnect` frame on every open connection (the client reconnects)."""
        frame = {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}}
        for conn in self.connections:
            if conn.open:
                await conn.ws.send_json(frame)

    def _echo(self, msg: SlackMessage) -> None:
        if not self.echo_bot_messages or self._closed:
            return
        event = {
            "type": "message",
            "text": msg.text,
            "user": msg.user,
            "bot_id": msg.bot_id,
            "app_id": APP_ID,
            "ts": msg.ts,
            "event_ts": msg.ts,
            "team": self.team_id,
            "channel": msg.channel,
            "channel_type": _channel_type(msg.channel),
            "bot_profile": {"id": msg.bot_id, "app_id": APP_ID, "name": self.bot_name},
        }
        if msg.thread_ts:
            event["thread_ts"] = msg.thread_ts
        self._spawn(self.send_event(event, wait_ack=False), f"FakeSlack:echo:{msg.ts}")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        async def run() -> None:
            with suppress(TimeoutError, ConnectionError):
                await coro

        task = asyncio.get_running_loop().create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _remember_event_message(self, event: dict[str, Any]) -> None:
        """Keep the messages events carry, so reactions and updates can find them."""
        channel, ts = event.get("channel"), event.get("ts")
        if event.get("type") not in ("message", "app_mention") or not channel or not ts:
            return
        if event.get("subtype") not in (None, "file_share", "thread_broadcast", "bot_message"):
            return
        thread_ts = event.get("thread_ts")
        if thread_ts and (channel, thread_ts) not in self._messages:
            self._messages[(channel, thread_ts)] = SlackMessage(channel, thread_ts, "", "")
        self._messages.setdefault(
            (channel, ts),
            SlackMessage(
                channel=channel,
                ts=ts,
                text=event.get("text", ""),
                user=event.get("user", ""),
                thread_ts=thread_ts if thread_ts != ts else None,
                bot_id=event.get("bot_id"),
            ),
        )

    # ------------------------------------------------------------------ event builders

    def _base_event(
        self, kind: str, text: str, user: str, channel: str, ts: str | None, thread_ts: str | None
    ) -> dict[str, Any]:
        ts = ts or self.next_ts()
        event: dict[str, Any] = {
            "client_msg_id": str(uuid.uuid4()),
            "type": kind,
            "text": text,
            "user": user,
            "ts": ts,
            "blocks": _blocks_text(text),
            "team": self.team_id,
            "channel": channel,
            "event_ts": ts,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
            event["parent_user_id"] = user
        return event

    def mention(
        self,
        text: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0GENERAL",
        thread_ts: str | None = None,
        ts: str | None = None,
    ) -> dict[str, Any]:
        """An `app_mention` in a channel: the text becomes `<@BOT> {text}`."""
        return self._base_event(
            "app_mention", f"<@{self.bot_user_id}> {text}", user, channel, ts, thread_ts
        )

    def dm(
        self,
        text: str,
        *,
        user: str = "U0ALICE",
        channel: str = "D0ALICE",
        thread_ts: str | None = None,
        ts: str | None = None,
    ) -> dict[str, Any]:
        """A direct message to the bot (`message` with `channel_type: "im"`)."""
        event = self._base_event("message", text, user, channel, ts, thread_ts)
        event["channel_type"] = "im"
        return event

    def message(
        self,
        text: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0GENERAL",
        channel_type: str | None = None,
        subtype: str | None = None,
        thread_ts: str | None = None,
        ts: str | None = None,
        bot_id: str | None = None,
    ) -> dict[str, Any]:
        """A plain `message` event; `channel_type` follows the channel id unless given."""
        event = self._base_event("message", text, user, channel, ts, thread_ts)
        event["channel_type"] = channel_type or _channel_type(channel)
        if subtype:
            event["subtype"] = subtype
        if bot_id:
            event["bot_id"] = bot_id
        return event

    def message_changed(
        self,
        channel: str,
        ts: str,
        new_text: str,
        *,
        user: str = "U0ALICE",
        old_text: str = "",
    ) -> dict[str, Any]:
        """The `message_changed` event Slack sends when a user edits message `ts`."""
        edit_ts = self.next_ts()
        message = {
            "type": "message",
            "text": new_text,
            "user": user,
            "ts": ts,
            "team": self.team_id,
            "edited": {"user": user, "ts": edit_ts},
        }
        previous = {"type": "message", "text": old_text, "user": user, "ts": ts}
        return {
            "type": "message",
            "subtype": "message_changed",
            "message": message,
            "previous_message": previous,
            "channel": channel,
            "hidden": True,
            "ts": edit_ts,
            "event_ts": edit_ts,
            "channel_type": _channel_type(channel),
        }

    def bot_message(
        self, text: str, *, bot_id: str = "B0OTHERBOT", channel: str = "C0GENERAL"
    ) -> dict[str, Any]:
        """A `bot_message` from another integration in a channel."""
        ts = self.next_ts()
        return {
            "type": "message",
            "subtype": "bot_message",
            "text": text,
            "bot_id": bot_id,
            "username": "other-bot",
            "ts": ts,
            "event_ts": ts,
            "channel": channel,
            "channel_type": _channel_type(channel),
        }

    def channel_join(self, user: str = "U0ALICE", channel: str = "C0GENERAL") -> dict[str, Any]:
        """The `channel_join` message Slack sends when `user` joins `channel`."""
        ts = self.next_ts()
        return {
            "type": "message",
            "subtype": "channel_join",
            "user": user,
            "text": f"<@{user}> has joined the channel",
            "ts": ts,
            "event_ts": ts,
            "channel": channel,
            "channel_type": _channel_type(channel),
        }


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A started FakeSlack accepting `BOT_TOKEN` / `APP_TOKEN`, closed after the test."""
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def slack_settings(fake_slack: FakeSlack) -> SlackSettings:
    """SlackSettings with the fake's tokens and URL; everyone allowed."""
    from bridges.slack.settings import SlackSettings

    return SlackSettings(
        _env_file=None,  # type: ignore[call-arg]  # not the developer's .env
        SLACK_BOT_TOKEN=SecretStr(fake_slack.bot_token),
        SLACK_APP_TOKEN=SecretStr(fake_slack.app_token),
        SLACK_API_BASE_URL=fake_slack.api_url,
        SLACK_ALLOWED_USERS=["*"],
        SLACK_ALLOWED_CHANNELS=["*"],
    )
