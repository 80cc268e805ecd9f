"""`python -m codex_hub`: the `codex-hub` command."""

import sys

from codex_hub.cli import main

sys.exit(main())
