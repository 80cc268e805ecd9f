"""Settings of the Telegram bridge, read once from ``TELEGRAM_*`` variables.

Who may use the bot is decided by two lists (see ``bridges.telegram.convert.is_allowed``):
``TELEGRAM_ALLOWED_CHATS`` opens a chat to everyone in it, ``TELEGRAM_ALLOWED_USERS``
opens the bot to a person in any chat; ``*`` means everyone. Both empty lets nobody in:
the bot then answers every message with the ids to add.

``TELEGRAM_API_BASE_URL`` is the URL the bot token is appended to
(``https://api.telegram.org/bot`` + ``<TOKEN>/getMe``). A bare server root such as
``http://127.0.0.1:8081`` gets ``/bot`` appended. File downloads use the same server
with ``/file/bot`` in place of the final ``/bot`` (``https://api.telegram.org/file/bot``),
which is how both api.telegram.org and a self-hosted Bot API server lay out their URLs.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from bridges.settings import BridgeSettings
from kernel.settings import BASE_CONFIG, CsvList, split_csv

#: Where the Bot API lives unless ``TELEGRAM_API_BASE_URL`` says otherwise.
DEFAULT_API_BASE_URL = "https://api.telegram.org/bot"

_TOKEN_RE = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
_ID_RE = re.compile(r"^-?\d+$")


def _check_ids(values: list[str]) -> list[str]:
    """Keep ``*`` and numeric ids; anything else is a configuration mistake."""
    bad = [v for v in values if v != "*" and not _ID_RE.match(v)]
    if bad:
        raise ValueError(
            f"expected numeric Telegram ids or '*', got {bad}: usernames can change, ids cannot "
            "(the bot tells every refused user their ids)"
        )
    return values


class TelegramSettings(BridgeSettings):
    """Everything the Telegram bridge needs: the bot token, who may use it, pacing."""

    # A malformed token is still a secret: keep raw input out of validation errors.
    model_config = SettingsConfigDict(**BASE_CONFIG, hide_input_in_errors=True)

    bot_token: SecretStr = Field(SecretStr(""), alias="TELEGRAM_BOT_TOKEN")
    allowed_chats: CsvList = Field(default_factory=list, alias="TELEGRAM_ALLOWED_CHATS")
    allowed_users: CsvList = Field(default_factory=list, alias="TELEGRAM_ALLOWED_USERS")
    parse_mode: Literal["", "MarkdownV2"] = Field("", alias="TELEGRAM_PARSE_MODE")
    api_base_url: str = Field(DEFAULT_API_BASE_URL, alias="TELEGRAM_API_BASE_URL")
    status_delay_s: float = Field(2.0, alias="TELEGRAM_STATUS_DELAY_S", ge=0)
    status_edit_interval_s: float = Field(3.0, alias="TELEGRAM_STATUS_EDIT_INTERVAL_S", gt=0)
    document_threshold_chars: int = Field(12_000, alias="TELEGRAM_DOCUMENT_THRESHOLD_CHARS", ge=1)

    _split_lists = field_validator("allowed_chats", "allowed_users", mode="before")(split_csv)

    @field_validator("allowed_chats", "allowed_users")
    @classmethod
    def _ids_only(cls, value: list[str]) -> list[str]:
        return _check_ids(value)

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value().strip()
        if token and not _TOKEN_RE.match(token):
            raise ValueError("TELEGRAM_BOT_TOKEN must look like '123456:ABC-...' (from @BotFather)")
        return SecretStr(token)

    @field_validator("parse_mode", mode="before")
    @classmethod
    def _parse_mode_names(cls, value: object) -> object:
        if isinstance(value, str):
            folded = value.strip().lower()
            if folded in ("", "plain", "none", "text"):
                return ""
            if folded == "markdownv2":
                return "MarkdownV2"
        return value

    @field_validator("api_base_url")
    @classmethod
    def _bot_suffix(cls, value: str) -> str:
        base = value.strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"TELEGRAM_API_BASE_URL must be an http(s) URL, got {value!r}")
        return base if base.endswith("/bot") else f"{base}/bot"

    @property
    def file_base_url(self) -> str:
        """Where files are downloaded: the API base with ``/file/bot`` for its final ``/bot``."""
        return self.api_base_url.removesuffix("/bot") + "/file/bot"

    @property
    def configured(self) -> bool:
        """True when a bot token is set, so the bridge has something to start."""
        return bool(self.bot_token.get_secret_value())
