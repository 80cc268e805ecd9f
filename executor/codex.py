"""The Codex CLI's protocol, kept free of I/O: argv for `codex exec`, its JSONL events.

Only `resolve_codex_bin` looks at the filesystem; everything else is a pure function
(or a pure fold, `CodexProgress`) that tests call directly with recorded lines.
Facts about codex 0.169.0 that shape this module are in /work/shared/CODEX.md.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executor.settings import ExecutorSettings
from kernel.settings import secret_env_names

#: Where `make install` puts the CLI (`npm ci` in tools/), relative to the repository
#: (or the current dir).
LOCAL_NODE_MODULES = Path("tools") / "node_modules"
#: The codex version this code was tested with: the one tools/package-lock.json pins
#: (a test holds the two together). Any other version may emit events this module does
#: not know; `codex-hub doctor` warns when the binary in use is not this one.
TESTED_CODEX_VERSION = "0.169.0"
#: Marker appended to strings that `truncate_event` cut.
TRUNCATION_MARK = "…[truncated {cut} chars]"
#: The longest command or message quoted in a one-line progress text.
_SUMMARY_CMD_LIMIT = 120


# --- locating the binary -------------------------------------------------------------


def _platform_names() -> tuple[str, str]:
    """npm's (platform, arch) names of this machine, e.g. ("linux", "x64")."""
    plat = "darwin" if sys.platform == "darwin" else "win32" if os.name == "nt" else "linux"
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    return plat, arch


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _native_under(node_modules: Path) -> str | None:
    """The native binary of a platform package under `node_modules`, this arch first."""
    plat, arch = _platform_names()
    scope = node_modules / "@openai"
    candidates = sorted(scope.glob(f"codex-{plat}-{arch}/vendor/*/bin/codex")) + sorted(
        scope.glob(f"codex-{plat}-*/vendor/*/bin/codex")
    )
    for candidate in candidates:
        if _is_executable_file(candidate):
            return str(candidate)
    return None


def _is_node_wrapper(path: Path) -> bool:
    """True for npm's `codex.js` launcher, which runs the native binary as a child."""
    if path.suffix == ".js":
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(128)
    except OSError:
        return False
    return head.startswith(b"#!") and b"node" in head.split(b"\n", 1)[0]


def _native_sibling(wrapper: Path) -> str | None:
    """The native binary that belongs to the npm wrapper at `wrapper`, if installed."""
    package = wrapper.resolve().parents[1]  # .../node_modules/@openai/codex
    # npm hoists the platform package next to the main one, or nests it inside it.
    for node_modules in (package / "node_modules", package.parents[1]):
        found = _native_under(node_modules)
        if found:
            return found
    for candidate in sorted(package.glob("vendor/*/codex/codex")) + sorted(
        package.glob("vendor/*/bin/codex")
    ):
        if _is_executable_file(candidate):
            return str(candidate)
    return None


def resolve_codex_bin(setting: str) -> str:
    """Find the codex binary: `setting`, else `tools/` of the repo or cwd, else PATH.

    An npm node wrapper is swapped for its native sibling when one is installed: killing
    the wrapper would leave the native child running. Raises FileNotFoundError when no
    codex is found at all.
    """
    chosen: str | None = None
    if setting:
        chosen = setting if os.sep in setting else shutil.which(setting) or setting
    else:
        repo = Path(__file__).resolve().parents[1]
        for root in dict.fromkeys((repo, Path.cwd())):
            chosen = _native_under(root / LOCAL_NODE_MODULES)
            if chosen:
                break
        else:
            chosen = shutil.which("codex")
    if chosen is None:
        raise FileNotFoundError(
            "codex not found: set CODEX_BIN, run `make install`, or put codex on PATH"
        )
    path = Path(chosen)
    if path.exists() and _is_node_wrapper(path.resolve()):
        return _native_sibling(path) or chosen
    return chosen


# --- argv ------------------------------------------------------------------------------


def build_exec_argv(
    settings: ExecutorSettings,
    prompt: str,
    *,
    codex_bin: str,
    workdir: str,
    output_file: str,
    resume_thread_id: str | None = None,
    instructions: str = "",
    output_schema_file: str | None = None,
    image_files: Iterable[str] = (),
) -> list[str]:
    """The argv of one `codex exec` run (or `codex exec resume ID`); never a shell string.

    Every option sits before the `resume` subcommand, where `codex exec` accepts all of
    them, and the prompt follows `--` so that a prompt starting with '-' or spelling a
    subcommand ("resume", "help") still arrives as the prompt, as one argv element.
    `-i` takes several values, so each image comes right after `exec`, where the next
    option ends it. `instructions` become codex's `developer_instructions` (a `-c`
    value is TOML: a JSON string is a TOML basic string).
    """
    argv = [codex_bin, "exec"]
    for image in image_files:
        argv += ["-i", image]
    argv += [
        "--json",
        "-o",
        output_file,
        "-C",
        workdir,
        "-s",
        settings.codex_sandbox,
        "--skip-git-repo-check",
    ]
    if settings.codex_model:
        argv += ["-m", settings.codex_model]
    if settings.codex_sandbox == "workspace-write" and settings.codex_network_access:
        # workspace-write blocks the network of the commands codex runs (gh, aws, ...).
        argv += ["-c", "sandbox_workspace_write.network_access=true"]
    argv += settings.extra_args
    if output_schema_file:
        argv += ["--output-schema", output_schema_file]
    if instructions:
        argv += ["-c", "developer_instructions=" + toml_string(instructions)]
    if resume_thread_id:
        argv += ["resume", resume_thread_id]
    # A lone "-" means "read the prompt from stdin" even after "--"; a space keeps it text.
    argv += ["--", "- " if prompt == "-" else prompt]
    return argv


def toml_string(text: str) -> str:
    """`text` as a TOML basic string (JSON's escapes, minus surrogate pairs TOML refuses)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


# --- login -----------------------------------------------------------------------------

_SECRET_RE = re.compile(r"(sk-|xox[a-z]-|Bearer\s+|eyJ)\S*", re.IGNORECASE)


def login_detail(output: str, logged_in: bool, exit_code: int | None = None) -> str:
    """A short, secret-free summary of `codex login status` output.

    codex prints e.g. "API key configured - sk-stub-***wxyz": only the words before the
    masked key are kept, and anything still shaped like a key is blanked.
    """
    for raw in output.splitlines():
        line = raw.strip()
        if not line or line.startswith("WARNING:"):
            continue
        line = _SECRET_RE.sub("***", line.split(" - ", 1)[0]).strip()
        if line and line != "***":
            return line[:200]
    if logged_in:
        return "logged in"
    return f"`codex login status` exited with {exit_code}" if exit_code else "Not logged in"


_VERSION_RE = re.compile(r"v?(\d+\.\d+(?:\.\d+)?(?:[-+][0-9A-Za-z.-]{1,40})?)")


def version_of(output: str) -> str:
    """codex's version number from ``codex --version`` output ("codex-cli 0.169.0" ->
    "0.169.0"); "" when its first line does not end in one."""
    for raw in output.splitlines():
        words = raw.split()
        if not words or raw.startswith("WARNING:"):
            continue
        match = _VERSION_RE.fullmatch(words[-1])
        return match.group(1) if match else ""
    return ""


# --- JSONL events ----------------------------------------------------------------------


def parse_jsonl_line(line: str | bytes) -> dict[str, Any] | None:
    """One `--json` event as a dict; None for blank lines and anything not a JSON object."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _event_item(event: dict[str, Any]) -> dict[str, Any]:
    item = event.get("item")
    return item if isinstance(item, dict) else {}


def _error_message(event: dict[str, Any]) -> str:
    """The human message of an `error` or `turn.failed` event."""
    error = event.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if event.get("message"):
        return str(event["message"])
    return str(error) if error else ""


def _short(text: str, limit: int = _SUMMARY_CMD_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(event: dict[str, Any]) -> str | None:
    """A one-line progress text for `event` ("running `git status`"), or None if dull."""
    kind = event.get("type")
    item = _event_item(event)
    item_type = item.get("type")
    if kind == "thread.started":
        return "codex started"
    if kind == "turn.failed":
        return f"failed: {_short(_error_message(event))}"
    if kind == "error":
        return f"error: {_short(_error_message(event))}"
    if kind == "item.started" and item_type == "command_execution":
        return f"running `{_short(str(item.get('command', '')))}`"
    if kind == "item.started" and item_type == "mcp_tool_call":
        return f"calling {item.get('server', '')}.{item.get('tool', '')}".rstrip(".")
    if kind == "item.started" and item_type == "web_search":
        return f"searching the web for {_short(str(item.get('query', '')))!r}"
    if kind != "item.completed":
        return None
    if item_type == "command_execution":
        code = item.get("exit_code")
        status = f"exit {code}" if code is not None else str(item.get("status", "done"))
        return f"ran `{_short(str(item.get('command', '')))}` ({status})"
    if item_type == "file_change":
        changes = item.get("changes") or []
        count = len(changes)
        if count == 1 and isinstance(changes[0], dict):
            return f"editing {changes[0].get('path', '1 file')}"
        return f"editing {count} files"
    if item_type == "reasoning":
        text = str(item.get("text", "")).strip()
        return f"thinking: {_short(text)}" if text else "thinking"
    if item_type == "agent_message":
        return "answered"
    if item_type == "todo_list":
        items = item.get("items") or []
        done = sum(1 for entry in items if isinstance(entry, dict) and entry.get("completed"))
        return f"plan: {done}/{len(items)} steps done"
    if item_type == "error":
        # An item of type error is a warning from codex, not a failure of the run.
        return f"warning: {_short(str(item.get('message', '')))}"
    return None


def _truncate(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        cut = len(value) - limit
        return value[:limit] + TRUNCATION_MARK.format(cut=cut)
    if isinstance(value, dict):
        return {key: _truncate(inner, limit) for key, inner in value.items()}
    if isinstance(value, list):
        return [_truncate(inner, limit) for inner in value]
    return value


def truncate_event(event: dict[str, Any], limit: int = 16_000) -> dict[str, Any]:
    """A copy of `event` whose strings longer than `limit` are cut and marked as cut."""
    # _truncate rebuilds every dict and list, so the caller's event is never shared.
    result: dict[str, Any] = _truncate(event, limit)
    return result


@dataclass
class CodexProgress:
    """What a run's `--json` events have said so far; feed it every event in order."""

    thread_id: str | None = None
    usage: dict[str, int] | None = None
    last_message: str | None = None
    turn_completed: bool = False
    turn_failed: bool = False
    error_message: str | None = None
    current_command: str | None = None
    commands_run: int = 0
    files_changed: set[str] = field(default_factory=set)

    @property
    def failed(self) -> bool:
        """True when codex reported `turn.failed` or a top-level `error` event."""
        return self.turn_failed or self.error_message is not None

    def feed(self, event: dict[str, Any]) -> None:
        """Fold one event into the state."""
        kind = event.get("type")
        item = _event_item(event)
        item_type = item.get("type")
        if kind == "thread.started" and event.get("thread_id"):
            self.thread_id = str(event["thread_id"])
        elif kind == "turn.started":
            self.turn_completed = False
        elif kind == "turn.completed":
            self.turn_completed = True
            self.current_command = None
            self.usage = _usage_of(event.get("usage"))
        elif kind == "turn.failed":
            self.turn_failed = True
            self.current_command = None
            self.error_message = _error_message(event) or self.error_message
        elif kind == "error":
            # codex emits one per retry; the last one is the one worth showing.
            self.error_message = _error_message(event) or "codex reported an error"
        elif kind == "item.started" and item_type == "command_execution":
            self.current_command = str(item.get("command", ""))
        elif kind == "item.completed" and item_type == "command_execution":
            self.current_command = None
            self.commands_run += 1
        elif kind == "item.completed" and item_type == "file_change":
            for change in item.get("changes") or []:
                if isinstance(change, dict) and change.get("path"):
                    self.files_changed.add(str(change["path"]))
        elif kind == "item.completed" and item_type == "agent_message":
            self.last_message = str(item.get("text", ""))

    def feed_all(self, events: Iterable[dict[str, Any]]) -> CodexProgress:
        """Feed every event of `events`; returns self for chaining."""
        for event in events:
            self.feed(event)
        return self


def _usage_of(raw: Any) -> dict[str, int]:
    """codex's `turn.completed.usage`, reduced to the three counts the hub stores."""
    raw = raw if isinstance(raw, dict) else {}
    return {
        key: int(raw.get(key) or 0)
        for key in ("input_tokens", "cached_input_tokens", "output_tokens")
    }


#: codex-hub's own secrets and the optimizer's upstream settings. codex and the
#: commands it runs never see them: a prompt could print them, and codex reads
#: OPENAI_BASE_URL / OPENAI_API_KEY itself, which would send its model traffic to the
#: optimizer's endpoint.
HIDDEN_ENV: frozenset[str] = frozenset(
    {
        "HUB_TOKEN",
        "HUB_API_KEYS",
        "HUB_OPERATOR_KEYS",
        # compose.yaml's per-node credentials, which its shared .env hands every container
        "HUB_EXECUTOR_TOKEN",
        "HUB_SLACK_TOKEN",
        "HUB_TELEGRAM_TOKEN",
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "TELEGRAM_BOT_TOKEN",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENWEBUI_API_KEY",
        "LITELLM_API_KEY",
    }
)


def codex_environment(inherited: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment codex starts with: ours without :data:`HIDDEN_ENV` and without any
    secret setting of codex-hub or its ``*_FILE`` (whichever settings class declares
    it, see :func:`kernel.settings.secret_env_names`), plus overrides."""
    hidden = HIDDEN_ENV | secret_env_names()
    env = {k: v for k, v in inherited.items() if k.upper() not in hidden}
    env.update(overrides)
    return env
