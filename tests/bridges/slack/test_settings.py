"""SlackSettings read from the environment: lists, defaults, token checks, `configured`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridges.slack.settings import SlackSettings
from testkit.fakes.slack import APP_TOKEN, BOT_TOKEN

SLACK_VARS = (
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_ALLOWED_USERS",
    "SLACK_ALLOWED_CHANNELS",
    "SLACK_API_BASE_URL",
    "SLACK_STATUS_EDIT_INTERVAL_S",
    "SLACK_FILE_THRESHOLD_CHARS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without Slack variables."""
    for var in SLACK_VARS:
        monkeypatch.delenv(var, raising=False)


def load() -> SlackSettings:
    """Settings from the environment only, never a stray .env file."""
    return SlackSettings(_env_file=None)  # type: ignore[call-arg]


def test_defaults_are_unconfigured_and_closed() -> None:
    """With nothing set Slack is off, nobody is allowed, and the defaults hold."""
    s = load()
    assert not s.configured
    assert s.allowed_users == [] and s.allowed_channels == []
    assert s.api_base_url == "https://slack.com/api/"
    assert s.status_edit_interval_s == 2.0 and s.file_threshold_chars == 12_000


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens, comma-separated lists, the base URL and the numbers come from the environment."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    monkeypatch.setenv("SLACK_ALLOWED_USERS", " U1, U2,,U3 ")
    monkeypatch.setenv("SLACK_ALLOWED_CHANNELS", "*")
    monkeypatch.setenv("SLACK_API_BASE_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("SLACK_STATUS_EDIT_INTERVAL_S", "0.5")
    monkeypatch.setenv("SLACK_FILE_THRESHOLD_CHARS", "500")
    s = load()
    assert s.configured
    assert s.bot_token.get_secret_value() == BOT_TOKEN
    assert BOT_TOKEN not in repr(s)
    assert s.allowed_users == ["U1", "U2", "U3"] and s.allowed_channels == ["*"]
    assert s.api_base_url == "http://127.0.0.1:9/api/"
    assert (s.status_edit_interval_s, s.file_threshold_chars) == (0.5, 500)


@pytest.mark.parametrize(
    ("bot", "app", "message"),
    [
        ("xoxp-user-token", APP_TOKEN, "xoxb-"),
        (BOT_TOKEN, "xoxb-not-an-app-token", "xapp-"),
        (BOT_TOKEN, "", "SLACK_APP_TOKEN"),
        ("", APP_TOKEN, "SLACK_BOT_TOKEN"),
    ],
)
def test_bad_or_half_set_tokens_fail_loudly(
    monkeypatch: pytest.MonkeyPatch, bot: str, app: str, message: str
) -> None:
    """A token of the wrong kind, or only one of the two, is a startup error that names it."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", bot)
    monkeypatch.setenv("SLACK_APP_TOKEN", app)
    with pytest.raises(ValidationError, match=message) as raised:
        load()
    assert all(t not in str(raised.value) for t in (bot, app) if t), "tokens stay out of errors"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SLACK_API_BASE_URL", "slack.com/api"),
        ("SLACK_STATUS_EDIT_INTERVAL_S", "0"),
        ("SLACK_FILE_THRESHOLD_CHARS", "0"),
    ],
)
def test_nonsense_values_are_refused(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    """A base URL without a scheme or a zero interval/threshold is refused."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        load()
