"""Prompt optimization: an upstream chat model rewrites a request for codex, or rejects it.

`PromptOptimizer.decide` sends the request, with the CLIs this executor has
(`executor.clis.available_clis`), to ``OPENAI_BASE_URL`` + ``/chat/completions`` as
``MODEL``, and asks for one JSON object::

    {"executable": true|false, "reason": "...", "optimized_prompt": "..."}

(``response_format`` ``json_object``; a reply with the object inside a ```json fence is
accepted too). What comes back, as an `executor.pipeline.Decision`:

- ``executable: true`` -> ``Decision(True, reason, prompt=optimized_prompt)``;
- ``executable: false`` -> ``Decision(False, reason)``: the pipeline ends the run
  ``rejected`` and the origin is told the reason;
- anything else -> ``Decision(True, prompt=<the original>, skipped=<why>)``: no key or
  model, a timeout (``OPTIMIZER_TIMEOUT_S``), a refused connection, an HTTP error, a reply
  that is not the JSON asked for or has missing or mistyped fields. The request is never
  lost; the run goes on with the original prompt and its answer says why.

The API key travels only in the ``Authorization`` header. It is registered with
`kernel.logs.register_secret`, and no text of an httpx exception (which can hold URLs or
header values) ever reaches a log line, an event or a ``skipped`` reason: those are
fixed, short phrases. Errors inside this module, none of which escape ``decide``::

    OptimizerError
    ├── UpstreamStatus   the API answered an HTTP error (``status``)
    └── ReplyError       the answer is not the decision asked for

One `httpx.AsyncClient` is shared by every call, created on first use and closed by
`PromptOptimizer.aclose` (or leaving ``async with``).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from executor.clis import available_clis
from executor.pipeline import Decision
from executor.settings import ExecutorSettings
from kernel.logs import register_secret

__all__ = [
    "SYSTEM_PROMPT",
    "OptimizerError",
    "OptimizerState",
    "PromptOptimizer",
    "ReplyError",
    "UpstreamStatus",
    "build_request",
    "parse_reply",
]

log = logging.getLogger(__name__)

#: The longest rejection reason passed on to the user.
MAX_REASON_CHARS = 500

SYSTEM_PROMPT = """\
You prepare requests for Codex, an autonomous coding agent working in a shell on the \
user's machine. It can read and write files in its working directory and run these \
command-line tools: {clis} (plus the usual shell utilities such as ls, grep, sed, curl \
and python).

For the request in the user's message:

1. Judge whether the agent can act on it. Answer "executable": false only when no \
action with those tools could fulfil it (for example it needs a service whose CLI is \
not listed, or physical access), or when it is not a task at all (a greeting, an empty \
or meaningless message). A question the agent can answer by reading code or files, by \
running commands, or from its own knowledge is executable. When in doubt, it is \
executable.
2. If it is executable, rewrite it as one precise, self-contained instruction for the \
agent: the goal, every step and constraint the user gave, and what to report back. Keep \
every concrete detail exactly as written: names, ids, numbers, paths, URLs, branches, \
quoted text and code. Never invent facts, files, values or requirements the request \
does not contain; where something is unclear, tell the agent to find it out (for \
example by inspecting the repository) instead of guessing. Do not widen the scope: \
nothing is to be changed, pushed or deleted that the user did not ask for. Write in \
the language of the request.
3. If it is not executable, give in "reason" one short sentence the user can act on: \
which tool or access is missing, or what to ask instead.

Reply with one JSON object and nothing else:
{{"executable": true or false, "reason": "one short sentence", \
"optimized_prompt": "the rewritten instruction, or an empty string when not executable"}}"""

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


class OptimizerError(Exception):
    """Why one optimization failed; the message is short and holds no secret."""


class UpstreamStatus(OptimizerError):
    """The chat-completions API answered with an HTTP error status."""

    def __init__(self, status: int) -> None:
        hint = {
            401: " (check OPENAI_API_KEY)",
            403: " (check OPENAI_API_KEY)",
            404: " (check OPENAI_BASE_URL and MODEL)",
            429: " (rate limited)",
        }.get(status, "")
        super().__init__(f"the model API answered HTTP {status}{hint}")
        self.status = status


class ReplyError(OptimizerError):
    """The API answered, but not with the JSON decision asked for."""


class OptimizerState(enum.Enum):
    """Lifecycle of a `PromptOptimizer`: no client yet, a live client, closed."""

    IDLE = "idle"
    OPEN = "open"
    CLOSED = "closed"


def build_request(
    model: str, prompt: str, clis: Sequence[str], *, json_mode: bool = True
) -> dict[str, Any]:
    """The chat-completions body that asks `model` to judge and rewrite `prompt`.

    The CLIs go in the system message, the request verbatim in the user message.
    ``json_mode`` adds ``response_format: {"type": "json_object"}``.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT.format(clis=", ".join(clis))},
            {"role": "user", "content": prompt},
        ],
    }
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def _extract_json(content: str) -> Any:
    """The JSON value `content` holds, bare or in a ```json fence; ReplyError if none."""
    text = content.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    for match in _FENCE.finditer(text):
        try:
            return json.loads(match.group(1).strip())
        except ValueError:
            continue
    raise ReplyError("the model's reply was not the JSON decision asked for")


def parse_reply(body: Any) -> Decision:
    """Turn a chat-completions response body into a Decision, or raise ReplyError.

    The message content must be a JSON object (bare or fenced) with a boolean
    ``executable``, a string ``reason`` and a string ``optimized_prompt``; the prompt
    must be non-empty when executable, the reason non-empty when not (the user is told
    it), and ``optimized_prompt`` may then be empty or null.
    """
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ReplyError("the model's reply had no message") from None
    if not isinstance(content, str) or not content.strip():
        raise ReplyError("the model's reply was empty")
    doc = _extract_json(content)
    if not isinstance(doc, dict):
        raise ReplyError("the model's reply was not a JSON object")
    missing = [k for k in ("executable", "reason", "optimized_prompt") if k not in doc]
    if missing:
        raise ReplyError(f"the model's reply lacked {', '.join(missing)}")
    executable, reason, optimized = doc["executable"], doc["reason"], doc["optimized_prompt"]
    if not isinstance(executable, bool):
        raise ReplyError("the model's reply had a non-boolean 'executable'")
    if not isinstance(reason, str):
        raise ReplyError("the model's reply had a non-string 'reason'")
    reason = reason.strip()[:MAX_REASON_CHARS]
    if executable:
        if not isinstance(optimized, str) or not optimized.strip():
            raise ReplyError("the model's reply had no 'optimized_prompt'")
        return Decision(executable=True, reason=reason, prompt=optimized.strip())
    if optimized is not None and not isinstance(optimized, str):
        raise ReplyError("the model's reply had a non-string 'optimized_prompt'")
    if not reason:
        raise ReplyError("the model judged the request not executable without a reason")
    return Decision(executable=False, reason=reason)


def _header_safe(key: str) -> bool:
    """True when `key` can go in an HTTP header as is (printable ASCII, no spaces)."""
    return key.isascii() and key.isprintable() and not any(c.isspace() for c in key)


def _transport_reason(exc: httpx.HTTPError) -> str:
    """A fixed phrase for a failed exchange; never the exception's text (it has URLs)."""
    if isinstance(exc, httpx.TimeoutException):
        return "the model API timed out"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect to the model API (check OPENAI_BASE_URL)"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "OPENAI_BASE_URL is not an http(s) URL"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "the model API dropped the connection"
    return "the request to the model API failed"


class PromptOptimizer:
    """Asks an OpenAI-compatible chat model to judge and rewrite each request.

    Implements `executor.pipeline.Optimizer`. ``clis`` defaults to
    `available_clis(settings, environ)`, with ``environ`` defaulting to ``os.environ``
    read once, here. Use as an async context manager, or call `aclose`.
    """

    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        clis: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        if clis is None:
            clis = available_clis(settings, os.environ if environ is None else environ)
        self._clis = list(clis)
        self._url = settings.openai_base_url.strip().rstrip("/") + "/chat/completions"
        self._timeout_s = settings.optimizer_timeout_s
        self._http: httpx.AsyncClient | None = None
        self._state = OptimizerState.IDLE
        register_secret(settings.openai_api_key)

    @property
    def clis(self) -> list[str]:
        """The CLIs named to the model."""
        return list(self._clis)

    @property
    def state(self) -> OptimizerState:
        """Where the optimizer is in its life."""
        return self._state

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the shared HTTP client; idempotent. Later calls to `decide` skip."""
        self._state = OptimizerState.CLOSED
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def decide(self, prompt: str) -> Decision:
        """Judge and rewrite `prompt`; on any failure, keep it and say why in ``skipped``.

        Never raises, except `asyncio.CancelledError` when the caller is cancelled.
        """
        key = self._settings.openai_api_key.get_secret_value().strip()
        model = self._settings.model.strip()
        if not key:
            return self._skip(prompt, "no API key is set (OPENAI_API_KEY)")
        if not model:
            return self._skip(prompt, "no model is set (MODEL)")
        if not _header_safe(key):
            return self._skip(prompt, "the API key holds characters a header cannot carry")
        if self._state is OptimizerState.CLOSED:
            return self._skip(prompt, "the optimizer is closed")
        try:
            async with asyncio.timeout(self._timeout_s):
                decision = await self._ask(key, model, prompt)
        except (TimeoutError, httpx.TimeoutException) as exc:
            return self._skip(prompt, f"no answer within {self._timeout_s:g} s", exc)
        except httpx.HTTPError as exc:
            return self._skip(prompt, _transport_reason(exc), exc)
        except httpx.InvalidURL as exc:
            return self._skip(prompt, "OPENAI_BASE_URL is not a valid URL", exc)
        except OptimizerError as exc:
            return self._skip(prompt, str(exc), exc)
        except Exception as exc:  # whatever it is, the request goes on unoptimized
            return self._skip(prompt, "the optimizer failed unexpectedly", exc)
        if decision.executable:
            log.info("prompt optimized (%d -> %d chars)", len(prompt), len(decision.prompt))
        else:
            log.info("request judged not executable: %s", decision.reason)
        return decision

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(self._timeout_s))
            self._state = OptimizerState.OPEN
        return self._http

    async def _post(self, key: str, body: dict[str, Any]) -> httpx.Response:
        return await self._client().post(
            self._url, json=body, headers={"Authorization": f"Bearer {key}"}
        )

    async def _ask(self, key: str, model: str, prompt: str) -> Decision:
        """One exchange (two when the API refuses ``response_format``)."""
        response = await self._post(key, build_request(model, prompt, self._clis))
        if response.status_code == 400 and "response_format" in response.text:
            # Some OpenAI-compatible servers do not know JSON mode; the prompt asks anyway.
            log.info("the model API refused response_format; asking again without it")
            response = await self._post(
                key, build_request(model, prompt, self._clis, json_mode=False)
            )
        if response.status_code >= 400:
            raise UpstreamStatus(response.status_code)
        try:
            body = response.json()
        except ValueError:
            raise ReplyError("the model API's answer was not JSON") from None
        return parse_reply(body)

    def _skip(self, prompt: str, why: str, exc: BaseException | None = None) -> Decision:
        # Only the fixed phrase and the exception's type are logged, never its text.
        kind = f" ({type(exc).__name__})" if exc is not None else ""
        log.warning("prompt optimization skipped: %s%s", why, kind)
        return Decision(executable=True, prompt=prompt, skipped=why)
