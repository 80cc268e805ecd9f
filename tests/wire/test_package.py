"""What ``from wire import ...`` gives: every public name, the models and the codec
loaded only when one of their names is used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import wire
import wire.codec
import wire.protocol

ROOT = Path(__file__).resolve().parents[2]


def test_every_public_name_of_the_package_is_the_one_of_its_module() -> None:
    """A name in ``wire.__all__`` that no module defines would fail only at its first
    use; each one resolves, to the very object its module holds."""
    for name in wire.__all__:
        value = getattr(wire, name)
        homes = [m for m in (wire.codes, wire.protocol, wire.codec) if name in vars(m)]
        assert homes, name
        assert all(vars(m)[name] is value for m in homes), name


def test_the_store_and_the_codes_load_without_pydantic() -> None:
    """The store's reader processes import the store package: it must not pull in the
    frames' models (pydantic: 0.25 s and 14 MiB per reader); using a model still works."""
    probe = (
        "import sys, hub.store, wire; from wire import RunState, ErrorCode; "
        "print('pydantic' in sys.modules); from wire import AssignFrame; "
        "print('pydantic' in sys.modules, AssignFrame.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == ["False", "True wire.protocol"], out
