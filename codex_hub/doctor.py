"""``codex-hub doctor``: check the set-up of this machine and say what to fix.

Checks, in the order they are printed:

- **codex**: the binary (``CODEX_BIN``, ``tools/``, PATH) answers ``codex --version``,
  ``CODEX_HOME`` exists, and ``codex login status`` (with that ``CODEX_HOME``) says it is
  logged in; with ``EXEC_ENGINE=app-server``, **codex app-server**: the binary's
  app-server protocol (the schema it generates) is the one the engine was tested with;
- **cli**: git, gh, kubectl and aws (and anything ``AVAILABLE_CLIS`` adds) on PATH. A
  CLI the optimizer will tell the model about (`executor.clis.available_clis`) but that
  is missing is a failure; any other missing CLI is a ``skip`` saying what it is for;
- **hub**: ``HUB_URL`` accepts a websocket and answers a hello (role executor, node id
  ``doctor-<pid>``, capacity 0, ``HUB_TOKEN``) with ``welcome``; a refusal is reported
  with its close code and reason (4001: wrong token);
- **optimizer** (when ``OPTIMIZE_PROMPT`` is on): a key and a model are set, and
  ``GET {OPENAI_BASE_URL}/models`` with the key answers and lists ``MODEL``;
- **slack** / **telegram** (when their tokens are set): ``auth.test`` with the bot token
  and ``apps.connections.open`` with the app token; ``getMe`` with the bot token;
- **secrets** (only when there is something to say): a ``FAIL`` when codex would work in
  a directory holding the settings file, the hub's store or a ``*_FILE`` secret; a
  ``warn`` when ``CODEX_SANDBOX=danger-full-access`` runs codex's commands as a user who
  also holds other roles' secrets (one machine, one user: ``codex-hub up``), or as root.

Every check prints one line, ``ok``, ``FAIL`` or ``skip``, with what was found; a
failure is followed by a ``fix:`` line with what to do. Secrets are shown as their last
four characters at most, and every line is passed through `kernel.logs.redact`. Every
network check is time-boxed. `run_doctor` returns 0 when nothing failed, else 1.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import json
import os
import shutil
import sys
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from executor.clis import CLI_PURPOSES, CONDITIONAL, available_clis
from executor.codex import TESTED_CODEX_VERSION, resolve_codex_bin
from executor.engine_appserver import AppServerEngine, IncompatibleAppServer
from executor.settings import ExecutorSettings
from executor.transport import SpawnError
from executor.transport_local import LocalTransport
from kernel.credentials import BRIDGE_PLATFORMS, credentials_path, looks_derived, node_token
from kernel.logs import redact, register_secret, register_settings_secrets
from wire import (
    CLOSE_BAD_HELLO,
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHORIZED,
    Hello,
    WelcomeFrame,
    decode,
    encode_frame,
)

if TYPE_CHECKING:  # imported lazily at run time: a build may ship without the bridges
    from bridges.slack.settings import SlackSettings
    from bridges.telegram.settings import TelegramSettings

__all__ = [
    "Check",
    "check_clis",
    "check_codex",
    "check_hub",
    "check_optimizer",
    "check_slack",
    "check_telegram",
    "diagnose",
    "load_all",
    "mask",
    "render",
    "run_doctor",
]

Status = Literal["ok", "warn", "FAIL", "skip"]

#: Each network check gives up after this long.
NETWORK_TIMEOUT_S = 5.0
#: Each codex command gives up after this long (codex starts in well under a second).
CODEX_TIMEOUT_S = 10.0
#: The CLIs always reported on, besides codex.
KNOWN_CLIS: tuple[str, ...] = ("git", "gh", "kubectl", "aws")


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it went, what was found, and the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        """True for a ``FAIL``."""
        return self.status == "FAIL"

    @property
    def advised(self) -> bool:
        """True when the line comes with a ``fix:``: a ``FAIL`` or a ``warn``."""
        return self.status in ("FAIL", "warn")


def mask(secret: str) -> str:
    """A secret as ``…`` plus its last 4 characters, or ``***`` when it is short."""
    secret = secret.strip()
    if not secret:
        return "(empty)"
    return f"…{secret[-4:]}" if len(secret) >= 12 else "***"


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "FAIL", detail, fix)


def _http_problem(exc: httpx.HTTPError | httpx.InvalidURL) -> str:
    """A fixed phrase for a failed HTTP exchange; never its text (URLs can hold tokens)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return "not an http(s) URL"
    return f"request failed ({type(exc).__name__})"


# --- codex --------------------------------------------------------------------------


def _codex_env(settings: ExecutorSettings) -> dict[str, str]:
    home = settings.codex_home
    return {"CODEX_HOME": os.fspath(home)} if home is not None else {}


def _home_missing(home: Path | None) -> bool:
    return home is not None and not home.is_dir()


def _where(settings: ExecutorSettings) -> str:
    home = settings.codex_home
    return f"CODEX_HOME={home}" if home is not None else "CODEX_HOME (default ~/.codex)"


async def check_codex(
    settings: ExecutorSettings, *, timeout_s: float = CODEX_TIMEOUT_S
) -> list[Check]:
    """codex found and answering ``--version``; ``CODEX_HOME`` present; logged in."""
    if settings.exec_transport == "ssh":
        host = settings.ssh_host or "SSH_HOST"
        note = f"EXEC_TRANSPORT=ssh: codex runs on {host}; run `codex-hub doctor` there"
        checks = [Check("codex", "skip", note), Check("codex login", "skip", note)]
        if settings.exec_engine == "app-server":
            checks.append(Check("codex app-server", "skip", note))
        return checks
    try:
        codex_bin = resolve_codex_bin(settings.codex_bin)
    except FileNotFoundError:
        return [
            _fail(
                "codex",
                "no codex binary found (CODEX_BIN, tools/, PATH)",
                "run `make install`, or set CODEX_BIN to the codex binary",
            )
        ]
    home = settings.codex_home
    env = _codex_env(settings)
    transport = LocalTransport()
    try:
        checks = [await _codex_version(transport, codex_bin, env, timeout_s)]
        if checks[0].failed:
            return checks
        if _home_missing(home):
            checks.append(
                _fail(
                    "codex login",
                    f"CODEX_HOME={home} does not exist (codex refuses to start)",
                    f"run `mkdir -p {home}`, then log in: run `codex login --with-api-key` "
                    f"with CODEX_HOME={home} (the key on stdin)",
                )
            )
            return checks
        checks.append(await _codex_login(transport, codex_bin, settings, timeout_s))
        if settings.exec_engine == "app-server":
            checks.append(await _app_server_protocol(transport, codex_bin, settings, timeout_s))
        return checks
    finally:
        await transport.close()


async def _app_server_protocol(
    transport: LocalTransport, codex_bin: str, settings: ExecutorSettings, timeout_s: float
) -> Check:
    """EXEC_ENGINE=app-server: the binary speaks the app-server protocol it was tested with."""
    engine = AppServerEngine(settings, transport, codex_bin=codex_bin)
    try:
        async with asyncio.timeout(timeout_s):
            detail = await engine.check_protocol()
    except TimeoutError:
        return _fail(
            "codex app-server",
            f"`codex app-server generate-json-schema` gave no answer within {timeout_s:g} s",
            "reinstall codex (`make install`), or set EXEC_ENGINE=exec",
        )
    except IncompatibleAppServer as exc:
        return _fail(
            "codex app-server",
            str(exc),
            f"install codex {TESTED_CODEX_VERSION} (`make codex`) and point CODEX_BIN at it, "
            "or set EXEC_ENGINE=exec",
        )
    return Check("codex app-server", "ok", detail)


async def _codex_version(
    transport: LocalTransport, codex_bin: str, env: dict[str, str], timeout_s: float
) -> Check:
    lines: list[str] = []
    try:
        result = await transport.run(
            [codex_bin, "--version"],
            env_overrides=env,
            cwd=None,
            on_stdout_line=lines.append,
            timeout_s=timeout_s,
        )
    except SpawnError as exc:
        return _fail(
            "codex",
            str(exc),
            "set CODEX_BIN to an executable codex binary, or run `make install`",
        )
    version = next((line.strip() for line in lines if line.strip()), "")
    if result.exit_code == 0 and version:
        return _tested_or_warn(version, codex_bin)
    why = "timed out" if result.timed_out else f"exited with {result.exit_code}"
    return _fail(
        "codex",
        f"`{codex_bin} --version` {why}",
        "reinstall codex (`make install`) or point CODEX_BIN at a working binary",
    )


def _tested_or_warn(version: str, codex_bin: str) -> Check:
    """``ok`` for the codex version this build was tested with, else a ``warn``.

    Another version usually works, but its JSONL events and flags are what this code
    parses, and they move between releases: say so, and how to get the tested one.
    """
    number = version.split()[-1].removeprefix("v")
    if number == TESTED_CODEX_VERSION:
        return Check("codex", "ok", f"{version} at {codex_bin}")
    return Check(
        "codex",
        "warn",
        f"{version} at {codex_bin}, but codex-hub was tested with {TESTED_CODEX_VERSION}",
        f"install the tested version: `make codex` (or `npm install -g "
        f"@openai/codex@{TESTED_CODEX_VERSION}`) and unset CODEX_BIN or point it there; "
        f"to move codex-hub to {number}, change tools/package.json and run `make test`",
    )


async def _codex_login(
    transport: LocalTransport, codex_bin: str, settings: ExecutorSettings, timeout_s: float
) -> Check:
    where = _where(settings)
    try:
        async with asyncio.timeout(timeout_s):
            status = await transport.login_status(codex_bin, _codex_env(settings))
    except TimeoutError:
        status = None
    except SpawnError as exc:
        return _fail("codex login", str(exc), "reinstall codex (`make install`)")
    if status is not None and status.logged_in:
        return Check("codex login", "ok", f"{status.detail} ({where})")
    detail = status.detail if status is not None else f"no answer within {timeout_s:g} s"
    prefix = f"CODEX_HOME={settings.codex_home} " if settings.codex_home is not None else ""
    return _fail(
        "codex login",
        f"{detail} ({where})",
        "run `codex login --with-api-key` on this machine with the executor's CODEX_HOME, "
        f"the key on stdin: printf '%s' \"$OPENAI_API_KEY\" | {prefix}codex login --with-api-key",
    )


# --- CLIs ---------------------------------------------------------------------------


def _why_wanted(cli: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """Why `cli` is offered to the optimizer, and how to stop offering it."""
    set_vars = [v for v in CONDITIONAL.get(cli, ()) if environ.get(v, "").strip()]
    if set_vars:
        return f"{', '.join(set_vars)} is set", f"unset {' and '.join(set_vars)}"
    if cli == "git":
        return "codex relies on it", ""
    return "AVAILABLE_CLIS lists it", "remove it from AVAILABLE_CLIS"


def check_clis(settings: ExecutorSettings, environ: Mapping[str, str]) -> list[Check]:
    """One line per CLI: where it is on ``environ["PATH"]``, or what its absence costs."""
    wanted = available_clis(settings, environ)
    names = list(dict.fromkeys([*KNOWN_CLIS, *(c for c in wanted if c != "codex")]))
    path = environ.get("PATH", os.defpath)
    checks = []
    for cli in names:
        purpose = CLI_PURPOSES.get(cli, "listed in AVAILABLE_CLIS")
        found = shutil.which(cli, path=path)
        name = f"cli {cli}"
        if found:
            detail = found
            if cli not in wanted and cli in CONDITIONAL:
                hint = " or ".join(CONDITIONAL[cli][:2])
                detail += f" (not offered to the optimizer until {hint} is set)"
            checks.append(Check(name, "ok", detail))
        elif cli in wanted:
            why, stop = _why_wanted(cli, environ)
            fix = f"install {cli} on this machine ({purpose})"
            checks.append(
                _fail(
                    name,
                    f"not on PATH, but {why}, so requests may need it",
                    f"{fix}, or {stop}" if stop else fix,
                )
            )
        else:
            checks.append(Check(name, "skip", f"not on PATH; only needed for {purpose}"))
    return checks


# --- hub ----------------------------------------------------------------------------


async def check_hub(settings: ExecutorSettings, *, timeout_s: float = NETWORK_TIMEOUT_S) -> Check:
    """Open ``HUB_URL``, say hello as a capacity-0 executor, expect ``welcome``, close."""
    url = settings.hub_url
    configured = settings.hub_token.get_secret_value()
    token = node_token(configured, settings.hub_db, "executor")
    if configured:
        shown_token = f"HUB_TOKEN {mask(token)}"
    elif token:
        shown_token = f"the executor credential in {credentials_path(settings.hub_db)}"
    else:
        shown_token = "no HUB_TOKEN"
    hello = Hello(
        type="hello",
        role="executor",
        token=token,
        node_id=f"doctor-{os.getpid()}",
        name="codex-hub doctor",
        capacity=0,
    )
    start_fix = (
        "start the hub (`codex-hub serve` or `codex-hub up`), or set HUB_URL to where it "
        "listens (ws://HOST:PORT/ws)"
    )
    try:
        async with asyncio.timeout(timeout_s):
            async with connect(url, open_timeout=None, close_timeout=1.0) as ws:
                await ws.send(encode_frame(hello))
                raw = await ws.recv()
                json.loads(raw)  # not JSON: not a hub (below)
    except TimeoutError:
        return _fail("hub", f"{url}: no welcome within {timeout_s:g} s", start_fix)
    except InvalidURI:
        return _fail(
            "hub", f"HUB_URL={url} is not a websocket URL", "set HUB_URL to ws://HOST:PORT/ws"
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 403:
            return _fail(
                "hub",
                f"{url}: the hub does not answer to the name {urlsplit(url).hostname!r} (HTTP 403)",
                "add that name to the hub's HUB_ALLOWED_HOSTS, or use the hub's address in HUB_URL",
            )
        return _fail(
            "hub",
            f"{url} answered HTTP {status} instead of a websocket",
            "set HUB_URL to the hub's node endpoint, ending in /ws (ws://HOST:PORT/ws)",
        )
    except ConnectionClosed as exc:
        return _closed(url, exc, shown_token, token)
    except (InvalidHandshake, ValueError) as exc:
        return _fail("hub", f"{url}: not a codex-hub hub ({type(exc).__name__})", start_fix)
    except OSError as exc:
        refused = exc.errno == errno.ECONNREFUSED
        reason = "connection refused" if refused else exc.strerror or type(exc).__name__
        return _fail("hub", f"cannot connect to {url} ({reason})", start_fix)
    decoded = decode(raw, "executor", "hub")
    frame = decoded.frames[0] if decoded.frames else None
    if not isinstance(frame, WelcomeFrame):
        kind = getattr(frame, "type", None) or _kind(raw)
        return _fail("hub", f"{url} answered {kind!r} instead of welcome", start_fix)
    return Check("hub", "ok", f"{url} welcomed this node ({shown_token})")


def _kind(raw: str | bytes) -> object:
    """What a first message that is no frame for an executor holds: its ``type``, or
    the name of its JSON type."""
    value = json.loads(raw)
    if isinstance(value, dict):
        return value.get("type")
    return type(value).__name__


def _closed(url: str, exc: ConnectionClosed, shown: str, token: str) -> Check:
    code = exc.rcvd.code if exc.rcvd is not None else None
    reason = exc.rcvd.reason if exc.rcvd is not None else ""
    said = f"closed with {code}" + (f" ({reason})" if reason else "")
    role = token.partition(".")[0] if looks_derived(token) else ""
    if code == CLOSE_FORBIDDEN and role in BRIDGE_PLATFORMS:
        # The doctor says hello as an executor; a bridge's credential is right, just not
        # for runs (and the doctor must not pose as a bridge: it would take its replies).
        return Check("hub", "ok", f"{url} knows {shown}, the {role} bridge's credential")
    if code in (CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN):
        return _fail(
            "hub",
            f"{url} refused {shown}: {said}",
            "set HUB_TOKEN to this executor's credential: the output of "
            "`codex-hub token executor` where the hub runs",
        )
    if code == CLOSE_BAD_HELLO:
        return _fail(
            "hub", f"{url} refused the hello: {said}", "run the same codex-hub version as the hub"
        )
    return _fail("hub", f"{url} {said}", "check the hub's log for why it closed the connection")


# --- optimizer ----------------------------------------------------------------------


async def check_optimizer(
    settings: ExecutorSettings, *, timeout_s: float = NETWORK_TIMEOUT_S
) -> list[Check]:
    """With ``OPTIMIZE_PROMPT`` on: key and model set, ``GET {base}/models`` lists MODEL."""
    if not settings.optimize_prompt:
        return [Check("optimizer", "skip", "OPTIMIZE_PROMPT is off")]
    key = settings.openai_api_key.get_secret_value().strip()
    model = settings.model.strip()
    base = settings.openai_base_url.strip().rstrip("/")
    checks = []
    if key:
        checks.append(Check("optimizer key", "ok", f"API key {mask(key)}"))
    else:
        checks.append(
            _fail(
                "optimizer key",
                "no API key: requests run unoptimized",
                "set OPENAI_API_KEY (or OPENWEBUI_API_KEY / LITELLM_API_KEY), "
                "or set OPTIMIZE_PROMPT=false",
            )
        )
    if model:
        checks.append(Check("optimizer model", "ok", f"MODEL={model}"))
    else:
        checks.append(
            _fail(
                "optimizer model",
                "no model: requests run unoptimized",
                "set MODEL (or OPENWEBUI_MODEL / LITELLM_MODEL), or set OPTIMIZE_PROMPT=false",
            )
        )
    if not key:
        checks.append(Check("optimizer upstream", "skip", "no API key to ask with"))
        return checks
    checks.append(await _upstream(base, key, model, timeout_s))
    return checks


async def _upstream(base: str, key: str, model: str, timeout_s: float) -> Check:
    name = "optimizer upstream"
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as http:
            response = await http.get(f"{base}/models", headers={"Authorization": f"Bearer {key}"})
    except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
        problem = "timed out" if isinstance(exc, TimeoutError) else _http_problem(exc)
        return _fail(
            name,
            f"GET {base}/models: {problem}",
            "check OPENAI_BASE_URL and that this machine can reach it",
        )
    status = response.status_code
    if status in (401, 403):
        return _fail(
            name,
            f"{base} refused the API key (HTTP {status})",
            "set OPENAI_API_KEY to a key that is valid at OPENAI_BASE_URL",
        )
    if status == 404:
        return _fail(
            name,
            f"GET {base}/models answered HTTP 404",
            "set OPENAI_BASE_URL to the API root, usually ending in /v1",
        )
    if status >= 400:
        return _fail(
            name, f"GET {base}/models answered HTTP {status}", "check the upstream service"
        )
    try:
        data = response.json().get("data")
        ids = [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]
    except (ValueError, AttributeError, TypeError):
        ids = []
    if model and ids and not any(i == model or i.endswith(f"/{model}") for i in ids):
        some = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        return _fail(
            name,
            f"{base} answers, but does not list MODEL={model}",
            f"set MODEL to a model it serves ({some})",
        )
    if not ids:
        return Check(name, "ok", f"{base} answers (it lists no models to check MODEL against)")
    listed = f"{len(ids)} model{'s' if len(ids) != 1 else ''} listed"
    serves = f"serves MODEL={model}" if model else "answers"
    return Check(name, "ok", f"{base} {serves} ({listed})")


# --- chat platforms -----------------------------------------------------------------


async def _slack_call(
    http: httpx.AsyncClient, base: str, method: str, token: str
) -> tuple[dict[str, Any] | None, str]:
    """POST a Slack Web API method with `token`; (body, "") or (None, problem)."""
    try:
        response = await http.post(f"{base}{method}", headers={"Authorization": f"Bearer {token}"})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return None, _http_problem(exc)
    try:
        body = response.json()
    except ValueError:
        return None, f"HTTP {response.status_code}, not JSON"
    if not isinstance(body, dict):
        return None, f"HTTP {response.status_code}, unexpected answer"
    return body, ""


async def check_slack(
    settings: SlackSettings, *, timeout_s: float = NETWORK_TIMEOUT_S
) -> list[Check]:
    """``auth.test`` with the bot token and ``apps.connections.open`` with the app token."""
    if not settings.configured:
        return [Check("slack", "skip", "SLACK_BOT_TOKEN / SLACK_APP_TOKEN not set")]
    base = settings.api_base_url
    bot = settings.bot_token.get_secret_value()
    app = settings.app_token.get_secret_value()
    unreachable_fix = "check SLACK_API_BASE_URL and that this machine can reach Slack"
    checks = []
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as http:
            body, problem = await _slack_call(http, base, "auth.test", bot)
            if body is None:
                checks.append(_fail("slack bot token", f"auth.test: {problem}", unreachable_fix))
            elif body.get("ok"):
                who = f"@{body.get('user', '?')} in {body.get('team', '?')}"
                checks.append(Check("slack bot token", "ok", f"{mask(bot)}: {who}"))
            else:
                checks.append(
                    _fail(
                        "slack bot token",
                        f"auth.test refused SLACK_BOT_TOKEN {mask(bot)}: {body.get('error')}",
                        "set SLACK_BOT_TOKEN to the Bot User OAuth Token (xoxb-...) on your "
                        "Slack app's OAuth & Permissions page (reinstall the app if revoked)",
                    )
                )
            body, problem = await _slack_call(http, base, "apps.connections.open", app)
            if body is None:
                checks.append(
                    _fail("slack app token", f"apps.connections.open: {problem}", unreachable_fix)
                )
            elif body.get("ok"):
                checks.append(
                    Check("slack app token", "ok", f"{mask(app)}: Socket Mode connection granted")
                )
            else:
                checks.append(
                    _fail(
                        "slack app token",
                        f"apps.connections.open refused SLACK_APP_TOKEN {mask(app)}: "
                        f"{body.get('error')}",
                        "set SLACK_APP_TOKEN to an app-level token (xapp-...) with the "
                        "connections:write scope (Basic Information > App-Level Tokens), "
                        "and turn on Socket Mode",
                    )
                )
    except TimeoutError:
        checks.append(_fail("slack", f"{base}: no answer within {timeout_s:g} s", unreachable_fix))
    return checks


async def check_telegram(
    settings: TelegramSettings, *, timeout_s: float = NETWORK_TIMEOUT_S
) -> list[Check]:
    """``getMe`` with the bot token."""
    if not settings.configured:
        return [Check("telegram", "skip", "TELEGRAM_BOT_TOKEN not set")]
    token = settings.bot_token.get_secret_value()
    register_secret(token)  # the token is part of the URL: keep httpx's own logs clean
    base = settings.api_base_url
    unreachable_fix = "check TELEGRAM_API_BASE_URL and that this machine can reach Telegram"
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as http:
            response = await http.get(f"{base}{token}/getMe")
    except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
        problem = "timed out" if isinstance(exc, TimeoutError) else _http_problem(exc)
        return [_fail("telegram", f"getMe at {base}: {problem}", unreachable_fix)]
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict) and body.get("ok"):
        result = body.get("result") or {}
        return [Check("telegram", "ok", f"{mask(token)}: bot @{result.get('username', '?')}")]
    if response.status_code in (401, 404):
        return [
            _fail(
                "telegram",
                f"getMe refused TELEGRAM_BOT_TOKEN {mask(token)} (HTTP {response.status_code})",
                "set TELEGRAM_BOT_TOKEN to the token @BotFather gave you "
                "(send /token to @BotFather to see it again)",
            )
        ]
    return [_fail("telegram", f"getMe answered HTTP {response.status_code}", unreachable_fix)]


# --- putting it together --------------------------------------------------------------


# --- secrets codex can read ----------------------------------------------------------

#: Secrets an executor may hold: its own node credential and the optimizer's keys.
EXECUTOR_SECRETS = frozenset(
    {"HUB_TOKEN", "OPENAI_API_KEY", "OPENWEBUI_API_KEY", "LITELLM_API_KEY"}
)
SEPARATE = (
    "run the executor as its own OS user (or container) that holds only HUB_TOKEN and "
    "codex's login, and the hub and bridges as another (README: Where secrets live)"
)


def check_secrets(
    settings: ExecutorSettings,
    *,
    env_file: Path | None,
    db: Path | None,
    configured: set[str],
    euid: int | None = None,
) -> list[Check]:
    """What codex's commands could read on this machine, when that is worth a word.

    `configured` names the secret settings given here (environment or settings file);
    `db` is the hub's store when this environment configures a hub.
    """
    from codex_hub.config import secrets_in_workdir

    if settings.exec_transport != "local":
        return []  # codex runs on SSH_HOST, not among these files and processes
    from executor.workspace import Workspaces

    # EXEC_WORKDIR when it is set; otherwise each conversation works under WORKSPACE_ROOT.
    fixed = settings.fixed_workdir
    workdir = settings.exec_workdir if fixed else Path(Workspaces.default_root(settings))
    where = f"EXEC_WORKDIR={workdir}" if fixed else f"WORKSPACE_ROOT={workdir}"
    found = secrets_in_workdir(workdir, env_file=env_file, db=db)
    if found:
        return [
            _fail(
                "secrets",
                f"codex works in {where}, which holds "
                + "; ".join(found)
                + ": every command codex runs can read them",
                "point EXEC_WORKDIR at the directory codex should work in and keep the "
                "settings file (--env-file), HUB_DB and *_FILE secrets outside it",
            )
        ]
    if settings.codex_sandbox != "danger-full-access":
        return []
    euid = os.geteuid() if euid is None and hasattr(os, "geteuid") else euid
    others = sorted(configured - EXECUTOR_SECRETS)
    if euid == 0:
        return [
            Check(
                "secrets",
                "warn",
                "CODEX_SANDBOX=danger-full-access as root: codex's commands can read "
                "every file and every process's memory on this machine, codex-hub's "
                "secrets included",
                SEPARATE,
            )
        ]
    if others:
        what = ", ".join(others)
        return [
            Check(
                "secrets",
                "warn",
                "CODEX_SANDBOX=danger-full-access with one user for every role: codex's "
                f"commands run unsandboxed as this user and can read {what} wherever they "
                "are kept (the settings file, *_FILE files), the hub's store (every "
                "prompt and answer) and codex's login; only the processes' memory and "
                "environment are closed to them",
                SEPARATE,
            )
        ]
    return []


async def diagnose(
    settings: ExecutorSettings | Check,
    *,
    slack: SlackSettings | Check | None = None,
    telegram: TelegramSettings | Check | None = None,
    environ: Mapping[str, str],
    timeout_s: float = NETWORK_TIMEOUT_S,
    secrets: Sequence[Check] = (),
) -> list[Check]:
    """Run every check, concurrently, and return the findings in a fixed order.

    `settings` is the executor's settings, or the Check that says why they could not be
    read; `slack` and `telegram` are settings objects, a Check (absent or invalid), or
    None to leave them out.
    """
    groups: list[Awaitable[list[Check]]] = []
    if isinstance(settings, Check):
        groups.append(_done([settings]))
    else:
        groups += [
            check_codex(settings, timeout_s=max(timeout_s, CODEX_TIMEOUT_S)),
            _done(check_clis(settings, environ)),
            _one(check_hub(settings, timeout_s=timeout_s)),
            check_optimizer(settings, timeout_s=timeout_s),
        ]
    if isinstance(slack, Check):
        groups.append(_done([slack]))
    elif slack is not None:
        groups.append(check_slack(slack, timeout_s=timeout_s))
    if isinstance(telegram, Check):
        groups.append(_done([telegram]))
    elif telegram is not None:
        groups.append(check_telegram(telegram, timeout_s=timeout_s))
    groups.append(_done(list(secrets)))
    results = await asyncio.gather(*groups)
    return [check for group in results for check in group]


async def _done(checks: list[Check]) -> list[Check]:
    return checks


async def _one(check: Awaitable[Check]) -> list[Check]:
    return [await check]


def render(checks: Sequence[Check]) -> str:
    """The report: one line per check, a ``fix:`` line under each failure, a summary."""
    lines = []
    for check in checks:
        lines.append(f"{check.status:<4}  {check.name}: {check.detail}")
        if check.advised and check.fix:
            lines.append(f"      fix: {check.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "FAIL", "skip")}
    if counts["FAIL"]:
        verdict = "fix the FAIL lines above"
    elif counts["warn"]:
        verdict = "works, but read the warn lines above"
    else:
        verdict = "all good"
    warned = f"{counts['warn']} warn, " if counts["warn"] else ""
    lines.append(
        f"doctor: {counts['ok']} ok, {warned}{counts['FAIL']} FAIL, {counts['skip']} skip: "
        f"{verdict}"
    )
    return "\n".join(redact(line) for line in lines) + "\n"


def _load_settings(cls: type[Any], env_file: Path | None, label: str) -> Any:
    """Settings of `cls`, or a FAIL Check with the validation message (never the input)."""
    from codex_hub.config import UsageError, load

    try:
        settings = load(cls, env_file)
    except UsageError as exc:
        return _fail(
            f"{label} settings",
            str(exc).replace("\n", ";"),
            f"correct the {label} settings named above in the environment or the env file",
        )
    register_settings_secrets(settings)
    return settings


def _load_bridge(module: str, cls_name: str, env_file: Path | None, label: str) -> Any:
    """A bridge's settings, a skip Check when its package is absent, or a FAIL Check."""
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError):
        return Check(label, "skip", f"{module}.{cls_name} is not available in this build")
    return _load_settings(cls, env_file, label)


def load_all(env_file: Path | None) -> tuple[ExecutorSettings | Check, Any, Any]:
    """The executor's, Slack's and Telegram's settings, each replaced by a Check if unusable.

    Raises `codex_hub.cli.UsageError` when `env_file` is given but missing, like every
    other command.
    """
    from codex_hub.config import UsageError

    if env_file is not None and not env_file.is_file():
        raise UsageError(f"--env-file {env_file}: no such file")
    return (
        _load_settings(ExecutorSettings, env_file, "executor"),
        _load_bridge("bridges.slack.settings", "SlackSettings", env_file, "slack"),
        _load_bridge("bridges.telegram.settings", "TelegramSettings", env_file, "telegram"),
    )


def _secrets_checks(executor: ExecutorSettings, env_file: Path | None) -> list[Check]:
    """:func:`check_secrets` for the settings this doctor read."""
    from codex_hub.config import UsageError, load, loaded_env_file
    from hub.settings import HubSettings
    from kernel.settings import configured_secrets

    loaded = loaded_env_file(env_file)
    configured = configured_secrets(loaded)
    try:  # the store of a hub run with these settings, which may be this machine's
        db = load(HubSettings, env_file).db
    except UsageError:
        db = None
    return check_secrets(executor, env_file=loaded, db=db, configured=configured)


async def run_doctor(
    env_file: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    timeout_s: float = NETWORK_TIMEOUT_S,
) -> int:
    """Read the settings (environment, then `env_file` or ./.env), check, print the report.

    `environ` is where CLIs are looked for (``PATH``) and detected (defaults to
    ``os.environ``); the report goes to `out` (stdout). Returns 0 when nothing failed, 1
    otherwise. A missing `env_file` raises `codex_hub.cli.UsageError`.
    """
    executor, slack, telegram = load_all(env_file)
    secrets = [] if isinstance(executor, Check) else _secrets_checks(executor, env_file)
    checks = await diagnose(
        executor,
        slack=slack,
        telegram=telegram,
        environ=os.environ if environ is None else environ,
        timeout_s=timeout_s,
        secrets=secrets,
    )
    stream = sys.stdout if out is None else out
    stream.write(render(checks))
    stream.flush()
    return 1 if any(check.failed for check in checks) else 0
