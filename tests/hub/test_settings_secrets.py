"""Secret settings: ``*_FILE`` variants for every secret field, weak values refused, the
environment sealed while a command runs, processes closed to their user (issue #13)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from bridges.slack.settings import SlackSettings
from bridges.telegram.settings import TelegramSettings
from executor.codex import codex_environment
from executor.settings import ExecutorSettings
from hub.settings import HubSettings
from kernel import settings as hub_settings
from kernel.settings import (
    BASE_CONFIG,
    NodeSettings,
    SecretFileError,
    sealed_secret_environment,
    secret_env_names,
    weak_secret_reason,
)

TOKEN = "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c"


class LaterSettings(NodeSettings):
    """A settings class someone adds later, with a secret of its own."""

    model_config = BASE_CONFIG

    later_secret: SecretStr = Field(SecretStr(""), alias="LATER_SERVICE_SECRET")


def test_a_secret_is_read_from_its_file_without_the_trailing_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HUB_TOKEN_FILE and HUB_API_KEYS_FILE give HUB_TOKEN and the list of keys."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "keys").write_text("key-one-4f8a2c6e0b,key-two-7d1b5f9c3a\r\n")
    monkeypatch.setenv("HUB_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("HUB_API_KEYS_FILE", str(tmp_path / "keys"))
    settings = HubSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.token.get_secret_value() == TOKEN
    assert settings.api_keys == ["key-one-4f8a2c6e0b", "key-two-7d1b5f9c3a"]


def test_every_secret_field_gets_a_file_variant_even_one_added_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SecretStr field of any class on the settings base takes NAME_FILE too."""
    (tmp_path / "later").write_text("later-0a1b2c3d4e5f6a7b")
    monkeypatch.setenv("LATER_SERVICE_SECRET_FILE", str(tmp_path / "later"))
    assert LaterSettings(_env_file=None).later_secret.get_secret_value() == "later-0a1b2c3d4e5f6a7b"  # type: ignore[call-arg]
    assert {"LATER_SERVICE_SECRET", "LATER_SERVICE_SECRET_FILE"} <= secret_env_names()
    for name in ("HUB_TOKEN", "HUB_API_KEYS", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"):
        assert f"{name}_FILE" in secret_env_names()
    assert {"TELEGRAM_BOT_TOKEN_FILE", "OPENAI_API_KEY_FILE"} <= secret_env_names()
    assert "HUB_DB_FILE" not in secret_env_names()


def test_a_file_variant_is_read_from_the_env_file(tmp_path: Path) -> None:
    """NAME_FILE may sit in .env like any setting."""
    (tmp_path / "bot").write_text("xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp\n")
    (tmp_path / "app").write_text("xapp-1-A0123456789-0123456789-abcdef0123\n")
    env = tmp_path / "settings.env"
    env.write_text(
        f"SLACK_BOT_TOKEN_FILE={tmp_path / 'bot'}\nSLACK_APP_TOKEN_FILE={tmp_path / 'app'}\n"
    )
    slack = SlackSettings(_env_file=env)  # type: ignore[call-arg]
    assert slack.bot_token.get_secret_value().startswith("xoxb-1234567890")
    assert slack.configured


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("", "the file is empty"), ("\n", "the file is empty")],
)
def test_an_unusable_secret_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, message: str
) -> None:
    """A missing or empty file stops start-up with the setting and the path named."""
    path = tmp_path / "telegram-token"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN_FILE", str(path))
    with pytest.raises(SecretFileError) as caught:
        TelegramSettings(_env_file=None)  # type: ignore[call-arg]
    assert str(caught.value) == f"TELEGRAM_BOT_TOKEN_FILE={path}: {message}"


def test_a_secret_and_its_file_both_set_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sources for one secret is a mistake, never a silent choice."""
    (tmp_path / "token").write_text(TOKEN)
    monkeypatch.setenv("HUB_TOKEN", "a1b2c3d4e5f6a7b8c9d0")
    monkeypatch.setenv("HUB_TOKEN_FILE", str(tmp_path / "token"))
    with pytest.raises(SecretFileError, match="HUB_TOKEN and HUB_TOKEN_FILE are both set"):
        NodeSettings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("codex-hub", "9 characters is too short"),
        ("k-right", "too short"),
        ("aaaaaaaaaaaaaaaa", "too few different characters"),
        ("node-token-for-tests", "looks like words"),
        ("CHANGE_ME_PLEASE", "looks like words"),
        ("codex-hub-2024-token", "'codex-hub'"),
        ("changeme12345678", "'changeme'"),
        ("REPLACE_ME-0123456789", "'replace_me'"),
    ],
)
def test_a_value_too_short_or_common_is_not_a_credential(value: str, reason: str) -> None:
    """Values that masking would find in ordinary text are refused, with the reason."""
    found = weak_secret_reason(value)
    assert found is not None and reason in found
    assert value not in found


@pytest.mark.parametrize(
    "value",
    [
        TOKEN,
        "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
        "7000000002:AAH4kx9-LmNoPqRsTuVwXyZ0123456789ab",
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t",
        "correct-Horse-battery-st4ple",
    ],
)
def test_a_generated_credential_is_accepted(value: str) -> None:
    """Random keys and the platforms' tokens pass."""
    assert weak_secret_reason(value) is None


def test_credential_problems_name_each_setting_never_the_value() -> None:
    """Each weak secret of a settings object is one line naming its variable."""
    settings = HubSettings(  # type: ignore[call-arg]
        _env_file=None, HUB_TOKEN="codex-hub", HUB_API_KEYS=f"{TOKEN},k9x"
    )
    problems = settings.credential_problems()
    assert [p.split(":")[0] for p in problems] == ["HUB_TOKEN", "HUB_API_KEYS"]
    assert not any("codex-hub" in p or "k9x" in p for p in problems)
    assert HubSettings(_env_file=None, HUB_TOKEN=TOKEN).credential_problems() == []  # type: ignore[call-arg]


def test_the_sealed_environment_hides_secrets_from_children_but_not_from_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While sealed, secret variables are gone from os.environ (and from what a child
    inherits), settings still read them, and they come back afterwards."""
    monkeypatch.setenv("HUB_TOKEN", TOKEN)
    monkeypatch.setenv("LATER_SERVICE_SECRET", "later-0a1b2c3d4e5f6a7b")
    monkeypatch.setenv("HUB_URL", "ws://127.0.0.1:1/ws")
    with sealed_secret_environment():
        assert "HUB_TOKEN" not in os.environ and "LATER_SERVICE_SECRET" not in os.environ
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.environ))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "HUB_TOKEN" not in child and "HUB_URL" in child
        settings = NodeSettings(_env_file=None)  # type: ignore[call-arg]
        assert settings.hub_token.get_secret_value() == TOKEN
    assert os.environ["HUB_TOKEN"] == TOKEN
    assert hub_settings._sealed == {}


def test_codex_never_inherits_a_secret_setting_of_any_class() -> None:
    """codex's environment drops every secret setting and its _FILE, a later one too."""
    inherited = {
        "PATH": "/usr/bin",
        "GH_TOKEN": "for-gh",
        "HUB_TOKEN_FILE": "/run/secrets/hub_token",
        "LATER_SERVICE_SECRET": "x",
        "SLACK_BOT_TOKEN": "y",
        "hub_api_keys": "z",
    }
    assert codex_environment(inherited, {"CODEX_HOME": "/h"}) == {
        "PATH": "/usr/bin",
        "GH_TOKEN": "for-gh",
        "CODEX_HOME": "/h",
    }


def test_the_store_defaults_to_the_users_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HUB_DB defaults outside the working directory, where codex works by default."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert HubSettings(_env_file=None).db == tmp_path / "data" / "codex-hub" / "codex-hub.db"  # type: ignore[call-arg]
    assert ExecutorSettings(_env_file=None).exec_workdir == Path(".")  # type: ignore[call-arg]


def test_a_process_made_undumpable_hides_its_environment_from_its_own_user() -> None:
    """make_undumpable closes /proc/<pid>/environ to a same-user process without
    capabilities (root drops them, as an ordinary user has none)."""
    code = (
        "import os, subprocess, sys\n"
        "from kernel.process import make_undumpable, is_dumpable\n"
        "assert make_undumpable() and not is_dumpable()\n"
        "drop = ['setpriv', '--bounding-set', '-all', '--inh-caps', '-all', '--']\n"
        "cmd = [*(drop if os.geteuid() == 0 else []), 'cat', f'/proc/{os.getpid()}/environ']\n"
        "done = subprocess.run(cmd, capture_output=True)\n"
        "sys.exit(0 if done.returncode != 0 and b'CANARY' not in done.stdout else 1)\n"
    )
    env = {**os.environ, "CANARY_SECRET": TOKEN}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
