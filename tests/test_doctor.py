"""``codex-hub doctor`` on a healthy set-up and on broken ones, with the fixes it prints.

The healthy set-up is real: a hub in-process, the real codex logged in against the stub
model, the stub chat model as the optimizer's upstream, and the fake Slack and Telegram.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from bridges.slack.settings import SlackSettings
from bridges.telegram.settings import TelegramSettings
from codex_hub.config import UsageError
from codex_hub.doctor import (
    Check,
    check_clis,
    check_codex,
    check_hub,
    check_optimizer,
    check_secrets,
    check_slack,
    check_telegram,
    mask,
    render,
    run_doctor,
)
from executor.codex import TESTED_CODEX_VERSION
from executor.settings import ExecutorSettings
from testkit.fakes.chat_model import CHAT_API_KEY, CHAT_MODEL, StubChatModel
from testkit.fakes.model_server import STUB_API_KEY
from testkit.fakes.slack import APP_TOKEN, BOT_TOKEN, FakeSlack
from testkit.fakes.telegram import FAKE_BOT_USERNAME, FAKE_TOKEN, FakeTelegram
from tests.conftest import NODE_TOKEN, node_token, ws_url

SECRETS = (NODE_TOKEN, CHAT_API_KEY, BOT_TOKEN, APP_TOKEN, FAKE_TOKEN, STUB_API_KEY)
WRONG_SLACK_BOT = "xoxb-wrong-0000000000-not-the-bot-token"
WRONG_TELEGRAM = "123456:AAwrongTelegramTokenThatIsRefused00000"


def executor(**values: Any) -> ExecutorSettings:
    """Executor settings from explicit values only."""
    return ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]


def slack(**values: Any) -> SlackSettings:
    """Slack settings from explicit values only."""
    return SlackSettings(_env_file=None, **values)  # type: ignore[call-arg]


def telegram(**values: Any) -> TelegramSettings:
    """Telegram settings from explicit values only."""
    return TelegramSettings(_env_file=None, **values)  # type: ignore[call-arg]


def write_env(path: Path, values: dict[str, Any]) -> Path:
    """An env file holding exactly `values`."""
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


@pytest.fixture
def bin_dir(tmp_path: Path) -> Callable[..., Path]:
    """A PATH directory holding stand-ins for the named CLIs (and nothing else)."""

    def make(*names: str) -> Path:
        path = tmp_path / "bin"
        path.mkdir(exist_ok=True)
        for name in names:
            exe = path / name
            exe.write_text("#!/bin/sh\nexit 0\n")
            exe.chmod(0o755)
        return path

    return make


def by_name(report: str) -> dict[str, list[str]]:
    """Each check's line, plus its fix line when there is one, keyed by check name."""
    found: dict[str, list[str]] = {}
    current = ""
    for line in report.splitlines():
        if line.startswith("      fix: "):
            found[current].append(line.strip())
        elif not line.startswith("doctor:"):
            current = line[6:].split(":", 1)[0]
            found[current] = [line]
    return found


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --- the whole report -------------------------------------------------------------------


@pytest.mark.codex
async def test_healthy_setup_is_all_ok(
    hub: Any,
    codex_home: Path,
    codex_bin: str,
    chat_model: StubChatModel,
    fake_slack: FakeSlack,
    fake_telegram: FakeTelegram,
    bin_dir: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Everything set up right: every line ok, exit 0, no secret printed."""
    caplog.set_level(logging.INFO, logger="hub")
    env_file = write_env(
        tmp_path / "doctor.env",
        {
            "HUB_URL": ws_url(hub),
            "HUB_TOKEN": NODE_TOKEN,
            "CODEX_BIN": codex_bin,
            "CODEX_HOME": codex_home,
            "OPTIMIZE_PROMPT": "true",
            "OPENAI_BASE_URL": chat_model.base_url,
            "OPENAI_API_KEY": CHAT_API_KEY,
            "MODEL": CHAT_MODEL,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_BASE_URL": fake_slack.api_url,
            "TELEGRAM_BOT_TOKEN": FAKE_TOKEN,
            "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
        },
    )
    environ = {
        "PATH": str(bin_dir("git", "gh", "kubectl", "aws")),
        "GH_TOKEN": "gh-token-value",
        "KUBECONFIG": "/etc/kube/config",
        "AWS_PROFILE": "ops",
    }
    out = io.StringIO()

    code = await run_doctor(env_file, environ=environ, out=out)

    report = out.getvalue()
    checks = by_name(report)
    assert code == 0, report
    assert list(checks) == [
        "codex",
        "codex login",
        "cli git",
        "cli gh",
        "cli kubectl",
        "cli aws",
        "hub",
        "optimizer key",
        "optimizer model",
        "optimizer upstream",
        "slack bot token",
        "slack app token",
        "telegram",
    ]
    assert all(lines[0].startswith("ok ") for lines in checks.values()), report
    assert "codex-cli" in checks["codex"][0]
    assert "API key configured" in checks["codex login"][0]
    assert "welcomed" in checks["hub"][0] and "…" + NODE_TOKEN[-4:] in checks["hub"][0]
    assert f"@{FAKE_BOT_USERNAME}" in checks["telegram"][0]
    assert report.splitlines()[-1] == "doctor: 13 ok, 0 FAIL, 0 skip: all good"
    assert_no_secret(report)
    # What the checks sent: a capacity-0 executor hello, and the tokens where they belong.
    assert "executor codex-hub doctor connected (capacity 0)" in caplog.text
    [models] = [r for r in chat_model.requests if r.path == "/v1/models"]
    assert models.authorization == f"Bearer {CHAT_API_KEY}"
    assert [c.token for c in fake_slack.calls("auth.test")] == [BOT_TOKEN]
    assert [c.token for c in fake_slack.calls("apps.connections.open")] == [APP_TOKEN]


@pytest.mark.codex
async def test_broken_setup_names_each_fix(
    hub: Any,
    codex_home_logged_out: Path,
    codex_bin: str,
    fake_slack: FakeSlack,
    fake_telegram: FakeTelegram,
    bin_dir: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """Logged-out codex, wrong hub token, bad tokens, missing CLIs: each FAIL has its fix."""
    env_file = write_env(
        tmp_path / "doctor.env",
        {
            "HUB_URL": ws_url(hub),
            "HUB_TOKEN": "not-the-hub-token-1234",
            "CODEX_BIN": codex_bin,
            "CODEX_HOME": codex_home_logged_out,
            "OPTIMIZE_PROMPT": "true",
            "SLACK_BOT_TOKEN": WRONG_SLACK_BOT,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_BASE_URL": fake_slack.api_url,
            "TELEGRAM_BOT_TOKEN": WRONG_TELEGRAM,
            "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
        },
    )
    environ = {"PATH": str(bin_dir()), "GH_TOKEN": "gh-token-value"}
    out = io.StringIO()

    code = await run_doctor(env_file, environ=environ, out=out)

    report = out.getvalue()
    checks = by_name(report)
    assert code == 1
    login = checks["codex login"]
    assert login[0].startswith("FAIL") and "Not logged in" in login[0]
    assert "run `codex login --with-api-key`" in login[1]
    assert f"CODEX_HOME={codex_home_logged_out}" in login[1]
    assert checks["hub"][0].startswith("FAIL") and "4001" in checks["hub"][0]
    assert checks["hub"][1] == (
        "fix: set HUB_TOKEN to this executor's credential: the output of "
        "`codex-hub token executor` where the hub runs"
    )
    assert "invalid_auth" in checks["slack bot token"][0]
    assert "set SLACK_BOT_TOKEN to the Bot User OAuth Token" in checks["slack bot token"][1]
    assert checks["slack app token"][0].startswith("ok")
    assert "HTTP 401" in checks["telegram"][0]
    assert "set TELEGRAM_BOT_TOKEN" in checks["telegram"][1]
    assert "set OPENAI_API_KEY" in checks["optimizer key"][1]
    assert "set MODEL" in checks["optimizer model"][1]
    assert checks["optimizer upstream"][0].startswith("skip")
    assert "install git" in checks["cli git"][1]
    assert "GH_TOKEN is set" in checks["cli gh"][0]
    assert "or unset GH_TOKEN" in checks["cli gh"][1]
    assert checks["cli kubectl"][0].startswith("skip")
    assert report.splitlines()[-1].endswith("fix the FAIL lines above")
    for secret in (*SECRETS, WRONG_SLACK_BOT, WRONG_TELEGRAM, "not-the-hub-token-1234"):
        assert secret not in report


async def test_missing_bridge_settings_are_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unreachable_port: int
) -> None:
    """A build without the bridges' settings says so instead of failing."""
    monkeypatch.setitem(sys.modules, "bridges.slack.settings", None)  # import now fails
    env_file = write_env(
        tmp_path / "doctor.env",
        {"HUB_URL": f"ws://127.0.0.1:{unreachable_port}/ws", "CODEX_BIN": "/nonexistent/codex"},
    )
    out = io.StringIO()
    code = await run_doctor(env_file, environ={"PATH": ""}, out=out)
    checks = by_name(out.getvalue())
    assert code == 1
    assert checks["slack"] == [
        "skip  slack: bridges.slack.settings.SlackSettings is not available in this build"
    ]
    assert checks["telegram"][0].startswith("skip")


async def test_invalid_settings_fail_with_the_setting_named(tmp_path: Path) -> None:
    """Settings that do not validate are one FAIL naming the setting, never its value."""
    env_file = write_env(
        tmp_path / "doctor.env",
        {"SLACK_BOT_TOKEN": BOT_TOKEN, "HUB_URL": "ws://127.0.0.1:1/ws", "CODEX_BIN": "/no/codex"},
    )
    out = io.StringIO()
    assert await run_doctor(env_file, environ={"PATH": ""}, out=out) == 1
    line, fix = by_name(out.getvalue())["slack settings"]
    assert line.startswith("FAIL") and "SLACK_APP_TOKEN" in line
    assert fix.startswith("fix: correct the slack settings")
    assert BOT_TOKEN not in out.getvalue()


async def test_missing_env_file_is_a_usage_error(tmp_path: Path) -> None:
    """--env-file naming no file is refused like every other command refuses it."""
    with pytest.raises(UsageError, match="no such file"):
        await run_doctor(tmp_path / "absent.env", environ={}, out=io.StringIO())


# --- hub ------------------------------------------------------------------------------


async def test_hub_unreachable(unreachable_port: int) -> None:
    """A closed port: FAIL with how to start the hub or fix HUB_URL."""
    check = await check_hub(executor(HUB_URL=f"ws://127.0.0.1:{unreachable_port}/ws"))
    assert check.failed
    assert "connection refused" in check.detail
    assert "start the hub (`codex-hub serve` or `codex-hub up`)" in check.fix


async def test_hub_wrong_path(hub: Any) -> None:
    """A URL that is the hub but not /ws: FAIL telling to end HUB_URL with /ws."""
    check = await check_hub(executor(HUB_URL=f"ws://127.0.0.1:{hub.port}/nope"))
    assert check.failed and "HTTP 404" in check.detail
    assert "/ws" in check.fix


async def test_hub_url_not_websocket() -> None:
    """An http:// HUB_URL: FAIL with the URL shape to use."""
    check = await check_hub(executor(HUB_URL="http://127.0.0.1:8080/ws"))
    assert check.failed and check.fix == "set HUB_URL to ws://HOST:PORT/ws"


async def test_hub_that_never_welcomes_is_timed_out() -> None:
    """A websocket that accepts the hello but never answers fails within the time box."""
    hello_seen = asyncio.Event()
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        hello_seen.set()
        await release.wait()
        return ws

    app = web.Application()
    app.router.add_get("/ws", silent)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        check = await check_hub(executor(HUB_URL=f"ws://127.0.0.1:{port}/ws"), timeout_s=1.5)
    finally:
        release.set()
        await runner.cleanup()
    assert hello_seen.is_set()
    assert check.failed and "no welcome within 1.5 s" in check.detail


async def test_hub_that_refuses_the_host_name_says_which_setting() -> None:
    """A hub answering 403 (the name in HUB_URL is not one it serves) points at
    HUB_ALLOWED_HOSTS."""

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "host_not_allowed"}}, status=403)

    app = web.Application()
    app.router.add_get("/ws", refuse)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        check = await check_hub(executor(HUB_URL=f"ws://127.0.0.1:{site.port}/ws"))
    finally:
        await runner.cleanup()
    assert check.failed and "HTTP 403" in check.detail
    assert "HUB_ALLOWED_HOSTS" in check.fix


async def test_hub_without_token_says_so(hub_settings: Any) -> None:
    """A hub and node without HUB_TOKEN pass with the credential the hub wrote beside its
    store, and the line names that file."""
    from hub.app import HubServer

    server = HubServer(hub_settings.model_copy(update={"token": SecretStr("")}))
    await server.start()
    try:
        check = await check_hub(executor(HUB_URL=ws_url(server), HUB_DB=hub_settings.db))
    finally:
        await server.close()
    assert check.status == "ok", check.detail
    assert f"the executor credential in {hub_settings.db.with_suffix('.credentials')}" in (
        check.detail
    )


# --- codex ----------------------------------------------------------------------------


async def test_codex_binary_missing() -> None:
    """A CODEX_BIN that does not exist: FAIL with how to install or point at codex."""
    [check] = await check_codex(executor(CODEX_BIN="/nonexistent/dir/codex"))
    assert check.failed and "cannot start" in check.detail
    assert "CODEX_BIN" in check.fix and "make install" in check.fix


@pytest.mark.codex
async def test_codex_home_missing(codex_bin: str, tmp_path: Path) -> None:
    """A CODEX_HOME that does not exist: FAIL with the mkdir to run and the login."""
    home = tmp_path / "no-such-home"
    version, login = await check_codex(executor(CODEX_BIN=codex_bin, CODEX_HOME=home))
    assert version.status == "ok"
    assert login.failed and "does not exist" in login.detail
    assert f"mkdir -p {home}" in login.fix and "codex login --with-api-key" in login.fix


@pytest.mark.parametrize("printed", ["codex-cli 0.171.0", "codex-cli 0.168.2"])
async def test_a_codex_other_than_the_tested_one_is_a_warning(tmp_path: Path, printed: str) -> None:
    """A codex that is not the tested version: warn (not FAIL), naming both and how to move."""
    fake = tmp_path / "codex"
    fake.write_text(f"#!/bin/sh\necho '{printed}'\n")
    fake.chmod(0o755)
    version, _login = await check_codex(executor(CODEX_BIN=str(fake), CODEX_HOME=tmp_path))
    assert version.status == "warn" and not version.failed
    assert printed in version.detail and TESTED_CODEX_VERSION in version.detail
    assert "make codex" in version.fix and f"@openai/codex@{TESTED_CODEX_VERSION}" in version.fix
    report = render([version])
    assert "      fix: install the tested version" in report
    assert report.splitlines()[-1] == (
        "doctor: 0 ok, 1 warn, 0 FAIL, 0 skip: works, but read the warn lines above"
    )


@pytest.mark.codex
async def test_the_pinned_codex_is_the_tested_one(codex_bin: str, tmp_path: Path) -> None:
    """The codex `make install` puts in tools/ is the version doctor calls tested."""
    version, _login = await check_codex(executor(CODEX_BIN=codex_bin, CODEX_HOME=tmp_path))
    assert version.status == "ok", version
    assert version.detail.startswith(f"codex-cli {TESTED_CODEX_VERSION} at ")


@pytest.mark.codex
async def test_the_app_server_engine_reports_its_protocol_check(
    codex_bin: str, codex_home: Path
) -> None:
    """With EXEC_ENGINE=app-server doctor checks the binary's protocol: ok for the pinned one."""
    checks = await check_codex(
        executor(CODEX_BIN=codex_bin, CODEX_HOME=codex_home, EXEC_ENGINE="app-server")
    )
    assert [c.name for c in checks] == ["codex", "codex login", "codex app-server"]
    assert checks[2].status == "ok", checks[2]
    assert checks[2].detail == f"app-server protocol matches codex {TESTED_CODEX_VERSION}"


async def test_an_app_server_that_cannot_describe_its_protocol_fails(tmp_path: Path) -> None:
    """A codex whose app-server gives no schema: FAIL naming the tested version and the fix."""
    fake = tmp_path / "codex"
    fake.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) echo "codex-cli {TESTED_CODEX_VERSION}";; '
        'login) echo "Logged in using an API key" >&2;; '
        "*) echo 'unknown command' >&2; exit 2;; esac\n"
    )
    fake.chmod(0o755)
    checks = await check_codex(
        executor(CODEX_BIN=str(fake), CODEX_HOME=tmp_path, EXEC_ENGINE="app-server")
    )
    protocol = checks[-1]
    assert protocol.name == "codex app-server" and protocol.failed
    assert f"codex {TESTED_CODEX_VERSION}" in protocol.detail
    assert "unknown command" in protocol.detail
    assert "EXEC_ENGINE=exec" in protocol.fix


async def test_codex_over_ssh_is_skipped() -> None:
    """With EXEC_TRANSPORT=ssh codex is not here: skip, and say where to run the doctor."""
    checks = await check_codex(
        executor(EXEC_TRANSPORT="ssh", SSH_HOST="build-1", SSH_INSECURE_NO_HOST_KEY_CHECK=True)
    )
    assert [c.status for c in checks] == ["skip", "skip"]
    assert "build-1" in checks[0].detail


# --- CLIs -----------------------------------------------------------------------------


def test_clis_present_absent_and_listed(bin_dir: Callable[..., Path]) -> None:
    """Present CLIs are ok, wanted-but-missing ones FAIL, others are skipped with a note."""
    path = bin_dir("git", "aws", "terraform")
    checks = {
        c.name: c
        for c in check_clis(
            executor(AVAILABLE_CLIS="terraform,helm"), {"PATH": str(path), "KUBECONFIG": "/k"}
        )
    }
    assert list(checks) == [
        "cli git",
        "cli gh",
        "cli kubectl",
        "cli aws",
        "cli terraform",
        "cli helm",
    ]
    assert checks["cli git"].status == "ok" and checks["cli git"].detail == str(path / "git")
    assert checks["cli gh"].status == "skip" and "GitHub" in checks["cli gh"].detail
    assert checks["cli kubectl"].failed and "KUBECONFIG is set" in checks["cli kubectl"].detail
    assert "or unset KUBECONFIG" in checks["cli kubectl"].fix
    assert "not offered to the optimizer" in checks["cli aws"].detail
    assert checks["cli terraform"].status == "ok"
    assert checks["cli helm"].failed and "remove it from AVAILABLE_CLIS" in checks["cli helm"].fix


# --- optimizer ------------------------------------------------------------------------


def optimizer_settings(chat_model: StubChatModel, **values: Any) -> ExecutorSettings:
    return executor(
        **{
            "OPTIMIZE_PROMPT": True,
            "OPENAI_BASE_URL": chat_model.base_url,
            "OPENAI_API_KEY": CHAT_API_KEY,
            "MODEL": CHAT_MODEL,
            **values,
        }
    )


async def test_optimizer_off_is_skipped() -> None:
    """OPTIMIZE_PROMPT off: one skip line, nothing asked."""
    assert await check_optimizer(executor()) == [
        Check("optimizer", "skip", "OPTIMIZE_PROMPT is off")
    ]


async def test_optimizer_fallback_key_and_model(chat_model: StubChatModel) -> None:
    """OpenWebUI's key and model count when OPENAI_API_KEY and MODEL are empty."""
    settings = optimizer_settings(
        chat_model,
        OPENAI_API_KEY="",
        MODEL="",
        OPENWEBUI_API_KEY=CHAT_API_KEY,
        OPENWEBUI_MODEL=CHAT_MODEL,
    )
    checks = await check_optimizer(settings)
    assert [c.status for c in checks] == ["ok", "ok", "ok"]
    assert checks[0].detail == f"API key {mask(CHAT_API_KEY)}"


async def test_optimizer_wrong_key(chat_model: StubChatModel) -> None:
    """A refused key: FAIL naming OPENAI_API_KEY; the key is not shown."""
    wrong = "sk-wrong-optimizer-key-00000000000"
    *_, upstream = await check_optimizer(optimizer_settings(chat_model, OPENAI_API_KEY=wrong))
    assert upstream.failed and "HTTP 401" in upstream.detail
    assert upstream.fix == "set OPENAI_API_KEY to a key that is valid at OPENAI_BASE_URL"
    assert wrong not in render([upstream])


async def test_optimizer_model_not_served(chat_model: StubChatModel) -> None:
    """A MODEL the upstream does not list: FAIL with the models it does serve."""
    *_, upstream = await check_optimizer(optimizer_settings(chat_model, MODEL="gpt-nope"))
    assert upstream.failed and "MODEL=gpt-nope" in upstream.detail
    assert CHAT_MODEL in upstream.fix


async def test_optimizer_upstream_unreachable(unreachable_port: int) -> None:
    """A closed upstream port: FAIL telling to check OPENAI_BASE_URL."""
    settings = executor(
        OPTIMIZE_PROMPT=True,
        OPENAI_BASE_URL=f"http://127.0.0.1:{unreachable_port}/v1",
        OPENAI_API_KEY=CHAT_API_KEY,
        MODEL=CHAT_MODEL,
    )
    *_, upstream = await check_optimizer(settings)
    assert upstream.failed and "connection failed" in upstream.detail
    assert "OPENAI_BASE_URL" in upstream.fix


# --- chat platforms -------------------------------------------------------------------


async def test_slack_bad_app_token(fake_slack: FakeSlack) -> None:
    """An app token Slack refuses: the bot line ok, the app line FAIL with its fix."""
    settings = slack(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_APP_TOKEN="xapp-1-wrong-app-token-000000",
        SLACK_API_BASE_URL=fake_slack.api_url,
    )
    bot, app = await check_slack(settings)
    assert bot.status == "ok" and "@codex in Fake Team" in bot.detail
    assert app.failed and "invalid_auth" in app.detail
    assert "connections:write" in app.fix


async def test_slack_unreachable(unreachable_port: int) -> None:
    """Slack's API not reachable: both lines FAIL pointing at SLACK_API_BASE_URL."""
    settings = slack(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_APP_TOKEN=APP_TOKEN,
        SLACK_API_BASE_URL=f"http://127.0.0.1:{unreachable_port}/api/",
    )
    checks = await check_slack(settings)
    assert [c.status for c in checks] == ["FAIL", "FAIL"]
    assert all("SLACK_API_BASE_URL" in c.fix for c in checks)


async def test_telegram_unreachable_never_shows_the_token(
    unreachable_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The token is in getMe's URL, yet neither the report nor the logs carry it."""
    caplog.set_level(logging.DEBUG)
    settings = telegram(
        TELEGRAM_BOT_TOKEN=FAKE_TOKEN,
        TELEGRAM_API_BASE_URL=f"http://127.0.0.1:{unreachable_port}",
    )
    [check] = await check_telegram(settings)
    assert check.failed and "connection failed" in check.detail
    assert FAKE_TOKEN not in render([check])


async def test_unconfigured_platforms_are_skipped() -> None:
    """No tokens: one skip line each."""
    assert [c.status for c in await check_slack(slack())] == ["skip"]
    assert [c.status for c in await check_telegram(telegram())] == ["skip"]


# --- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "shown"),
    [("xoxb-123456789-abcdef", "…cdef"), ("short-token", "***"), ("", "(empty)")],
)
def test_mask_shows_at_most_four_characters(secret: str, shown: str) -> None:
    """Long secrets keep their last 4 characters, short ones none."""
    assert mask(secret) == shown


def test_render_puts_fix_under_failures_and_counts() -> None:
    """Each check is one line; a FAIL gets a fix line; the last line counts them."""
    report = render(
        [
            Check("a", "ok", "fine"),
            Check("b", "FAIL", "broken", "do this"),
            Check("c", "skip", "off", "ignored for skips"),
        ]
    )
    assert report == (
        "ok    a: fine\n"
        "FAIL  b: broken\n"
        "      fix: do this\n"
        "skip  c: off\n"
        "doctor: 1 ok, 1 FAIL, 1 skip: fix the FAIL lines above\n"
    )


def test_secrets_in_the_workdir_fail(tmp_path: Path) -> None:
    """A settings file or a store inside EXEC_WORKDIR is a FAIL naming it."""
    env_file = write_env(tmp_path / ".env", {"EXEC_DRY_RUN": "true"})
    settings = executor(EXEC_WORKDIR=tmp_path)
    (check,) = check_secrets(settings, env_file=env_file, db=None, configured=set(), euid=1000)
    assert check.status == "FAIL" and str(env_file) in check.detail
    (check,) = check_secrets(
        settings, env_file=None, db=tmp_path / "d" / "hub.db", configured=set(), euid=1000
    )
    assert check.status == "FAIL" and "data directory" in check.detail


def test_full_access_with_other_roles_secrets_is_a_warning(tmp_path: Path) -> None:
    """danger-full-access for one user holding the bots' tokens and the API keys warns,
    naming what codex can read and how to separate."""
    settings = executor(EXEC_WORKDIR=tmp_path / "work", CODEX_SANDBOX="danger-full-access")
    configured = {"HUB_TOKEN", "HUB_API_KEYS", "SLACK_BOT_TOKEN"}
    (check,) = check_secrets(settings, env_file=None, db=None, configured=configured, euid=1000)
    assert check.status == "warn"
    assert "HUB_API_KEYS, SLACK_BOT_TOKEN" in check.detail and "HUB_TOKEN," not in check.detail
    assert "own OS user" in check.fix
    (root,) = check_secrets(settings, env_file=None, db=None, configured=set(), euid=0)
    assert root.status == "warn" and "as root" in root.detail


def test_a_separated_executor_has_nothing_to_say_about_secrets(tmp_path: Path) -> None:
    """Only its own token and a sandbox, or full access with only its own: no line."""
    work = tmp_path / "work"
    for sandbox in ("workspace-write", "danger-full-access"):
        settings = executor(EXEC_WORKDIR=work, CODEX_SANDBOX=sandbox)
        assert (
            check_secrets(settings, env_file=None, db=None, configured={"HUB_TOKEN"}, euid=1000)
            == []
        )
    settings = executor(EXEC_WORKDIR=work, CODEX_SANDBOX="danger-full-access", EXEC_TRANSPORT="ssh")
    assert (
        check_secrets(settings, env_file=None, db=None, configured={"SLACK_BOT_TOKEN"}, euid=0)
        == []
    )


@pytest.mark.parametrize("role", ["executor", "slack"])
async def test_a_role_credential_is_recognised(hub: Any, role: str) -> None:
    """An executor's credential is welcomed; a bridge's is known to the hub, and said so,
    though the doctor's executor hello gets no runs with it."""
    check = await check_hub(executor(HUB_URL=ws_url(hub), HUB_TOKEN=node_token(role)))
    assert check.status == "ok", check.detail
    if role == "slack":
        assert "the slack bridge's credential" in check.detail


async def test_a_credential_of_another_hub_is_refused(hub: Any) -> None:
    """A credential derived from another hub's secret is refused with its fix."""
    from kernel.credentials import derive

    token = derive("another-hubs-secret-0123456789", "slack")
    check = await check_hub(executor(HUB_URL=ws_url(hub), HUB_TOKEN=token))
    assert check.failed and "4001" in check.detail and "codex-hub token executor" in check.fix
