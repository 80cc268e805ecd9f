"""The codes and constants both ends of the hub's websocket must agree on.

Free of I/O, like the rest of :mod:`wire`. Each value is defined here once; the hub
(``hub.ws_nodes``, ``hub.router``), the node client (``kernel.node_client``) and the
nodes import it from :mod:`wire`.

Error codes
-----------
An ``error`` frame's ``code``, a run's ``error.code`` (in a ``result`` frame, the store,
the runs API and a ``deliver`` frame) and a bridge's ``HubError.code`` are one of
:class:`ErrorCode` (a run's error may carry another code an executor of a newer release
made up; readers show such a code by name). What each means:

Refusals of a frame (``error`` frames, hub -> node):

- ``bad_frame``: the frame is malformed, unknown, nested too deep, holds a number past
  64 bits, or a prompt with a NUL character; the message says which.
- ``internal_error``: the hub failed to handle the frame (its log says why).
- ``unknown_delivery``: an ``ack`` for a reply that is not waiting (or another
  platform's).
- ``unknown_run``: a ``status_ref`` for a run that is finished and answered, unknown, or
  another platform's.
- ``queue_full``: the queue holds ``HUB_QUEUE_LIMIT`` runs already.
- ``hub_closing``: the hub is shutting down and takes no new run.
- ``store_unavailable``: the store cannot write (disk full): no new run until it can;
  also a run stopped for that reason.
- ``store_error``: the store failed to write the request; it will not run.
- ``router_error``: the router refused the request for another reason.
- ``node_id_taken``: a live connection with another credential holds the node id.
- ``invalid_target``: the run's target is not one (``gpu,prod``, ``@host-1``).
- ``unknown_target``: the run's target names a label or executor no executor has ever
  announced; the message lists the known ones.
- ``target_not_allowed``: ``HUB_TARGET_RULES`` does not let this caller or chat use the
  target (or run without one).
- ``conversation_elsewhere``: the executor holding the conversation is gone past the
  grace, or does not fit the run's target; also a queued run of such a conversation.

A run's end (``result`` frames, executor -> hub, and runs the hub ends itself):

- ``cancelled``: cancelled (from chat, the API or the monitor); codex was stopped.
- ``executor_stopped``: the executor shut down or restarted while the run was going.
- ``executor_error``: the executor itself failed running it.
- ``executor_lost``: the executor's connection dropped and it did not come back in time.
- ``hub_deadline``: the run outlived the executor's timeout plus ``HUB_RUN_GRACE_S``.
- ``too_many_events``: the run sent more than ``HUB_RUN_MAX_EVENTS`` events.
- ``too_many_event_bytes``: its events held more than ``HUB_RUN_MAX_EVENT_BYTES`` bytes.
- ``timeout``: codex ran past ``EXEC_TIMEOUT_S``.
- ``codex_not_found``: the codex binary is not there.
- ``codex_not_logged_in``: codex is not logged in on the executor.
- ``codex_failed``: codex exited with an error.
- ``codex_incompatible``: the codex binary does not speak the app-server protocol.
- ``transport_error``: the executor could not reach where codex runs (SSH).
- ``invalid_structured_output``: the answer does not fit the requested output schema.
- ``not_executable``: the optimizer judged the request not executable.
- ``attachment_error``: an attachment could not be written into the workdir.
- ``repo_refused``: the repository the request named is not allowed or not found.
- ``git_failed``: a git command of the run's workspace failed.
- ``push_refused``: the remote refused the push of the run's branch.
- ``pr_failed``: opening the pull request failed.

A bridge's own (its ``HubError``, never sent on the wire):

- ``hub_unreachable``: the hub is not reachable now.
- ``pending_full``: the hub is away and ``BRIDGE_PENDING_MAX`` requests wait for it.
- ``pending_expired``: a kept request waited ``BRIDGE_PENDING_MAX_AGE_S`` in vain.
- ``bridge_stopping``: the bridge stopped before the hub was back.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Every error code a frame carries (values are the strings on the wire)."""

    BAD_FRAME = "bad_frame"
    INTERNAL_ERROR = "internal_error"
    UNKNOWN_DELIVERY = "unknown_delivery"
    UNKNOWN_RUN = "unknown_run"
    QUEUE_FULL = "queue_full"
    HUB_CLOSING = "hub_closing"
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_ERROR = "store_error"
    ROUTER_ERROR = "router_error"
    NODE_ID_TAKEN = "node_id_taken"
    INVALID_TARGET = "invalid_target"
    UNKNOWN_TARGET = "unknown_target"
    TARGET_NOT_ALLOWED = "target_not_allowed"
    CONVERSATION_ELSEWHERE = "conversation_elsewhere"

    CANCELLED = "cancelled"
    EXECUTOR_STOPPED = "executor_stopped"
    EXECUTOR_ERROR = "executor_error"
    EXECUTOR_LOST = "executor_lost"
    HUB_DEADLINE = "hub_deadline"
    TOO_MANY_EVENTS = "too_many_events"
    TOO_MANY_EVENT_BYTES = "too_many_event_bytes"
    TIMEOUT = "timeout"
    CODEX_NOT_FOUND = "codex_not_found"
    CODEX_NOT_LOGGED_IN = "codex_not_logged_in"
    CODEX_FAILED = "codex_failed"
    CODEX_INCOMPATIBLE = "codex_incompatible"
    TRANSPORT_ERROR = "transport_error"
    INVALID_STRUCTURED_OUTPUT = "invalid_structured_output"
    NOT_EXECUTABLE = "not_executable"
    ATTACHMENT_ERROR = "attachment_error"
    REPO_REFUSED = "repo_refused"
    GIT_FAILED = "git_failed"
    PUSH_REFUSED = "push_refused"
    PR_FAILED = "pr_failed"

    HUB_UNREACHABLE = "hub_unreachable"
    PENDING_FULL = "pending_full"
    PENDING_EXPIRED = "pending_expired"
    BRIDGE_STOPPING = "bridge_stopping"


#: Close codes the hub uses (4000-4999 is the application range).
CLOSE_UNAUTHORIZED = 4001
CLOSE_BAD_HELLO = 4002
CLOSE_REPLACED = 4003
CLOSE_HELLO_TIMEOUT = 4008
#: Too many wrong credentials (or API keys) from the node's address: try later.
CLOSE_RATE_LIMITED = 4029
#: A right credential, but for another role or platform than the hello names.
CLOSE_FORBIDDEN = 4403
#: The node id is held by a live connection that presented another credential.
CLOSE_NODE_ID_TAKEN = 4409
#: Close codes that mean "this node is refused": reconnecting as it is will not help.
CLOSE_REFUSED = frozenset(
    {CLOSE_UNAUTHORIZED, CLOSE_BAD_HELLO, CLOSE_FORBIDDEN, CLOSE_NODE_ID_TAKEN}
)

PROTOCOL_VERSION = 2
#: From this version on a message may carry a batch: a JSON array of frames.
BATCH_SINCE = 2
#: A batch stays well under the hub's 4 MiB message limit and holds at most this many.
BATCH_MAX_BYTES = 1 << 20
BATCH_MAX_FRAMES = 256
#: The largest message the hub takes from a node.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: The largest message a node takes from the hub.
NODE_MAX_MESSAGE_BYTES = 1 << 24
#: Nesting a message may have at most (a real frame has a few levels).
MAX_NESTING = 200

#: A node says hello within this long of opening the socket, and the hub welcomes it
#: within this long of the hello.
HELLO_TIMEOUT_S = 10.0
#: The hub pings a node this often (its heartbeat; a ping or pong is "last seen").
HUB_HEARTBEAT_S = 10.0
#: A node pings the hub this often, and drops a hub that has not answered after this.
NODE_PING_INTERVAL_S = 10.0
NODE_PING_TIMEOUT_S = 20.0
#: A node opens the socket within this long, or tries again.
NODE_OPEN_TIMEOUT_S = 10.0
#: A node's reconnect backoff: from this, doubling, up to the max (full jitter).
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 10.0


class RunState(enum.StrEnum):
    """A run's state: in the store, the runs API, ``progress`` frames and the bridges."""

    QUEUED = "queued"
    OPTIMIZING = "optimizing"
    RUNNING = "running"
    #: codex asked to run a command or apply a change and waits for a person's decision.
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"
