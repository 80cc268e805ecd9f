"""``POST /api/runs/{id}/approval``: decide codex's approval request over HTTP.

The monitor's buttons use it too. Who may decide is :mod:`hub.approvals`'s rule
(``APPROVERS``, else whoever asked); the caller is the API principal of its key.
``GET /api/runs/{id}`` shows the request (``approval``), see :mod:`hub.api_runs`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hub.appkeys import ROUTER, STORE
from hub.auth import can_see, principal_of
from hub.errors import ApiError, BadRequest, NotFound, json_response, read_json
from wire import DECISIONS

routes = web.RouteTableDef()


@routes.post("/api/runs/{run_id}/approval")
async def decide(request: web.Request) -> web.Response:
    """Approve or deny the run's pending approval request (the first decision wins)."""
    run_id = request.match_info["run_id"]
    router = request.app[ROUTER]
    run = router.live_run(run_id) or await request.app[STORE].get_run(run_id)
    actor = principal_of(request)
    approvals = router.approvals
    allowed = run is not None and approvals.may_decide(run, actor)
    if run is None or not (can_see(request, run.principal) or allowed):
        raise NotFound(f"no run with id {run_id}", param="run_id")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    decision = body.get("decision")
    if decision not in DECISIONS:
        raise BadRequest(
            "'decision' must be one of " + ", ".join(repr(d) for d in DECISIONS),
            param="decision",
        )
    reason = body.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > 500:
        raise BadRequest("'reason' must be a string of at most 500 characters", param="reason")
    approval_id = body.get("approval_id")
    if approval_id is not None and (not isinstance(approval_id, str) or not approval_id):
        raise BadRequest("'approval_id' must be a non-empty string", param="approval_id")
    if not allowed:
        raise ApiError(
            approvals.refusal(run),
            status=403,
            type="permission_error",
            code="not_an_approver",
        )
    verdict = approvals.decide(run_id, approval_id, decision, actor, reason=reason)
    if verdict.outcome != "decided":
        raise ApiError(
            verdict.message,
            status=409,
            type="invalid_request_error",
            code="approval_not_pending",
        )
    assert verdict.approval is not None
    data: dict[str, Any] = {"run_id": run_id, "approval": verdict.approval.public()}
    return json_response(data, headers={"X-Run-ID": run_id})


def setup(app: web.Application) -> None:
    """Add the approval route to ``app``."""
    app.router.add_routes(routes)
