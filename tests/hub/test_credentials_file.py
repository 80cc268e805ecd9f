"""No empty credentials: a hub given none generates them into a private file beside its
store, nodes with the same store find theirs there, and running without a key is an
explicit, loopback-only setting."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from executor.factory import build_pipeline
from executor.node import ExecutorNode
from executor.settings import ExecutorSettings
from hub.app import HubServer
from hub.appkeys import ROUTER
from hub.settings import HubSettings
from kernel.credentials import CredentialsError, credentials_path, derive, node_token

#: A key set in HUB_API_KEYS (long: the hub masks every key it knows in what it logs).
CONFIGURED_KEY = "configured-api-key-0123456789"


def bare_settings(tmp_path: Path, **values: Any) -> HubSettings:
    """Hub settings with neither HUB_TOKEN nor HUB_API_KEYS: what `make run` starts with."""
    return HubSettings(_env_file=None, HUB_PORT=0, HUB_DB=tmp_path / "data" / "hub.db", **values)


async def test_a_first_start_writes_a_private_credentials_file_and_a_second_reuses_it(
    tmp_path: Path,
) -> None:
    """With nothing configured the hub writes an API key and a node secret to a 0600 file
    beside HUB_DB, requires that key, and offers a sign-in link with the key in the URL
    fragment; the next start finds the same credentials."""
    settings = bare_settings(tmp_path)
    path = tmp_path / "data" / "hub.credentials"
    assert credentials_path(settings.db) == path and not path.exists()
    async with HubServer(settings) as hub, aiohttp.ClientSession() as http:
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
        data = json.loads(path.read_text())
        key, secret = data["api_key"], data["secret"]
        assert len(key) >= 40 and len(secret) >= 40
        assert data["executor"] == derive(secret, "executor")
        # The generated key is the operator's: whoever started the hub sees every run.
        assert hub.settings.operator_keys == [key] and hub.settings.api_keys == []
        assert hub.settings.token.get_secret_value() == secret
        assert hub.signin_url == f"http://127.0.0.1:{hub.port}/#key={key}"
        async with http.get(f"{hub.url}/api/nodes") as resp:
            assert resp.status == 401
        async with http.get(
            f"{hub.url}/api/nodes", headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.status == 200
    async with HubServer(bare_settings(tmp_path)) as again:
        assert again.settings.operator_keys == [key]
        assert again.settings.token.get_secret_value() == secret
    assert json.loads(path.read_text()) == data


async def test_configured_credentials_are_used_and_no_file_is_written(tmp_path: Path) -> None:
    """HUB_TOKEN and HUB_API_KEYS set: they are the credentials, nothing is generated and
    no sign-in link is offered (the key is the operator's to hand out)."""
    settings = bare_settings(
        tmp_path, HUB_TOKEN="a-configured-secret-123", HUB_API_KEYS=CONFIGURED_KEY
    )
    async with HubServer(settings) as hub:
        assert hub.credentials is None and hub.signin_url is None
        assert hub.settings.api_keys == [CONFIGURED_KEY]
    assert not credentials_path(settings.db).exists()


async def test_a_node_in_the_same_data_dir_connects_with_no_token(tmp_path: Path) -> None:
    """An executor with HUB_TOKEN empty and the hub's HUB_DB presents its own role's
    credential from the file (not the hub's secret) and is welcomed."""
    settings = bare_settings(tmp_path)
    async with HubServer(settings) as hub:
        node_settings = ExecutorSettings(
            _env_file=None,
            HUB_URL=f"ws://127.0.0.1:{hub.port}/ws",
            HUB_DB=settings.db,
            EXEC_DRY_RUN=True,
            EXEC_WORKDIR=tmp_path,
        )
        assert node_settings.hub_token.get_secret_value() == ""
        pipeline, transport = build_pipeline(node_settings)
        node = ExecutorNode(node_settings, pipeline)
        try:
            await node.start()
            await node.client.connected.wait()
            executors = hub.app[ROUTER].executors
            assert executors[node.node_id].credential == "executor"
        finally:
            await node.close()
            await pipeline.aclose()
            await transport.close()


@pytest.mark.parametrize("unsafe", ["group-readable", "symlink", "not-json"])
def test_an_unsafe_or_broken_credentials_file_is_refused(tmp_path: Path, unsafe: str) -> None:
    """A credentials file open to others, a symbolic link, or one that is not JSON is never
    used: the hub refuses to start saying what to do, and a node presents nothing."""
    settings = bare_settings(tmp_path)
    path = credentials_path(settings.db)
    path.parent.mkdir(parents=True)
    content = json.dumps({"api_key": "k" * 43, "secret": "s" * 43})
    if unsafe == "symlink":
        target = tmp_path / "elsewhere.json"
        target.write_text(content)
        target.chmod(0o600)
        path.symlink_to(target)
    else:
        path.write_text("{not json" if unsafe == "not-json" else content)
        path.chmod(0o640 if unsafe == "group-readable" else 0o600)
    with pytest.raises(CredentialsError) as refused:
        HubServer(settings)
    wanted = {"group-readable": "chmod 600", "symlink": "cannot open", "not-json": "remove it"}
    assert wanted[unsafe] in str(refused.value) and "s" * 43 not in str(refused.value)
    assert node_token("", settings.db, "executor") == ""


def test_running_without_a_key_is_explicit_loud_and_loopback_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """HUB_AUTH=none is refused on 0.0.0.0 (and beside HUB_API_KEYS); on loopback the hub
    generates no API key and logs a WARNING that says so."""
    for host in ("0.0.0.0", "192.0.2.1", "::"):
        with pytest.raises(ValidationError, match="HUB_AUTH=none"):
            bare_settings(tmp_path, HUB_HOST=host, HUB_AUTH="none", HUB_TOKEN="t" * 20)
    with pytest.raises(ValidationError, match="HUB_AUTH=none and HUB_API_KEYS"):
        bare_settings(tmp_path, HUB_AUTH="none", HUB_API_KEYS=CONFIGURED_KEY)
    with caplog.at_level(logging.WARNING, logger="hub.credentials"):
        hub = HubServer(bare_settings(tmp_path, HUB_AUTH="none"))
    assert hub.settings.api_keys == [] and hub.signin_url is None
    assert any(
        r.levelno == logging.WARNING and "WITHOUT ANY KEY" in r.getMessage() for r in caplog.records
    )
