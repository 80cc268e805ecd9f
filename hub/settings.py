"""Settings of the hub and of every node that connects to it.

Read once, from the environment (and `.env` when present), by pydantic-settings, then
passed down. Nothing below this module reads `os.environ`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Where settings come from, shared by every settings class of the project.
BASE_CONFIG = SettingsConfigDict(
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",
    case_sensitive=False,
    populate_by_name=True,
)


def split_csv(value: object) -> object:
    """Turn ``"a, b,,c"`` into ``["a", "b", "c"]``; lists pass through."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LogSettings(BaseSettings):
    """Logging, shared by every process."""

    model_config = BASE_CONFIG

    log_level: str = Field("INFO", alias="LOG_LEVEL")
    log_format: Literal["text", "json"] = Field("text", alias="LOG_FORMAT")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``HUB_TRUSTED_PROXIES`` entries (addresses or CIDR networks) parsed; ValueError
    names the first that is neither."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(networks)


class HubSettings(LogSettings):
    """The hub server: HTTP API, node websocket, store."""

    model_config = BASE_CONFIG

    host: str = Field("127.0.0.1", alias="HUB_HOST")
    port: int = Field(8080, alias="HUB_PORT", ge=0, le=65535)
    db: Path = Field(Path("codex-hub.db"), alias="HUB_DB")
    token: SecretStr = Field(SecretStr(""), alias="HUB_TOKEN")
    api_keys: CsvList = Field(default_factory=list, alias="HUB_API_KEYS")
    model_name: str = Field("codex", alias="HUB_MODEL_NAME")
    queue_limit: int = Field(1000, alias="HUB_QUEUE_LIMIT", ge=1)
    max_body_bytes: int = Field(1_048_576, alias="HUB_MAX_BODY_BYTES", ge=1024)
    executor_grace_s: float = Field(15.0, alias="HUB_EXECUTOR_GRACE_S", gt=0)
    keepalive_s: float = Field(5.0, alias="HUB_KEEPALIVE_S", gt=0)
    redeliver_s: float = Field(10.0, alias="HUB_REDELIVER_S", gt=0)
    rate_limit_per_min: int = Field(0, alias="HUB_RATE_LIMIT_PER_MIN", ge=0)
    auth_failure_limit: int = Field(10, alias="HUB_AUTH_FAILURE_LIMIT", ge=0)
    auth_failure_window_s: float = Field(60.0, alias="HUB_AUTH_FAILURE_WINDOW_S", gt=0)
    trusted_proxies: CsvList = Field(default_factory=list, alias="HUB_TRUSTED_PROXIES")
    reattach_grace_s: float = Field(30.0, alias="HUB_REATTACH_GRACE_S", ge=0)
    image_max_bytes: int = Field(10_000_000, alias="HUB_IMAGE_MAX_BYTES", ge=1)
    image_fetch_timeout_s: float = Field(10.0, alias="HUB_IMAGE_FETCH_TIMEOUT_S", gt=0)
    image_allowed_networks: CsvList = Field(
        default_factory=list, alias="HUB_IMAGE_ALLOWED_NETWORKS"
    )

    _split_keys = field_validator("api_keys", "trusted_proxies", mode="before")(split_csv)
    _split_image_networks = field_validator("image_allowed_networks", mode="before")(split_csv)

    @field_validator("image_allowed_networks")
    @classmethod
    def _image_networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # refuses what is not an address or a network
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # refuses what is not an address or a network
        return value

    @model_validator(mode="after")
    def _fail_closed(self) -> HubSettings:
        if not is_loopback(self.host) and (not self.token.get_secret_value() or not self.api_keys):
            raise ValueError(
                f"HUB_HOST={self.host} is reachable from other machines: set both HUB_TOKEN "
                "and HUB_API_KEYS before binding anywhere but 127.0.0.1"
            )
        return self


class NodeSettings(LogSettings):
    """What every node (executor, bridge) needs to reach the hub."""

    model_config = BASE_CONFIG

    hub_url: str = Field("ws://127.0.0.1:8080/ws", alias="HUB_URL")
    hub_token: SecretStr = Field(SecretStr(""), alias="HUB_TOKEN")
    node_name: str = Field("", alias="NODE_NAME")
