"""The prompt optimizer against a stub chat-completions server, alone and in the pipeline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.engine import CodexEngine
from executor.factory import make_optimizer
from executor.optimizer import (
    OptimizerState,
    PromptOptimizer,
    ReplyError,
    build_request,
    parse_reply,
)
from executor.pipeline import Decision, Job, Pipeline, Result
from executor.settings import ExecutorSettings
from executor.transport_local import LocalTransport
from kernel.logs import redact
from testkit.fakes.chat_model import CHAT_API_KEY, CHAT_MODEL, StubChatModel, completion

PROMPT = "open a PR in acme/api fixing issue #42 (see https://example.com/x)"
OPTIMIZED = "In the repository acme/api, fix issue #42 and open a pull request."
CLIS = ["codex", "git", "gh"]

Settings = Callable[..., ExecutorSettings]


@pytest.fixture
def make_settings(chat_model: StubChatModel, tmp_path: Path) -> Settings:
    """ExecutorSettings pointed at the stub, with explicit values only."""

    def make(**overrides: Any) -> ExecutorSettings:
        values: dict[str, Any] = {
            "OPTIMIZE_PROMPT": True,
            "OPENAI_BASE_URL": chat_model.base_url,
            "OPENAI_API_KEY": CHAT_API_KEY,
            "MODEL": CHAT_MODEL,
            "OPTIMIZER_TIMEOUT_S": 10.0,
            "EXEC_DRY_RUN": True,
            "EXEC_WORKDIR": tmp_path,
        }
        values.update(overrides)
        return ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
async def optimizer(make_settings: Settings) -> AsyncIterator[PromptOptimizer]:
    """An optimizer on the stub that names codex, git and gh."""
    async with PromptOptimizer(make_settings(), clis=CLIS) as opt:
        yield opt


def assert_skipped(decision: Decision, *, why: str = "") -> None:
    """The request went through unchanged, with a reason that holds no key."""
    assert decision.executable is True
    assert decision.prompt == PROMPT
    assert decision.skipped
    assert why in decision.skipped
    assert CHAT_API_KEY not in decision.skipped


# --- the exchange ----------------------------------------------------------------------


async def test_decision_is_used(optimizer: PromptOptimizer, chat_model: StubChatModel) -> None:
    """An executable decision gives the optimized prompt and the model's reason."""
    chat_model.reply_decision(True, "clear request", OPTIMIZED)
    decision = await optimizer.decide(PROMPT)
    assert decision == Decision(executable=True, reason="clear request", prompt=OPTIMIZED)


async def test_request_carries_model_clis_prompt_and_key(
    optimizer: PromptOptimizer, chat_model: StubChatModel
) -> None:
    """The model, the CLI list, the request verbatim and the Bearer key are sent."""
    await optimizer.decide(PROMPT)
    [request] = chat_model.completions
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.authorization == f"Bearer {CHAT_API_KEY}"
    assert request.body["model"] == CHAT_MODEL
    assert request.body["response_format"] == {"type": "json_object"}
    assert "codex, git, gh" in request.message("system")
    assert request.message("user") == PROMPT


async def test_clis_come_from_the_environment_given(
    make_settings: Settings, chat_model: StubChatModel
) -> None:
    """Without an explicit list, the CLIs are detected from the environ passed in."""
    settings = make_settings(AVAILABLE_CLIS="terraform")
    async with PromptOptimizer(settings, environ={"KUBECONFIG": "/kube"}) as opt:
        assert opt.clis == ["codex", "git", "kubectl", "terraform"]
        await opt.decide(PROMPT)
    assert "codex, git, kubectl, terraform" in chat_model.completions[0].message("system")


async def test_fenced_json_is_accepted(
    optimizer: PromptOptimizer, chat_model: StubChatModel
) -> None:
    """A decision inside a ```json fence, with prose around it, is read."""
    chat_model.reply_decision(True, "ok", OPTIMIZED, fenced=True)
    decision = await optimizer.decide(PROMPT)
    assert decision.prompt == OPTIMIZED
    assert decision.skipped is None


async def test_not_executable(optimizer: PromptOptimizer, chat_model: StubChatModel) -> None:
    """A not-executable verdict is passed on with its reason."""
    chat_model.reply_decision(False, "No Jira CLI is available; ask for a GitHub issue instead.")
    decision = await optimizer.decide(PROMPT)
    assert decision.executable is False
    assert decision.reason == "No Jira CLI is available; ask for a GitHub issue instead."
    assert decision.skipped is None


async def test_json_mode_refused_is_asked_again_without_it(
    optimizer: PromptOptimizer, chat_model: StubChatModel
) -> None:
    """A server that rejects response_format is asked once more without it."""
    chat_model.reply_status(400, "response_format is not supported by this model")
    chat_model.reply_decision(True, "ok", OPTIMIZED)
    decision = await optimizer.decide(PROMPT)
    assert decision.prompt == OPTIMIZED
    first, second = chat_model.completions
    assert "response_format" in first.body
    assert "response_format" not in second.body


async def test_concurrent_decisions_share_one_client(
    optimizer: PromptOptimizer, chat_model: StubChatModel
) -> None:
    """Several requests at once each get their own decision."""
    prompts = [f"task {i}" for i in range(5)]
    decisions = await asyncio.gather(*(optimizer.decide(p) for p in prompts))
    assert [d.prompt for d in decisions] == [f"optimized: {p}" for p in prompts]
    assert optimizer.state is OptimizerState.OPEN


# --- failures never lose the request ----------------------------------------------------


@pytest.mark.parametrize(
    ("script", "why"),
    [
        (lambda s: s.reply_status(500, "upstream exploded"), "HTTP 500"),
        (lambda s: s.reply_status(503, "overloaded"), "HTTP 503"),
        (lambda s: s.reply_status(429, "slow down"), "HTTP 429"),
        (lambda s: s.reply_content("Sure! I would rewrite it as: do the thing."), "JSON"),
        (lambda s: s.reply_content("```json\n{not json}\n```"), "JSON"),
        (lambda s: s.reply_body("<html>Bad gateway</html>"), "not JSON"),
        (lambda s: s.reply_content('["executable", true]'), "not a JSON object"),
        (lambda s: s.reply_content('{"executable": true, "reason": "x"}'), "optimized_prompt"),
        (
            lambda s: s.reply_content(
                '{"executable": "yes", "reason": "x", "optimized_prompt": "y"}'
            ),
            "executable",
        ),
        (
            lambda s: s.reply_content('{"executable": true, "reason": 3, "optimized_prompt": "y"}'),
            "reason",
        ),
        (lambda s: s.reply_decision(True, "ok", "   "), "optimized_prompt"),
        (lambda s: s.reply_decision(False, ""), "without a reason"),
        (lambda s: s.reply_content(""), "empty"),
    ],
)
async def test_failures_keep_the_original_prompt(
    optimizer: PromptOptimizer,
    chat_model: StubChatModel,
    script: Callable[[StubChatModel], None],
    why: str,
) -> None:
    """An HTTP error or a reply that is not the decision asked for skips optimization."""
    script(chat_model)
    assert_skipped(await optimizer.decide(PROMPT), why=why)


async def test_reply_without_choices_is_skipped(
    optimizer: PromptOptimizer, chat_model: StubChatModel
) -> None:
    """A JSON body that is not a chat completion skips optimization."""
    chat_model.reply_body('{"object": "list", "data": []}', content_type="application/json")
    assert_skipped(await optimizer.decide(PROMPT), why="no message")


async def test_wrong_key_is_skipped_without_leaking(
    make_settings: Settings, chat_model: StubChatModel, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 (whose body quotes the key) skips; the key is in neither reason nor logs."""
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-that-must-not-leak-0000"
    async with PromptOptimizer(make_settings(OPENAI_API_KEY=wrong), clis=CLIS) as opt:
        decision = await opt.decide(PROMPT)
    assert decision.executable is True and decision.prompt == PROMPT
    assert decision.skipped is not None and "HTTP 401" in decision.skipped
    assert wrong not in decision.skipped
    assert "HTTP 401" in caplog.text
    assert wrong not in caplog.text


async def test_timeout_is_skipped(make_settings: Settings, chat_model: StubChatModel) -> None:
    """A model that never answers is given up on after OPTIMIZER_TIMEOUT_S."""
    chat_model.reply_hang()
    async with PromptOptimizer(make_settings(OPTIMIZER_TIMEOUT_S=0.2), clis=CLIS) as opt:
        decision = await opt.decide(PROMPT)
    assert_skipped(decision, why="no answer within 0.2 s")


async def test_connection_refused_is_skipped(
    make_settings: Settings, unreachable_port: int
) -> None:
    """A closed port skips optimization and names the setting to check."""
    settings = make_settings(OPENAI_BASE_URL=f"http://127.0.0.1:{unreachable_port}/v1")
    async with PromptOptimizer(settings, clis=CLIS) as opt:
        decision = await opt.decide(PROMPT)
    assert_skipped(decision, why="OPENAI_BASE_URL")


async def test_bad_base_url_is_skipped(make_settings: Settings) -> None:
    """A base URL that is not http(s) skips optimization."""
    async with PromptOptimizer(make_settings(OPENAI_BASE_URL="ftp://nowhere/v1"), clis=CLIS) as o:
        assert_skipped(await o.decide(PROMPT), why="OPENAI_BASE_URL")


@pytest.mark.parametrize(
    ("overrides", "why"),
    [({"OPENAI_API_KEY": ""}, "no API key"), ({"MODEL": ""}, "no model")],
)
async def test_missing_key_or_model_is_skipped_without_asking(
    make_settings: Settings,
    chat_model: StubChatModel,
    overrides: dict[str, str],
    why: str,
) -> None:
    """Without a key or a model nothing is sent and the reason says which is missing."""
    async with PromptOptimizer(make_settings(**overrides), clis=CLIS) as opt:
        assert_skipped(await opt.decide(PROMPT), why=why)
    assert chat_model.requests == []


async def test_key_unfit_for_a_header_is_skipped_without_leaking(
    make_settings: Settings, chat_model: StubChatModel, caplog: pytest.LogCaptureFixture
) -> None:
    """A key with a line break is never put in a header nor shown."""
    caplog.set_level(logging.DEBUG)
    key = "sk-line-break\ninjected-header-value-1234"
    async with PromptOptimizer(make_settings(OPENAI_API_KEY=key), clis=CLIS) as opt:
        decision = await opt.decide(PROMPT)
    assert decision.skipped and "header" in decision.skipped
    assert "injected-header-value" not in decision.skipped + caplog.text
    assert chat_model.requests == []


async def test_key_never_logged(
    make_settings: Settings, chat_model: StubChatModel, caplog: pytest.LogCaptureFixture
) -> None:
    """Across a success and every kind of failure, no log line carries the key."""
    caplog.set_level(logging.DEBUG)
    chat_model.reply_decision(True, "ok", OPTIMIZED)
    chat_model.reply_status(500)
    chat_model.reply_content("not json")
    chat_model.reply_hang()
    async with PromptOptimizer(make_settings(OPTIMIZER_TIMEOUT_S=0.5), clis=CLIS) as opt:
        results = [await opt.decide(PROMPT) for _ in range(4)]
    assert results[0].prompt == OPTIMIZED
    assert all(r.skipped for r in results[1:])
    assert "prompt optimization skipped" in caplog.text
    assert CHAT_API_KEY not in caplog.text


async def test_key_is_registered_for_redaction(make_settings: Settings) -> None:
    """Constructing the optimizer registers its key, so any log line would mask it."""
    key = "plainkey-without-a-known-shape-7f3a"
    async with PromptOptimizer(make_settings(OPENAI_API_KEY=key), clis=CLIS):
        assert key not in redact(f"Authorization: {key}")


# --- settings fallbacks -----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["OPENWEBUI", "LITELLM"])
async def test_fallback_key_and_model_are_used(
    make_settings: Settings, chat_model: StubChatModel, prefix: str
) -> None:
    """An empty OPENAI_API_KEY and MODEL take OpenWebUI's, else LiteLLM's."""
    settings = make_settings(
        OPENAI_API_KEY="",
        MODEL="",
        **{f"{prefix}_API_KEY": CHAT_API_KEY, f"{prefix}_MODEL": CHAT_MODEL},
    )
    async with PromptOptimizer(settings, clis=CLIS) as opt:
        decision = await opt.decide(PROMPT)
    assert decision.skipped is None
    [request] = chat_model.completions
    assert request.authorization == f"Bearer {CHAT_API_KEY}"
    assert request.body["model"] == CHAT_MODEL


def test_fallback_order() -> None:
    """OpenAI's values win over OpenWebUI's, which win over LiteLLM's."""

    def settings(**values: Any) -> ExecutorSettings:
        return ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]

    fallbacks = {
        "OPENWEBUI_API_KEY": "k-owui",
        "LITELLM_API_KEY": "k-lite",
        "OPENWEBUI_MODEL": "m-owui",
        "LITELLM_MODEL": "m-lite",
    }
    s = settings(**fallbacks)
    assert (s.openai_api_key.get_secret_value(), s.model) == ("k-owui", "m-owui")
    s = settings(OPENAI_API_KEY="k-oa", MODEL="m-oa", **fallbacks)
    assert (s.openai_api_key.get_secret_value(), s.model) == ("k-oa", "m-oa")
    s = settings(LITELLM_API_KEY="k-lite", LITELLM_MODEL="m-lite")
    assert (s.openai_api_key.get_secret_value(), s.model) == ("k-lite", "m-lite")


def test_base_url_is_never_taken_from_fallbacks(
    monkeypatch: pytest.MonkeyPatch, chat_model: StubChatModel
) -> None:
    """OPENWEBUI_/LITELLM_ base URLs are ignored: OPENAI_BASE_URL keeps its default."""
    monkeypatch.setenv("OPENWEBUI_BASE_URL", chat_model.base_url)
    monkeypatch.setenv("LITELLM_BASE_URL", chat_model.base_url)
    monkeypatch.setenv("OPENWEBUI_API_KEY", "k-owui")
    settings = ExecutorSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.openai_base_url == "https://api.openai.com/v1"
    assert settings.openai_api_key.get_secret_value() == "k-owui"


# --- lifecycle and pure helpers ---------------------------------------------------------


async def test_aclose_is_idempotent_and_later_calls_skip(
    make_settings: Settings, chat_model: StubChatModel
) -> None:
    """After aclose the optimizer sends nothing and skips; closing twice is fine."""
    opt = PromptOptimizer(make_settings(), clis=CLIS)
    assert opt.state is OptimizerState.IDLE
    await opt.decide(PROMPT)
    assert opt.state is OptimizerState.OPEN
    await opt.aclose()
    await opt.aclose()
    assert opt.state is OptimizerState.CLOSED
    assert_skipped(await opt.decide(PROMPT), why="closed")
    assert len(chat_model.requests) == 1


def test_factory_builds_the_optimizer(make_settings: Settings) -> None:
    """make_optimizer finds this module and builds a PromptOptimizer."""
    assert isinstance(make_optimizer(make_settings()), PromptOptimizer)


def test_build_request_without_json_mode() -> None:
    """json_mode=False leaves response_format out and keeps the messages."""
    body = build_request("m", "do it", ["codex"], json_mode=False)
    assert "response_format" not in body
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_parse_reply_allows_null_prompt_when_not_executable() -> None:
    """A rejection may carry a null optimized_prompt; the reason is trimmed."""
    content = '{"executable": false, "reason": " Needs Jira. ", "optimized_prompt": null}'
    assert parse_reply(completion(content, "m")) == Decision(False, reason="Needs Jira.")


def test_parse_reply_rejects_non_dict_body() -> None:
    """A body that is not an object raises ReplyError."""
    with pytest.raises(ReplyError):
        parse_reply(["not", "a", "completion"])


# --- the pipeline end to end -------------------------------------------------------------


async def run_job(
    settings: ExecutorSettings, prompt: str = PROMPT
) -> tuple[Result, list[Any], list[Any]]:
    """Run one job through Pipeline + a dry-run CodexEngine + the real optimizer."""
    events: list[dict[str, Any]] = []
    states: list[tuple[str, str | None]] = []
    transport = LocalTransport()
    try:
        async with PromptOptimizer(settings, clis=CLIS) as opt:
            pipeline = Pipeline(settings, CodexEngine(settings, transport), opt)
            result = await pipeline.run(
                Job(run_id="r-1", prompt=prompt),
                events.append,
                lambda state, effective: states.append((state, effective)),
            )
    finally:
        await transport.close()
    return result, events, states


async def test_pipeline_runs_the_optimized_prompt(
    make_settings: Settings, chat_model: StubChatModel
) -> None:
    """The optimized prompt is the effective prompt codex gets."""
    chat_model.reply_decision(True, "clear", OPTIMIZED)
    result, events, states = await run_job(make_settings())
    assert result.status == "succeeded"
    assert result.effective_prompt == OPTIMIZED
    assert result.answer == OPTIMIZED  # the dry run echoes what codex was given
    assert states == [("optimizing", None), ("running", OPTIMIZED)]
    assert events[0]["decision"] == "optimized"


async def test_pipeline_rejects_what_is_not_executable(
    make_settings: Settings, chat_model: StubChatModel
) -> None:
    """A not-executable verdict ends the run rejected with the reason; codex never runs."""
    chat_model.reply_decision(False, "There is no Jira CLI here.")
    result, events, states = await run_job(make_settings())
    assert result.status == "rejected"
    assert result.error == {"code": "not_executable", "message": "There is no Jira CLI here."}
    assert states == [("optimizing", None)]
    assert not any(e.get("kind") == "codex" for e in events)


async def test_pipeline_goes_on_when_the_optimizer_fails(
    make_settings: Settings, chat_model: StubChatModel
) -> None:
    """A failing optimizer leaves the original prompt, and the answer says why."""
    chat_model.reply_status(500)
    result, events, _ = await run_job(make_settings())
    assert result.status == "succeeded"
    assert result.effective_prompt == PROMPT
    assert result.answer.startswith(PROMPT)
    assert "(prompt optimization was skipped: the model API answered HTTP 500)" in result.answer
    assert CHAT_API_KEY not in repr(events) + repr(result)


async def test_pipeline_skips_the_optimizer_when_off(
    make_settings: Settings, chat_model: StubChatModel
) -> None:
    """With OPTIMIZE_PROMPT off nothing is asked and the prompt runs as given."""
    result, _, _ = await run_job(make_settings(OPTIMIZE_PROMPT=False))
    assert result.effective_prompt == PROMPT
    assert chat_model.requests == []
