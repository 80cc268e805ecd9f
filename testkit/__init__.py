"""What the tests and the bench share: one process helper and the fakes.

- :mod:`testkit.procs`: :class:`~testkit.procs.Proc` starts a codex-hub command (or any
  other) as a child, waits for it to be ready and stops it; :class:`~testkit.procs.Procs`
  owns every Proc of one test.
- :mod:`testkit.fakes`: the fake servers (Slack, Telegram, the stub models, SSH, git)
  and the fixtures built on them, registered as pytest plugins by tests/conftest.py.

It imports neither ``tests`` nor ``bench`` (import-linter checks it), is not part of the
wheel, and is found from the repository root as ``tests`` and ``bench`` are.
"""
