"""What the deployment files are checked against: the real settings and the real CLI.

Nothing here is a hand-kept copy of the contract. Setting names come from importing every
``settings.py`` of the packages and reading the pydantic-settings classes' aliases; the
commands come from ``codex_hub.cli.build_parser()``. Only while the CLI does not exist yet
do the commands fall back to the table in docs (DESIGN.md), and ``CLI_SOURCE`` says so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("wire", "kernel", "hub", "executor", "bridges", "codex_hub")
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
ENV_SAMPLE = ROOT / ".env.sample"
K8S = ROOT / "deploy" / "k8s"

#: Environment variables the deployment files may name although no settings class reads
#: them, each with the reason it is there. Keep this short: anything else is a typo or a
#: setting that does not exist.
NON_SETTINGS: dict[str, str] = {
    "PATH": "Dockerfile: puts the image's venv first, so `codex-hub` and `python` resolve",
    "HOME": "Dockerfile: the non-root user's home, read by codex, git and ssh",
    "PYTHONUNBUFFERED": "Dockerfile: log lines leave the container as they are written",
    "PYTHONDONTWRITEBYTECODE": "Dockerfile: no .pyc writes (read-only root filesystem in k8s)",
    "PIP_NO_CACHE_DIR": "Dockerfile: build-time pip setting, keeps the layer small",
    "PIP_DISABLE_PIP_VERSION_CHECK": "Dockerfile: build-time pip setting, no network check",
    "UV_PROJECT_ENVIRONMENT": "Dockerfile: build-time uv setting, installs into /opt/venv",
    "UV_PYTHON_DOWNLOADS": "Dockerfile: build-time uv setting, uses the image's Python",
    "UV_LINK_MODE": "Dockerfile: build-time uv setting, copies files (no cache to link)",
    "UV_NO_CACHE": "Dockerfile: build-time uv setting, keeps the layer small",
    "GH_TOKEN": ".env.sample (commented): read by gh, which codex may run",
    "KUBECONFIG": ".env.sample (commented): read by kubectl, which codex may run",
    "AWS_PROFILE": ".env.sample (commented): read by aws, which codex may run",
    "COMPOSE_PROFILES": ".env.sample (commented): read by docker compose to pick the bridges",
}

#: The commands of DESIGN.md, used only while codex_hub/cli.py does not exist.
DESIGN_COMMANDS = {
    ("up",),
    ("serve",),
    ("executor",),
    ("bridge", "slack"),
    ("bridge", "telegram"),
    ("exec",),
    ("doctor",),
}


# --- settings -------------------------------------------------------------------------


def settings_modules() -> list[str]:
    """Dotted names of every settings.py in the packages (new ones are picked up too)."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("settings.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            names.append(".".join(rel.parts))
    return names


def settings_classes() -> list[type[BaseSettings]]:
    """Every pydantic-settings class defined in the project, after importing its modules."""
    for name in settings_modules():
        importlib.import_module(name)
    found: dict[str, type[BaseSettings]] = {}
    pending: list[type[BaseSettings]] = [BaseSettings]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            pending.append(sub)
            if sub.__module__.split(".")[0] in PACKAGES:
                found[f"{sub.__module__}.{sub.__qualname__}"] = sub
    return [found[key] for key in sorted(found)]


def field_env_names(cls: type[BaseSettings], name: str, info: FieldInfo) -> set[str]:
    """The environment names pydantic-settings reads ``name`` from."""
    names: set[str] = set()
    for alias in (info.validation_alias, info.alias):
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
    if not names:
        names.add(str(cls.model_config.get("env_prefix", "")) + name)
    return {n.upper() for n in names}


def setting_aliases() -> dict[str, list[str]]:
    """Every setting's environment name, with the classes that read it; a secret's
    ``NAME_FILE`` too (the settings base reads it for every secret field)."""
    from kernel.settings import FILE_SUFFIX, is_secret_field

    out: dict[str, list[str]] = {}
    for cls in settings_classes():
        for name, info in cls.model_fields.items():
            for env in field_env_names(cls, name, info):
                out.setdefault(env, []).append(cls.__name__)
                if is_secret_field(name, info):
                    out.setdefault(env + FILE_SUFFIX, []).append(cls.__name__)
    return out


def secret_settings() -> set[str]:
    """The environment names of every secret setting (``SecretStr`` or credential list)."""
    from kernel.settings import is_secret_field

    return {
        env
        for cls in settings_classes()
        for name, info in cls.model_fields.items()
        if is_secret_field(name, info)
        for env in field_env_names(cls, name, info)
    }


#: The credentials each role holds; every other secret setting reaches it empty. The
#: optimizer's keys (OPTIMIZE_PROMPT) may also reach the executor, which runs it.
ROLE_CREDENTIALS: dict[str, set[str]] = {
    "hub": {"HUB_TOKEN", "HUB_API_KEYS"},
    "executor": {"HUB_TOKEN"},
    "slack": {"HUB_TOKEN", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"},
    "telegram": {"HUB_TOKEN", "TELEGRAM_BOT_TOKEN"},
}
OPTIMIZER_KEYS = {"OPENAI_API_KEY", "OPENWEBUI_API_KEY", "LITELLM_API_KEY"}
#: Secrets only the executor uses, from .env or the settings Secret: the optimizer's key
#: and the forge tokens that open pull requests (issue 15).
EXECUTOR_KEYS = OPTIMIZER_KEYS | {"WORKSPACE_GITHUB_TOKEN", "WORKSPACE_GITLAB_TOKEN"}


# --- the CLI --------------------------------------------------------------------------

CLI_SOURCE = "codex_hub.cli.build_parser()"
if not (ROOT / "codex_hub" / "cli.py").exists():
    CLI_SOURCE = "DESIGN.md fallback (codex_hub/cli.py does not exist yet)"


def cli_parser() -> argparse.ArgumentParser | None:
    """The real parser, or None while the CLI is not written yet."""
    if not (ROOT / "codex_hub" / "cli.py").exists():
        return None
    cli = importlib.import_module("codex_hub.cli")
    return cli.build_parser()


_REAL = object()


def check_command(argv: list[str], parser: Any = _REAL) -> str | None:
    """None when ``argv`` is a `codex-hub` command the CLI accepts, else why not.

    ``parser`` defaults to the real CLI's; None means the DESIGN.md table.
    """
    if not argv or argv[0] != "codex-hub":
        return f"{argv!r} does not run codex-hub"
    args = argv[1:]
    if parser is _REAL:
        parser = cli_parser()
    if parser is None:
        return None if tuple(args) in DESIGN_COMMANDS else f"{args!r} is not in DESIGN.md"
    # argparse reports a bad command by printing usage and exiting; keep both quiet.
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return f"codex-hub rejects {args!r}: {err.getvalue().strip()}"
    return None


# --- the files ------------------------------------------------------------------------


@dataclass
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    value: str
    line: int


def dockerfile() -> list[Instruction]:
    """Parse the Dockerfile into instructions (comments dropped, continuations joined)."""
    out: list[Instruction] = []
    buffer = ""
    start = 0
    for number, raw in enumerate(DOCKERFILE.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # Docker also drops comment lines inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, value = buffer.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip(), start))
        buffer = ""
    return out


def dockerfile_env() -> dict[str, str]:
    """The ENV instructions' variables (both ``A=b C=d`` and the legacy ``A b`` form)."""
    env: dict[str, str] = {}
    for ins in dockerfile():
        if ins.keyword != "ENV":
            continue
        words = shlex.split(ins.value)
        if words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def exec_form(value: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for the shell form."""
    value = value.strip()
    if not value.startswith("["):
        return None
    return list(json.loads(value))


def compose() -> dict[str, Any]:
    """compose.yaml as data (YAML merge keys resolved by the loader)."""
    return yaml.safe_load(COMPOSE.read_text())


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's ``environment`` in either of its two spellings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/k8s/, with the file it came from."""
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue  # kustomize's own input, not an object the cluster stores
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def k8s_containers() -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(file, workload, container) for every container of every workload."""
    for path, doc in k8s_documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            yield path, doc, container


_ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_sample() -> list[tuple[str, str, bool]]:
    """(name, value, active) for every ``NAME=value`` or ``# NAME=value`` line."""
    out = []
    for line in ENV_SAMPLE.read_text().splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match:
            out.append((match.group(2), match.group(3), match.group(1) is None))
    return out


_ENVIRON_USE = re.compile(r"""environ(?:\.get\(|\[)\s*['"]([A-Z][A-Z0-9_]*)['"]""")
_INTERPOLATION = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def environ_reads(text: str) -> set[str]:
    """Variables that inline Python (healthchecks) reads with os.environ."""
    return set(_ENVIRON_USE.findall(text))


def interpolations(text: str) -> set[str]:
    """``$VAR`` / ``${VAR}`` references in a text."""
    return set(_INTERPOLATION.findall(text))
