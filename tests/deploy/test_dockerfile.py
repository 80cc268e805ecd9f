"""The Dockerfile builds one image for every role from files that exist, with real settings."""

from __future__ import annotations

import re

import pytest

from tests.deploy import _contract as c


def test_base_image_is_python_311_slim() -> None:
    """The image starts from python:3.11-slim (ARG defaults resolved)."""
    instructions = c.dockerfile()
    args = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.value:
            key, _, value = ins.value.partition("=")
            args[key] = value
        if ins.keyword == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ins.value)
            assert image.split()[0] == "python:3.11-slim"
            return
    pytest.fail("no FROM instruction")


def test_codex_is_installed_from_the_lock() -> None:
    """The image installs codex with `npm ci` from the package-lock `make test` uses."""
    copies = [i.value for i in c.dockerfile() if i.keyword == "COPY"]
    assert "tools/package.json tools/package-lock.json /opt/codex/" in copies
    runs = " ".join(i.value for i in c.dockerfile() if i.keyword == "RUN")
    assert "npm ci --prefix /opt/codex" in runs
    assert "npm install" not in runs and "@openai/codex@" not in runs


def test_python_dependencies_are_installed_from_the_lock() -> None:
    """uv (pinned with hashes) installs uv.lock as it is (--frozen), runtime only."""
    copies = [i.value for i in c.dockerfile() if i.keyword == "COPY"]
    assert "pyproject.toml uv.lock ./" in copies
    runs = [i.value for i in c.dockerfile() if i.keyword == "RUN"]
    assert any("pip install --require-hashes -r /tmp/uv-requirements.txt" in r for r in runs)
    syncs = [r for r in runs if "uv sync" in r]
    assert len(syncs) == 2
    for run in syncs:
        assert "--frozen" in run and "--no-dev" in run
    assert "--no-editable" in syncs[-1]  # a regular install: the page is package data
    assert not any(re.search(r"pip install (?!--require-hashes)", r) for r in runs)


def test_every_copied_path_exists() -> None:
    """Every path a COPY instruction takes from the build context is in the repository."""
    copied = []
    for ins in c.dockerfile():
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in (c.exec_form(ins.value) or ins.value.split()) if not w.startswith("--")]
        assert "--from" not in ins.value, "multi-stage COPY: teach this test about stages"
        for source in words[:-1]:
            copied.append(source)
            assert (c.ROOT / source).exists(), f"line {ins.line}: COPY {source}: not in the repo"
    assert "pyproject.toml" in copied


def test_copied_paths_are_not_dockerignored() -> None:
    """.dockerignore does not hide a path the Dockerfile copies."""
    ignored = {
        line.strip().rstrip("/")
        for line in (c.ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    }
    for ins in c.dockerfile():
        if ins.keyword == "COPY":
            for source in ins.value.split()[:-1]:
                assert source.rstrip("/") not in ignored


def test_dockerignore_keeps_secrets_out() -> None:
    """The build context never carries .env, local databases or the git history."""
    ignored = (c.ROOT / ".dockerignore").read_text().splitlines()
    for entry in (".env", "*.db", ".git", ".venv", "tools/node_modules", "tools/uv"):
        assert entry in ignored


def test_dependencies_install_before_the_source_is_copied() -> None:
    """Editing code reuses the dependency layer: the locked install comes before the code."""
    instructions = c.dockerfile()
    deps = next(
        i
        for i, ins in enumerate(instructions)
        if ins.keyword == "RUN" and "--no-install-project" in ins.value
    )
    for i, ins in enumerate(instructions):
        if ins.keyword == "COPY" and any(ins.value.startswith(p) for p in c.PACKAGES):
            assert i > deps, f"line {ins.line} copies source before dependencies are installed"


def test_env_names_are_settings() -> None:
    """Every ENV variable, and every variable the healthcheck reads, is a real setting."""
    aliases = c.setting_aliases()
    names = set(c.dockerfile_env()) | c.environ_reads(c.DOCKERFILE.read_text())
    unknown = sorted(n for n in names if n not in aliases and n not in c.NON_SETTINGS)
    assert not unknown, f"not settings (typo, or add to NON_SETTINGS with a reason): {unknown}"


def test_container_defaults() -> None:
    """Paths point at the data volumes and at the native codex the build links."""
    env = c.dockerfile_env()
    assert env["HUB_DB"].startswith("/data/hub/")
    assert env["CODEX_HOME"] == "/data/codex-home"
    assert env["WORKSPACE_ROOT"] == "/data/work"  # a workspace per conversation
    assert env["CODEX_BIN"] == "/usr/local/bin/codex"
    runs = " ".join(i.value for i in c.dockerfile() if i.keyword == "RUN")
    assert 'ln -s "$native" /usr/local/bin/codex' in runs
    # HUB_HOST stays at its loopback default: only compose's hub opens it, with tokens.
    assert "HUB_HOST" not in env


def test_runs_as_non_root() -> None:
    """The last USER before the command is not root."""
    users = [i.value for i in c.dockerfile() if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")


def test_healthcheck_hits_healthz() -> None:
    """HEALTHCHECK asks the hub's /healthz on loopback, with Python (no curl in the image)."""
    checks = [i.value for i in c.dockerfile() if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    _, _, command = checks[0].partition("CMD ")
    argv = c.exec_form(command)
    assert argv is not None and argv[:2] == ["python", "-c"]
    assert "http://127.0.0.1:" in argv[2] and "/healthz" in argv[2]
    assert "'8080'" in argv[2]  # HUB_PORT's default
    compile(argv[2], "<healthcheck>", "exec")


def test_default_command_is_a_real_subcommand() -> None:
    """ENTRYPOINT + CMD run a `codex-hub` command the CLI accepts."""
    entry = [c.exec_form(i.value) for i in c.dockerfile() if i.keyword == "ENTRYPOINT"]
    cmd = [c.exec_form(i.value) for i in c.dockerfile() if i.keyword == "CMD"]
    assert entry and entry[-1] == ["tini", "--"]
    assert cmd and cmd[-1] is not None
    assert c.check_command(cmd[-1]) is None, c.check_command(cmd[-1])
