"""The Kubernetes manifests parse, run real commands, name real settings and fit together."""

from __future__ import annotations

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
    for secret in by_kind(docs, "Secret").values():
        names |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
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
    """A node's HUB_TOKEN comes from its own Secret (`codex-hub token ROLE`), which the
    example shows and the README makes; the hub keeps the secret it derives from."""
    name = f"codex-hub-{role}"
    container = by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
    token = next(e for e in container["env"] if e["name"] == "HUB_TOKEN")
    ref = token["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (name, "HUB_TOKEN")
    assert set(by_kind(docs, "Secret")[name]["stringData"]) == {"HUB_TOKEN"}
    readme = (c.K8S / "README.md").read_text()
    assert 'codex-hub token "$role"' in readme and "codex-hub-$role" in readme
    hub = by_kind(docs, "Deployment")["codex-hub"]["spec"]["template"]["spec"]["containers"][0]
    assert all(e["name"] != "HUB_TOKEN" for e in hub["env"])


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
            for setting in ("HUB_DB", "CODEX_HOME", "EXEC_WORKDIR"):
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
