"""GET /api/settings: the hub's effective settings for operators, never a secret's value
(issue #20)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import HubServer
from hub.settings import HubSettings
from kernel.settings import is_secret_field
from tests.monitor.conftest import make_settings

#: Words of a setting's name that say it holds a credential (HUB_OPERATOR_KEYS is a plain
#: list, which kernel.settings.is_secret_field does not count: the view must).
CREDENTIAL_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def secret_settings() -> dict[str, bool]:
    """Every secret setting of the hub by environment name -> whether it is a list."""
    out = {}
    for name, info in HubSettings.model_fields.items():
        env = (info.alias or name).upper()
        if is_secret_field(name, info) or any(word in env for word in CREDENTIAL_WORDS):
            out[env] = "list" in str(info.annotation)
    return out


def distinct_secrets() -> tuple[dict[str, str], list[str]]:
    """A distinct value for every secret setting (two for a list) and every value given."""
    env: dict[str, str] = {}
    values: list[str] = []
    for name, is_list in secret_settings().items():
        given = [f"{name.lower()}-{i}-{secrets.token_hex(12)}" for i in range(2 if is_list else 1)]
        env[name] = ",".join(given)
        values += given
    return env, values


def leaked(text: str, values: list[str]) -> list[str]:
    """The secrets (or their first 12 characters) found in ``text``."""
    return [value for value in values if value in text or value[:12] in text]


async def get_settings(server: HubServer, key: str) -> tuple[int, str]:
    """GET /api/settings with ``key``: the status and the body as text."""
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/api/settings", headers=headers) as response,
    ):
        return response.status, await response.text()


class Hub:
    def __init__(self, server: HubServer, env: dict[str, str], values: list[str]) -> None:
        self.server, self.env, self.values = server, env, values
        self.operator_key = env["HUB_OPERATOR_KEYS"].split(",")[1]
        self.plain_key = env["HUB_API_KEYS"].split(",")[0]

    async def get(self, key: str) -> tuple[int, str]:
        return await get_settings(self.server, key)


@pytest.fixture
async def secret_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """A hub with every secret setting given a distinct value, and a few plain ones."""
    env, values = distinct_secrets()
    settings = make_settings(tmp_path, HUB_MODEL_NAME="fleet-model", HUB_QUEUE_LIMIT=77, **env)
    async with HubServer(settings) as server:
        yield Hub(server, env, values)


def test_the_hub_has_the_secret_settings_this_test_configures() -> None:
    """The test covers the hub's token and both key lists (and any secret added later)."""
    assert {"HUB_TOKEN", "HUB_API_KEYS", "HUB_OPERATOR_KEYS"} <= set(secret_settings())


async def test_an_operator_sees_every_setting_and_no_secret(secret_hub: Hub) -> None:
    """Every hub setting is listed by its env name; secrets only as "set", none of their
    values anywhere in the answer."""
    status, text = await secret_hub.get(secret_hub.operator_key)
    assert status == 200, text
    assert leaked(text, secret_hub.values) == []
    shown = {entry["env"]: entry for entry in json.loads(text)["settings"]}
    assert set(shown) == {(i.alias or n).upper() for n, i in HubSettings.model_fields.items()}
    for name in secret_settings():
        assert (shown[name]["value"], shown[name]["secret"]) == ("set", True), name
    assert shown["HUB_MODEL_NAME"] == {
        "env": "HUB_MODEL_NAME",
        "value": "fleet-model",
        "secret": False,
        "default": False,
    }
    assert (shown["HUB_QUEUE_LIMIT"]["value"], shown["HUB_QUEUE_LIMIT"]["default"]) == (77, False)
    assert (shown["HUB_RUN_MAX_EVENTS"]["value"], shown["HUB_RUN_MAX_EVENTS"]["default"]) == (
        10_000,
        True,
    )
    assert shown["HUB_DB"]["value"].endswith("hub.db")


async def test_a_key_that_is_not_an_operators_is_refused(secret_hub: Hub) -> None:
    """A plain API key gets 403 operator_only, and the refusal holds no secret either."""
    status, text = await secret_hub.get(secret_hub.plain_key)
    assert status == 403
    assert json.loads(text)["error"]["code"] == "operator_only"
    assert "HUB_OPERATOR_KEYS" in text
    assert leaked(text, secret_hub.values) == []


async def test_a_generated_credential_shows_as_set_not_as_its_value(tmp_path: Path) -> None:
    """With HUB_TOKEN and the keys empty the hub generates them: they show as set."""
    settings = make_settings(tmp_path, HUB_TOKEN="", HUB_OPERATOR_KEYS="")
    async with HubServer(settings) as server:
        generated = [server.settings.token.get_secret_value(), *server.settings.operator_keys]
        assert all(generated)
        status, text = await get_settings(server, server.settings.operator_keys[0])
    assert status == 200, text
    assert leaked(text, generated) == []
    shown = {entry["env"]: entry["value"] for entry in json.loads(text)["settings"]}
    assert shown["HUB_TOKEN"] == "set" and shown["HUB_OPERATOR_KEYS"] == "set"


async def test_a_hub_without_keys_shows_its_settings_and_says_which_secrets_are_unset(
    tmp_path: Path,
) -> None:
    """With HUB_AUTH=none everyone is an operator; the empty key lists show as not set."""
    settings = make_settings(tmp_path, HUB_API_KEYS="", HUB_OPERATOR_KEYS="", HUB_AUTH="none")
    async with (
        HubServer(settings) as server,
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/api/settings") as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json()
    shown = {entry["env"]: entry["value"] for entry in body["settings"]}
    assert shown["HUB_API_KEYS"] == "not set" and shown["HUB_OPERATOR_KEYS"] == "not set"
    assert shown["HUB_AUTH"] == "none"
