"""The operator's API: runs, nodes, the live feed, health, metrics and the monitor page.

- ``GET /api/runs`` (filters ``state``, ``source``, ``q``, ``session_key``; paging with
  ``limit`` and ``before``; ``q`` is the text as typed, in a prompt, user or answer,
  starting a word, or a run id: see ``hub.store.sql.fts_query``),
  ``GET /api/runs/{id}`` (with its events, ``after`` a seq),
  ``POST /api/runs`` (start a run from the page; into a conversation whose run is
  working, the prompt goes into its running turn instead: ``steered`` true, see
  hub.steering), ``POST /api/runs/{id}/cancel``.
- ``GET /api/nodes``, ``GET /api/overview`` (running and queued now, failed in the last
  hour, runs, tokens and median duration since ``since``).
- ``GET /api/feed``: websocket, see below.
- ``GET /healthz`` (alive), ``GET /readyz`` (an executor is connected, codex is
  logged in and the store can write), ``GET /metrics`` (Prometheus).
- ``GET /`` and ``GET /static/...``: the monitor page (``monitor/``), served with a
  strict Content-Security-Policy; it shows nothing until the browser presents a key.

A key sees only its own runs (hub.auth's principals): the list, a run, its cancel and
the feed leave out other principals' runs and those of the chat bridges, and a run id
that is not the caller's is answered 404, as if it did not exist. Operator keys
(``HUB_OPERATOR_KEYS``) see every run. ``session_key`` in ``POST /api/runs`` names a
session of the caller's own; only an operator may continue another principal's or a
chat platform's conversation, and the run records it (``origin.operator`` and a note).

The live feed
-------------
The browser's first frame is ``{"type": "auth", "key": "<API key or empty>"}``; a wrong
or missing key closes the socket with code 4001 (a wrong one, from an address with
too many wrong keys lately: 4029; a right key is always let in). Then the hub sends, as JSON
text frames:

- ``{"type": "ready", "nodes": [...], "queue": {...}, "now": <hub clock, epoch s>}``
  once, first;
- ``{"type": "run", "run": <Run.summary()>}`` when a run is created or changes state;
- ``{"type": "event", "run_id", "event": {"seq", "ts", "kind", ...}}`` for each event of
  any run (``seq`` counts from 1 per run, the same numbers ``GET /api/runs/{id}`` has);
  ``run`` and ``event`` messages only of the key's own runs, unless it is an operator's;
- ``{"type": "nodes", "nodes": [...]}`` whenever a node connects, leaves, changes, takes
  or ends a run, or answers a heartbeat;
- ``{"type": "queue", "total", "executors", "runs": [{"id", "position", "reason"}]}``
  with the ``nodes`` message (see :meth:`hub.router.Router.queue_info`); ``ready`` has
  one too, as ``queue``.

After ``ready`` every text frame is a JSON array of messages, in the order they were
published: the hub gathers what is published during a short tick (``hub.bus.TICK_S``,
25 ms) and sends it to every browser as one frame, encoded once (once per principal
watching). Within a tick only
the latest ``run`` message of each run (and the latest ``nodes``) is kept, in the place
of the latest; ``event`` messages are never merged or dropped, so a browser sees every
event of every run, in seq order, though not every intermediate state of a run.

Nothing that happened before ``ready`` is replayed: a client (re)loads what it shows
through the HTTP API after ``ready`` and dedupes by run id and event seq. A client that
falls behind (more than ``FEED_BUFFER_BYTES`` waiting for it that its socket would not
take) gets ``{"type": "resync"}`` and the socket closes with code 4009: reload,
reconnect; it never slows the hub or the other browsers. On shutdown the socket closes
with 1001 (going away).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from hub.appkeys import AUTH_FAILURES, BUS, METRICS, ROUTER, SETTINGS, STORE
from hub.auth import (
    can_see,
    is_operator,
    key_matches,
    owns_session,
    principal_for_key,
    principal_of,
)
from hub.auth import session_key as namespaced
from hub.bus import Frame, websocket_text_frame
from hub.errors import (
    ApiError,
    BadRequest,
    NotFound,
    RateLimited,
    Unavailable,
    json_response,
    read_json,
)
from hub.metrics import CONTENT_TYPE
from hub.router import HubClosing, QueueFull, new_run_id
from hub.store import RunPage
from hub.targets import TargetRefused
from monitor import MONITOR_DIR
from wire import CLOSE_RATE_LIMITED, NUL_IN_PROMPT, repo_problem

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

#: Bytes a browser's socket may hold back (beyond what the kernel took) before the
#: browser counts as fallen behind and is dropped: a couple of seconds of a busy hub.
FEED_BUFFER_BYTES = 256 * 1024
#: How long a dropped browser gets to take `resync` and the close before it is cut off.
FEED_CLOSE_TIMEOUT_S = 5.0
CLOSE_FEED_UNAUTHORIZED = 4001
CLOSE_FEED_RESYNC = 4009


def _csv(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


def _int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number", param=name) from None
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}", param=name)
    return value


@routes.get("/api/runs")
async def list_runs(request: web.Request) -> web.Response:
    """Newest runs first, filtered and paged."""
    store = request.app[STORE]
    router = request.app[ROUTER]
    page = RunPage(
        states=tuple(_csv(request.query.get("state"))),
        sources=tuple(_csv(request.query.get("source"))),
        query=request.query.get("q", "")[:200],
        session_key=request.query.get("session_key") or None,
        before=_int(request, "before", None, 0, 2**62),
        limit=_int(request, "limit", 50, 1, 500) or 50,
        principal=None if is_operator(request) else principal_of(request),
    )
    summaries, next_before = await store.run_summaries(page)
    # A run still in flight is shown as it is now (the store has its last write).
    items = []
    for summary in summaries:
        live = router.live_run(summary["id"])
        items.append(live.summary() if live is not None else summary)
    return json_response({"runs": items, "next_before": next_before})


@routes.get("/api/runs/{run_id}")
async def get_run(request: web.Request) -> web.Response:
    """One run with its events (those after ``after``)."""
    run_id = request.match_info["run_id"]
    router = request.app[ROUTER]
    store = request.app[STORE]
    run = router.live_run(run_id) or await store.get_run(run_id)
    if run is None or not can_see(request, run.principal):
        raise NotFound(f"no run with id {run_id}", param="run_id")
    events = await store.get_events(run_id, _int(request, "after", 0, 0, 2**62) or 0)
    # codex's approval request, pending or last decided (hub/approvals.py), or null.
    approval = router.approvals.current(run_id)
    return json_response(
        {
            "run": run.to_dict(),
            "events": events,
            "approval": approval.public() if approval is not None else None,
        }
    )


@routes.get("/api/runs/{run_id}/diff")
async def get_run_diff(request: web.Request) -> web.Response:
    """What a run changed in its repository: the run's diff and its conversation's."""
    run_id = request.match_info["run_id"]
    router = request.app[ROUTER]
    store = request.app[STORE]
    run = router.live_run(run_id) or await store.get_run(run_id)
    if run is None or not can_see(request, run.principal):
        raise NotFound(f"no run with id {run_id}", param="run_id")
    events = await store.get_events(run_id)
    recorded = [e for e in events if e.get("kind") == "workspace"]
    turn_diffs = [e for e in events if e.get("kind") == "turn_diff"]
    if (not recorded or "diff" not in recorded[-1]) and turn_diffs:
        # No workspace report (yet): the diff of codex's turn as it stands now
        # (app-server engine), updated while the run works; ``live`` says so.
        latest = turn_diffs[-1]
        return json_response(
            {
                "run_id": run_id,
                "diff": latest.get("diff") or "",
                "turn_id": latest.get("turn_id"),
                "live": True,
            }
        )
    if not recorded or "diff" not in recorded[-1]:
        raise NotFound(
            f"run {run_id} recorded no diff (it named no repository, or has not ended)",
            param="run_id",
            code="no_diff",
        )
    event = recorded[-1]
    fields = ("repo", "branch", "base_branch", "base", "changes", "run_changes", "files")
    more = ("diff", "run_diff", "truncated", "pushed", "pr_url", "push_error")
    return json_response({"run_id": run_id, **{k: event.get(k) for k in (*fields, *more)}})


@routes.post("/api/runs")
async def create_run(request: web.Request) -> web.Response:
    """Start a run from the monitor page (optionally in an existing session)."""
    router = request.app[ROUTER]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("'prompt' must be a non-empty string", param="prompt")
    if "\x00" in prompt:
        raise BadRequest(NUL_IN_PROMPT, param="prompt", code="invalid_prompt")
    session_key = body.get("session_key")
    if session_key is not None and (not isinstance(session_key, str) or len(session_key) > 500):
        raise BadRequest("'session_key' must be a string", param="session_key")
    optimize = body.get("optimize")
    if optimize is not None and not isinstance(optimize, bool):
        raise BadRequest("'optimize' must be true or false", param="optimize")
    repo = body.get("repo")
    if repo is not None and (problem := repo_problem(repo)):
        raise BadRequest(problem, param="repo", code="invalid_repo")
    open_pr = body.get("open_pr")
    if open_pr is not None and not isinstance(open_pr, bool):
        raise BadRequest("'open_pr' must be true or false", param="open_pr")
    target = body.get("target")  # checked by the router (hub.targets)
    principal = principal_of(request)
    run_id = new_run_id()
    note = None
    operator_continues = False
    if not session_key:
        session_key = namespaced("monitor", principal, run_id)
    elif owns_session(principal, session_key):
        pass
    elif is_operator(request):
        # An operator continues someone else's conversation (a chat user's, say): the
        # run says so, for whoever reads it later.
        operator_continues = True
        note = f"operator {principal} continued the conversation {session_key}"
    else:
        # Never someone else's session: the id names one of the caller's own.
        session_key = namespaced("monitor", principal, session_key)
    origin = await _continued_origin(request, session_key)
    if operator_continues:
        origin["operator"] = principal
    if repo:
        origin["repo"] = repo
    if open_pr:
        origin["open_pr"] = True
    steered = None
    if not open_pr and not target:
        # Into a conversation whose run is working: into its running turn (hub.steering).
        steered = await router.steering.steer(session_key, prompt)
    if steered is not None and steered.ok:
        steered_run = router.live_run(steered.run_id) or await request.app[STORE].get_run(
            steered.run_id
        )
        assert steered_run is not None
        return json_response(
            {
                "run": steered_run.summary(),
                "position": 0,
                "reply_to": origin.get("platform"),
                "steered": True,
                "message": f"added to the running turn of run {steered.run_id}",
            },
            status=202,
            headers={"X-Run-ID": steered.run_id},
        )
    if steered is not None:
        note = f"{note}; {steered.note()}" if note else steered.note()
    try:
        ticket = await router.submit(
            prompt,
            origin=origin,
            session_key=session_key,
            optimize=optimize,
            run_id=run_id,
            principal=principal,
            note=note,
            target=target,
        )
    except TargetRefused as exc:
        raise ApiError(
            str(exc), status=exc.status, type="invalid_request_error", code=exc.code, param="target"
        ) from None
    except QueueFull as exc:
        raise RateLimited(str(exc), code="queue_full", headers={"Retry-After": "5"}) from None
    except HubClosing as exc:
        raise Unavailable(str(exc), code="hub_closing") from None
    return json_response(
        {
            "run": ticket.run.summary(),
            "position": ticket.position,
            "reply_to": origin.get("platform"),
            "steered": False,
            **({"steer_error": steered.error} if steered is not None else {}),
        },
        status=202,
        headers={"X-Run-ID": ticket.run.id},
    )


async def _continued_origin(request: web.Request, session_key: Any) -> dict[str, Any]:
    """The origin of a run started from the page; in a conversation that began in a chat,
    it names that thread or chat too (``via: monitor``), so the answer goes there as well.

    Everything of the chat's origin that says where to reply is kept; its status message
    (``status_ref``) is that earlier run's, so it is not.
    """
    origin: dict[str, Any] = {"source": "monitor", "user": "monitor"}
    if not isinstance(session_key, str) or not session_key:
        return origin
    runs, _ = await request.app[STORE].list_runs(session_key=session_key, limit=1)
    chat = runs[0].origin if runs else {}
    if not chat.get("platform"):
        return origin
    where = {k: v for k, v in chat.items() if k not in ("status_ref", "source", "user", "via")}
    return {**where, **origin, "via": "monitor"}


def _feed_key(data: str) -> str:
    """The key of a feed's auth frame, or '' when the frame is not an object with one.

    orjson first: a frame nested 1,000 deep is a ValueError there, not a RecursionError
    that would end the handler. It refuses a lone surrogate escape (``"\\ud800"``), which
    JSON allows: the standard parser takes those, within its own depth guard.
    """
    try:
        frame = orjson.loads(data)
    except ValueError:
        try:
            frame = json.loads(data)
        except (ValueError, RecursionError):
            return ""
    key = frame.get("key") if isinstance(frame, dict) else None
    return key if isinstance(key, str) else ""


@routes.post("/api/runs/{run_id}/cancel")
async def cancel_run(request: web.Request) -> web.Response:
    """Cancel a queued or running run."""
    run_id = request.match_info["run_id"]
    router = request.app[ROUTER]
    owned = router.live_run(run_id) or await request.app[STORE].get_run(run_id)
    if owned is None or not can_see(request, owned.principal):
        raise NotFound(f"no run with id {run_id}", param="run_id")
    if await router.cancel(run_id, "cancelled from the API"):
        run = router.live_run(run_id) or await request.app[STORE].get_run(run_id)
        assert run is not None
        return json_response(
            {"run": run.summary(), "cancelled": True}, headers={"X-Run-ID": run_id}
        )
    run = await request.app[STORE].get_run(run_id)
    if run is None:
        raise NotFound(f"no run with id {run_id}", param="run_id")
    raise ApiError(
        f"run {run_id} already ended {run.state}",
        status=409,
        type="invalid_request_error",
        code="run_finished",
    )


@routes.get("/api/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    """Connected executors and bridges (an executor's runs: only the caller's own,
    unless an operator)."""
    viewer = None if is_operator(request) else principal_of(request)
    return json_response({"nodes": request.app[ROUTER].nodes_seen_by(viewer)})


@routes.get("/api/targets")
async def list_targets(request: web.Request) -> web.Response:
    """Every label and executor name an executor has announced: what a run may target."""
    known = request.app[ROUTER].placement.known
    return json_response({"labels": sorted(known.labels), "names": sorted(known.names)})


@routes.get("/api/overview")
async def overview(request: web.Request) -> web.Response:
    """The monitor's overview: now (running, queued, per executor), the last hour, today.

    ``since`` (epoch seconds) is where "today" starts for the reader (their midnight);
    without it, 24 hours ago.
    """
    now = time.time()
    raw = request.query.get("since")
    try:
        since = float(raw) if raw else now - 86400
    except ValueError:
        raise BadRequest("'since' must be a number (epoch seconds)", param="since") from None
    if not now - 8 * 86400 <= since <= now:
        raise BadRequest("'since' must be within the last 8 days", param="since")
    router = request.app[ROUTER]
    body = await request.app[STORE].overview(since, now - 3600)
    load = router.load()
    body.update(running=load.running, queued=load.queued, capacity=load.capacity, now=now)
    return json_response(body)


@routes.get("/api/feed")
async def feed(request: web.Request) -> web.WebSocketResponse:
    """Live feed for the monitor; see the module docstring."""
    settings = request.app[SETTINGS]
    # No per-message deflate: with hundreds of browsers it would compress every
    # frame once per subscriber (and the shared frame could not be shared).
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=64 * 1024, compress=False)
    await ws.prepare(request)
    try:
        first = await ws.receive(timeout=10)
    except TimeoutError:
        await ws.close(code=CLOSE_FEED_UNAUTHORIZED, message=b"no auth frame")
        return ws
    key = ""
    if first.type == WSMsgType.TEXT:
        key = _feed_key(first.data)
    # Whose runs this browser sees: None is every run (an operator, or a hub without keys).
    viewer: str | None = None
    if settings.all_api_keys:
        if not key_matches(key, settings.all_api_keys):
            # A right key always gets in; only a wrong one counts (not a missing one).
            if key:
                failures = request.app[AUTH_FAILURES]
                client = failures.client(request)
                refused = failures.refusal(client)
                if refused is not None:
                    await ws.close(code=CLOSE_RATE_LIMITED, message=refused[0].encode())
                    return ws
                failures.failed(client)
            await ws.close(code=CLOSE_FEED_UNAUTHORIZED, message=b"missing or invalid API key")
            return ws
        if not key_matches(key, settings.operator_keys):
            viewer = principal_for_key(key)
    transport = request.transport
    if transport is None or ws.closed:
        return ws
    sink = _FeedSink(ws, transport)
    # Subscribed and `ready` written in one step, with no await in between: nothing
    # published before `ready` follows it, nothing published after it is missed.
    sub = request.app[BUS].subscribe_frames(sink, principal=viewer)
    router = request.app[ROUTER]
    ready = {
        "type": "ready",
        "nodes": router.nodes_seen_by(viewer),
        "queue": router.queue_seen_by(viewer),
        "now": time.time(),
    }
    transport.write(websocket_text_frame(json.dumps(ready).encode()))
    request.app[SOCKETS_FEED].add(ws)
    reader = asyncio.create_task(_drain(ws), name="feed:reader")
    dropped = asyncio.create_task(sub.wait_dropped(), name="feed:dropped")
    try:
        await asyncio.wait({reader, dropped}, return_when=asyncio.FIRST_COMPLETED)
        if dropped.done() and not ws.closed:
            # Behind the frames already buffered for it: reload, reconnect.
            async with asyncio.timeout(FEED_CLOSE_TIMEOUT_S):
                await ws.send_str('{"type":"resync"}')
                await ws.close(code=CLOSE_FEED_RESYNC, message=b"fell behind: reload")
    except (ConnectionError, RuntimeError):
        pass
    except TimeoutError:
        transport.abort()  # a browser that reads nothing more is not waited for
    finally:
        sub.close()
        # Await what is cancelled: a task dropped while still pending is logged as an
        # error ("Task was destroyed but it is pending") when it is collected.
        for task in (reader, dropped):
            task.cancel()
        await asyncio.gather(reader, dropped, return_exceptions=True)
        request.app[SOCKETS_FEED].discard(ws)
    return ws


class _FeedSink:
    """Writes each tick's frame, built once for all, straight to one browser's socket.

    No task and no await per browser: the bus calls this for every subscriber in turn
    when a tick ends. The websocket frame is complete in one ``write``, so it never
    interleaves with aiohttp's own frames (pings, close). Bytes the kernel did not take
    wait in the transport's buffer; past :data:`FEED_BUFFER_BYTES` the browser has
    fallen behind and is dropped.
    """

    __slots__ = ("transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self.ws = ws
        # uvloop's transports have the same methods but are no asyncio.Transport.
        self.transport = transport

    def __call__(self, frame: Frame) -> bool:
        transport = self.transport
        if self.ws.closed or transport.is_closing():
            return True  # going away: the handler notices and unsubscribes
        if transport.get_write_buffer_size() > FEED_BUFFER_BYTES:
            return False
        transport.write(frame.websocket())
        return True


async def _drain(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


SOCKETS_FEED: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("feed_sockets")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when an executor is connected, codex is logged in there and the store writes."""
    load = request.app[ROUTER].load()
    unwritable = request.app[STORE].unwritable
    body: dict[str, Any] = {
        "ready": load.logged_in > 0 and unwritable is None,
        "executors": load.executors,
        "logged_in": load.logged_in,
        "store": "writable" if unwritable is None else "unwritable",
    }
    if unwritable is not None:
        # First: no run can start until this is fixed, whatever the executors say.
        body["reason"] = (
            f"the store cannot write ({unwritable}): new runs are refused until it can; "
            "free space where HUB_DB is"
        )
    elif not load.executors:
        body["reason"] = "no executor is connected"
    elif not load.logged_in:
        body["reason"] = "codex is not logged in on any executor: run `codex login` there"
    return json_response(body, status=200 if body["ready"] else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


#: The page renders untrusted text (prompts, outputs): allow only its own files, so
#: a rendering mistake can never run a script or send data anywhere else.
MONITOR_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def monitor_index(request: web.Request) -> web.StreamResponse:
    """The monitor page."""
    index = MONITOR_DIR / "index.html"
    if not index.exists():
        return web.Response(text="codex-hub: the monitor page is not installed", status=404)
    return web.FileResponse(index, headers=MONITOR_HEADERS)


async def _revalidate_static(request: web.Request, response: web.StreamResponse) -> None:
    # The page's modules import each other by plain names: make the browser revalidate
    # them, so a hub upgrade never runs a mix of old and new files.
    if request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")


def setup(app: web.Application) -> None:
    """Add these routes (and the monitor's static files) to ``app``."""
    app[SOCKETS_FEED] = set()
    app.router.add_routes(routes)
    app.router.add_get("/", monitor_index)
    if MONITOR_DIR.is_dir():
        app.router.add_static("/static/", MONITOR_DIR, append_version=False)
        app.on_response_prepare.append(_revalidate_static)
