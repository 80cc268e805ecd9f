"""Settings of the Slack bridge, read once from the environment and passed down.

Access is fail-closed: empty `SLACK_ALLOWED_USERS` / `SLACK_ALLOWED_CHANNELS` let nobody
in and `*` lets everyone in (see `bridges.slack.convert.is_allowed` for how they combine).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from bridges.settings import BridgeSettings
from kernel.settings import BASE_CONFIG, CsvList, split_csv


class SlackSettings(BridgeSettings):
    """Tokens, access lists and posting behaviour of the Slack bridge."""

    # A validation error would otherwise print every input, tokens included.
    model_config = SettingsConfigDict(**BASE_CONFIG, hide_input_in_errors=True)

    bot_token: SecretStr = Field(SecretStr(""), alias="SLACK_BOT_TOKEN")
    app_token: SecretStr = Field(SecretStr(""), alias="SLACK_APP_TOKEN")
    allowed_users: CsvList = Field(default_factory=list, alias="SLACK_ALLOWED_USERS")
    allowed_channels: CsvList = Field(default_factory=list, alias="SLACK_ALLOWED_CHANNELS")
    api_base_url: str = Field("https://slack.com/api/", alias="SLACK_API_BASE_URL")
    status_edit_interval_s: float = Field(2.0, alias="SLACK_STATUS_EDIT_INTERVAL_S", gt=0)
    file_threshold_chars: int = Field(12_000, alias="SLACK_FILE_THRESHOLD_CHARS", ge=1)

    _split_lists = field_validator("allowed_users", "allowed_channels", mode="before")(split_csv)

    @field_validator("api_base_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        # slack_sdk joins the method name onto the base URL: without the slash,
        # "http://host/api" + "chat.postMessage" would lose the "/api" segment.
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("SLACK_API_BASE_URL must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _check_tokens(self) -> SlackSettings:
        bot, app = self.bot_token.get_secret_value(), self.app_token.get_secret_value()
        # bolt only recognises its own bot user (and ignores its own messages) with xoxb-.
        if bot and not bot.startswith("xoxb-"):
            raise ValueError("SLACK_BOT_TOKEN must be a bot token starting with xoxb-")
        if app and not app.startswith("xapp-"):
            raise ValueError("SLACK_APP_TOKEN must be an app-level token starting with xapp-")
        if bool(bot) != bool(app):
            missing = "SLACK_APP_TOKEN" if bot else "SLACK_BOT_TOKEN"
            raise ValueError(f"Slack is half configured: set {missing} too, or neither")
        return self

    @property
    def configured(self) -> bool:
        """True when both tokens are set, so the bridge can connect."""
        return bool(self.bot_token.get_secret_value() and self.app_token.get_secret_value())
