"""Shared test set-up: every module in tests/fakes/ is a pytest plugin of fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# slack_sdk and httpx read proxy variables and would send loopback traffic elsewhere.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)

pytest_plugins = [
    f"tests.fakes.{p.stem}"
    for p in sorted((Path(__file__).parent / "fakes").glob("*.py"))
    if p.stem != "__init__"
]
