"""Helpers the tests and the benchmarks share: real processes and servers on 127.0.0.1 (a
private ``redis-server``, the local prompt server in a child process, a fleet of worker
processes). They import the package, the standard library and its dependencies only (never
pytest, never ``tests`` or ``benchmarks``), so ``python -m benchmarks`` runs with the bench
extra alone. Not installed: like ``tests/`` and ``benchmarks/``, run from the repository."""
