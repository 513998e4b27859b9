"""What an awaited fresh hit costs, as a ratio to the floor measured in the same run.

    python benchmarks/hit_path.py            # about 10 s
    python benchmarks/hit_path.py --quick    # about 1 s (used by the test suite)

The floor is ``await f(key)`` where ``f`` is an ``async def`` doing one ``dict.get``: no cache
can answer an awaited call for less. Each contender runs in several rounds, interleaved with
the others so that a noisy neighbour slows them all alike; the figure is the median round.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import cachetools

from asyncpromptcache import AsyncPromptClient, TextPrompt
from asyncpromptcache.testing import StaticSource

Call = Callable[[], Awaitable[Any]]


async def _time_one(call: Call, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        await call()
    return (time.perf_counter_ns() - start) / n


async def measure(contenders: dict[str, Call], n: int, rounds: int) -> dict[str, list[float]]:
    """ns per call for each contender, ``rounds`` interleaved rounds of ``n`` calls."""
    for call in contenders.values():  # warm up
        await _time_one(call, max(1, n // 10))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            samples[name].append(await _time_one(call, n))
    return samples


async def run(n: int, rounds: int) -> dict[str, list[float]]:
    prompt = TextPrompt(name="movie-critic", version=1, prompt="Review {{movie}}",
                        labels=["production"])
    store = {("movie-critic", "production", None): prompt}

    async def floor(key: tuple[str, str, None]) -> Any:
        return store.get(key)

    ttl_cache: cachetools.TTLCache[Any, Any] = cachetools.TTLCache(maxsize=1024, ttl=60)
    ttl_cache[("movie-critic", "production", None)] = prompt

    async def cachetools_ttl(name: str) -> Any:
        return ttl_cache[(name, "production", None)]

    # Every contender is called the same way: a functools.partial holding its argument.
    contenders: dict[str, Call] = {
        "floor (async def + dict.get)": functools.partial(
            floor, ("movie-critic", "production", None)),
        "cachetools TTLCache lookup": functools.partial(cachetools_ttl, "movie-critic"),
    }
    try:
        from async_lru import alru_cache

        @alru_cache(maxsize=1024, ttl=60)
        async def lru_get(name: str, label: str = "production") -> Any:
            return prompt

        await lru_get("movie-critic")
        contenders["async_lru hit"] = functools.partial(lru_get, "movie-critic")
    except ImportError:
        print("async_lru not installed (pip install -e '.[bench]'): skipped", file=sys.stderr)

    async with AsyncPromptClient(source=StaticSource([prompt]), cache_ttl_seconds=3600,
                                 env={}) as client:
        await client.get_prompt("movie-critic")
        contenders["asyncpromptcache get_prompt"] = functools.partial(
            client.get_prompt, "movie-critic")
        contenders["asyncpromptcache get_prompt(label=, type=)"] = functools.partial(
            client.get_prompt, "movie-critic", label="production", type="text")
        samples = await measure(contenders, n, rounds)
        assert client.stats().fetches == 1  # every call above was a hit
    return samples


def report(samples: dict[str, list[float]]) -> dict[str, float]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    floor = next(iter(medians.values()))
    print(f"{'contender':46} {'ns/call':>9} {'min':>8} {'max':>8} {'x floor':>8}")
    for name, values in samples.items():
        print(f"{name:46} {medians[name]:9.1f} {min(values):8.1f} {max(values):8.1f} "
              f"{medians[name] / floor:8.2f}")
    ours = medians["asyncpromptcache get_prompt"]
    print(f"\nours / floor: {ours / floor:.2f}x (target <= 4x, aim 3x)")
    if "async_lru hit" in medians:
        print(f"async_lru / ours: {medians['async_lru hit'] / ours:.2f}x (target >= 2x)")
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about 1 s)")
    args = parser.parse_args(argv)
    n, rounds = (20_000, 5) if args.quick else (200_000, 9)
    report(asyncio.run(run(n, rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
