"""`python -m executor`: the same as `codex-hub executor`."""

import sys

from codex_hub.cli import main

sys.exit(main(["executor", *sys.argv[1:]]))
