"""The codex engine: one `codex exec` run per request, over any `Transport`.

It checks the login, builds the argv (`executor.codex`), streams codex's JSONL events to
the caller as they come, and turns the way codex ended into a `RunOutcome`. Error codes
in `RunOutcome.error["code"]`: `codex_not_found`, `codex_not_logged_in`, `codex_failed`,
`timeout`, `transport_error`. Cancelling the task that awaits `run` kills codex and re-raises.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema

from executor.codex import (
    CodexProgress,
    build_exec_argv,
    describe,
    parse_jsonl_line,
    resolve_codex_bin,
    truncate_event,
    version_of,
)
from executor.settings import ExecutorSettings
from executor.transport import (
    LoginStatus,
    ProcessResult,
    SpawnError,
    Transport,
    TransportError,
)

log = logging.getLogger(__name__)

RunStatus = Literal["succeeded", "failed", "timed_out"]
Emit = Callable[[dict[str, Any]], None]

#: How long a positive login check is trusted; a negative one is never cached.
LOGIN_CACHE_S = 60.0
#: How long `codex --version` may take.
VERSION_TIMEOUT_S = 30.0
#: The part of stderr quoted in an error message.
ERROR_STDERR_CHARS = 2000
#: codex prints this on every run whose stdin is not a terminal; it explains nothing.
_STDERR_NOISE = ("Reading additional input from stdin...",)
_NO_ROLLOUT = "no rollout found"


#: Image types codex takes, and the file name suffix each is written with.
IMAGE_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
}


@dataclass(frozen=True)
class RunRequest:
    """One prompt to run; `thread_id` continues an earlier codex thread; `workdir` is
    where codex works (the run's workspace; None: `EXEC_WORKDIR`).

    `instructions` reach codex as its developer instructions; `output_schema` is the
    JSON Schema its final answer must fit (`--output-schema`); `json_object` asks for a
    JSON object without a schema; `images` (MIME type, bytes) are attached (`-i`);
    `files` (sanitised name, bytes) are written under `attachments/` in the workdir
    (`write_attachments`), and the prompt names them.
    """

    run_id: str
    prompt: str
    thread_id: str | None = None
    workdir: str | None = None
    instructions: str = ""
    output_schema: dict[str, Any] | None = None
    json_object: bool = False
    images: tuple[tuple[str, bytes], ...] = ()
    files: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def with_options(
        cls,
        run_id: str,
        prompt: str,
        thread_id: str | None,
        options: dict[str, Any],
        workdir: str | None = None,
    ) -> RunRequest:
        """A request from the ``options`` of an assign frame (see wire)."""
        images = []
        attached = options.get("images")
        for image in attached if isinstance(attached, list) else []:
            try:
                images.append((str(image["mime"]), base64.b64decode(image["data"], validate=True)))
            except (KeyError, TypeError, binascii.Error):
                log.warning("run %s: an attached image could not be decoded; left out", run_id)
        files: list[tuple[str, bytes]] = []
        given = options.get("files")
        for item in given if isinstance(given, list) else []:
            try:
                data = base64.b64decode(item["data"], validate=True)
                name = attachment_name(str(item["name"]), {n for n, _ in files})
            except (KeyError, TypeError, binascii.Error):
                log.warning("run %s: an attached file could not be decoded; left out", run_id)
                continue
            files.append((name, data))
        if files:
            listed = "\n".join(f"- {ATTACHMENTS_DIR}/{name}" for name, _ in files)
            heading = "Attached files (paths relative to the working directory):"
            prompt = f"{prompt}\n\n{heading}\n{listed}"
        schema = options.get("output_schema")
        return cls(
            run_id=run_id,
            prompt=prompt,
            thread_id=thread_id,
            instructions=str(options.get("instructions") or ""),
            output_schema=schema if isinstance(schema, dict) else None,
            json_object=bool(options.get("json_object")),
            images=tuple(images),
            files=tuple(files),
            workdir=workdir,
        )


@dataclass
class RunOutcome:
    """How a run ended: status, codex's raw final answer, thread, token usage, error."""

    status: RunStatus
    answer: str
    thread_id: str | None
    usage: dict[str, int] | None
    error: dict[str, str] | None = None  # {"code", "message"}


@dataclass
class _Attempt:
    """One codex process and what its events said."""

    result: ProcessResult
    progress: CodexProgress = field(default_factory=CodexProgress)
    answer: str = ""


#: The directory of a run's workdir that attached files are written to.
ATTACHMENTS_DIR = "attachments"
_NAME_MAX = 100


def attachment_name(name: str, taken: set[str]) -> str:
    """A safe file name for an attachment called ``name`` (a user's text): its last path
    part, only letters, digits, ``.``, ``-`` and ``_``, no leading dot, made unique."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in base)
    cleaned = cleaned.lstrip(".")[:_NAME_MAX] or "file"
    stem, dot, suffix = cleaned.rpartition(".")
    if not dot:
        stem, suffix = cleaned, ""
    candidate, number = cleaned, 1
    while candidate in taken:
        number += 1
        candidate = f"{stem}-{number}.{suffix}" if dot else f"{cleaned}-{number}"
    return candidate


def _failed(code: str, message: str, thread_id: str | None = None) -> RunOutcome:
    return RunOutcome("failed", "", thread_id, None, {"code": code, "message": message})


def _clean_stderr(tail: str) -> str:
    """stderr without codex's fixed noise lines and its empty backtrace frames."""
    kept = []
    for line in tail.splitlines():
        stripped = line.strip()
        if not stripped or stripped in _STDERR_NOISE or stripped.endswith(": <unknown>"):
            continue
        kept.append(line.rstrip())
    text = "\n".join(kept).removesuffix("Stack backtrace:").strip()
    return text[-ERROR_STDERR_CHARS:]


class CodexEngine:
    """Runs prompts through `codex exec` on a transport, one process per run."""

    def __init__(
        self,
        settings: ExecutorSettings,
        transport: Transport,
        *,
        codex_bin: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._transport = transport
        # A remote transport passes the remote path; locally it is resolved on first use.
        self._codex_bin = codex_bin
        self._clock = clock
        self._login: tuple[float, LoginStatus] | None = None
        self._login_lock = asyncio.Lock()
        #: Runs answered at codex's turn end whose codex is still exiting (`_after_exit`).
        self._exiting: set[asyncio.Task[None]] = set()
        #: By codex thread: the exit of the codex that answered its last turn, if still due.
        self._thread_exits: dict[str, asyncio.Future[int | None]] = {}

    @property
    def codex_bin(self) -> str:
        """The codex binary runs use; raises FileNotFoundError when there is none."""
        if self._codex_bin is None:
            self._codex_bin = resolve_codex_bin(self._settings.codex_bin)
        return self._codex_bin

    def _env(self) -> dict[str, str]:
        home = self._settings.codex_home
        return {"CODEX_HOME": os.fspath(home)} if home is not None else {}

    async def login_status(self, force: bool = False) -> LoginStatus:
        """Whether codex is logged in; a logged-in answer is reused for a minute."""
        # One check at a time, so a burst of runs costs one `codex login status`.
        async with self._login_lock:
            cached = self._login
            if not force and cached and self._clock() - cached[0] < LOGIN_CACHE_S:
                return cached[1]
            status = await self._transport.login_status(self.codex_bin, self._env())
            self._login = (self._clock(), status) if status.logged_in else None
            return status

    async def codex_version(self) -> str:
        """codex's version (`codex --version` on the transport), "" when it names none.

        Raises FileNotFoundError, SpawnError or TransportError when codex cannot run.
        """
        lines: list[str] = []
        result = await self._transport.run(
            [self.codex_bin, "--version"],
            env_overrides=self._env(),
            cwd=None,
            on_stdout_line=lines.append,
            timeout_s=VERSION_TIMEOUT_S,
        )
        return version_of("\n".join(lines)) if result.exit_code == 0 else ""

    def workdir_of(self, request: RunRequest) -> str:
        """Where `request` runs: its workspace, else `EXEC_WORKDIR` (both engines)."""
        return request.workdir or os.fspath(self._settings.exec_workdir)

    async def aclose(self) -> None:
        """Wait until the runs that answered before codex exited are cleaned up."""
        while self._exiting:
            await asyncio.gather(*self._exiting, return_exceptions=True)

    async def write_attachments(self, request: RunRequest) -> None:
        """Write the request's attached files under ``attachments/`` in its workdir (on
        the transport's host); raises TransportError or OSError when that fails."""
        if not request.files:
            return
        folder = posixpath.join(self.workdir_of(request), ATTACHMENTS_DIR)
        result = await self._transport.run(
            ["mkdir", "-p", "--", folder],
            env_overrides={},
            cwd=None,
            on_stdout_line=lambda _line: None,
            timeout_s=30.0,
        )
        if result.exit_code != 0:
            raise OSError(f"could not make {folder}: {result.stderr_tail.strip()}")
        for name, data in request.files:
            await self._transport.write_bytes(posixpath.join(folder, name), data)

    async def run(self, request: RunRequest, emit: Emit) -> RunOutcome:
        """Run `request` to its end, calling `emit` for each event on the way."""
        if self._settings.exec_dry_run:
            return self._dry_run(request, emit)
        try:
            status = await self.login_status()
        except (FileNotFoundError, SpawnError) as exc:
            return _failed("codex_not_found", f"{exc}; set CODEX_BIN or run `make install`")
        except TransportError as exc:
            return _failed("transport_error", str(exc))
        if not status.logged_in:
            return _failed("codex_not_logged_in", self._login_hint(status))

        try:
            attempt = await self._attempt(request, emit, request.thread_id)
            if (
                request.thread_id
                and attempt.result.exit_code not in (0, None)
                and _NO_ROLLOUT in attempt.result.stderr_tail
            ):
                note = (
                    f"The earlier conversation (thread {request.thread_id}) could not be "
                    "resumed, so this runs as a new conversation."
                )
                log.info("run %s: %s", request.run_id, note)
                emit({"kind": "note", "message": note, "summary": note})
                attempt = await self._attempt(request, emit, None)
        except SpawnError as exc:
            return _failed("codex_not_found", f"{exc}; check CODEX_BIN and EXEC_WORKDIR")
        except TransportError as exc:
            # E.g. an SSH connection that broke: the run fails, the executor lives on.
            return _failed("transport_error", str(exc))
        return structured(request, self._outcome(attempt))

    def _login_hint(self, status: LoginStatus) -> str:
        home = self._settings.codex_home
        where = f"CODEX_HOME={home}" if home is not None else "CODEX_HOME (default ~/.codex)"
        detail = "" if status.detail.lower().startswith("not logged in") else f" ({status.detail})"
        return (
            f"codex is not logged in{detail}. Log in on the executor machine with "
            f"`printf '%s' \"$OPENAI_API_KEY\" | codex login --with-api-key` or `codex login`, "
            f"using the same {where} as the executor."
        )

    async def _attempt(self, request: RunRequest, emit: Emit, thread_id: str | None) -> _Attempt:
        """Run codex once; the temp dir for `-o` is removed on every path out.

        The run ends at codex's turn end (`turn.completed`), with the answer its events
        gave: codex's own exit (it still writes its session file and `-o`, ~20 ms) and
        the reap of what it left behind follow in the background (`_after_exit`).
        """
        previous = self._thread_exits.get(thread_id) if thread_id else None
        if previous is not None:
            # The codex of the turn before may still be writing the session resumed here.
            await asyncio.wait({previous})
        progress = CodexProgress()
        answered = asyncio.Event()

        def on_line(line: str) -> None:
            if answered.is_set():
                log.debug("run %s: output after the turn end: %.200r", request.run_id, line)
                return
            event = parse_jsonl_line(line)
            if event is None:
                return  # codex's stdout carries only JSONL in --json mode; skip stray text
            progress.feed(event)
            emit({"kind": "codex", "data": truncate_event(event), "summary": describe(event)})
            if progress.turn_completed and not progress.turn_failed:
                answered.set()

        tempdir = await self._transport.make_tempdir()
        ended: asyncio.Future[int | None] | None = None
        try:
            output_file = posixpath.join(tempdir, "last-message.txt")
            schema_file = None
            if request.output_schema is not None:
                schema_file = posixpath.join(tempdir, "output-schema.json")
                await self._transport.write_bytes(
                    schema_file, json.dumps(request.output_schema).encode()
                )
            image_files = []
            for index, (mime, data) in enumerate(request.images):
                path = posixpath.join(tempdir, f"image-{index}{IMAGE_SUFFIXES.get(mime, '.png')}")
                await self._transport.write_bytes(path, data)
                image_files.append(path)
            argv = build_exec_argv(
                self._settings,
                request.prompt,
                codex_bin=self.codex_bin,
                workdir=self.workdir_of(request),
                output_file=output_file,
                resume_thread_id=thread_id,
                instructions=request.instructions,
                output_schema_file=schema_file,
                image_files=image_files,
            )
            log.info("run %s: codex exec%s", request.run_id, " resume" if thread_id else "")
            result = await self._transport.run(
                argv,
                env_overrides=self._env(),
                cwd=None,
                on_stdout_line=on_line,
                timeout_s=self._settings.exec_timeout_s,
                answered=answered,
            )
            ended = result.ended
            attempt = _Attempt(result, progress)
            if ended is not None:
                # Answered at the turn end: codex writes -o only on its way out.
                attempt.answer = progress.last_message or ""
            elif result.exit_code == 0 and progress.turn_completed:
                try:
                    attempt.answer = await self._transport.read_text(output_file)
                except OSError:
                    attempt.answer = ""
                # -o holds the final message; the events are the fallback if it is empty.
                attempt.answer = attempt.answer or progress.last_message or ""
            return attempt
        finally:
            if ended is None:
                await self._transport.remove_tree(tempdir)
            else:
                self._after_exit(request.run_id, ended, tempdir, progress.thread_id)

    def _after_exit(
        self, run_id: str, ended: asyncio.Future[int | None], tempdir: str, thread: str | None
    ) -> None:
        """Once codex of a run that already answered has exited and its processes are
        reaped, remove its temp dir (codex writes -o there on its way out); an exit
        status other than 0 by then is logged, the answer stands. A run resuming
        `thread` meanwhile waits for that exit (`_attempt`)."""
        if thread:
            self._thread_exits[thread] = ended

        async def finish() -> None:
            try:
                status = await asyncio.shield(ended)
                if status not in (0, None):
                    log.warning(
                        "run %s: codex exited with status %s after its turn end; the answer stands",
                        run_id,
                        status,
                    )
            finally:
                if thread and self._thread_exits.get(thread) is ended:
                    del self._thread_exits[thread]
                await self._transport.remove_tree(tempdir)

        task = asyncio.create_task(finish(), name=f"CodexEngine:{run_id}:after-exit")
        self._exiting.add(task)
        task.add_done_callback(self._exited)

    def _exited(self, task: asyncio.Task[None]) -> None:
        self._exiting.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("cleaning up after codex exited failed (the answer stands)", exc_info=exc)

    def _outcome(self, attempt: _Attempt) -> RunOutcome:
        result, progress = attempt.result, attempt.progress
        if result.timed_out:
            limit = self._settings.exec_timeout_s
            return RunOutcome(
                "timed_out",
                "",
                progress.thread_id,
                progress.usage,
                {"code": "timeout", "message": f"codex did not finish within {limit:g} s"},
            )
        exited_ok = result.exit_code == 0 or result.ended is not None  # or at its turn end
        if exited_ok and progress.turn_completed and not progress.turn_failed:
            return RunOutcome("succeeded", attempt.answer, progress.thread_id, progress.usage)
        if result.exit_code == 0:
            summary = "codex exited with code 0 without completing the turn"
        else:
            summary = f"codex exited with code {result.exit_code}"
        if progress.error_message:
            summary += f": {progress.error_message}"
        stderr = _clean_stderr(result.stderr_tail)
        message = f"{summary}\n{stderr}" if stderr else summary
        return RunOutcome(
            "failed",
            "",
            progress.thread_id,
            progress.usage,
            {"code": "codex_failed", "message": message},
        )

    def _dry_run(self, request: RunRequest, emit: Emit) -> RunOutcome:
        """Echo the prompt as codex's answer without starting anything (load tests)."""
        item = {"id": "item_0", "type": "agent_message", "text": request.prompt}
        event = truncate_event({"type": "item.completed", "item": item})
        emit({"kind": "codex", "data": event, "summary": "answered (dry run)"})
        usage = {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0}
        return structured(
            request, RunOutcome("succeeded", request.prompt, request.thread_id, usage)
        )


def structured(request: RunRequest, outcome: RunOutcome) -> RunOutcome:
    """A success whose answer must be JSON (fitting a schema) that is not: a failure."""
    if outcome.status != "succeeded" or not (request.output_schema or request.json_object):
        return outcome
    try:
        value = json.loads(outcome.answer)
    except ValueError as exc:
        problem = f"is not JSON ({exc})"
    else:
        problem = ""
        if request.output_schema is not None:
            try:
                jsonschema.validate(value, request.output_schema)
            except jsonschema.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
                problem = f"does not fit the schema at {where}: {exc.message}"
            except jsonschema.SchemaError as exc:
                problem = f"cannot be checked: the schema is invalid ({exc.message})"
        elif not isinstance(value, dict):
            problem = "is not a JSON object"
    if not problem:
        return outcome
    message = f"codex's answer {problem}"[:500]
    return RunOutcome(
        "failed",
        "",
        outcome.thread_id,
        outcome.usage,
        {"code": "invalid_structured_output", "message": message},
    )
