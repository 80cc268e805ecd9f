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
    #: The assign frame's ``options`` (hub.protocol): instructions, output schema, images.
    options: dict[str, Any] = field(default_factory=dict)


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
        return {
            "type": "result",
            "run_id": run_id,
            "status": self.status,
            "answer": self.answer,
            "thread_id": self.thread_id,
            "usage": self.usage,
            "error": self.error,
            "effective_prompt": self.effective_prompt,
        }


class Pipeline:
    """Optimize (when asked), then run codex."""

    def __init__(
        self,
        settings: ExecutorSettings,
        engine: CodexEngine,
        optimizer: Optimizer | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.optimizer = optimizer

    async def aclose(self) -> None:
        """Close what the pipeline owns (the optimizer's HTTP client, the engine's
        long-lived codex, if any). Idempotent."""
        if self.optimizer is not None:
            await self.optimizer.aclose()
        await self.engine.aclose()

    async def run(self, job: Job, emit: Emit, set_state: SetState) -> Result:
        """Run one job to its end; cancellation propagates (codex is killed)."""
        prompt = job.prompt
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
                    error={"code": "not_executable", "message": decision.reason},
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
        outcome = await self.engine.run(
            RunRequest.with_options(job.run_id, prompt, job.thread_id, job.options), emit
        )
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
