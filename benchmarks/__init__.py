"""Benchmarks of asyncpromptcache against the caches its users would otherwise use.

    pip install -e '.[bench]'      # the peers: langfuse, langsmith, async-lru, matplotlib
    python -m benchmarks           # every scenario, about 5 minutes
    python -m benchmarks --smoke   # tiny sizes, a few seconds (the test suite runs this)

Prints a table and writes ``benchmarks/results/latest.md``, ``latest.json`` and PNG charts (see
``benchmarks/run.py``). ``hit_path.py`` and ``sync_hit.py`` are single-purpose benchmarks that
the suite builds on.
"""
