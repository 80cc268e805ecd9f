"""The hub's side of the credentials (:mod:`kernel.credentials`): fill what its settings
lack from the credentials file, generated at the first start."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import SecretStr

from hub.settings import HubSettings
from kernel.credentials import ROLES, Credentials, credentials_path, derive, load_or_create
from kernel.logs import register_secret

log = logging.getLogger(__name__)


def resolve(settings: HubSettings) -> tuple[HubSettings, Credentials | None]:
    """``settings`` with an empty ``HUB_TOKEN`` or ``HUB_API_KEYS`` filled from the
    credentials file (generated at the first start), and that file's credentials (None
    when nothing was missing). ``HUB_AUTH=none`` wants no API key: it is logged loudly.

    The generated API key ends up in ``operator_keys``, the effective operator keys: it
    is the key of whoever started the hub on their machine, who sees every run (the
    chat bridges' too). Every credential the hub now knows is masked in what it logs.
    """
    need_key = settings.auth != "none" and not settings.all_api_keys
    need_secret = not settings.token.get_secret_value()
    creds: Credentials | None = None
    if need_key or need_secret:
        path = credentials_path(settings.db)
        creds, created = load_or_create(path)
        update: dict[str, Any] = {}
        if need_key:
            update["operator_keys"] = [creds.api_key]
        if need_secret:
            update["token"] = SecretStr(creds.secret)
        settings = settings.model_copy(update=update)
        what = " and ".join(
            name
            for name, needed in (("an API key", need_key), ("node credentials", need_secret))
            if needed
        )
        if created:
            log.info("generated %s at first start; kept in %s (mode 0600)", what, path)
        else:
            log.info("using %s from %s", what, path)
    if settings.auth == "none":
        log.warning(
            "HUB_AUTH=none: the HTTP API, the monitor and the live feed take requests "
            "WITHOUT ANY KEY; any web page or local user that reaches %s:%s can start runs "
            "and read every answer. Unset HUB_AUTH to require a key.",
            settings.host,
            settings.port,
        )
    secret = settings.token.get_secret_value()
    keys = settings.all_api_keys
    for value in (secret, *keys, *(derive(secret, role) for role in ROLES)):
        register_secret(value)
    return settings, creds
