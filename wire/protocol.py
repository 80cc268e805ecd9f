"""The hub's wire protocol: JSON text frames over the websocket at ``/ws``.

Defined once, here, and used by every node (executors and bridges). Each frame is one
JSON object with a ``type``. This docstring tells the story; the models below are the
source of truth for the shapes.

A websocket message holds one frame, or (protocol 2) a batch: a JSON array of frames,
applied in order as if each had come alone. A side sends batches only to a peer that
said it takes them: a node puts ``"protocol": 2`` in its hello, the hub puts it in its
welcome. Writers batch what queued up while they were busy (at most 256 frames, 1 MiB),
so a quiet link still sends every frame at once, and a busy one sends fewer messages.

Connection
----------
1. The node opens ``/ws`` and sends ``hello`` first (within 10 s)::

       {"type": "hello", "role": "executor" | "bridge", "token": "<its credential>",
        "protocol": 2,                     # optional; 1 when absent (no batches)
        "node_id": "stable id chosen by the node", "name": "host-1",
        "capacity": 4,                     # executors: parallel runs
        "timeout_s": 1830,                 # executors: longest a run takes there
        "platform": "slack",               # bridges: whose replies it delivers
        "login": {"logged_in": true, "detail": "..."},   # executors
        "active_runs": ["run-id", ...],    # executors: runs still going after a reconnect
        "labels": ["prod", "gpu"],         # executors: EXEC_LABELS (optional)
        "engine": "exec", "codex_version": "0.169.0"}   # executors (optional)

   ``token`` is the node's own credential (see :mod:`hub.credentials`): an
   executor's gets runs; a bridge's (one per platform) only speaks for that platform.

2. The hub answers ``welcome`` ({"type": "welcome", "node_id", "protocol": 2}) or closes
   with one of the ``CLOSE_*`` codes below and a reason (wrong or missing credential,
   a credential of another role or platform, a node id that a live connection with
   another credential holds, malformed hello, too many wrong credentials from the
   node's address).

The hub gives every run a deadline: the executor's ``timeout_s`` (else
``HUB_RUN_TIMEOUT_S``) plus ``HUB_RUN_GRACE_S`` from its assignment. Past it, or past
``HUB_RUN_MAX_EVENTS`` events (``state`` frames included) or
``HUB_RUN_MAX_EVENT_BYTES`` bytes of them, the hub
sends ``cancel`` and ends the run itself (``timed_out`` with code ``hub_deadline``;
``failed`` with ``too_many_events`` or ``too_many_event_bytes``).

Executor <-> hub
----------------
- hub -> executor ``assign``: {"run_id", "prompt", "thread_id" (resume it, or null),
  "optimize" (true/false/null = executor default), "origin": {...}, "options"?: {
  "instructions"?: text for codex's developer_instructions, "output_schema"?: a JSON
  Schema the final answer must fit, "json_object"?: true when the answer must be a JSON
  object, "images"?: [{"mime", "data" (base64)}] attached to the prompt, "files"?:
  [{"name", "data" (base64)}] written under the workdir's attachments/ and named in
  the prompt},
  "session_key"? (the conversation: its runs share a workspace), "repo"? (the
  repository the request named), "open_pr"? (commit, push, pull request after the run)}
  (:class:`AssignFrame`; the optional ones are absent from older hubs).
- executor -> hub ``event`` of kind ``workspace``: the run's repository, branch, its
  diffs and pull request (``executor.pipeline``); the hub serves the latest of a run
  at ``GET /api/runs/{id}/diff``.
- executor -> hub ``event``: {"run_id", "seq", "event": {"kind", ...}}; ``seq`` counts
  from 1 per run, the hub stores each (run_id, seq) once, so re-sending is safe.
- executor -> hub ``state``: {"run_id", "state": "optimizing" | "running",
  "effective_prompt"?}
- executor -> hub ``result``: {"run_id", "status", "answer", "thread_id", "usage",
  "error", "effective_prompt"}; the hub answers ``result_ack`` {"run_id"} once the
  result is durable. Until then the executor keeps the run's events and result and
  re-sends them after every reconnect, so a hub restart loses nothing.
- executor -> hub ``status``: {"capacity", "login"} whenever they change.
- hub -> executor ``cancel``: {"run_id"}: kill codex; the executor then sends a
  ``result`` with status ``cancelled``.
- executor -> hub ``event`` of kind ``approval`` (app-server engine, an approval policy
  that asks): ``status`` ``requested`` {"approval_id", "request": {"kind", "reason",
  "command"?, "cwd"?, "changes"?}, "summary"} puts the run in ``awaiting_approval``
  (see :mod:`hub.approvals`); ``status`` ``decided`` {"approval_id", "decision", "by"}
  confirms that codex got the decision.
- hub -> executor ``approval_decision``: {"run_id", "approval_id", "decision":
  "approve" | "approve_session" | "deny", "by"}: the answer to that request; sent again
  after every reconnect until the executor's ``decided`` event confirms it.
- hub -> executor ``steer``: {"run_id", "steer_id", "text"}: add ``text`` to the run's
  running codex turn (``turn/steer``; only an executor whose ``engine`` is
  ``app-server`` is sent one). The executor answers ``steered`` {"run_id",
  "steer_id", "ok", "error"?}; ``ok`` false says why not (the turn ended meanwhile,
  an engine that cannot steer), and the hub then queues the text as a new run.

Bridge <-> hub
--------------
- bridge -> hub ``submit``: {"req_id", "prompt", "session_key", "origin": {...},
  "optimize"?, "dedupe_key"?, "attachments"? ({"images"?, "files"?}: the assign
  frame's options of those names), "target"? (where it may go: ``gpu,prod``,
  ``host-1``; refused with ``unknown_target``, ``target_not_allowed``,
  ``invalid_target`` or ``conversation_elsewhere``)}; the hub answers ``submitted``
  {"req_id", "run_id", "position", "duplicate"} (runs ahead of it in its session) or
  ``error`` {"req_id", "code", "message"}. A ``submitted`` with ``steered`` true names
  the conversation's running run: the prompt was added to its running turn instead
  (``STEER_MODE``), and no new run was made; ``steer_error`` says why a steer that was
  tried failed (the prompt then runs as the new run the frame names). A ``dedupe_key``
  seen before (the platform's message id: a platform that re-sends an event after a
  bridge crash) names the existing run instead of starting a second one (``duplicate``
  true). A prompt with a NUL character
  is refused (``error`` ``bad_frame``; bridges show its message to the user).
- bridge -> hub ``cancel``: {"req_id", "run_id"? | "session_key"?}: cancels that run,
  or the active run of that session; answered by ``cancelled`` {"req_id", "run_ids"}.
- bridge -> hub ``reset_session``: {"req_id", "session_key"}: the next run there starts
  a fresh codex thread; answered by ``ok`` {"req_id"}.
- bridge -> hub ``session_status``: {"req_id", "session_key"}: answered by
  ``session`` {"req_id", "active": run|null, "queued": [run, ...]}.
- bridge -> hub ``status_ref``: {"run_id", "ref", "req_id"?}: the platform's id of the
  status message the bridge posted for that run (a string of 1 to 200 characters), for
  a platform that cannot find that message again by itself (Telegram). Not answered.
  The hub takes it only for a run of the sending bridge's platform that is unfinished
  or whose reply is not yet acknowledged; it keeps it durably in the run's ``origin``
  as ``status_ref`` (and in the reply waiting in the outbox), so every later
  ``progress`` and ``deliver`` of the run carries it, to whichever process of the
  bridge (a restarted one included). Any other run is answered with ``error``
  {"code": "unknown_run", "req_id"}. Sending it again is harmless; the latest wins.
- A bridge speaks only for its own platform: session keys are its platform's (one
  not starting with ``<platform>:`` gets that prefix), it cancels only its platform's
  runs, and it acknowledges only its platform's replies (another's: ``error``
  ``unknown_delivery``).
- hub -> bridge ``progress``: {"run_id", "origin", "state", "detail", "position",
  "answer"?}: best effort, never stored, for status messages; ``answer`` is the end of
  the answer codex is writing (app-server engine), at most ``PROGRESS_ANSWER_CHARS``.
- hub -> bridge ``deliver``: {"delivery_id", "run_id", "origin", "status", "answer",
  "error", "usage", "diff"? (the conversation's diff when its run changed a
  repository), "pr_url"? (its pull request, when one is open)}: the final reply,
  kept in the hub's outbox and re-sent (after every reconnect, and every
  ``HUB_REDELIVER_S``) until the bridge answers ``ack`` {"delivery_id"}. A bridge
  acks only once the platform accepted the reply.

- hub -> bridge ``approval``: {"run_id", "approval_id", "origin", "request", "summary",
  "requested_at", "expires_at", "state": "pending" | "decided", "decision"?, "by"?,
  "decided_at"?, "refs"}: show the request with buttons where the run came from
  (``pending``), or change every copy of them (``refs``: the platform's ids of the
  messages that show it) to say who decided and when (``decided``). Re-sent (after
  every reconnect, and every ``HUB_REDELIVER_S``) until the bridge answers
  ``approval_shown`` {"run_id", "approval_id", "state", "ref"?}, ``ref`` being the
  message it posted.
- bridge -> hub ``approval_decide``: {"req_id", "run_id", "approval_id", "decision",
  "user"}: a button pressed by ``user`` (the platform's user id); answered by
  ``approval_result`` {"req_id", "outcome": "decided" | "already_decided" | "refused"
  | "unknown", "message", "decision"?, "by"?, "decided_at"?}.

Both ways: ``error`` {"code", "message", "req_id"?} reports a frame the peer could not
use; it never closes the connection by itself. A message nested deeper than 200 levels
is such a frame, refused before it is walked. Liveness is websocket ping/pong.

In code
-------
Every frame, both ways, is a model below (hub -> node: :class:`WelcomeFrame`,
:class:`AssignFrame`, :class:`RunCancelFrame`, :class:`ResultAckFrame`,
:class:`SubmittedFrame`, :class:`CancelledFrame`, :class:`OkFrame`, :class:`SessionFrame`,
:class:`ProgressFrame`, :class:`DeliverFrame`, :class:`ErrorFrame`, and the approvals'
:class:`ApprovalDecisionFrame`, :class:`ApprovalFrame`, :class:`ApprovalResultFrame`; and
steering's :class:`SteerFrame`, answered by :class:`SteeredFrame`), grouped per
direction and role in a discriminated union (:data:`ExecutorFrame`, :data:`BridgeFrame`,
:data:`ToExecutorFrame`, :data:`ToBridgeFrame`). A model's ``dump()`` is the JSON object
sent: its ``type`` and the fields its builder gave (an optional field left out stays
out). Error codes, close codes and the constants both ends share are in
:mod:`wire.codes`; :mod:`wire.codec` turns frames into messages and back. Add a frame
here, in its union, and in :data:`FRAME_MODELS`: the codec and its tests take it up.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, field_validator
from pydantic_core import PydanticCustomError

from wire.codes import (
    BATCH_MAX_BYTES,
    BATCH_MAX_FRAMES,
    BATCH_SINCE,
    CLOSE_BAD_HELLO,
    CLOSE_FORBIDDEN,
    CLOSE_HELLO_TIMEOUT,
    CLOSE_NODE_ID_TAKEN,
    CLOSE_RATE_LIMITED,
    CLOSE_REPLACED,
    CLOSE_UNAUTHORIZED,
    PROTOCOL_VERSION,
    RunState,
)

__all__ = [  # what other modules take from here besides the frames (see wire/__init__.py)
    "BATCH_MAX_BYTES",
    "BATCH_MAX_FRAMES",
    "BATCH_SINCE",
    "CLOSE_BAD_HELLO",
    "CLOSE_FORBIDDEN",
    "CLOSE_HELLO_TIMEOUT",
    "CLOSE_NODE_ID_TAKEN",
    "CLOSE_RATE_LIMITED",
    "CLOSE_REPLACED",
    "CLOSE_UNAUTHORIZED",
    "PROTOCOL_VERSION",
    "RunState",
]


#: Every run state, in the order a run may pass them (the OpenAPI document's enum).
RUN_STATES: tuple[str, ...] = tuple(state.value for state in RunState)
ResultStatus = Literal["succeeded", "failed", "cancelled", "timed_out", "rejected"]
#: How a run may end: a ``result`` frame's ``status``, a ``deliver`` frame's.
RESULT_STATUSES: tuple[str, ...] = get_args(ResultStatus)
TERMINAL_STATES: frozenset[str] = frozenset(RESULT_STATUSES)
ACTIVE_STATES: frozenset[str] = frozenset(
    {RunState.OPTIMIZING, RunState.RUNNING, RunState.AWAITING_APPROVAL}
)

#: An executor label (``EXEC_LABELS``): lowercase letters, digits, ``-`` and ``_``.
LABEL_PATTERN = r"^[a-z0-9_-]{1,64}$"
#: The most labels one executor announces.
MAX_LABELS = 64
#: The most of the answer being written that a ``progress`` frame carries (its end).
PROGRESS_ANSWER_CHARS = 4000
Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def dump(self) -> dict[str, Any]:
        """The frame as it goes on the wire: its ``type`` and the fields it was given
        (a field left at its default is left out, as the senders always did)."""
        data = self.model_dump(exclude_unset=True)
        kind = getattr(self, "type", None)
        return data if kind is None else {"type": kind, **data}


#: The base of every frame model: ``dump()`` gives what goes on the wire.
FrameModel = _Frame


class LoginState(_Frame):
    logged_in: bool | None = None
    detail: str = ""


class Hello(_Frame):
    type: Literal["hello"]
    role: Literal["executor", "bridge"]
    #: The node's protocol version: 2 and later take batches from the hub.
    protocol: int = Field(default=1, ge=1)
    token: str = ""
    node_id: str = Field(min_length=1, max_length=200)
    name: str = Field(default="", max_length=200)
    capacity: int = Field(default=0, ge=0, le=10_000)
    #: Executors: the longest a run may take there (the hub adds HUB_RUN_GRACE_S).
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 86_400)
    platform: str = Field(default="", max_length=50)
    login: LoginState | None = None
    active_runs: list[str] = Field(default_factory=list)
    #: Executors: what runs may ask for (EXEC_LABELS), the engine, codex's version.
    labels: list[Label] = Field(default_factory=list, max_length=MAX_LABELS)
    engine: str = Field(default="", max_length=50)
    codex_version: str = Field(default="", max_length=100)


# hub -> executor


class AssignFrame(_Frame):
    type: Literal["assign"] = "assign"
    run_id: str
    prompt: str
    thread_id: str | None = None
    optimize: bool | None = None
    origin: dict[str, Any] = Field(default_factory=dict)
    #: What the executor is told besides the prompt: instructions, output schema, images.
    options: dict[str, Any] = Field(default_factory=dict)
    #: The conversation; absent from older hubs (the run is then its own conversation).
    session_key: str | None = None
    #: ``owner/repo[@branch]`` or a git URL, as the user wrote it; the executor checks it.
    repo: str | None = Field(default=None, max_length=500)
    open_pr: bool = False


ASSIGN = TypeAdapter(AssignFrame)


def repo_problem(value: object) -> str | None:
    """Why ``value`` cannot name a repository (None: it may; the executor decides)."""
    if not isinstance(value, str) or not value.strip():
        return "'repo' must be a non-empty string (owner/repo, owner/repo@branch or a git URL)"
    if len(value) > 500 or any(c.isspace() or ord(c) < 32 for c in value.strip()):
        return "'repo' must be one word of at most 500 characters"
    return None


# executor -> hub


class EventFrame(_Frame):
    type: Literal["event"] = "event"
    run_id: str
    seq: int = Field(ge=1)
    event: dict[str, Any]


class StateFrame(_Frame):
    type: Literal["state"] = "state"
    run_id: str
    state: Literal["optimizing", "running"]
    effective_prompt: str | None = None


class ResultFrame(_Frame):
    type: Literal["result"] = "result"
    run_id: str
    status: ResultStatus
    answer: str = ""
    thread_id: str | None = None
    usage: dict[str, int] | None = None
    error: dict[str, str] | None = None
    effective_prompt: str | None = None


class StatusFrame(_Frame):
    type: Literal["status"] = "status"
    capacity: int | None = Field(default=None, ge=0, le=10_000)
    login: LoginState | None = None


#: What a person may decide about an approval request.
Decision = Literal["approve", "approve_session", "deny"]
DECISIONS: tuple[str, ...] = get_args(Decision)


class SteeredFrame(_Frame):
    """executor -> hub: how a ``steer`` went; ``error`` says why it did not."""

    type: Literal["steered"] = "steered"
    run_id: str
    steer_id: str = Field(min_length=1, max_length=200)
    ok: bool
    error: str | None = Field(default=None, max_length=1000)


# bridge -> hub

#: Why a prompt with a NUL is refused, on every surface that takes one: codex gets the
#: prompt as one argv element, which a NUL would cut short without a word.
NUL_IN_PROMPT = "the prompt holds a NUL character (\\u0000), which codex cannot take: remove it"


def refuse_nul(prompt: str) -> str:
    """``prompt`` itself, or a validation error when it holds a NUL character."""
    if "\x00" in prompt:
        raise PydanticCustomError("nul_in_prompt", NUL_IN_PROMPT)
    return prompt


class SubmitFrame(_Frame):
    type: Literal["submit"] = "submit"
    req_id: str = ""
    prompt: str = Field(min_length=1, max_length=200_000)
    session_key: str | None = Field(default=None, max_length=500)
    origin: dict[str, Any] = Field(default_factory=dict)
    optimize: bool | None = None
    dedupe_key: str | None = Field(default=None, max_length=300)
    #: Attachments from chat: "images" [{"mime", "data"}] and "files" [{"name", "data"}]
    #: (base64), passed to the executor as the assign frame's options.
    attachments: dict[str, list[dict[str, str]]] | None = None
    #: Where the run may go (issue 20): labels all required or an executor's name,
    #: ``gpu,prod`` or ``host-1`` (the hub checks it; see hub.targets).
    target: str | None = Field(default=None, max_length=2000)

    _no_nul = field_validator("prompt")(refuse_nul)


class CancelFrame(_Frame):
    type: Literal["cancel"] = "cancel"
    req_id: str = ""
    run_id: str | None = None
    session_key: str | None = None


class ResetSessionFrame(_Frame):
    type: Literal["reset_session"] = "reset_session"
    req_id: str = ""
    session_key: str


class SessionStatusFrame(_Frame):
    type: Literal["session_status"] = "session_status"
    req_id: str = ""
    session_key: str


class AckFrame(_Frame):
    type: Literal["ack"] = "ack"
    delivery_id: str


class StatusRefFrame(_Frame):
    type: Literal["status_ref"] = "status_ref"
    req_id: str = ""
    run_id: str = Field(min_length=1, max_length=200)
    #: The platform's id of the run's status message (Telegram: its message_id).
    ref: str = Field(min_length=1, max_length=200)


class ApprovalDecideFrame(_Frame):
    """bridge -> hub: a person pressed an approval button."""

    type: Literal["approval_decide"] = "approval_decide"
    req_id: str = ""
    run_id: str = Field(min_length=1, max_length=200)
    approval_id: str = Field(min_length=1, max_length=200)
    decision: Decision
    #: The presser's user id on the bridge's platform.
    user: str = Field(min_length=1, max_length=200)


class ApprovalShownFrame(_Frame):
    """bridge -> hub: the ``approval`` frame of that state is on the platform."""

    type: Literal["approval_shown"] = "approval_shown"
    run_id: str = Field(min_length=1, max_length=200)
    approval_id: str = Field(min_length=1, max_length=200)
    state: Literal["pending", "decided"]
    #: The message the bridge posted with the buttons (pending only).
    ref: str | None = Field(default=None, max_length=200)


# hub -> node (both roles)


class WelcomeFrame(_Frame):
    """The hub's answer to a good hello; ``protocol`` 2 and later take batches."""

    type: Literal["welcome"] = "welcome"
    node_id: str
    protocol: int = Field(default=1, ge=1)


class ErrorFrame(_Frame):
    """A frame the peer could not use; ``req_id`` ties it to the request that caused it."""

    type: Literal["error"] = "error"
    #: One of :class:`wire.codes.ErrorCode` (a newer peer may send one this one lacks).
    code: str
    message: str = ""
    req_id: str | None = None


# hub -> executor


class RunCancelFrame(_Frame):
    """hub -> executor: kill codex; the executor answers with a ``cancelled`` result."""

    type: Literal["cancel"] = "cancel"
    run_id: str


class ResultAckFrame(_Frame):
    """hub -> executor: the run's result is durable; forget the run."""

    type: Literal["result_ack"] = "result_ack"
    run_id: str


class ApprovalDecisionFrame(_Frame):
    """hub -> executor: the decision on a run's approval request."""

    type: Literal["approval_decision"] = "approval_decision"
    run_id: str
    approval_id: str
    decision: Decision
    #: Who decided (``slack:U123``, ``key:abc``, ``timeout``), for the run's events.
    by: str = ""


class SteerFrame(_Frame):
    """hub -> executor: add ``text`` to the run's running turn; answered by ``steered``."""

    type: Literal["steer"] = "steer"
    run_id: str
    steer_id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=200_000)


# hub -> bridge


class SubmittedFrame(_Frame):
    type: Literal["submitted"] = "submitted"
    req_id: str = ""
    run_id: str
    #: Runs ahead of it in its session.
    position: int = 0
    #: The dedupe key named a run started before: this is that run.
    duplicate: bool = False
    #: The prompt went into the running turn of ``run_id`` (no new run was made).
    steered: bool = False
    #: Why adding the prompt to the running turn failed: it runs as a new run instead.
    steer_error: str | None = Field(default=None, max_length=1000)


class CancelledFrame(_Frame):
    type: Literal["cancelled"] = "cancelled"
    req_id: str = ""
    run_ids: list[str] = Field(default_factory=list)


class OkFrame(_Frame):
    type: Literal["ok"] = "ok"
    req_id: str = ""


class SessionFrame(_Frame):
    """The answer to ``session_status``: run summaries (``Run.summary()``)."""

    type: Literal["session"] = "session"
    req_id: str = ""
    active: dict[str, Any] | None = None
    queued: list[dict[str, Any]] = Field(default_factory=list)


class ProgressFrame(_Frame):
    """Best effort, never stored: for the status message of a run."""

    type: Literal["progress"] = "progress"
    run_id: str
    origin: dict[str, Any] = Field(default_factory=dict)
    state: str = RunState.QUEUED
    detail: str | None = None
    position: int | None = None
    #: The end of the answer as codex writes it (app-server engine), for the status.
    answer: str | None = Field(default=None, max_length=PROGRESS_ANSWER_CHARS)


class DeliverFrame(_Frame):
    """A run's final reply, re-sent until the bridge answers ``ack`` {"delivery_id"}."""

    type: Literal["deliver"] = "deliver"
    delivery_id: str
    run_id: str
    origin: dict[str, Any] = Field(default_factory=dict)
    status: str = RunState.FAILED
    answer: str = ""
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    #: The conversation's diff, when its run changed a repository.
    diff: Any = None
    #: The run's pull request, when one is open.
    pr_url: str | None = None


class ApprovalFrame(_Frame):
    """hub -> bridge: show an approval request's buttons, or their outcome."""

    type: Literal["approval"] = "approval"
    run_id: str
    approval_id: str
    origin: dict[str, Any] = Field(default_factory=dict)
    #: What codex asks: {"kind": "command" | "file_change", "reason", "command"?, ...}.
    request: dict[str, Any] = Field(default_factory=dict)
    summary: str = ""
    requested_at: float = 0.0
    #: When no decision denies it (APPROVAL_TIMEOUT_S after the request).
    expires_at: float = 0.0
    state: Literal["pending", "decided"] = "pending"
    decision: str | None = None
    by: str | None = None
    decided_at: float | None = None
    #: The messages that show the buttons (the platform's ids), to change once decided.
    refs: list[str] = Field(default_factory=list)


class ApprovalResultFrame(_Frame):
    """hub -> bridge: the answer to ``approval_decide``."""

    type: Literal["approval_result"] = "approval_result"
    req_id: str = ""
    outcome: Literal["decided", "already_decided", "refused", "unknown"]
    message: str = ""
    decision: str | None = None
    by: str | None = None
    decided_at: float | None = None


ExecutorFrame = Annotated[
    EventFrame | StateFrame | ResultFrame | StatusFrame | SteeredFrame,
    Field(discriminator="type"),
]
BridgeFrame = Annotated[
    SubmitFrame
    | CancelFrame
    | ResetSessionFrame
    | SessionStatusFrame
    | AckFrame
    | StatusRefFrame
    | ApprovalDecideFrame
    | ApprovalShownFrame,
    Field(discriminator="type"),
]
#: What the hub sends an executor.
ToExecutorFrame = Annotated[
    WelcomeFrame
    | AssignFrame
    | RunCancelFrame
    | ResultAckFrame
    | ErrorFrame
    | ApprovalDecisionFrame
    | SteerFrame,
    Field(discriminator="type"),
]
#: What the hub sends a bridge.
ToBridgeFrame = Annotated[
    WelcomeFrame
    | SubmittedFrame
    | ErrorFrame
    | CancelledFrame
    | OkFrame
    | SessionFrame
    | ProgressFrame
    | DeliverFrame
    | ApprovalFrame
    | ApprovalResultFrame,
    Field(discriminator="type"),
]
#: Every frame model, either way (the hello apart).
FRAME_MODELS: tuple[type[_Frame], ...] = (
    EventFrame,
    StateFrame,
    ResultFrame,
    StatusFrame,
    SubmitFrame,
    CancelFrame,
    ResetSessionFrame,
    SessionStatusFrame,
    AckFrame,
    StatusRefFrame,
    WelcomeFrame,
    ErrorFrame,
    AssignFrame,
    RunCancelFrame,
    ResultAckFrame,
    SubmittedFrame,
    CancelledFrame,
    OkFrame,
    SessionFrame,
    ProgressFrame,
    DeliverFrame,
    ApprovalDecisionFrame,
    ApprovalDecideFrame,
    ApprovalShownFrame,
    ApprovalFrame,
    ApprovalResultFrame,
    SteerFrame,
    SteeredFrame,
)

HELLO = TypeAdapter(Hello)
EXECUTOR_FRAME: TypeAdapter[Any] = TypeAdapter(ExecutorFrame)
BRIDGE_FRAME: TypeAdapter[Any] = TypeAdapter(BridgeFrame)
#: Whole batches, validated in one pass when every frame in them is valid.
EXECUTOR_BATCH: TypeAdapter[list[Any]] = TypeAdapter(list[ExecutorFrame])
BRIDGE_BATCH: TypeAdapter[list[Any]] = TypeAdapter(list[BridgeFrame])
TO_EXECUTOR_FRAME: TypeAdapter[Any] = TypeAdapter(ToExecutorFrame)
TO_BRIDGE_FRAME: TypeAdapter[Any] = TypeAdapter(ToBridgeFrame)
TO_EXECUTOR_BATCH: TypeAdapter[list[Any]] = TypeAdapter(list[ToExecutorFrame])
TO_BRIDGE_BATCH: TypeAdapter[list[Any]] = TypeAdapter(list[ToBridgeFrame])


def error_frame(code: str, message: str, req_id: str | None = None) -> ErrorFrame:
    """An ``error`` frame; ``req_id`` ties it to the request that caused it (left out
    when there is none)."""
    if req_id:
        return ErrorFrame(code=code, message=message, req_id=req_id)
    return ErrorFrame(code=code, message=message)
