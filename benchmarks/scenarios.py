"""The seven core scenarios. Each returns a ``Result``: JSON data (every per-round
figure), tables for the terminal and ``latest.md``, notes, and raw samples for the charts.

All timings come from contenders measured in the same run, interleaved round by round (each
round starting with another one); upstream latency and failures are made by the server
(``Upstream.control``), never by sleeping in a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import json
import logging
import statistics
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import cachetools
from aiohttp import web

from asyncpromptcache import (
    AsyncPromptClient,
    FunctionSource,
    Prompt,
    PromptClient,
    PromptKey,
    TextPrompt,
    parse_prompt,
)
from asyncpromptcache.testing import FakeClock, StaticSource
from devkit.upstream import PUBLIC_KEY, SECRET_KEY, Upstream, bench_name

from . import hit_instructions, sync_hit
from ._load import ERROR, OK, UNFINISHED, Load
from ._loadgen import LoadGenerator
from ._peers import (
    ASYNC_LRU,
    LANGFUSE,
    LANGSMITH,
    OURS,
    TTLCACHE,
    Handle,
    Peer,
    floor_handle,
    new_langfuse,
)
from ._stats import histogram, latency_summary, rss_bytes, spread

Table = tuple[str, list[str], list[list[str]]]


@dataclass(frozen=True)
class Sizes:
    """How big and how long each scenario runs: ``FULL`` or ``SMOKE``."""

    hit_calls: int = 200_000
    hit_rounds: int = 15
    sync_calls: int = 200_000
    sync_rounds: int = 15
    throughput_seconds: float = 0.3
    throughput_rounds: int = 3
    stampede_callers: int = 1000
    stampede_keys: int = 50
    stampede_delay: float = 0.05
    stampede_rounds: int = 5
    load_rate: float = 4000.0  # calls per second in scenarios 3 and 4
    refresh_ttl: float = 1.0
    refresh_delay: float = 0.2
    refresh_window: float = 1.0
    refresh_keys: int = 10
    refresh_rounds: int = 3
    outage_ttl: float = 1.0
    outage_normal: float = 0.5
    outage_503: float = 3.0
    outage_hang: float = 10.0
    outage_hang_delay: float = 10.0
    outage_keys: int = 10
    web_requests: int = 1000
    web_prompts: int = 50
    web_delay: float = 0.05
    web_rounds: int = 5
    memory_entries: int = 100_000
    memory_calls: int = 1_000_000
    memory_sample_every: int = 100_000
    memory_keys: int = 100


FULL = Sizes()
SMOKE = Sizes(
    hit_calls=2000, hit_rounds=2, sync_calls=2000, sync_rounds=2, throughput_seconds=0.02,
    throughput_rounds=1, stampede_callers=100, stampede_keys=5, stampede_delay=0.02,
    stampede_rounds=1, load_rate=1000.0, refresh_ttl=0.1, refresh_delay=0.03,
    refresh_window=0.1, refresh_keys=3, refresh_rounds=1, outage_ttl=0.1, outage_normal=0.05,
    outage_503=0.2, outage_hang=0.15, outage_hang_delay=1.0, outage_keys=3, web_requests=100,
    web_prompts=5, web_delay=0.02, web_rounds=1, memory_entries=2000, memory_calls=10_000,
    memory_sample_every=2500, memory_keys=20,
)


@dataclass
class Result:
    key: str
    title: str
    data: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Raw samples for the charts (not written to the JSON).
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    upstream: Upstream
    sizes: Sizes
    smoke: bool
    log: Callable[[str], None] = print


def _peers(ctx: Context, peers: Sequence[Peer], ttl: float, result: Result) -> list[Peer]:
    """The peers that are installed and support ``ttl``; the others are noted in ``result``."""
    chosen = []
    for peer in peers:
        if not peer.available():
            result.notes.append(f"{peer.label}: not installed (pip install -e '.[bench]')")
        elif ttl < peer.min_ttl:
            result.notes.append(
                f"{peer.label}: skipped, its TTL cannot be under {peer.min_ttl:g} s "
                f"(this run uses {ttl:g} s)"
            )
        else:
            chosen.append(peer)
    return chosen


def rotated(items: Sequence[Any], turn: int) -> list[Any]:
    """``items`` starting at ``turn``: each round begins with another contender, so that
    none always runs first (or after the same neighbour)."""
    items = list(items)
    if not items:
        return items
    turn %= len(items)
    return items[turn:] + items[:turn]


def _f(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def _mmm(s: dict[str, float], digits: int = 1) -> list[str]:
    return [_f(s["median"], digits), _f(s["min"], digits), _f(s["max"], digits)]


@contextlib.asynccontextmanager
async def _quiet_gc() -> AsyncIterator[None]:
    """Collect, then freeze what exists, so that the collector's passes during a timed load
    walk only what the load itself allocates (the same for every contender)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# -- 1. fresh-hit cost ---------------------------------------------------------------------


async def _time_calls(call: Callable[[], Awaitable[Any]], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        await call()
    return (time.perf_counter_ns() - start) / n


async def hit_async(ctx: Context) -> Result:
    """ns per awaited fresh hit, each contender a ``functools.partial`` holding the name, in
    interleaved rounds (the approach of ``hit_path.py``); the thread hop of Langfuse-from-async
    gets a hundredth of the calls per round."""
    result = Result("hit_async", "1a. Fresh hit, async: ns per call")
    sizes, name = ctx.sizes, bench_name(0)
    peers = _peers(ctx, (OURS, ASYNC_LRU, TTLCACHE, LANGSMITH, LANGFUSE), 3600.0, result)
    await ctx.upstream.acontrol(delay=0.0, fail_status=None)
    async with AsyncExitStack() as stack:
        handles: dict[str, Handle] = {}
        for peer in peers:
            handles[peer.label] = await stack.enter_async_context(
                peer.open(ctx.upstream.base_url, 3600.0, 1024))
            await handles[peer.label].get(name)  # the one fetch; every call after it hits
        floor = floor_handle({name: await handles[OURS.label].get(name)})
        calls: dict[str, tuple[Callable[[], Awaitable[Any]], int]] = {
            "floor (async def + dict.get)": (functools.partial(floor.get, name), sizes.hit_calls),
        }
        for peer in peers:
            n = sizes.hit_calls // 100 if peer is LANGFUSE else sizes.hit_calls
            calls[peer.label] = (functools.partial(handles[peer.label].get, name), max(n, 10))
        before = await ctx.upstream.arequests()
        for call, n in calls.values():  # warm up
            await _time_calls(call, max(1, n // 10))
        samples: dict[str, list[float]] = {label: [] for label in calls}
        for turn in range(sizes.hit_rounds):
            for label, (call, n) in rotated(list(calls.items()), turn):
                samples[label].append(await _time_calls(call, n))
        fetched_during = await ctx.upstream.arequests() - before
    result.data = _hit_data(samples, calls={k: v[1] for k, v in calls.items()})
    result.data["upstream_requests_while_timing"] = fetched_during
    result.tables.append(_hit_table("fresh hit, async", result.data, OURS.label))
    result.raw["samples"] = samples
    result.notes.append(
        "Langfuse from async code pays a thread hop per call (asyncio.to_thread); its cached "
        "get_prompt itself is in 1b."
    )
    return result


def _hit_data(samples: dict[str, list[float]], calls: dict[str, int]) -> dict[str, Any]:
    floor = statistics.median(next(iter(samples.values())))
    data: dict[str, Any] = {"unit": "ns per call", "rounds": {}, "summary": {}}
    for label, values in samples.items():
        s = spread(values)
        data["rounds"][label] = values
        data["summary"][label] = {**s, "x_floor": s["median"] / floor,
                                  "calls_per_round": calls.get(label)}
    return data


def _hit_table(title: str, data: dict[str, Any], ours: str) -> Table:
    ours_median = data["summary"][ours]["median"]
    rows = []
    for label, s in data["summary"].items():
        rows.append([label, *_mmm(s), f"{s['x_floor']:.2f}", f"{s['median'] / ours_median:.2f}"])
    return (title, ["contender", "ns/call", "min", "max", "x floor", "x ours"], rows)


def _fetch_sync(base_url: str, name: str) -> Prompt:
    """A blocking fetch for the hand-written sync cache (urllib, 5 s timeout)."""
    request = urllib.request.Request(
        f"{base_url}/api/public/v2/prompts/{quote(name, safe='')}",
        headers={"Authorization": _basic()},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # loopback only
        return parse_prompt(json.loads(response.read()))


def _basic() -> str:
    from asyncpromptcache.server import basic_auth_header

    return basic_auth_header(PUBLIC_KEY, SECRET_KEY)


def hit_sync_and_threads(ctx: Context) -> tuple[Result, Result]:
    """1b. ns per sync fresh hit, and 7. hits per second from 1, 4 and 16 threads, with
    ``sync_hit.measure`` and ``sync_hit.hits_per_second``."""
    hit = Result("hit_sync", "1b. Fresh hit, sync: ns per call")
    threads = Result("sync_threads", "7. Sync fresh hits per second from 1, 4 and 16 threads")
    sizes, name, base = ctx.sizes, bench_name(0), ctx.upstream.base_url
    ctx.upstream.control(delay=0.0, fail_status=None)
    ours_label = "asyncpromptcache PromptClient"
    with PromptClient(public_key=PUBLIC_KEY, secret_key=SECRET_KEY, base_url=base,
                      cache_ttl_seconds=3600, env={}) as client:
        store = {name: client.get_prompt(name)}

        def floor(key: str) -> Any:
            return store.get(key)

        cache: cachetools.TTLCache[str, Prompt] = cachetools.TTLCache(maxsize=1024, ttl=3600)
        lock = threading.Lock()

        def ttlcache_get(key: str) -> Prompt:
            with lock:
                prompt = cache.get(key)
                if prompt is None:
                    prompt = _fetch_sync(base, key)
                    cache[key] = prompt
                return prompt

        ttlcache_get(name)
        contenders: dict[str, Callable[[], Any]] = {
            "floor (def + dict.get)": functools.partial(floor, name),
            ours_label: functools.partial(client.get_prompt, name),
            "cachetools TTLCache + threading.Lock": functools.partial(ttlcache_get, name),
        }
        langfuse = new_langfuse(base) if LANGFUSE.available() else None
        try:
            if langfuse is not None:
                langfuse.get_prompt(name)
                contenders["Langfuse SDK get_prompt"] = functools.partial(langfuse.get_prompt, name)
            else:
                hit.notes.append("Langfuse SDK: not installed (pip install -e '.[bench]')")
            before = ctx.upstream.requests()
            samples = sync_hit.measure(contenders, sizes.sync_calls, sizes.sync_rounds)
            rates: dict[str, dict[int, list[float]]] = {
                label: {1: [], 4: [], 16: []} for label in contenders
            }
            for turn in range(sizes.throughput_rounds):
                for count in (1, 4, 16):
                    for label, call in rotated(list(contenders.items()), turn):
                        rates[label][count].append(
                            sync_hit.hits_per_second(call, count, sizes.throughput_seconds))
            fetched_during = ctx.upstream.requests() - before
            stats = client.stats()
        finally:
            if langfuse is not None:
                langfuse.shutdown()
    hit.data = _hit_data(samples, {label: sizes.sync_calls for label in contenders})
    hit.data["upstream_requests_while_timing"] = fetched_during
    hit.data["ours_fetches"] = stats.fetches
    hit.tables.append(_hit_table("fresh hit, sync", hit.data, ours_label))
    hit.raw["samples"] = samples
    hit.notes.append(
        "PromptClient answers a fresh hit in the calling thread (no hop to its loop thread). "
        "Timed with sync_hit.measure (interleaved rounds, no rotation)."
    )
    threads.data = {"unit": "hits per second", "seconds_per_measure": sizes.throughput_seconds,
                    "rounds": {label: {str(k): v for k, v in by.items()}
                               for label, by in rates.items()},
                    "summary": {label: {str(k): spread(v) for k, v in by.items()}
                                for label, by in rates.items()}}
    rows = []
    for label, by in rates.items():
        row = [label]
        for count in (1, 4, 16):
            s = spread(by[count])
            row.append(f"{s['median'] / 1e6:.2f} M ({s['min'] / 1e6:.2f}-{s['max'] / 1e6:.2f})")
        rows.append(row)
    threads.tables.append((
        "hits per second, median (min-max) of rounds",
        ["contender", "1 thread", "4 threads", "16 threads"], rows,
    ))
    threads.notes.append(
        "Hits from all threads together, with sync_hit.hits_per_second; the GIL serialises "
        "them, so more threads cannot add throughput, only show what contention costs."
    )
    threads.raw["rates"] = rates
    return hit, threads


# -- 2. cold stampede ----------------------------------------------------------------------


async def _stampede_trial(
    ctx: Context, peer: Peer, callers: int, keys: int, delay: float
) -> dict[str, Any]:
    await ctx.upstream.acontrol(delay=delay, fail_status=None)
    await ctx.upstream.areset()
    names = [bench_name(i) for i in range(keys)]
    async with peer.open(ctx.upstream.base_url, 60.0, 1024) as handle:
        start = time.perf_counter()
        outcomes = await asyncio.gather(
            *(handle.get(names[i % keys]) for i in range(callers)), return_exceptions=True)
        wall = time.perf_counter() - start
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    return {
        "upstream_requests": await ctx.upstream.arequests(), "wall_s": wall,
        "errors": len(errors),
        "first_error": None if not errors else f"{type(errors[0]).__name__}: {errors[0]}"[:300],
    }


async def stampede(ctx: Context) -> Result:
    sizes = ctx.sizes
    result = Result(
        "stampede",
        f"2. Cold stampede: {sizes.stampede_callers:,} concurrent callers, "
        f"{sizes.stampede_delay * 1000:.0f} ms upstream",
    )
    peers = _peers(ctx, (OURS, LANGFUSE, LANGSMITH, ASYNC_LRU, TTLCACHE), 60.0, result)
    cases = {"1 key": 1, f"{sizes.stampede_keys} keys": sizes.stampede_keys}
    trials: dict[str, dict[str, list[dict[str, Any]]]] = {
        case: {peer.label: [] for peer in peers} for case in cases
    }
    for turn in range(sizes.stampede_rounds):
        for case, keys in cases.items():
            for peer in rotated(peers, turn):
                trials[case][peer.label].append(await _stampede_trial(
                    ctx, peer, sizes.stampede_callers, keys, sizes.stampede_delay))
    await ctx.upstream.acontrol(delay=0.0)
    result.data = {"callers": sizes.stampede_callers, "upstream_delay_s": sizes.stampede_delay,
                   "cases": {}}
    for case, keys in cases.items():
        rows = []
        result.data["cases"][case] = {}
        for label, runs in trials[case].items():
            requests = [float(r["upstream_requests"]) for r in runs]
            walls = [r["wall_s"] * 1000 for r in runs]
            errors = [float(r["errors"]) for r in runs]
            summary = {"upstream_requests": spread(requests), "wall_ms": spread(walls),
                       "errors": spread(errors)}
            result.data["cases"][case][label] = {"keys": keys, "runs": runs, "summary": summary}
            rows.append([label, *_mmm(summary["upstream_requests"], 0),
                         *_mmm(summary["wall_ms"]), _f(summary["errors"]["median"], 0)])
        result.tables.append((
            f"{case}: upstream requests and wall time (median, min, max of "
            f"{sizes.stampede_rounds} rounds)",
            ["contender", "requests", "min", "max", "wall ms", "min", "max", "errors"], rows,
        ))
    result.notes.append(
        "Wall time: from the first call to the last answer. Langfuse's callers share the "
        "loop's default thread pool (asyncio.to_thread), so only that many fetch at once."
    )
    return result


# -- 3. the refresh window -----------------------------------------------------------------


async def _refresh_trial(ctx: Context, peer: Peer) -> dict[str, Any]:
    sizes = ctx.sizes
    ttl = max(sizes.refresh_ttl, peer.min_ttl)
    names = [bench_name(i) for i in range(sizes.refresh_keys)]
    await ctx.upstream.acontrol(delay=sizes.refresh_delay, fail_status=None)
    await ctx.upstream.areset()
    async with peer.open(ctx.upstream.base_url, ttl, 1024) as handle, _quiet_gc():

        async def warm(name: str) -> float:
            await handle.get(name)
            return time.monotonic()  # about when the peer stored it

        filled = await asyncio.gather(*(warm(name) for name in names))
        expiry = [handle.expires_at(name) or at + ttl
                  for name, at in zip(names, filled, strict=True)]
        load = Load(handle.get, names, sizes.load_rate)
        load.start()
        await asyncio.sleep(max(expiry) - time.monotonic() + sizes.refresh_window + 0.05)
        unfinished = await load.stop()
    records = list(load.records)
    fresh = [r.ns for r in records if r.start < expiry[r.key] and r.status == OK]
    window = [r for r in records
              if expiry[r.key] <= r.start < expiry[r.key] + sizes.refresh_window]
    window_ns = [r.ns for r in window]
    return {
        "ttl_s": ttl,
        "fresh": latency_summary(fresh), "window": latency_summary(window_ns),
        "window_errors": sum(1 for r in window if r.status == ERROR),
        "unfinished": unfinished,
        "upstream_requests": await ctx.upstream.arequests(),
        "first_errors": load.errors,
        "_fresh_ns": fresh, "_window_ns": window_ns,
    }


async def ours_stale_hit_cost(calls: int, rounds: int) -> dict[str, dict[str, float]]:
    """ns per call of our ``get_prompt`` on a fresh key and on a stale key whose refresh is in
    flight (held by the source, on a fake clock): what a caller pays in the refresh window."""
    prompt = TextPrompt(name="a", version=1, prompt="x", labels=["production"])
    fresh_source, stale_source = StaticSource([prompt]), StaticSource([prompt])
    stale_clock = FakeClock()
    async with AsyncPromptClient(source=fresh_source, cache_ttl_seconds=3600, env={}) as fresh, \
            AsyncPromptClient(source=stale_source, clock=stale_clock, cache_ttl_seconds=1,
                              env={}) as stale:
        await fresh.get_prompt("a")
        await stale.get_prompt("a")
        stale_source.hold()
        stale_clock.advance(2)
        await stale.get_prompt("a")  # starts the one refresh, held until release()
        timed = {"fresh": functools.partial(fresh.get_prompt, "a"),
                 "stale, refresh in flight": functools.partial(stale.get_prompt, "a")}
        samples: dict[str, list[float]] = {label: [] for label in timed}
        for turn in range(rounds):
            for label, call in rotated(list(timed.items()), turn):
                samples[label].append(await _time_calls(call, calls))
        assert stale.stats().refreshes == 1
        stale_source.release()
    return {label: spread(values) for label, values in samples.items()}


async def refresh_window(ctx: Context) -> Result:
    sizes = ctx.sizes
    result = Result(
        "refresh",
        f"3. The refresh window: caller latency in the {sizes.refresh_window:g} s after TTL "
        f"expiry ({sizes.refresh_ttl:g} s TTL, {sizes.refresh_delay * 1000:.0f} ms upstream, "
        f"{sizes.load_rate:,.0f} calls/s over {sizes.refresh_keys} keys)",
    )
    peers = _peers(ctx, (OURS, LANGFUSE, LANGSMITH, ASYNC_LRU, TTLCACHE), sizes.refresh_ttl,
                   result)
    runs: dict[str, list[dict[str, Any]]] = {peer.label: [] for peer in peers}
    for turn in range(sizes.refresh_rounds):
        for peer in rotated(peers, turn):
            runs[peer.label].append(await _refresh_trial(ctx, peer))
    await ctx.upstream.acontrol(delay=0.0)
    result.data = {"ttl_s": sizes.refresh_ttl, "upstream_delay_s": sizes.refresh_delay,
                   "window_s": sizes.refresh_window, "calls_per_second": sizes.load_rate,
                   "keys": sizes.refresh_keys, "peers": {}}
    rows = []
    result.raw["fresh"], result.raw["window"] = {}, {}
    for label, trials in runs.items():
        result.raw["fresh"][label] = [ns for t in trials for ns in t.pop("_fresh_ns")]
        result.raw["window"][label] = [ns for t in trials for ns in t.pop("_window_ns")]
        summary = {
            phase + "_" + q: spread([t[phase][q + "_us"] for t in trials])
            for phase in ("fresh", "window") for q in ("p50", "p99", "max")
        }
        summary["p99_ratio"] = spread([
            t["window"]["p99_us"] / t["fresh"]["p99_us"] for t in trials])
        summary["window_errors"] = spread([float(t["window_errors"]) for t in trials])
        result.data["peers"][label] = {
            "runs": trials, "summary": summary,
            "fresh_histogram": histogram(result.raw["fresh"][label]),
            "window_histogram": histogram(result.raw["window"][label]),
        }
        rows.append([
            label, _f(summary["fresh_p99"]["median"], 2), _f(summary["window_p50"]["median"], 2),
            _f(summary["window_p99"]["median"], 2), _f(summary["window_p99"]["min"], 2),
            _f(summary["window_p99"]["max"], 2), _f(summary["window_max"]["median"], 0),
            _f(summary["p99_ratio"]["median"], 2), _f(summary["window_errors"]["median"], 0),
        ])
    cost = await ours_stale_hit_cost(max(1000, sizes.hit_calls // 4), max(3, sizes.hit_rounds))
    result.data["ours_hit_ns"] = cost
    result.tables.append((
        f"latency in µs, median of {sizes.refresh_rounds} rounds (p99 min-max across rounds)",
        ["contender", "fresh p99", "window p50", "window p99", "min", "max", "window max",
         "p99 window/fresh", "errors"], rows,
    ))
    result.tables.append((
        "our get_prompt, ns per call (median, min, max of rounds): fresh key vs stale key "
        "with its refresh in flight",
        ["state", "ns/call", "min", "max"],
        [[label, *_mmm(s)] for label, s in cost.items()],
    ))
    result.notes.append(
        "'fresh p99' is the same callers' p99 before the TTL ran out, in the same run; the "
        "window is the second after each key's TTL ran out (Langfuse: its whole-second "
        "expiry). Calls arrive at a fixed rate, each in its own task (an open loop: a call "
        "that waits holds back no other), and are timed around the awaited get."
    )
    return result


# -- 4. outage -----------------------------------------------------------------------------


async def _outage_trial(ctx: Context, peer: Peer) -> dict[str, Any]:
    sizes, up = ctx.sizes, ctx.upstream
    ttl = max(sizes.outage_ttl, peer.min_ttl)
    names = [bench_name(i) for i in range(sizes.outage_keys)]
    await up.acontrol(delay=0.0, fail_status=None)
    await up.areset()
    async with peer.open(up.base_url, ttl, 1024) as handle, _quiet_gc():
        await asyncio.gather(*(handle.get(name) for name in names))  # every key cached
        load = Load(handle.get, names, sizes.load_rate)
        t0 = time.monotonic()
        load.start()
        await asyncio.sleep(sizes.outage_normal)
        counts = [await up.arequests()]
        t503 = time.monotonic()
        await up.acontrol(fail_status=503)
        await asyncio.sleep(sizes.outage_503)  # every key's TTL runs out in this phase
        counts.append(await up.arequests())
        thang = time.monotonic()
        await up.acontrol(delay=sizes.outage_hang_delay, fail_status=None)
        await asyncio.sleep(sizes.outage_hang)
        tend = time.monotonic()
        unfinished = await load.stop()
        await up.acontrol(delay=0.0)
        counts.append(await up.arequests())
    records = list(load.records)
    phases = {"normal": (t0, t503), "503": (t503, thang), "hang": (thang, tend)}
    out: dict[str, Any] = {"ttl_s": ttl, "phases_s": {k: b - a for k, (a, b) in phases.items()},
                           "unfinished_at_end": unfinished, "first_errors": load.errors,
                           "upstream_requests": {"normal": counts[0],
                                                 "503": counts[1] - counts[0],
                                                 "hang": counts[2] - counts[1]}}
    for phase, (a, b) in phases.items():
        calls = [r for r in records if a <= r.start < b]
        out[phase] = {
            **latency_summary([r.ns for r in calls]),
            "errors": sum(1 for r in calls if r.status == ERROR),
            "unfinished": sum(1 for r in calls if r.status == UNFINISHED),
        }
        out["_" + phase] = [r.ns for r in calls]
    return out


async def outage(ctx: Context) -> Result:
    sizes = ctx.sizes
    result = Result(
        "outage",
        f"4. Outage under steady load: the upstream answers 503 for {sizes.outage_503:g} s, "
        f"then hangs (each request {sizes.outage_hang_delay:g} s) for {sizes.outage_hang:g} s",
    )
    peers = _peers(ctx, (OURS, LANGFUSE, LANGSMITH, ASYNC_LRU, TTLCACHE), sizes.outage_ttl,
                   result)
    runs: dict[str, dict[str, Any]] = {}
    for peer in peers:
        runs[peer.label] = await _outage_trial(ctx, peer)
    result.data = {"ttl_s": sizes.outage_ttl, "calls_per_second": sizes.load_rate,
                   "keys": sizes.outage_keys, "peer_fetch_timeout_s": 5.0, "peers": {}}
    rows = []
    result.raw["phases"] = {}
    for label, run in runs.items():
        result.raw["phases"][label] = {p: run.pop("_" + p) for p in ("normal", "503", "hang")}
        result.data["peers"][label] = {
            **run,
            "histograms": {p: histogram(ns) for p, ns in result.raw["phases"][label].items()},
        }
        row = [label, _f(run["normal"]["p99_us"], 1)]
        for phase in ("503", "hang"):
            summary = run[phase]
            row += [f"{summary['n']:,}", str(summary["errors"]), str(summary["unfinished"]),
                    _f(summary["p99_us"], 1), _f(summary["max_us"], 0)]
        row.append(f"{run['upstream_requests']['503']}/{run['upstream_requests']['hang']}")
        rows.append(row)
    result.tables.append((
        "every key cached before the outage; latency in µs ('unfin.': calls still waiting "
        "when the phase ended, counted at the time they had waited)",
        ["contender", "before: p99", "503: calls", "errors", "unfin.", "p99", "max",
         "hang: calls", "errors", "unfin.", "p99", "max", "upstream req. 503/hang"], rows,
    ))
    result.notes.append(
        f"One run per contender (the hang phase alone is {sizes.outage_hang:g} s), "
        f"{sizes.load_rate:,.0f} calls/s over {sizes.outage_keys} keys; the keys' TTL "
        f"({sizes.outage_ttl:g} s) runs out inside the 503 phase. async_lru and TTLCache fetch "
        "with a 5 s timeout and no retries; Langfuse and ours use their defaults (5 s, 2 "
        "retries), LangSmith its own (10 s, 3 tries)."
    )
    return result


# -- 5. cold-started web app ---------------------------------------------------------------


async def _web_trial(
    ctx: Context, clients: LoadGenerator, peer: Peer | None, prompts: dict[str, Prompt]
) -> dict[str, Any]:
    sizes = ctx.sizes
    await ctx.upstream.acontrol(delay=sizes.web_delay, fail_status=None)
    await ctx.upstream.areset()
    async with AsyncExitStack() as stack:
        if peer is None:
            handle = floor_handle(prompts)
        else:
            handle = await stack.enter_async_context(
                peer.open(ctx.upstream.base_url, 60.0, 1024))
        get, count = handle.get, sizes.web_prompts

        async def answer(request: web.Request) -> web.Response:
            prompt = await get(bench_name(int(request.match_info["n"]) % count))
            return web.Response(text=prompt.compile(product="Acme", user="Ann"))

        app = web.Application()
        app.router.add_get("/answer/{n}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        # A backlog for the whole burst: with the default 128, connections beyond it wait for a
        # SYN retry (1 s) and the run measures the kernel, not the app.
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/answer/"
        fired = await clients.afire(url, sizes.web_requests)
    return {"wall_s": fired["wall_s"], "upstream_requests": await ctx.upstream.arequests(),
            "failed": sizes.web_requests - fired["ok"]}


async def web_app(ctx: Context) -> Result:
    sizes = ctx.sizes
    result = Result(
        "web_app",
        f"5. Cold-started aiohttp app: {sizes.web_requests:,} concurrent requests over "
        f"{sizes.web_prompts} prompts, {sizes.web_delay * 1000:.0f} ms upstream",
    )
    peers = _peers(ctx, (OURS, LANGFUSE, LANGSMITH, ASYNC_LRU, TTLCACHE), 60.0, result)
    await ctx.upstream.acontrol(delay=0.0, fail_status=None)
    async with AsyncPromptClient(public_key=PUBLIC_KEY, secret_key=SECRET_KEY,
                                 base_url=ctx.upstream.base_url, env={}) as client:
        prompts: dict[str, Prompt] = {
            bench_name(i): await client.get_prompt(bench_name(i)) for i in range(sizes.web_prompts)
        }
    floor_label = "floor (prompts already in a dict)"
    labels: list[tuple[str, Peer | None]] = [(floor_label, None)]
    labels += [(peer.label, peer) for peer in peers]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in labels}
    with LoadGenerator() as clients:
        await _web_trial(ctx, clients, None, prompts)  # a warm-up, not counted
        for turn in range(sizes.web_rounds):
            for label, peer in rotated(labels, turn):
                runs[label].append(await _web_trial(ctx, clients, peer, prompts))
    await ctx.upstream.acontrol(delay=0.0)
    result.data = {"requests": sizes.web_requests, "prompts": sizes.web_prompts,
                   "upstream_delay_s": sizes.web_delay, "peers": {}}
    rows = []
    for label, trials in runs.items():
        summary = {"wall_ms": spread([t["wall_s"] * 1000 for t in trials]),
                   "upstream_requests": spread([float(t["upstream_requests"]) for t in trials]),
                   "failed": spread([float(t["failed"]) for t in trials])}
        result.data["peers"][label] = {"runs": trials, "summary": summary}
        rows.append([label, *_mmm(summary["wall_ms"], 0),
                     _f(summary["upstream_requests"]["median"], 0),
                     _f(summary["failed"]["median"], 0)])
    result.tables.append((
        f"total time for all requests, ms (median, min, max of {sizes.web_rounds} rounds)",
        ["contender", "total ms", "min", "max", "upstream requests", "failed"], rows,
    ))
    result.notes.append(
        "The app and the contender share one event loop; the clients (one aiohttp session, a "
        "connection per request) run in a child process and time the whole burst. The floor "
        "row is the cost of the HTTP requests alone."
    )
    return result


# -- 6. memory -----------------------------------------------------------------------------


def _prompts(count: int) -> dict[str, Prompt]:
    return {
        f"mem-{i:06d}": TextPrompt(name=f"mem-{i:06d}", version=1, labels=["production"],
                                   prompt=f"You are support agent #{i}. Answer {{{{user}}}}.")
        for i in range(count)
    }


async def _fill_and_measure(peer: Peer, prompts: dict[str, Prompt]) -> dict[str, Any]:
    async def lookup(name: str) -> Prompt:
        return prompts[name]

    names = list(prompts)
    async with peer.open(lookup, 3600.0, len(names)) as handle:
        gc.collect()
        # Only what is allocated from here on is traced. The collector is off while filling
        # (with 100,000 entries its passes would take most of the time) and runs before the
        # count, so garbage is not counted.
        gc.disable()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for name in names:
                await handle.get(name)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
            gc.enable()
    return {"entries": len(names), "bytes": held, "bytes_per_entry": held / len(names)}


def _langfuse_cache_fill(prompts: dict[str, Prompt]) -> dict[str, Any]:
    from langfuse._utils.prompt_cache import PromptCache

    cache = PromptCache()
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for name, prompt in prompts.items():
            cache.set(PromptCache.generate_cache_key(name, version=None, label=None),
                      prompt, 3600)  # type: ignore[arg-type]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        gc.enable()
        cache._task_manager.shutdown()
    return {"entries": len(prompts), "bytes": held, "bytes_per_entry": held / len(prompts)}


async def _ours_bounded(prompts: dict[str, Prompt], bound: int) -> dict[str, int]:
    """Our client with ``max_size=bound`` asked for twice as many keys."""
    some = dict(itertools.islice(prompts.items(), 2 * bound))

    async def lookup(key: PromptKey) -> Prompt:
        return some[key.name]

    async with AsyncPromptClient(source=FunctionSource(lookup), max_size=bound,
                                 env={}) as client:
        for name in some:
            await client.get_prompt(name)
        return {"max_size": bound, "keys_fetched": len(some), "held": len(client.cache),
                "evictions": client.stats().evictions}


async def _rss_run(get: Callable[[str], Awaitable[Any]], names: list[str], calls: int,
                   every: int) -> list[int]:
    for name in names:
        await get(name)
    samples = [rss_bytes()]
    count = len(names)
    done = 0
    while done < calls:
        for i in range(every):
            await get(names[i % count])
        done += every
        samples.append(rss_bytes())
    return samples


def _rss_run_sync(get: Callable[[str], Any], names: list[str], calls: int,
                  every: int) -> list[int]:
    for name in names:
        get(name)
    samples = [rss_bytes()]
    count = len(names)
    done = 0
    while done < calls:
        for i in range(every):
            get(names[i % count])
        done += every
        samples.append(rss_bytes())
    return samples


async def memory(ctx: Context) -> Result:
    sizes = ctx.sizes
    result = Result(
        "memory",
        f"6. Memory: bytes per cached prompt at {sizes.memory_entries:,} entries; resident "
        f"memory over {sizes.memory_calls:,} calls on {sizes.memory_keys} keys",
    )
    peers = _peers(ctx, (OURS, LANGSMITH, ASYNC_LRU, TTLCACHE), 0, result)
    # Resident memory over many calls on a fixed key set, each contender after the other;
    # first, while the process is still small.
    names = [bench_name(i) for i in range(sizes.memory_keys)]
    await ctx.upstream.acontrol(delay=0.0, fail_status=None)
    rss: dict[str, list[int]] = {}
    for peer in peers:
        async with peer.open(ctx.upstream.base_url, 3600.0, 1024) as handle:
            rss[peer.label] = await _rss_run(handle.get, names, sizes.memory_calls,
                                             sizes.memory_sample_every)
    base = ctx.upstream.base_url
    with PromptClient(public_key=PUBLIC_KEY, secret_key=SECRET_KEY, base_url=base,
                      cache_ttl_seconds=3600, env={}) as client:
        rss["asyncpromptcache PromptClient (sync)"] = await asyncio.to_thread(
            _rss_run_sync, client.get_prompt, names, sizes.memory_calls, sizes.memory_sample_every)
    if LANGFUSE.available():
        langfuse = new_langfuse(base)
        try:
            rss["Langfuse SDK get_prompt (sync)"] = await asyncio.to_thread(
                _rss_run_sync, functools.partial(langfuse.get_prompt, cache_ttl_seconds=3600),
                names, sizes.memory_calls, sizes.memory_sample_every)
        finally:
            await asyncio.to_thread(langfuse.shutdown)
    # Bytes per entry at memory_entries entries.
    prompts = _prompts(sizes.memory_entries)
    per_entry: dict[str, dict[str, Any]] = {}
    for peer in peers:
        per_entry[peer.label] = await _fill_and_measure(peer, prompts)
    if LANGFUSE.available():
        per_entry["Langfuse SDK PromptCache (storage only)"] = _langfuse_cache_fill(prompts)
    bounded = await _ours_bounded(prompts, max(100, sizes.memory_entries // 100))
    del prompts
    gc.collect()
    result.data = {"per_entry": per_entry, "rss_bytes": rss, "ours_bounded": bounded,
                   "rss_sample_every_calls": sizes.memory_sample_every}
    result.raw["rss"] = rss
    result.tables.append((
        f"bytes held per cached prompt at {sizes.memory_entries:,} entries (tracemalloc; the "
        "prompt objects themselves are shared and not counted)",
        ["contender", "bytes/entry", "total MiB"],
        [[label, f"{d['bytes_per_entry']:,.0f}", f"{d['bytes'] / 2**20:.1f}"]
         for label, d in per_entry.items()],
    ))
    result.tables.append((
        f"resident memory over {sizes.memory_calls:,} calls on {sizes.memory_keys} cached keys, "
        f"sampled every {sizes.memory_sample_every:,} calls",
        ["contender", "RSS at start MiB", "RSS at end MiB", "growth KiB", "max step KiB"],
        [[label, f"{s[0] / 2**20:.1f}", f"{s[-1] / 2**20:.1f}", f"{(s[-1] - s[0]) / 1024:,.0f}",
          f"{max((b - a for a, b in itertools.pairwise(s)), default=0) / 1024:,.0f}"]
         for label, s in rss.items()],
    ))
    result.notes.append(
        "Ours is given max_size=100,000 and a FunctionSource over the same in-memory prompts "
        "the others fetch from. Langfuse's cache is filled through its PromptCache.set with the "
        "keys get_prompt makes (filling it through get_prompt would take one HTTP request per "
        "entry). All contenders run in one process, one after the other: RSS is the process's."
    )
    return result


@contextlib.contextmanager
def silence_loggers() -> Iterator[None]:
    """Fetch failures are the point of the outage scenario: keep their log lines out, and
    give the loggers their levels back after (a test runs the benchmarks in its process)."""
    if LANGFUSE.available():
        import langfuse.logger  # noqa: F401  (it sets its logger's level when imported)
    loggers = [logging.getLogger(name) for name in (
        "asyncpromptcache", "langfuse", "langsmith", "backoff", "httpx", "asyncio", "aiohttp")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


ASYNC_SCENARIOS: dict[str, Callable[[Context], Coroutine[Any, Any, Result]]] = {
    "hit_async": hit_async,
    "hit_instructions": hit_instructions.scenario,
    "stampede": stampede,
    "refresh": refresh_window,
    "outage": outage,
    "web_app": web_app,
    "memory": memory,
}
