"""A bounded soak: mixed load over loopback HTTP for ``ASYNCPROMPTCACHE_SOAK_SECONDS``
(default 20) with faults switching on and off, many keys, TTL expiries on a fake clock, new
versions, invalidations and evictions, then the books are balanced.

Every call is accounted for: the client counts it as a hit, a stale hit or a miss (a miss
either started the fetch or joined one), and the caller got a prompt, its fallback, a typed
``FetchError`` or its own cancellation. The tallies kept by the callers must agree with
``client.stats()``, with the requests the server saw, and with the source's own count.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter

import anyio
import anyio.lowlevel
import pytest

from asyncpromptcache import AsyncPromptClient, FetchError, RetryPolicy
from asyncpromptcache.testing import FakeClock

from .faultserver import fault_server

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SECONDS = float(os.environ.get("ASYNCPROMPTCACHE_SOAK_SECONDS", "20"))
NAMES = [f"team/p{i}" for i in range(60)]
LABELS = ["production", "staging"]
FAULTS = ["503", "429", "hang", "drop", "malformed", "truncated", "html", "wrong-name",
          "reset-mid-body", "slow-drip", "oversized-chunked"]
RETRIES = 1
WORKERS = 40


def own_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("asyncpromptcache:"))


async def test_soak_books_balance() -> None:
    rng = random.Random(1234)
    clock = FakeClock()
    calls = 0
    got: Counter[str] = Counter()
    wrong: list[str] = []

    async with fault_server() as server:
        for name in NAMES:
            server.put(name, f"{name} v1", labels=("production", "staging"))
        client = AsyncPromptClient(
            base_url=server.base_url, clock=clock, cache_ttl_seconds=30, max_size=100,
            max_stale_seconds=120, fetch_timeout_seconds=0.2, env={},
            retry=RetryPolicy(max_retries=RETRIES, base_delay=0.0, max_delay=0.01,
                              max_retry_after=0.05),
            refresh_backoff_seconds=2, refresh_backoff_max_seconds=20,
        )
        server.retry_after = "0.01"
        deadline = time.monotonic() + SECONDS

        async def worker(seed: int) -> None:
            nonlocal calls
            wrng = random.Random(seed)
            while time.monotonic() < deadline:
                name = wrng.choice(NAMES)
                label = wrng.choice(LABELS)
                roll = wrng.random()
                fallback = f"fallback for {name}" if roll < 0.3 else None
                ttl = 0 if 0.3 <= roll < 0.32 else None
                calls += 1
                try:
                    with anyio.CancelScope() as scope:
                        if roll > 0.99:
                            scope.deadline = anyio.current_time() + 0.005
                        prompt = await client.get_prompt(
                            name, label=label, fallback=fallback, cache_ttl_seconds=ttl)
                    if scope.cancelled_caught:
                        got["cancelled"] += 1
                    elif prompt.is_fallback:
                        got["fallback"] += 1
                        if prompt.prompt != fallback:
                            wrong.append(f"{name}: fallback {prompt.prompt!r}")
                    else:
                        got["prompt"] += 1
                        if prompt.name != name or not prompt.prompt.startswith(f"{name} v"):
                            wrong.append(f"{name}/{label}: got {prompt.name} {prompt.prompt}")
                except FetchError as exc:
                    got[f"error:{type(exc).__name__}"] += 1
                    if exc.name != name:
                        wrong.append(f"{name}: error for {exc.name}")
                await anyio.lowlevel.checkpoint()

        async def chaos() -> None:
            while time.monotonic() < deadline:
                await anyio.sleep(rng.uniform(0.01, 0.1))
                roll = rng.random()
                if roll < 0.35:
                    clock.advance(rng.choice([1, 5, 15, 31, 61, 200]))  # fresh, stale, too old
                elif roll < 0.5:
                    # Faults come and go: about half of the time the upstream is healthy.
                    server.fault = "ok" if server.fault != "ok" else rng.choice(FAULTS)
                elif roll < 0.7:
                    name = rng.choice(NAMES)
                    version = len(server.prompts[name]) + 1
                    server.put(name, f"{name} v{version}", labels=(rng.choice(LABELS),))
                elif roll < 0.9:
                    client.invalidate(rng.choice(NAMES), label=rng.choice(LABELS))
                elif roll < 0.99:
                    client.invalidate(rng.choice(NAMES))
                else:
                    client.clear()
            server.fault = "ok"

        async with client:
            session = client.source._http.session  # type: ignore[attr-defined]
            async with anyio.create_task_group() as tg:
                tg.start_soon(chaos)
                for i in range(WORKERS):
                    tg.start_soon(worker, i)
            with anyio.fail_after(10):
                while client.cache.in_flight:  # noqa: ASYNC110 - polling a plain counter
                    await anyio.sleep(0.01)
            stats = client.stats()
            requests_sent = client.source.requests_sent  # type: ignore[attr-defined]

            # After the storm: every key recovers to what the server holds now.
            server.fault = "ok"
            clock.advance(1000)
            for name in NAMES:
                for label in LABELS:
                    fresh = await client.get_prompt(name, label=label, cache_ttl_seconds=0)
                    holder = next(p for p in reversed(server.prompts[name])
                                  if label in p["labels"])
                    assert (fresh.version, fresh.prompt) == (holder["version"], holder["prompt"])
            session = client.source._http.session  # type: ignore[attr-defined]
        assert session is None or session.closed
        assert own_tasks() == 0 and client.cache.in_flight == 0

    # -- the books -------------------------------------------------------------------------
    print(f"soak: {calls} calls {dict(got)} {stats} requests={requests_sent}")
    assert not wrong, wrong[:10]
    outcomes = sum(got.values())
    assert outcomes == calls, (calls, got)
    # Every call was a hit, a stale hit or a miss; every miss started a fetch, joined one, or
    # was answered by the negative cache (a recent failure of that key).
    assert stats.hits + stats.stale_hits + stats.misses == calls
    assert stats.misses == stats.fetches + stats.joined + stats.negative_hits
    # Fallbacks as the callers saw them; only a miss can end in a fallback or an error.
    assert stats.fallbacks == got["fallback"]
    errors = sum(n for outcome, n in got.items() if outcome.startswith("error:"))
    assert errors + got["fallback"] <= stats.misses
    assert got["prompt"] >= stats.hits + stats.stale_hits
    # Errors come from failed fetches: at most as many failed fetches as fetches.
    assert 0 < stats.fetch_errors <= stats.fetches
    assert stats.refresh_errors <= stats.refreshes
    # Each fetch or refresh sent 1 to 1 + RETRIES requests; aiohttp may resend one more
    # inside an attempt when the server drops the connection without answering.
    flights = stats.fetches + stats.refreshes
    assert flights <= requests_sent <= flights * (1 + RETRIES)
    # The run did what a soak should: lots of each kind of outcome.
    assert calls > 10_000, calls
    assert min(stats.hits, stats.stale_hits, stats.joined, stats.evictions) > 0, stats
    assert got["fallback"] > 0 and errors > 0 and got["cancelled"] >= 0, got
