"""compose.yaml runs the hub, scalable executors and opt-in bridges with real commands."""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

import pytest

from tests.deploy import _contract as c

NODES = ("executor", "slack", "telegram")


@pytest.fixture(scope="module")
def compose() -> dict:
    return c.compose()


def test_services(compose: dict) -> None:
    """The file parses and holds exactly the four roles."""
    assert set(compose["services"]) == {"hub", *NODES}


@pytest.mark.parametrize("name", ["hub", *NODES])
def test_command_is_a_real_subcommand(compose: dict, name: str) -> None:
    """Each service runs a `codex-hub` command the CLI accepts."""
    command = compose["services"][name]["command"]
    assert isinstance(command, list), "exec form: no shell between compose and codex-hub"
    assert c.check_command(command) is None, c.check_command(command)


@pytest.mark.parametrize("name", ["hub", *NODES])
def test_reads_dot_env(compose: dict, name: str) -> None:
    """Every service takes its settings from .env and restarts after a crash."""
    service = compose["services"][name]
    assert service["env_file"] in (".env", [".env"])
    assert service["restart"] == "unless-stopped"
    assert service["image"] == compose["services"]["hub"]["image"]


def test_env_names_are_settings(compose: dict) -> None:
    """Every variable compose sets or interpolates is a real setting."""
    aliases = c.setting_aliases()
    names = set()
    for service in compose["services"].values():
        names |= set(c.service_environment(service))
    text = c.COMPOSE.read_text()
    names |= c.interpolations(text) | c.environ_reads(text)
    unknown = sorted(n for n in names if n not in aliases and n not in c.NON_SETTINGS)
    assert not unknown, f"not settings: {unknown}"


def test_hub_is_published_on_loopback_only(compose: dict) -> None:
    """Only the hub publishes a port, on the host's 127.0.0.1, and it listens for the nodes."""
    hub = compose["services"]["hub"]
    assert hub["ports"] == ["127.0.0.1:8080:8080"]
    env = c.service_environment(hub)
    assert env["HUB_HOST"] == "0.0.0.0"
    assert env["HUB_PORT"] == "8080"
    for name in NODES:
        assert "ports" not in compose["services"][name]


@pytest.mark.parametrize("name", NODES)
def test_the_hub_answers_to_the_name_nodes_dial(compose: dict, name: str) -> None:
    """The host of every node's HUB_URL is in the hub's HUB_ALLOWED_HOSTS (any other Host
    is refused with 403), and names of .env are kept."""
    hub_env = c.service_environment(compose["services"]["hub"])
    allowed = [h.strip() for h in hub_env["HUB_ALLOWED_HOSTS"].split(",")]
    node_url = c.service_environment(compose["services"][name])["HUB_URL"]
    assert urlsplit(node_url).hostname in allowed
    assert "${HUB_ALLOWED_HOSTS:-}" in allowed


def test_hub_healthcheck_hits_healthz(compose: dict) -> None:
    """The hub's check asks /healthz (alive), never /readyz, which waits for executors."""
    test = compose["services"]["hub"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "http://127.0.0.1:8080/healthz" in test[3]
    compile(test[3], "<healthcheck>", "exec")


@pytest.mark.parametrize("name", NODES)
def test_nodes_wait_for_a_healthy_hub(compose: dict, name: str) -> None:
    """Nodes start once the hub is healthy, reach it by service name, and skip HTTP checks."""
    service = compose["services"][name]
    assert service["depends_on"] == {"hub": {"condition": "service_healthy"}}
    assert c.service_environment(service)["HUB_URL"] == "ws://hub:8080/ws"
    assert service["healthcheck"] == {"disable": True}


def test_executor_scales(compose: dict) -> None:
    """`--scale executor=N` works: no fixed container name, no published port."""
    executor = compose["services"]["executor"]
    assert "container_name" not in executor
    assert "ports" not in executor
    assert "profiles" not in executor


@pytest.mark.parametrize("name", ["slack", "telegram"])
def test_bridges_are_opt_in(compose: dict, name: str) -> None:
    """A bridge starts only when its profile is asked for, so an unset token never loops."""
    assert compose["services"][name]["profiles"] == [name]


def test_state_lives_on_named_volumes(compose: dict) -> None:
    """The store, CODEX_HOME and the workdir are on declared named volumes."""
    image_env = c.dockerfile_env()
    declared = set(compose["volumes"])
    for name, wanted in (("hub", ["HUB_DB"]), ("executor", ["CODEX_HOME", "WORKSPACE_ROOT"])):
        service = compose["services"][name]
        env = {**image_env, **c.service_environment(service)}
        mounts = {}
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            assert source in declared, f"{name}: {source} is not a named volume"
            mounts[target] = source
        for setting in wanted:
            path = env[setting]
            directory = posixpath.dirname(path) if setting == "HUB_DB" else path
            assert directory in mounts, f"{name}: {setting}={path} is not on a volume"


@pytest.mark.parametrize("name", ["hub", *NODES])
def test_each_service_holds_only_its_own_credentials(compose: dict, name: str) -> None:
    """A service gets its own credentials as mounted secret files, every other one empty
    (which wins over .env), and the executor, where codex runs, only its node token."""
    service = compose["services"][name]
    env = c.service_environment(service)
    mounted = {f"/run/secrets/{secret}" for secret in service.get("secrets", [])}
    own = c.ROLE_CREDENTIALS[name]
    for secret in sorted(c.secret_settings()):
        if name == "executor" and secret in c.EXECUTOR_KEYS and secret not in env:
            continue  # the optimizer's key, from .env: the executor's own
        assert env.get(secret) == "", f"{name}: {secret} must be set empty"
        if secret in own:
            assert env.get(f"{secret}_FILE") in mounted, f"{name}: {secret}_FILE"
        else:
            assert f"{secret}_FILE" not in env, f"{name} must not hold {secret}"
    assert len(mounted) == len(own), f"{name} mounts a secret it does not need"
    for secret in service.get("secrets", []):
        assert compose["secrets"][secret]["file"].startswith("./secrets/")


def test_executor_mounts_no_store_and_no_other_roles_secret(compose: dict) -> None:
    """The executor's container holds no store and only its own node credential."""
    executor = compose["services"]["executor"]
    assert executor["secrets"] == ["executor_token"]
    assert not any(v.startswith("hub-store:") for v in executor["volumes"])


@pytest.mark.parametrize("name", NODES)
def test_each_node_presents_its_own_credential(compose: dict, name: str) -> None:
    """A node's HUB_TOKEN is its own role's credential (`codex-hub token ROLE`, in
    secrets/ROLE_token), never the hub's secret, which only the hub mounts."""
    env = c.service_environment(compose["services"][name])
    assert env["HUB_TOKEN_FILE"] == f"/run/secrets/{name}_token"
    assert "hub_token" not in compose["services"][name]["secrets"]
    assert "hub_token" in compose["services"]["hub"]["secrets"]
    assert compose["secrets"][f"{name}_token"]["file"] == f"./secrets/{name}_token"
    text = c.COMPOSE.read_text()
    assert f"hub codex-hub token {name} > secrets/{name}_token" in text
