"""What every chat bridge's settings share: the hub link's and the kept requests' bounds."""

from __future__ import annotations

from pydantic import Field, field_validator

from bridges.common import ATTACHMENT_MAX_BYTES, ATTACHMENT_TYPES, parse_repo_defaults
from bridges.hub_link import PENDING_MAX, PENDING_MAX_AGE_S
from kernel.settings import NodeSettings


class BridgeSettings(NodeSettings):
    """The base of every bridge's settings (``SlackSettings``, ``TelegramSettings``).

    ``BRIDGE_PENDING_MAX`` requests at most are kept while the hub cannot be reached,
    each for ``BRIDGE_PENDING_MAX_AGE_S`` at most (see :mod:`bridges.hub_link`); 0 keeps
    none: such a request is refused at once, as "the hub is not reachable".
    """

    pending_max: int = Field(PENDING_MAX, alias="BRIDGE_PENDING_MAX", ge=0)
    pending_max_age_s: float = Field(PENDING_MAX_AGE_S, alias="BRIDGE_PENDING_MAX_AGE_S", gt=0)
    #: Default repositories per place: ``chat_or_channel_id=owner/name``, comma-separated.
    repos: str = Field("", alias="BRIDGE_REPOS")
    #: The most bytes of files one message may attach (0: attachments refused). Bounded by
    #: the hub's 4 MiB frame, which carries them base64-encoded.
    attachment_max_bytes: int = Field(
        ATTACHMENT_MAX_BYTES, alias="BRIDGE_ATTACHMENT_MAX_BYTES", ge=0, le=2_900_000
    )
    #: The MIME types a message may attach, comma-separated; ``type/*`` matches a family.
    attachment_types: str = Field(ATTACHMENT_TYPES, alias="BRIDGE_ATTACHMENT_TYPES")

    @field_validator("repos")
    @classmethod
    def _repos_pairs(cls, value: str) -> str:
        parse_repo_defaults(value)
        return value
