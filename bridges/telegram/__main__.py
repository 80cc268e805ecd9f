"""``python -m bridges.telegram``: the same as ``codex-hub bridge telegram``."""

from __future__ import annotations

import sys

from codex_hub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bridge", "telegram", *sys.argv[1:]]))
