"""The Kubernetes manifests parse, run real commands, name real settings and fit together."""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy import _contract as c


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return [doc for _, doc in c.k8s_documents()]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_document_parses(docs: list[dict]) -> None:
    """Every file is valid (multi-document) YAML of typed Kubernetes objects."""
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "Secret"} <= kinds
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("metadata", {}).get("name")


def test_workloads(docs: list[dict]) -> None:
    """There is one Deployment per role."""
    deployments = by_kind(docs, "Deployment")
    commands = {
        tuple(d["spec"]["template"]["spec"]["containers"][0]["args"]) for d in deployments.values()
    }
    assert commands == {
        ("codex-hub", "serve"),
        ("codex-hub", "executor"),
        ("codex-hub", "bridge", "slack"),
        ("codex-hub", "bridge", "telegram"),
    }


def test_commands_are_real_subcommands() -> None:
    """Every container runs a `codex-hub` command the CLI accepts (ENTRYPOINT is tini)."""
    for path, _, container in c.k8s_containers():
        argv = container.get("command", []) + container.get("args", [])
        assert c.check_command(argv) is None, f"{path.name}: {c.check_command(argv)}"


def test_env_names_are_settings(docs: list[dict]) -> None:
    """Container env and the example Secret's keys are real settings."""
    aliases = c.setting_aliases()
    names = set()
    for _, _, container in c.k8s_containers():
        names |= {item["name"] for item in container.get("env", [])}
    settings = by_kind(docs, "Secret")["codex-hub"]  # the others hold files, not settings
    names |= set(settings.get("stringData", {})) | set(settings.get("data", {}))
    for path in c.K8S.glob("*.yaml"):  # inline Python in probes
        names |= c.environ_reads(path.read_text())
    unknown = sorted(n for n in names if n not in aliases and n not in c.NON_SETTINGS)
    assert not unknown, f"not settings: {unknown}"


def test_example_secret_holds_no_real_secret(docs: list[dict]) -> None:
    """The example Secrets only have placeholders or empty values for credentials."""
    secrets = by_kind(docs, "Secret")
    assert "codex-hub" in secrets
    for secret in secrets.values():
        for key, value in secret["stringData"].items():
            if "TOKEN" in key or "KEY" in key:
                assert value in ("", "REPLACE_ME"), key


@pytest.mark.parametrize("role", ["executor", "slack", "telegram"])
def test_each_node_presents_its_own_credential(docs: list[dict], role: str) -> None:
    """A node's HUB_TOKEN is the `node-token` file of its own Secret (`codex-hub token
    ROLE`), which the example shows and the README makes; only the hub mounts the
    secret that credential derives from."""
    name = f"codex-hub-{role}"
    pod = by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HUB_TOKEN"] == "" and env["HUB_TOKEN_FILE"] == f"/run/secrets/{name}/node-token"
    mounted = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert name in mounted and "codex-hub-token" not in mounted
    assert "node-token" in by_kind(docs, "Secret")[name]["stringData"]
    readme = (c.K8S / "README.md").read_text()
    assert 'codex-hub token "$role"' in readme and "--from-file=node-token=" in readme
    hub = by_kind(docs, "Deployment")["codex-hub"]["spec"]["template"]["spec"]
    assert "codex-hub-token" in {v["secret"]["secretName"] for v in hub["volumes"] if "secret" in v}


def test_example_settings_secret_holds_no_credential(docs: list[dict]) -> None:
    """The settings Secret every pod reads holds no credential but the executor's
    optimizer key, left empty; every role Secret holds only placeholders."""
    secrets = by_kind(docs, "Secret")
    for key, value in secrets["codex-hub"]["stringData"].items():
        if key in c.secret_settings():
            assert key in c.OPTIMIZER_KEYS and value == "", key
    for name, secret in secrets.items():
        if name != "codex-hub":
            assert set(secret["stringData"].values()) == {"REPLACE_ME"}, name


def _role(doc: dict) -> str:
    component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
    return "hub" if component == "hub" else component.removesuffix("-bridge")


def test_each_pod_holds_only_its_own_credentials(docs: list[dict]) -> None:
    """A pod gets its own credentials as files from its role's Secrets, and every other
    credential set empty (which wins over envFrom); the executor only its node token."""
    seen = set()
    for path, doc, container in c.k8s_containers():
        role = _role(doc)
        seen.add(role)
        own = c.ROLE_CREDENTIALS[role]
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
        secret_dirs = {
            m["mountPath"]: volumes[m["name"]]["secret"]["secretName"]
            for m in container.get("volumeMounts", [])
            if "secret" in volumes[m["name"]]
        }
        for secret in sorted(c.secret_settings()):
            if role == "executor" and secret in c.EXECUTOR_KEYS and secret not in env:
                continue  # the optimizer's key, from the settings Secret
            assert env.get(secret) == "", f"{path.name}: {secret} must be set empty"
            file = env.get(f"{secret}_FILE")
            if secret in own:
                assert file and posixpath.dirname(file) in secret_dirs, f"{path.name}: {secret}"
            else:
                assert file is None, f"{path.name} must not hold {secret}"
        assert all(name.startswith("codex-hub-") for name in secret_dirs.values())
        if role == "executor":
            assert set(secret_dirs.values()) == {"codex-hub-executor"}
    assert seen == set(c.ROLE_CREDENTIALS)


def test_pods_read_the_secret() -> None:
    """Every container takes its settings from the codex-hub Secret."""
    for path, _, container in c.k8s_containers():
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert refs == ["codex-hub"], path.name


def test_hub_probes(docs: list[dict]) -> None:
    """The hub is alive on /healthz and ready on /readyz, on its named port."""
    hub = by_kind(docs, "Deployment")["codex-hub"]
    container = hub["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # /readyz needs an API key, which only an exec probe can read from the environment.
    ready = container["readinessProbe"]["exec"]["command"]
    assert ready[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8080/readyz" in ready[2] and "Bearer " in ready[2]
    compile(ready[2], "<readinessProbe>", "exec")
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HUB_HOST"] == "0.0.0.0" and env["HUB_PORT"] == "8080"


def test_hub_is_a_single_writer(docs: list[dict]) -> None:
    """One hub pod at a time: its SQLite store is one file on one volume."""
    hub = by_kind(docs, "Deployment")["codex-hub"]
    assert hub["spec"]["replicas"] == 1
    assert hub["spec"]["strategy"]["type"] == "Recreate"


def test_nodes_reach_the_hub_before_it_is_ready(docs: list[dict]) -> None:
    """Nodes dial a Service that routes to a not-yet-ready hub (readiness needs an executor)."""
    services = by_kind(docs, "Service")
    hub_labels = by_kind(docs, "Deployment")["codex-hub"]["spec"]["template"]["metadata"]["labels"]
    for path, _, container in c.k8s_containers():
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if "HUB_URL" not in env:
            continue
        url = urlsplit(env["HUB_URL"])
        assert url.scheme == "ws" and url.path == "/ws", path.name
        service = services[url.hostname]
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert url.port in {p["port"] for p in service["spec"]["ports"]}
        assert service["spec"]["selector"].items() <= hub_labels.items()


def test_the_hub_answers_to_the_names_nodes_dial(docs: list[dict]) -> None:
    """The host of every node's HUB_URL is in the hub's HUB_ALLOWED_HOSTS (any other Host
    is refused with 403), and so is the API Service's name."""
    hub = by_kind(docs, "Deployment")["codex-hub"]["spec"]["template"]["spec"]["containers"][0]
    hub_env = {e["name"]: e.get("value") for e in hub["env"]}
    allowed = hub_env["HUB_ALLOWED_HOSTS"].split(",")
    assert "codex-hub" in allowed
    for path, _, container in c.k8s_containers():
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if "HUB_URL" in env:
            assert urlsplit(env["HUB_URL"]).hostname in allowed, path.name


def test_selectors_match_templates(docs: list[dict]) -> None:
    """Every Deployment selects its own pods, and no two Deployments select the same ones."""
    seen = []
    for name, dep in by_kind(docs, "Deployment").items():
        selector = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        assert selector not in seen, name
        seen.append(selector)


def test_volumes_are_claimed_and_mounted(docs: list[dict]) -> None:
    """Claims exist for the store and CODEX_HOME, and settings point into the mounts."""
    claims = by_kind(docs, "PersistentVolumeClaim")
    assert {"codex-hub-store", "codex-hub-codex-home"} <= set(claims)
    for _, dep in by_kind(docs, "Deployment").items():
        pod = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in pod["containers"]:
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            for setting in ("HUB_DB", "CODEX_HOME", "WORKSPACE_ROOT"):
                if setting in env:
                    path = env[setting]
                    assert any(path == m or path.startswith(m + "/") for m in mounts), setting


def test_pods_run_as_the_image_user(docs: list[dict]) -> None:
    """Pods run as the image's uid, without privilege escalation, service links or API token."""
    for name, dep in by_kind(docs, "Deployment").items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["enableServiceLinks"] is False, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_kustomization_lists_existing_files() -> None:
    """kustomization.yaml applies files that exist, and not the example Secret."""
    kustomization = yaml.safe_load((c.K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (c.K8S / resource).exists(), resource
    assert "secret.example.yaml" not in kustomization["resources"]


def test_readme_documents_the_secret() -> None:
    """The README shows how to make the Secret from .env."""
    readme = (c.K8S / "README.md").read_text()
    assert "kubectl create secret generic codex-hub --from-env-file=.env" in readme
