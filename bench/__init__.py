"""The benchmark harness: ``make bench`` runs ``python -m bench``.

Each suite is a module with ``NAME``, ``TITLE`` and a way to measure and report; the
registry in :mod:`bench.__main__` lists them, and each writes its own section of
``docs/benchmarks.md``. Shared helpers (processes, load loops, percentiles, tables,
the markdown writer) live in :mod:`bench.common`, profiling in :mod:`bench.profiling`.
"""
