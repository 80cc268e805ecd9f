"""``python -m bridges.slack``: the same as ``codex-hub bridge slack``."""

from __future__ import annotations

import sys

from codex_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bridge", "slack", *sys.argv[1:]]))
