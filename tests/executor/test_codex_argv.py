"""Unit tests of executor.codex: the argv of `codex exec`, JSONL parsing and folding."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from executor.codex import (
    CodexProgress,
    build_exec_argv,
    describe,
    login_detail,
    parse_jsonl_line,
    resolve_codex_bin,
    truncate_event,
)
from executor.settings import ExecutorSettings

Settings = Callable[..., ExecutorSettings]

# Lines recorded from codex 0.169.0 `exec --json` runs against the stub model server.
ANSWER_RUN = """\
Reading additional input from stdin...
{"type":"thread.started","thread_id":"01a1ffed-a8d5-71c1-b857-daf574a36d0f"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"hello there"}}
{"type":"turn.completed","usage":{"input_tokens":120,"cached_input_tokens":20,\
"cache_write_input_tokens":0,"output_tokens":7,"reasoning_output_tokens":0}}
"""
TOOL_RUN = """\
{"type":"thread.started","thread_id":"01a1ffed-f414-7730-9822-463841cebe5a"}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_0","type":"command_execution","command":\
"/bin/bash -lc 'printf hi-there > hello.txt'","aggregated_output":"","exit_code":null,\
"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_0","type":"command_execution","command":\
"/bin/bash -lc 'printf hi-there > hello.txt'","aggregated_output":"","exit_code":0,\
"status":"completed"}}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"wrote it"}}
{"type":"turn.completed","usage":{"input_tokens":240,"cached_input_tokens":40,\
"cache_write_input_tokens":0,"output_tokens":14,"reasoning_output_tokens":0}}
"""
FAILED_RUN = """\
{"type":"thread.started","thread_id":"01a1ffee-004f-7e31-a979-8c3a80549571"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"partial"}}
{"type":"error","message":"We're currently experiencing high demand."}
{"type":"turn.failed","error":{"message":"We're currently experiencing high demand."}}
"""


def events_of(text: str) -> list[dict[str, Any]]:
    """The events of a recorded stdout, noise lines skipped."""
    return [event for line in text.splitlines() if (event := parse_jsonl_line(line))]


def argv_of(settings: ExecutorSettings, prompt: str, resume: str | None = None) -> list[str]:
    """build_exec_argv with fixed paths."""
    return build_exec_argv(
        settings,
        prompt,
        codex_bin="/opt/codex",
        workdir="/srv/work",
        output_file="/tmp/x/last.txt",
        resume_thread_id=resume,
    )


# --- argv ------------------------------------------------------------------------------


def test_argv_shape(executor_settings: Settings) -> None:
    """The default argv has every flag codex needs, in an order codex accepts."""
    argv = argv_of(executor_settings(), "list files")
    assert argv == [
        "/opt/codex",
        "exec",
        "--json",
        "-o",
        "/tmp/x/last.txt",
        "-C",
        "/srv/work",
        "-s",
        "workspace-write",
        "--skip-git-repo-check",
        "-c",
        "sandbox_workspace_write.network_access=true",
        "--",
        "list files",
    ]


def test_images_schema_and_instructions_sit_where_codex_takes_them(
    executor_settings: Settings,
) -> None:
    """Each image follows `exec` (the next option ends `-i`'s list), the schema and the
    developer instructions come before `resume`, and the prompt stays last."""
    argv = build_exec_argv(
        executor_settings(),
        "describe it",
        codex_bin="/opt/codex",
        workdir="/srv/work",
        output_file="/tmp/x/last.txt",
        resume_thread_id="thread-1",
        instructions='be "brief"\x7f',
        output_schema_file="/tmp/x/schema.json",
        image_files=["/tmp/x/image-0.png", "/tmp/x/image-1.jpg"],
    )
    assert argv[:6] == [
        "/opt/codex",
        "exec",
        "-i",
        "/tmp/x/image-0.png",
        "-i",
        "/tmp/x/image-1.jpg",
    ]
    assert argv[6] == "--json"
    resume = argv.index("resume")
    assert argv[resume:] == ["resume", "thread-1", "--", "describe it"]
    schema = argv.index("--output-schema")
    assert schema < resume and argv[schema + 1] == "/tmp/x/schema.json"
    config = argv.index('developer_instructions="be \\"brief\\"\\u007f"')
    assert config < resume and argv[config - 1] == "-c"


@pytest.mark.parametrize(
    "prompt",
    ["-h", "--version", "resume", "help", "two words\nand a line", "it's $(rm -rf /) `x`"],
)
def test_prompt_is_one_element_after_double_dash(executor_settings: Settings, prompt: str) -> None:
    """Any prompt, also one that looks like a flag or a subcommand, is the last element."""
    argv = argv_of(executor_settings(), prompt)
    assert argv[-2:] == ["--", prompt]
    assert argv.count(prompt) == 1


def test_lone_dash_prompt_is_not_read_from_stdin(executor_settings: Settings) -> None:
    """A prompt of just '-' gets a space, since codex would read stdin for it."""
    assert argv_of(executor_settings(), "-")[-1] == "- "


def test_resume_goes_after_all_options(executor_settings: Settings) -> None:
    """`resume ID` follows every option and precedes the prompt."""
    settings = executor_settings(codex_model="gpt-5.5", codex_extra_args="--ephemeral")
    argv = argv_of(settings, "go on", resume="thread-1")
    assert argv[-5:] == ["--ephemeral", "resume", "thread-1", "--", "go on"]
    assert argv.index("resume") > max(argv.index(flag) for flag in ("-s", "-C", "-o", "--json"))


def test_model_flag_only_when_set(executor_settings: Settings) -> None:
    """`-m` appears only when CODEX_MODEL is set."""
    assert "-m" not in argv_of(executor_settings(), "x")
    argv = argv_of(executor_settings(codex_model="gpt-5.5"), "x")
    assert argv[argv.index("-m") + 1] == "gpt-5.5"


@pytest.mark.parametrize(
    ("sandbox", "network", "expected"),
    [
        ("workspace-write", True, True),
        ("workspace-write", False, False),
        ("read-only", True, False),
        ("danger-full-access", True, False),
    ],
)
def test_network_flag(
    executor_settings: Settings, sandbox: str, network: bool, expected: bool
) -> None:
    """Network access is switched on only for workspace-write with CODEX_NETWORK_ACCESS."""
    settings = executor_settings(codex_sandbox=sandbox, codex_network_access=network)
    argv = argv_of(settings, "x")
    assert ("sandbox_workspace_write.network_access=true" in argv) is expected
    assert argv[argv.index("-s") + 1] == sandbox


def test_extra_args_are_split_like_a_shell(executor_settings: Settings) -> None:
    """CODEX_EXTRA_ARGS is split with shell quoting and placed before the prompt."""
    settings = executor_settings(codex_extra_args="-c 'model_reasoning_effort=\"low\"' --ephemeral")
    argv = argv_of(settings, "x")
    assert argv[-5:] == ["-c", 'model_reasoning_effort="low"', "--ephemeral", "--", "x"]


# --- resolving the binary --------------------------------------------------------------


def _executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_explicit_binary_wins(tmp_path: Path) -> None:
    """An explicit native CODEX_BIN is used as it is."""
    native = _executable(tmp_path / "bin" / "codex", "\x7fELF")
    assert resolve_codex_bin(str(native)) == str(native)


def test_node_wrapper_is_swapped_for_native_sibling(tmp_path: Path) -> None:
    """npm's node wrapper is replaced by the native binary installed next to it."""
    node_modules = tmp_path / "node_modules"
    wrapper = _executable(
        node_modules / "@openai" / "codex" / "bin" / "codex.js", "#!/usr/bin/env node\n"
    )
    native = _executable(
        node_modules / "@openai" / "codex-linux-x64" / "vendor" / "triple" / "bin" / "codex",
        "\x7fELF",
    )
    link = tmp_path / ".bin" / "codex"
    link.parent.mkdir()
    link.symlink_to(wrapper)
    if os.uname().machine in ("x86_64", "amd64"):
        assert resolve_codex_bin(str(link)) == str(native)
    else:
        assert resolve_codex_bin(str(link)).endswith("/bin/codex")


def test_project_binary_found_without_setting() -> None:
    """With no setting, the project-local native binary (or one on PATH) is found."""
    try:
        found = resolve_codex_bin("")
    except FileNotFoundError:
        pytest.skip("no codex installed")
    assert not found.endswith(".js")
    assert Path(found).is_file()


# --- parsing and folding ---------------------------------------------------------------


@pytest.mark.parametrize(
    "line", ["", "   ", "Reading additional input from stdin...", "[1, 2]", "{not json", "42"]
)
def test_noise_lines_are_none(line: str) -> None:
    """Lines that are not a JSON object parse to None."""
    assert parse_jsonl_line(line) is None


def test_parse_accepts_bytes_and_crlf() -> None:
    """Bytes and a trailing CRLF are fine."""
    assert parse_jsonl_line(b'{"type":"turn.started"}\r\n') == {"type": "turn.started"}


def test_fold_plain_answer() -> None:
    """A completed run yields its thread id, usage and last message."""
    progress = CodexProgress().feed_all(events_of(ANSWER_RUN))
    assert progress.thread_id == "01a1ffed-a8d5-71c1-b857-daf574a36d0f"
    assert progress.usage == {"input_tokens": 120, "cached_input_tokens": 20, "output_tokens": 7}
    assert progress.last_message == "hello there"
    assert progress.turn_completed and not progress.failed


def test_fold_tracks_the_running_command() -> None:
    """The current command is known between item.started and item.completed."""
    events = events_of(TOOL_RUN)
    progress = CodexProgress().feed_all(events[:3])
    assert progress.current_command == "/bin/bash -lc 'printf hi-there > hello.txt'"
    progress.feed_all(events[3:])
    assert progress.current_command is None
    assert progress.commands_run == 1
    assert progress.last_message == "wrote it"


def test_fold_failed_turn() -> None:
    """turn.failed marks the run failed with its message, despite an agent message."""
    progress = CodexProgress().feed_all(events_of(FAILED_RUN))
    assert progress.failed and progress.turn_failed and not progress.turn_completed
    assert progress.error_message == "We're currently experiencing high demand."
    assert progress.last_message == "partial"
    assert progress.usage is None


def test_item_error_is_a_warning() -> None:
    """An item of type error neither fails the run nor sets its error."""
    progress = CodexProgress()
    progress.feed({"type": "item.completed", "item": {"type": "error", "message": "careful"}})
    assert not progress.failed
    assert describe(
        {"type": "item.completed", "item": {"type": "error", "message": "careful"}}
    ) == ("warning: careful")


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (
            {
                "type": "item.started",
                "item": {"type": "command_execution", "command": "git status"},
            },
            "running `git status`",
        ),
        (
            {
                "type": "item.completed",
                "item": {"type": "command_execution", "command": "ls", "exit_code": 2},
            },
            "ran `ls` (exit 2)",
        ),
        (
            {
                "type": "item.completed",
                "item": {"type": "file_change", "changes": [{"path": "a"}, {"path": "b"}]},
            },
            "editing 2 files",
        ),
        (
            {"type": "item.completed", "item": {"type": "file_change", "changes": [{"path": "a"}]}},
            "editing a",
        ),
        ({"type": "turn.failed", "error": {"message": "boom"}}, "failed: boom"),
        ({"type": "turn.started"}, None),
        ({"type": "turn.completed", "usage": {}}, None),
    ],
)
def test_describe(event: dict[str, Any], text: str | None) -> None:
    """Progress text is one short line, or None for dull events."""
    assert describe(event) == text


def test_describe_keeps_long_commands_on_one_short_line() -> None:
    """A long multi-line command is flattened and shortened."""
    event = {"type": "item.started", "item": {"type": "command_execution", "command": "a\n" * 500}}
    text = describe(event)
    assert text is not None and "\n" not in text and len(text) < 140


def test_truncate_event_cuts_long_strings_and_copies() -> None:
    """Long strings are cut and marked; short ones and the original stay as they were."""
    event = {
        "type": "item.completed",
        "item": {"type": "command_execution", "aggregated_output": "x" * 50_000, "command": "ls"},
    }
    original = json.dumps(event)
    cut = truncate_event(event, limit=1000)
    output = cut["item"]["aggregated_output"]
    assert output.startswith("x" * 1000) and "truncated 49000 chars" in output
    assert cut["item"]["command"] == "ls"
    assert json.dumps(event) == original


def test_login_detail_never_keeps_the_key() -> None:
    """The masked key codex prints is dropped from the login detail."""
    output = "API key configured - sk-stub-***vwxyz\nAuthentication is checked later."
    assert login_detail(output, True) == "API key configured"
    assert login_detail("Not logged in\n", False, 1) == "Not logged in"
    assert "sk-" not in login_detail("Logged in sk-abcdef", True)
    assert login_detail("", False, 2) == "`codex login status` exited with 2"


def test_codex_never_sees_codex_hubs_secrets() -> None:
    """Tokens, keys and the optimizer's upstream are removed; overrides win."""
    from executor.codex import HIDDEN_ENV, codex_environment

    inherited = {name: "secret" for name in HIDDEN_ENV} | {"PATH": "/bin", "HOME": "/h"}
    env = codex_environment(inherited, {"CODEX_HOME": "/c"})
    assert env == {"PATH": "/bin", "HOME": "/h", "CODEX_HOME": "/c"}
