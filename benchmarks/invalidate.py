"""``python -m benchmarks.invalidate``: what one ``invalidate()`` costs a client holding many
prompts, a tenth of them composed of another prompt.

A change finds the held prompts composed of the changed one through the cache's index, so an
unrelated ``invalidate()`` costs the same at 10 entries as at 10,000 (it once re-read every
held prompt's resolution graph, on the event loop, on every call).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from asyncpromptcache import AsyncPromptClient, TextPrompt
from asyncpromptcache.testing import StaticSource

PARTS = 50  # prompts the composed ones include, 1 in 10 held prompts composed of one


def _graph(i: int) -> dict[str, Any]:
    return {"root": {"id": f"id{i}", "name": f"p{i}", "version": 1},
            "dependencies": {f"id{i}": [{"id": "part", "name": f"part{i // 10 % PARTS}",
                                         "version": 1}]}}


async def measure(entries: int, rounds: int = 50) -> dict[str, float]:
    """Median milliseconds of ``invalidate()`` of an unrelated name and of a part."""
    prompts = [TextPrompt(name=f"p{i}", version=1, prompt="x", labels=("production",),
                          resolution_graph=_graph(i) if i % 10 == 0 else None)
               for i in range(entries)]
    async with AsyncPromptClient(source=StaticSource(prompts), max_size=entries * 2, env={},
                                 cache_ttl_seconds=3600) as client:
        await client.prefetch([prompt.name for prompt in prompts])
        unrelated, parts = [], []
        for r in range(rounds):
            start = time.perf_counter()
            client.invalidate(f"unrelated{r}")
            unrelated.append(time.perf_counter() - start)
        for r in range(min(rounds, PARTS)):
            start = time.perf_counter()
            client.invalidate(f"part{r}")  # drops the held prompts composed of it
            parts.append(time.perf_counter() - start)
    return {"unrelated_ms": statistics.median(unrelated) * 1000,
            "part_ms": statistics.median(parts) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args.entries))
    print(f"invalidate() at {args.entries:,} entries: an unrelated name "
          f"{figures['unrelated_ms']:.3f} ms, a part of {args.entries // 10 // PARTS} "
          f"held prompts {figures['part_ms']:.3f} ms (medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
