"""A regular install (`pip install .`, not editable) is a working codex-hub.

The wheel is built from this tree and installed into a new virtualenv with the locked
dependencies (from uv's cache, which `make install` filled); then `codex-hub serve`
from that virtualenv, far from the repository, must serve the monitor page.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.test_lock import ROOT, uv


def _run(*argv: str, cwd: Path, timeout: float = 180) -> None:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this tree's files (tracked or new, never ignored ones such as build/)."""
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    _run(uv(), "build", "--wheel", "--out-dir", str(out), str(source), cwd=out)
    [built] = out.glob("codex_hub-*.whl")
    return built


def test_the_wheel_carries_the_monitor_page(wheel: Path) -> None:
    """index.html, the stylesheet and every script of monitor/ are in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"monitor/index.html", "monitor/style.css"} | {
        f"monitor/js/{p.name}" for p in (ROOT / "monitor" / "js").glob("*.js")
    }
    assert expected <= names, sorted(expected - names)


def test_a_regular_install_serves_the_monitor(wheel: Path, tmp_path: Path) -> None:
    """`codex-hub serve` from a non-editable install answers / and /static/ with the page."""
    venv = tmp_path / "venv"
    _run(uv(), "venv", "--quiet", "--python", sys.executable, str(venv), cwd=tmp_path)
    requirements = tmp_path / "requirements.txt"
    _run(
        uv(), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-header",
        "--project", str(ROOT), "-o", str(requirements), cwd=tmp_path,
    )  # fmt: skip
    python = str(venv / "bin" / "python")
    _run(uv(), "pip", "install", "--python", python, "-r", str(requirements), cwd=tmp_path)
    _run(uv(), "pip", "install", "--python", python, "--no-deps", str(wheel), cwd=tmp_path)

    site = subprocess.run(
        [python, "-c", "import monitor; print(monitor.MONITOR_DIR)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout.strip()  # fmt: skip
    assert "site-packages" in site and not site.startswith(str(ROOT))

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(HUB_PORT=str(port), HUB_DB=str(tmp_path / "hub.db"))
    proc = subprocess.Popen(
        [str(venv / "bin" / "codex-hub"), "serve"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                with urllib.request.urlopen(f"{base}/", timeout=2) as response:
                    page = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert "<html" in page.lower() and "static/js/main.js" in page
        with urllib.request.urlopen(f"{base}/static/js/main.js", timeout=5) as response:
            assert response.status == 200 and b"import" in response.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_the_wheel_carries_the_app_server_protocol_fingerprint(wheel: Path) -> None:
    """The app-server protocol fingerprint the engine reads at start is in the wheel."""
    assert "executor/appserver_schema.json" in zipfile.ZipFile(wheel).namelist()
