"""asyncssh, imported without cryptography's DSA deprecation warning.

cryptography 51 deprecated DSA: touching `dsa.DSAPrivateKey` warns
(`CryptographyDeprecationWarning: DSA is deprecated ...`). asyncssh (2.24.1, the newest
when this was written) names those types at import time, in `asyncssh/crypto/misc.py`,
so every process that imports it printed the warning, and pytest's warnings-as-errors
refused to load the SSH fake. codex-hub never uses DSA keys; the warning is only about
asyncssh's import. So exactly that warning, from exactly that import, is silenced here;
any other warning, and DSA use later on, still shows.

Import asyncssh from here (``from executor.ssh_compat import asyncssh``), never directly.
Lift this once an asyncssh release imports cleanly with the locked cryptography: delete
the filter, and `tests/test_lock.py::test_asyncssh_imports_without_a_warning` shows it.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"DSA is deprecated", category=CryptographyDeprecationWarning
    )
    import asyncssh

__all__ = ["asyncssh"]
