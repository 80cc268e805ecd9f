"""What an executor does with one run: optional prompt optimization, then codex.

The pipeline knows nothing of the hub: it takes a prompt and callbacks, and returns a
result. The executor node (or ``codex-hub exec``) wires it to the world.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from executor.engine import CodexEngine, RunRequest
from executor.settings import ExecutorSettings
from executor.transport import TransportError
from executor.workspace import Changes, Published, Workspace, WorkspaceError, Workspaces
from executor.workspace_names import repo_in_prompt, split_pr_command
from wire import RESULT_STATUSES, ErrorCode, ResultFrame

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
SetState = Callable[[str, str | None], None]


@dataclass
class Decision:
    """The optimizer's verdict on a request."""

    executable: bool
    reason: str = ""
    prompt: str = ""
    skipped: str | None = None  # why optimization was skipped, when it was


class Optimizer(Protocol):
    """Rewrites a request for codex, or judges it not executable."""

    async def decide(self, prompt: str) -> Decision: ...

    async def aclose(self) -> None: ...


@dataclass
class Job:
    """One run as the pipeline sees it."""

    run_id: str
    prompt: str
    thread_id: str | None = None
    optimize: bool | None = None
    origin: dict[str, Any] = field(default_factory=dict)
    #: The assign frame's ``options`` (wire): instructions, output schema, images.
    options: dict[str, Any] = field(default_factory=dict)
    #: The conversation (the hub's session key): its follow-ups share a workspace.
    session_key: str | None = None
    #: The repository the request named (``owner/repo[@branch]`` or a git URL).
    repo: str | None = None
    #: Commit, push and open a pull request after the run.
    open_pr: bool = False


@dataclass
class Result:
    """The outcome of a job, in the shape of the protocol's ``result`` frame."""

    status: str
    answer: str = ""
    thread_id: str | None = None
    usage: dict[str, int] | None = None
    error: dict[str, str] | None = None
    effective_prompt: str | None = None

    def frame(self, run_id: str) -> dict[str, Any]:
        """The ``result`` frame, as it goes on the wire (``ResultFrame(...).dump()``);
        ValueError (pydantic's) when a field does not fit it."""
        if self._plain(run_id):
            # What the model would give for these values (it takes them as they are):
            # every field given, in its order, without building and dumping a model.
            return {
                "type": "result",
                "run_id": run_id,
                "status": self.status,
                "answer": self.answer,
                "thread_id": self.thread_id,
                "usage": None if self.usage is None else dict(self.usage),
                "error": None if self.error is None else dict(self.error),
                "effective_prompt": self.effective_prompt,
            }
        return ResultFrame(
            run_id=run_id,
            status=self.status,  # type: ignore[arg-type]
            answer=self.answer,
            thread_id=self.thread_id,
            usage=self.usage,
            error=self.error,
            effective_prompt=self.effective_prompt,
        ).dump()

    def _plain(self, run_id: str) -> bool:
        """True when ResultFrame would take every field as it is: the exact types, a
        status it knows, integer usage (not bool) and text errors. Anything else goes
        through the model, which converts it or says why it cannot."""
        usage, error = self.usage, self.error
        return (
            type(run_id) is str
            and type(self.status) is str
            and self.status in RESULT_STATUSES
            and type(self.answer) is str
            and (self.thread_id is None or type(self.thread_id) is str)
            and (self.effective_prompt is None or type(self.effective_prompt) is str)
            and (
                usage is None
                or (
                    type(usage) is dict
                    and all(type(k) is str and type(v) is int for k, v in usage.items())
                )
            )
            and (
                error is None
                or (
                    type(error) is dict
                    and all(type(k) is str and type(v) is str for k, v in error.items())
                )
            )
        )


class Pipeline:
    """Optimize (when asked), then run codex."""

    def __init__(
        self,
        settings: ExecutorSettings,
        engine: CodexEngine,
        optimizer: Optimizer | None = None,
        workspaces: Workspaces | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.optimizer = optimizer
        #: None: every run works in EXEC_WORKDIR (set explicitly), as before workspaces.
        self.workspaces = workspaces

    async def aclose(self) -> None:
        """Close what the pipeline owns (the optimizer's HTTP client, the engine's
        long-lived codex, if any). Idempotent."""
        if self.optimizer is not None:
            await self.optimizer.aclose()
        await self.engine.aclose()

    async def run(self, job: Job, emit: Emit, set_state: SetState) -> Result:
        """Run one job to its end, in its workspace; cancellation propagates (codex is
        killed)."""
        if self.workspaces is None:
            return await self._codex(job, job.prompt, None, emit, set_state)
        asked, prompt = split_pr_command(job.prompt)
        wants_pr = asked or job.open_pr or self.settings.workspace_auto_pr
        workspaces = self.workspaces
        try:
            ws = await self._workspace(workspaces, job, prompt)
        except WorkspaceError as exc:
            emit({"kind": "workspace", "error": {"code": exc.code, "message": str(exc)}})
            return Result(
                status="failed",
                error={"code": exc.code, "message": str(exc)},
                effective_prompt=prompt,
            )
        try:
            if prompt:
                result = await self._codex(job, prompt, ws.workdir, emit, set_state)
            elif ws.repo is None:
                message = "!pr publishes a conversation's repository; this one names none"
                return Result(
                    status="failed", error={"code": ErrorCode.PUSH_REFUSED, "message": message}
                )
            else:  # "!pr" alone: publish what the conversation has, without codex
                result = Result(status="succeeded", answer="", effective_prompt=job.prompt)
            if ws.repo is not None:
                await self._report(workspaces, ws, job, result, wants_pr, emit)
            elif (asked or job.open_pr) and result.status == "succeeded":
                note = "No pull request: this conversation names no repository."
                result.answer = f"{result.answer}\n\n{note}" if result.answer else note
            return result
        finally:
            workspaces.release(ws.key)

    async def _workspace(self, workspaces: Workspaces, job: Job, prompt: str) -> Workspace:
        """The job's workspace: the repository it names, its conversation's, or scratch."""
        text = job.repo or repo_in_prompt(prompt, self.settings.git_default_host)
        repo = workspaces.resolve(text) if text else None
        return await workspaces.prepare(job.session_key or f"run:{job.run_id}", repo, prompt)

    async def _report(
        self,
        workspaces: Workspaces,
        ws: Workspace,
        job: Job,
        result: Result,
        wants_pr: bool,
        emit: Emit,
    ) -> None:
        """Record what the run changed, publish when asked, and say so in the reply."""
        assert ws.repo is not None
        try:
            changes = await workspaces.changes(ws)
        except WorkspaceError as exc:
            # The run's own outcome stands; only what it changed could not be told.
            emit({"kind": "workspace", "error": {"code": exc.code, "message": str(exc)}})
            note = f"(what the run changed could not be recorded: {exc})"
            result.answer = f"{result.answer}\n\n{note}" if result.answer else note
            return
        published: Published | None = None
        push_error: dict[str, str] | None = None
        if wants_pr and result.status == "succeeded":
            body = f"Opened by codex-hub for run {job.run_id}.\n\n{changes.summary}"
            try:
                published = await workspaces.publish(ws, job.run_id, body)
            except WorkspaceError as exc:
                push_error = {"code": exc.code, "message": str(exc)}
        emit(_workspace_event(ws, changes, published, push_error))
        footer = [
            f"Repository {ws.repo.display}, branch {ws.branch} (from {ws.base_branch}): "
            f"{changes.summary}."
        ]
        if published is not None:
            footer.append(
                f"Pull request: {published.pr_url}"
                if published.pr_url
                else f"Pushed {published.branch}. {published.note}".strip()
            )
        if push_error is not None:
            footer.append(f"Not pushed: {push_error['message']}")
        tail = "\n".join(footer)
        result.answer = f"{result.answer}\n\n---\n{tail}" if result.answer else tail

    async def _codex(
        self, job: Job, prompt: str, workdir: str | None, emit: Emit, set_state: SetState
    ) -> Result:
        """Optimize (when asked), then run codex in ``workdir``."""
        note = ""
        wants = self.settings.optimize_prompt if job.optimize is None else job.optimize
        if wants and self.optimizer is not None:
            set_state("optimizing", None)
            decision = await self.optimizer.decide(prompt)
            if decision.skipped:
                note = f"(prompt optimization was skipped: {decision.skipped})"
                emit({"kind": "optimizer", "decision": "skipped", "message": note})
            elif not decision.executable:
                emit({"kind": "optimizer", "decision": "rejected", "message": decision.reason})
                return Result(
                    status="rejected",
                    error={"code": ErrorCode.NOT_EXECUTABLE, "message": decision.reason},
                    effective_prompt=prompt,
                )
            else:
                prompt = decision.prompt or prompt
                emit(
                    {
                        "kind": "optimizer",
                        "decision": "optimized",
                        "message": decision.reason or "prompt rewritten for codex",
                        "prompt": prompt,
                    }
                )
        set_state("running", prompt)
        request = RunRequest.with_options(
            job.run_id, prompt, job.thread_id, job.options, workdir=workdir
        )
        try:
            if request.files:
                await self.engine.write_attachments(request)
        except (OSError, TransportError) as exc:
            message = f"the attached files could not be written: {exc}"
            return Result(
                status="failed",
                error={"code": ErrorCode.ATTACHMENT_ERROR, "message": message},
                effective_prompt=request.prompt,
            )
        outcome = await self.engine.run(request, emit)
        answer = outcome.answer
        if note and outcome.status == "succeeded":
            answer = f"{answer}\n\n{note}" if answer else note
        return Result(
            status=outcome.status,
            answer=answer,
            thread_id=outcome.thread_id,
            usage=outcome.usage,
            error=outcome.error,
            effective_prompt=prompt,
        )


def _workspace_event(
    ws: Workspace,
    changes: Changes,
    published: Published | None,
    push_error: dict[str, str] | None,
) -> dict[str, Any]:
    """The ``workspace`` event: the run's repository, branch and diffs (the hub keeps it
    for ``GET /api/runs/{id}/diff``)."""
    assert ws.repo is not None
    return {
        "kind": "workspace",
        "summary": f"{ws.repo.display} {ws.branch}: {changes.summary}",
        "repo": ws.repo.display,
        "branch": ws.branch,
        "base_branch": ws.base_branch,
        "base": ws.base,
        "changes": changes.summary,
        "run_changes": changes.run_summary,
        "files": changes.files,
        "diff": changes.diff,
        "run_diff": changes.run_diff,
        "truncated": changes.truncated,
        "pushed": published.commit if published else None,
        "pr_url": published.pr_url if published else None,
        "push_error": push_error,
    }
