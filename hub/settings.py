"""Settings of the hub server.

The base every settings class builds on (sources, ``*_FILE`` secrets, the sealed
environment, weak-secret refusal) and the nodes' :class:`~kernel.settings.NodeSettings`
live in :mod:`kernel.settings`; this module adds what only the hub reads.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from hub.targets import parse_rules
from kernel.settings import (
    BASE_CONFIG,
    CsvList,
    LogSettings,
    default_data_dir,
    is_loopback,
    split_csv,
)

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


def parse_origin(text: str) -> str:
    """An ``HUB_ALLOWED_ORIGINS`` entry as browsers send it in ``Origin``: lower case,
    ``scheme://host[:port]`` without a default port; ValueError when it is not one."""
    value = text.strip().lower().rstrip("/")
    scheme, sep, netloc = value.partition("://")
    if not sep or scheme not in ("http", "https") or not netloc or any(c in netloc for c in "/?#@"):
        raise ValueError(f"{text!r} is not an origin such as https://hub.example.com")
    default = ":443" if scheme == "https" else ":80"
    return f"{scheme}://{netloc.removesuffix(default)}"


class HubSettings(LogSettings):
    """The hub server: HTTP API, node websocket, store."""

    model_config = BASE_CONFIG

    host: str = Field("127.0.0.1", alias="HUB_HOST")
    port: int = Field(8080, alias="HUB_PORT", ge=0, le=65535)
    db: Path = Field(default_factory=lambda: default_data_dir() / "codex-hub.db", alias="HUB_DB")
    token: SecretStr = Field(SecretStr(""), alias="HUB_TOKEN")
    api_keys: CsvList = Field(default_factory=list, alias="HUB_API_KEYS")
    operator_keys: CsvList = Field(default_factory=list, alias="HUB_OPERATOR_KEYS")
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
    #: Pages of these origins may use the hub besides its own (hub/web_guard.py).
    allowed_origins: CsvList = Field(default_factory=list, alias="HUB_ALLOWED_ORIGINS")
    #: Host names the hub answers to besides loopback names and IP addresses.
    allowed_hosts: CsvList = Field(default_factory=list, alias="HUB_ALLOWED_HOSTS")
    #: A connection with no complete request for this long is closed (hub/connections.py).
    idle_timeout_s: float = Field(30.0, alias="HUB_IDLE_TIMEOUT_S", gt=0)
    max_connections: int = Field(1000, alias="HUB_MAX_CONNECTIONS", ge=1)
    max_connections_per_client: int = Field(100, alias="HUB_MAX_CONNECTIONS_PER_CLIENT", ge=0)
    #: ``keys`` (default): the API and the monitor need a key (one is generated when
    #: HUB_API_KEYS is empty); ``none``: they need none, on loopback only, loudly.
    auth: Literal["keys", "none"] = Field("keys", alias="HUB_AUTH")
    #: A run's deadline on an executor that does not say its own timeout in its hello.
    run_timeout_s: float = Field(3600.0, alias="HUB_RUN_TIMEOUT_S", gt=0)
    #: Added to the executor's timeout before the hub ends a run itself (timed_out).
    run_grace_s: float = Field(60.0, alias="HUB_RUN_GRACE_S", gt=0)
    #: Most events, and most bytes of events, one run may send; past either it fails.
    run_max_events: int = Field(10_000, alias="HUB_RUN_MAX_EVENTS", ge=1)
    run_max_event_bytes: int = Field(32 * 1024 * 1024, alias="HUB_RUN_MAX_EVENT_BYTES", ge=1024)
    #: Which labels an API principal, a Slack channel or a Telegram chat may target
    #: (hub.targets): ``key:0123456789ab=staging,dev;slack:C123=prod``. Empty: no rules.
    target_rules: str = Field("", alias="HUB_TARGET_RULES")
    #: Who may decide codex's approval requests (hub/approvals.py): Slack and Telegram
    #: user ids (``U123``, ``slack:U123``, ``telegram:42``) and API principals
    #: (``key:<12 hex>``, as the API shows them); empty: the person who asked.
    approvers: CsvList = Field(default_factory=list, alias="APPROVERS")
    #: An approval request nobody decides within this long is denied.
    approval_timeout_s: float = Field(300.0, alias="APPROVAL_TIMEOUT_S", gt=0)
    #: ``steer``: a chat message or monitor prompt into a conversation whose run is
    #: working goes into its running turn (app-server executors only; others queue);
    #: ``queue``: it waits for the run to end, as a new run.
    steer_mode: Literal["steer", "queue"] = Field("steer", alias="STEER_MODE")

    _split_keys = field_validator("api_keys", "trusted_proxies", mode="before")(split_csv)
    _split_operator_keys = field_validator("operator_keys", mode="before")(split_csv)
    _split_approvers = field_validator("approvers", mode="before")(split_csv)
    _split_web = field_validator("allowed_origins", "allowed_hosts", mode="before")(split_csv)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return [parse_origin(entry) for entry in value]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            if any(c in entry for c in ":/@[] "):
                raise ValueError(
                    f"HUB_ALLOWED_HOSTS: {entry!r} is not a host name (no port, no scheme; "
                    "'.example.com' takes its subdomains too, '*' takes any name)"
                )
        return [entry.lower().rstrip(".") for entry in value]

    @field_validator("target_rules")
    @classmethod
    def _target_rules(cls, value: str) -> str:
        parse_rules(value)  # refuses, at start, what is not scope=labels
        return value

    @field_validator("db")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    reattach_grace_s: float = Field(30.0, alias="HUB_REATTACH_GRACE_S", ge=0)
    image_max_bytes: int = Field(10_000_000, alias="HUB_IMAGE_MAX_BYTES", ge=1)
    image_fetch_timeout_s: float = Field(10.0, alias="HUB_IMAGE_FETCH_TIMEOUT_S", gt=0)
    image_allowed_networks: CsvList = Field(
        default_factory=list, alias="HUB_IMAGE_ALLOWED_NETWORKS"
    )

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

    @property
    def all_api_keys(self) -> list[str]:
        """Every key the HTTP API and the monitor accept: ``HUB_API_KEYS`` and the
        operators' ``HUB_OPERATOR_KEYS`` (an operator key is an API key too)."""
        return [*self.api_keys, *self.operator_keys]

    @model_validator(mode="after")
    def _fail_closed(self) -> HubSettings:
        if self.auth == "none" and not is_loopback(self.host):
            raise ValueError(
                f"HUB_AUTH=none lets anyone drive the hub without a key: refused on "
                f"HUB_HOST={self.host}; it is only allowed on 127.0.0.1 (or ::1, localhost)"
            )
        if self.auth == "none" and self.all_api_keys:
            raise ValueError(
                "HUB_AUTH=none and HUB_API_KEYS are both set: remove HUB_AUTH=none to "
                "require the keys, or empty HUB_API_KEYS to run without any"
            )
        if not is_loopback(self.host) and (
            not self.token.get_secret_value() or not self.all_api_keys
        ):
            raise ValueError(
                f"HUB_HOST={self.host} is reachable from other machines: set both HUB_TOKEN "
                "and HUB_API_KEYS before binding anywhere but 127.0.0.1"
            )
        return self
