"""`python -m hub`: the same as `codex-hub serve`."""

import sys

from codex_hub.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
