"""A fresh machine installs exactly what was tested: the locks, and what reads them.

uv.lock pins every Python dependency with hashes, tools/package-lock.json pins codex,
tools/uv-requirements.txt pins uv itself; the Makefile, CI and the Dockerfile install
from them only. These tests hold those promises, and the two things a stale or
drifted install used to break: a lock that no longer matches pyproject.toml, and the
DSA warning cryptography 51 made asyncssh print.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import aiohttp
import pytest

from executor.codex import TESTED_CODEX_VERSION
from testkit.procs import Proc, codex_hub_argv
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / "tools" / "uv" / "bin" / "uv"


def uv() -> str:
    """The uv `make` bootstrapped (tools/uv), else one on PATH; skip without either."""
    if UV.is_file():
        return str(UV)
    found = shutil.which("uv")
    if found is None:
        pytest.skip("no uv: run `make install`")
    return found


def lock_check(directory: Path) -> subprocess.CompletedProcess[str]:
    """`uv lock --check` in `directory`, as `make lock-check` (CI's first step) runs it."""
    return subprocess.run(
        [uv(), "lock", "--check"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_PYTHON": sys.executable},
    )


def test_the_lock_matches_pyproject() -> None:
    """uv.lock is what pyproject.toml resolves to (else `make lock-check` fails CI)."""
    result = lock_check(ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"orjson>=3.10",', '"orjson>=3.10",\n    "rich>=13",'),  # a new dependency
        ('"aiohttp>=3.10,<4"', '"aiohttp>=3.11,<4"'),  # a changed range
        ('"pytest>=8",', '"pytest>=8",\n    "pytest-randomly>=3",'),  # a new dev tool
    ],
)
def test_a_stale_lock_is_refused(tmp_path: Path, old: str, new: str) -> None:
    """Change pyproject.toml without `make lock` and the lock check fails, naming the fix."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert old in pyproject
    (tmp_path / "pyproject.toml").write_text(pyproject.replace(old, new, 1))
    shutil.copy(ROOT / "uv.lock", tmp_path / "uv.lock")
    result = lock_check(tmp_path)
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr


def test_every_locked_package_has_hashes() -> None:
    """Every file uv may install from the lock carries a sha256 (nothing is trusted blind)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = [p for p in lock["package"] if p.get("source", {}).get("registry")]
    assert len(packages) > 40
    for package in packages:
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, f"{package['name']}: nothing to install from"
        for entry in files:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", entry.get("hash", "")), package["name"]


def test_the_lock_covers_runtime_and_dev_dependencies() -> None:
    """Each dependency pyproject.toml names, runtime and dev, is pinned in the lock."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"] for p in lock["package"]}
    wanted = [*project["project"]["dependencies"], *project["dependency-groups"]["dev"]]
    for requirement in wanted:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in locked, requirement


def test_pyproject_keeps_ranges_for_pip_users() -> None:
    """pyproject.toml gives ranges, not pins: `pip install codex-hub` resolves normally."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in project["project"]["dependencies"]:
        assert "==" not in requirement, requirement


def test_codex_is_locked_at_the_tested_version() -> None:
    """tools/ pins @openai/codex exactly, with integrity hashes, at the tested version."""
    manifest = json.loads((ROOT / "tools" / "package.json").read_text())
    assert manifest["dependencies"]["@openai/codex"] == TESTED_CODEX_VERSION
    lock = json.loads((ROOT / "tools" / "package-lock.json").read_text())
    packages = lock["packages"]
    assert packages["node_modules/@openai/codex"]["version"] == TESTED_CODEX_VERSION
    platforms = [k for k in packages if k.startswith("node_modules/@openai/codex-linux-")]
    assert platforms, "the lock has no Linux build of codex"
    for key, entry in packages.items():
        if key:
            assert entry.get("integrity", "").startswith("sha512-"), key


def test_uv_itself_is_pinned_with_hashes() -> None:
    """The installer is installed with --require-hashes from an exact pin."""
    text = (ROOT / "tools" / "uv-requirements.txt").read_text()
    assert re.search(r"^uv==\d+\.\d+\.\d+ \\$", text, re.MULTILINE)
    assert len(re.findall(r"--hash=sha256:[0-9a-f]{64}", text)) >= 2


def test_make_installs_from_the_locks_only() -> None:
    """Every install in the Makefile is frozen to a lock; none resolves on its own."""
    makefile = (ROOT / "Makefile").read_text()
    # Only test-latest ignores the lock, on purpose, in a venv of its own.
    latest = re.search(r"^test-latest:.*?(?=^\S)", makefile, re.MULTILINE | re.DOTALL)
    assert latest and "$(LATEST_VENV)" in latest.group(0)
    makefile = makefile.replace(latest.group(0), "")
    syncs = re.findall(r"\$\(UV\) sync[^\n]*", makefile)
    assert len(syncs) >= 2
    assert all("--frozen" in line for line in syncs), syncs
    assert "npm ci --prefix $(TOOLS)" in makefile and "npm install" not in makefile
    pip_installs = re.findall(r"pip install[^\n]*", makefile)
    assert pip_installs == ["pip install --quiet --disable-pip-version-check \\"]
    assert "--require-hashes -r $(TOOLS)/uv-requirements.txt" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make lock-check") < ci.index("make test")


def test_renovate_covers_the_lock_codex_and_the_base_image() -> None:
    """Drift arrives as update PRs: uv.lock, the codex pin, uv and the Docker base image."""
    config = json.loads((ROOT / "renovate.json").read_text())
    managers = set(config["enabledManagers"])
    assert {"pep621", "npm", "dockerfile", "pip_requirements"} <= managers
    assert config["lockFileMaintenance"]["enabled"] is True
    rules = config["packageRules"]
    codex = [r for r in rules if "@openai/codex" in r.get("matchPackageNames", [])]
    assert codex and codex[0]["rangeStrategy"] == "pin"
    requirements = [r for r in rules if "uv" in r.get("matchPackageNames", [])]
    assert requirements, "no rule for uv itself"


def test_asyncssh_imports_without_a_warning() -> None:
    """Importing asyncssh the codex-hub way prints nothing, with every warning an error."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import executor.ssh_compat"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_dsa_filter_is_still_needed() -> None:
    """The locked asyncssh still warns on a bare import: when this fails, lift the filter."""
    result = subprocess.run(
        [sys.executable, "-W", "error::Warning", "-c", "import asyncssh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DSA is deprecated" in result.stderr, (
        "asyncssh imports cleanly now: remove the filter in executor/ssh_compat.py"
    )


async def test_codex_hub_up_starts_with_no_warning_on_stderr(
    tmp_path: Path, codex_bin: str
) -> None:
    """`codex-hub up`, as `make run` starts it, prints no Python warning while it starts."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONWARNINGS", "HUB_"))}
    work = tmp_path / "work"
    work.mkdir()
    env.update(
        HUB_PORT=str(port),
        HUB_DB=str(tmp_path / "data" / "hub.db"),
        EXEC_WORKDIR=str(work),
        CODEX_BIN=codex_bin,
        CODEX_HOME=str(tmp_path),
        EXEC_DRY_RUN="true",
    )
    async with Proc("up", codex_hub_argv("up"), env=env, cwd=tmp_path) as up:
        await up.wait_for(r"hub listening on http://")
        # The hub answers once `up` has started everything (the loop is busy until then).
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    up.check_alive()
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                    await asyncio.sleep(0.05)
        code = await up.stop()
    warnings = re.findall(r"^.*\b\w*Warning\b.*$", up.output, re.MULTILINE)
    assert warnings == [], up.output
    assert code == 0, up.output
