"""The ``codex-hub`` command: the composition root that wires hub, executor and bridges.

Only this module (and the packages' ``__main__``) puts the pieces together; the hub
core never imports the executor or the bridges.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from bridges.common import BridgeError
from codex_hub.config import (
    CredentialError,
    UsageError,
    load,
    loaded_env_file,
    refuse_secrets_in_workdir,
)
from hub.settings import HubSettings
from kernel.credentials import (
    ROLES,
    CredentialsError,
    credentials_path,
    derive,
    load_or_create,
    looks_derived,
    node_token,
)
from kernel.logs import configure_logging, register_settings_secrets
from kernel.process import freeze_startup_heap, loop_factory, make_undumpable
from kernel.settings import (
    LogSettings,
    NodeSettings,
    sealed_secret_environment,
)

log = logging.getLogger("codex_hub")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_TIMEOUT = 124
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    """The command line, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="codex-hub",
        description="Hand work to the Codex CLI from Slack, Telegram, HTTP or the web.",
    )
    env = argparse.ArgumentParser(add_help=False)
    env.add_argument(
        "--env-file",
        type=Path,
        help="read settings from this file instead of ./.env (it must exist)",
    )
    runner = argparse.ArgumentParser(add_help=False)
    runner.add_argument(
        "--optimize-prompt",
        action="store_true",
        default=None,
        help="rewrite each request with the upstream LLM first (OPTIMIZE_PROMPT)",
    )
    runner.add_argument(
        "--transport",
        choices=("local", "ssh"),
        help="run codex here or on SSH_HOST (EXEC_TRANSPORT)",
    )
    runner.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="answer with the effective prompt instead of running codex (EXEC_DRY_RUN)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "up",
        parents=[env, runner],
        help="hub + a local executor + every configured bridge, in one process",
    )
    sub.add_parser("serve", parents=[env], help="the hub alone")
    sub.add_parser("executor", parents=[env, runner], help="one executor node (HUB_URL)")
    bridge = sub.add_parser("bridge", parents=[env], help="one chat bridge node (HUB_URL)")
    bridge.add_argument("platform", choices=("slack", "telegram"))
    run = sub.add_parser(
        "exec",
        parents=[env, runner],
        help="one run without a hub; prints only codex's final answer",
    )
    run.add_argument("prompt", help="what codex should do (one argument; quote it)")
    sub.add_parser("doctor", parents=[env], help="check codex, CLIs, the hub and tokens")
    token = sub.add_parser(
        "token",
        parents=[env],
        help="print a node's credential (its HUB_TOKEN), derived from the hub's secret",
        description="Print the credential a node of ROLE presents as its HUB_TOKEN. Run it "
        "where the hub runs: the hub's secret is its HUB_TOKEN, or the one it generated "
        "beside HUB_DB (generated now if the hub has not started yet).",
    )
    token.add_argument("role", choices=ROLES, help="executor, or the bridge's platform")
    return parser


def _runner_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "OPTIMIZE_PROMPT": getattr(args, "optimize_prompt", None),
        "EXEC_TRANSPORT": getattr(args, "transport", None),
        "EXEC_DRY_RUN": getattr(args, "dry_run", None),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``codex-hub`` console script."""
    args = build_parser().parse_args(argv)
    # Secrets leave the environment before anything can start a process, and the
    # processes that hold them are closed to the commands codex runs as the same user.
    with sealed_secret_environment():
        if args.command != "doctor":
            make_undumpable()
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        logs = load(LogSettings, args.env_file)
        try:
            configure_logging(logs.log_level, logs.log_format)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        commands: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
            "up": cmd_up,
            "serve": cmd_serve,
            "executor": cmd_executor,
            "bridge": cmd_bridge,
            "exec": cmd_exec,
            "doctor": cmd_doctor,
            "token": cmd_token,
        }
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(commands[args.command](args))
    except UsageError as exc:
        print(f"codex-hub: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BridgeError as exc:
        print(f"codex-hub: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_CANCELLED


@contextlib.asynccontextmanager
async def _until_signal() -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _run_until_stopped(parts: list[Any]) -> int:
    """Start each part (async context managers) in order, stop them in reverse."""
    async with contextlib.AsyncExitStack() as stack:
        for part in parts:
            await stack.enter_async_context(part)
        freeze_startup_heap()
        async with _until_signal() as stop:
            await stop.wait()
        log.info("stopping")
    return 0


def _hub(args: argparse.Namespace, settings: HubSettings | None = None) -> Any:
    from hub.app import HubServer

    if settings is None:
        settings = load(HubSettings, args.env_file)
    register_settings_secrets(settings)
    try:
        return HubServer(settings)
    except CredentialsError as exc:
        raise UsageError(str(exc)) from None


def _check_credential(settings: NodeSettings, role: str) -> None:
    """Say at start when a node has no credential to present: the hub will refuse it."""
    if not node_token(settings.hub_token.get_secret_value(), settings.hub_db, role):
        log.warning(
            "no HUB_TOKEN set and no hub credentials file at %s: the hub will refuse this "
            "node; set HUB_TOKEN to the output of `codex-hub token %s` (run where the hub "
            "runs), or HUB_DB to the hub's",
            credentials_path(settings.hub_db),
            role,
        )


def _print_signin(hub: Any) -> None:
    """Where to sign in and where the API key is, when the hub generated the key."""
    link = hub.signin_url
    if link is None:
        return
    path = hub.credentials.path.resolve()
    print(
        f"  sign in to the monitor: {link}\n"
        f'  API key for clients (Authorization: Bearer ...): "api_key" in {path}',
        file=sys.stderr,
    )


@contextlib.asynccontextmanager
async def _executor(
    args: argparse.Namespace, hub_url: str | None = None, token: str | None = None
) -> AsyncIterator[Any]:
    from executor.factory import ConfigError, build_pipeline
    from executor.node import ExecutorNode
    from executor.settings import ExecutorSettings

    overrides = _runner_overrides(args)
    if hub_url:
        overrides["HUB_URL"] = hub_url
    if token:
        overrides["HUB_TOKEN"] = token
    settings = load(ExecutorSettings, args.env_file, **overrides)
    register_settings_secrets(settings)
    _check_credential(settings, "executor")
    try:
        pipeline, transport = build_pipeline(settings)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    try:
        async with ExecutorNode(settings, pipeline) as node:
            yield node
    finally:
        await pipeline.aclose()
        await transport.close()


def _bridge(
    platform: str, env_file: Path | None, hub_url: str | None = None, token: str | None = None
) -> Any:
    overrides = {"HUB_URL": hub_url, "HUB_TOKEN": token}
    if platform == "slack":
        from bridges.slack.bridge import SlackBridge
        from bridges.slack.settings import SlackSettings

        slack = load(SlackSettings, env_file, **overrides)
        if not slack.configured:
            raise UsageError("set SLACK_BOT_TOKEN and SLACK_APP_TOKEN to run the Slack bridge")
        register_settings_secrets(slack)
        _check_credential(slack, platform)
        return SlackBridge(slack)
    from bridges.telegram.bridge import TelegramBridge
    from bridges.telegram.settings import TelegramSettings

    telegram = load(TelegramSettings, env_file, **overrides)
    if not telegram.configured:
        raise UsageError("set TELEGRAM_BOT_TOKEN to run the Telegram bridge")
    register_settings_secrets(telegram)
    _check_credential(telegram, platform)
    return TelegramBridge(telegram)


async def cmd_serve(args: argparse.Namespace) -> int:
    """``codex-hub serve``: the hub alone."""
    hub = _hub(args)
    await hub.start()
    try:
        _print_signin(hub)
        return await _run_until_stopped([])
    finally:
        await hub.close()


async def cmd_executor(args: argparse.Namespace) -> int:
    """``codex-hub executor``: one executor node."""
    return await _run_until_stopped([_executor(args)])


async def cmd_bridge(args: argparse.Namespace) -> int:
    """``codex-hub bridge slack|telegram``: one bridge node."""
    return await _run_until_stopped([_bridge(args.platform, args.env_file)])


async def cmd_up(args: argparse.Namespace) -> int:
    """``codex-hub up``: hub, a local executor and every configured bridge."""
    from executor.settings import ExecutorSettings
    from executor.workspace import Workspaces

    hub_settings = load(HubSettings, args.env_file)
    executor = load(ExecutorSettings, args.env_file, **_runner_overrides(args))
    if executor.exec_transport == "local":
        # Before the hub is made: it would create its data directory and credentials.
        # Where codex's commands run: EXEC_WORKDIR when set, else under WORKSPACE_ROOT.
        workdir = (
            executor.exec_workdir
            if executor.fixed_workdir
            else Path(Workspaces.default_root(executor))
        )
        refuse_secrets_in_workdir(
            workdir, env_file=loaded_env_file(args.env_file), db=hub_settings.db
        )
    hub = _hub(args, hub_settings)
    await hub.start()
    try:
        hub_url = f"ws://127.0.0.1:{hub.port}/ws"
        # Each node in this process gets its own role's credential, never the secret.
        secret = hub.settings.token.get_secret_value()
        parts: list[Any] = [_executor(args, hub_url, derive(secret, "executor"))]
        for platform in ("slack", "telegram"):
            try:
                parts.append(_bridge(platform, args.env_file, hub_url, derive(secret, platform)))
            except CredentialError:
                raise
            except UsageError as exc:
                log.info("%s bridge not started: %s", platform, exc)
            except ImportError as exc:
                log.warning("%s bridge unavailable: %s", platform, exc)
        print(
            f"codex-hub is up: http://{hub.settings.host}:{hub.port}/ "
            f"(OpenAI base URL http://{hub.settings.host}:{hub.port}/v1)",
            file=sys.stderr,
        )
        _print_signin(hub)
        return await _run_until_stopped(parts)
    finally:
        await hub.close()


async def cmd_exec(args: argparse.Namespace) -> int:
    """``codex-hub exec PROMPT``: one run here, the raw answer on stdout."""
    from executor.factory import ConfigError, build_pipeline
    from executor.pipeline import Job
    from executor.settings import ExecutorSettings

    if not args.prompt.strip():
        raise UsageError("the prompt is empty")
    settings = load(ExecutorSettings, args.env_file, **_runner_overrides(args))
    register_settings_secrets(settings)
    try:
        pipeline, transport = build_pipeline(settings)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    show = sys.stderr.isatty()

    def emit(event: dict[str, Any]) -> None:
        text = event.get("summary") or (
            event.get("message") if event.get("kind") != "codex" else None
        )
        if show and text:
            print(f"codex-hub: {text}", file=sys.stderr)

    def set_state(state: str, _prompt: str | None) -> None:
        if show:
            print(f"codex-hub: {state}", file=sys.stderr)

    job = Job(run_id="exec", prompt=args.prompt, optimize=settings.optimize_prompt)
    try:
        async with _until_signal() as stop:
            task = asyncio.create_task(pipeline.run(job, emit, set_state))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                print("codex-hub: cancelled", file=sys.stderr)
                return EXIT_CANCELLED
            stopper.cancel()
            result = task.result()
    finally:
        await pipeline.aclose()
        await transport.close()
    if result.status == "succeeded":
        sys.stdout.write(result.answer)
        if not result.answer.endswith("\n"):
            sys.stdout.write("\n")
        return 0
    message = (result.error or {}).get("message") or f"the run ended {result.status}"
    print(f"codex-hub: {result.status}: {message}", file=sys.stderr)
    return {"timed_out": EXIT_TIMEOUT, "rejected": EXIT_REJECTED, "cancelled": EXIT_CANCELLED}.get(
        result.status, EXIT_FAILED
    )


async def cmd_token(args: argparse.Namespace) -> int:
    """``codex-hub token ROLE``: the credential a node of ROLE presents, on stdout."""
    settings = load(NodeSettings, args.env_file)
    secret = settings.hub_token.get_secret_value()
    if secret and looks_derived(secret):
        raise UsageError(
            "HUB_TOKEN here is a node's credential, not the hub's secret: run "
            "`codex-hub token` where the hub runs (with its HUB_TOKEN, or its HUB_DB)"
        )
    if not secret:
        path = credentials_path(settings.hub_db)
        try:
            creds, created = load_or_create(path)
        except CredentialsError as exc:
            raise UsageError(str(exc)) from None
        if created:
            print(f"codex-hub: generated the hub's credentials in {path}", file=sys.stderr)
        secret = creds.secret
    print(derive(secret, args.role))
    return 0


async def cmd_doctor(args: argparse.Namespace) -> int:
    """``codex-hub doctor``: check the set-up and say what to fix."""
    from codex_hub.doctor import run_doctor

    return await run_doctor(args.env_file)
