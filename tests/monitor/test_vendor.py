"""The page's third-party files are the pinned ones its README names, with their licences."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[2] / "monitor" / "vendor"


def test_vendored_files_match_the_versions_and_checksums_their_readme_pins() -> None:
    """Every vendored script is listed with its sha256, and has its licence beside it."""
    readme = (VENDOR / "README.md").read_text()
    pinned = dict(re.findall(r"\| `([\w.]+\.js)` \|.*\| `([0-9a-f]{64})` \|", readme))
    scripts = sorted(p.name for p in VENDOR.glob("*.js"))
    assert sorted(pinned) == scripts == ["marked.esm.js", "purify.es.js"]
    for name, digest in pinned.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert (VENDOR / "marked.LICENSE").is_file() and (VENDOR / "dompurify.LICENSE").is_file()
