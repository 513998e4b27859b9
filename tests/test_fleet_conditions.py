"""The shared tier under real conditions, with real processes (devkit's fleet of workers, a
private redis-server, the local server in a child process), every tier at the library's
default ``timeout_seconds``: a machine loaded by CPU-bound processes, Redis killed and
restarted, Redis stalled (SIGSTOP) or killed while another process holds a key's lock, and an
invalidation made while Redis is stalled. Times are measured in the workers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.fleet import Fleet
from devkit.load import cpu_burners
from devkit.redisserver import RedisServer
from devkit.upstream import Upstream, bench_name, publish

from .helpers import until_sync

pytestmark = pytest.mark.slow

WORKERS, CALLERS, PROMPTS = 8, 200, 20
NAMES = [bench_name(i) for i in range(PROMPTS)]
HEAL_SECONDS = 5.0  # after a restart, every process shares fetches again within this
FETCH_TIMEOUT = 2.0
# A cold call's budget: one attempt (the workers' max_retries=0) and the grace its source has
# to report its own error.
BUDGET = FETCH_TIMEOUT + 0.25
# One bounded wait of a cold caller: a Redis command on the cold path (a quarter of the
# budget, at least the tier's timeout) and a re-check of the lock it waits on.
ONE_WAIT = max(0.25, BUDGET / 4) + BUDGET / 10
MARGIN = 1.0  # generous: the machine is shared


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet(WORKERS) as workers:
        yield workers


def _open(fleet: Fleet, upstream: Upstream, redis: RedisServer, only: range | None = None,
          **options: Any) -> list[Any]:
    """Every worker (or ``only`` those) opens a prompt client on a fresh namespace, its tier
    at the library's default timeout."""
    return fleet.all({"op": "open", "base_url": upstream.base_url, "redis": redis.url,
                      "redis_timeout": None, "namespace": uuid.uuid4().hex, **options},
                     only=only)


def _states(fleet: Fleet, only: range | None = None) -> list[str]:
    return [r["stats"]["state"] for r in fleet.all({"op": "stats"}, only=only)]


def _healed(fleet: Fleet, restarted: float, only: range | None = None) -> None:
    """Wait until every worker's tier is up again, within ``HEAL_SECONDS`` of ``restarted``."""
    while (states := _states(fleet, only)) != ["up"] * len(states):
        assert time.monotonic() - restarted < HEAL_SECONDS, states
        time.sleep(0.05)


def test_a_loaded_machine_still_makes_one_request_per_prompt(
    upstream: Upstream, redis_server: RedisServer, fleet: Fleet,
) -> None:
    upstream.normal()
    redis_server.command("FLUSHALL")
    try:
        with cpu_burners(2):
            _open(fleet, upstream, redis_server)
            replies = fleet.all({"op": "load", "names": NAMES, "callers": CALLERS})
            settled = fleet.all({"op": "settle"})
        assert [r["errors"] for r in replies] == [0] * WORKERS, replies[0]["first_errors"]
        assert upstream.requests() == PROMPTS
        assert [r["shared"] for r in settled] == ["up"] * WORKERS
    finally:
        fleet.all({"op": "close"})


def test_after_a_restart_the_fleet_shares_each_new_prompts_fetch_again(
    upstream: Upstream, redis_server: RedisServer, fleet: Fleet,
) -> None:
    upstream.normal()
    redis_server.command("FLUSHALL")
    try:
        _open(fleet, upstream, redis_server)
        fleet.all({"op": "load", "names": NAMES[:5], "callers": 20})
        redis_server.kill()
        during = fleet.all({"op": "load", "names": NAMES[5:10], "callers": 20})
        assert [r["errors"] for r in during] == [0] * WORKERS
        redis_server.start()
        restarted = time.monotonic()
        _healed(fleet, restarted)
        for round_ in range(10):
            upstream.reset()
            name = bench_name(40 + round_)
            replies = fleet.all({"op": "load", "names": [name], "callers": 20})
            assert [r["errors"] for r in replies] == [0] * WORKERS
            assert upstream.requests() == 1, f"round {round_}"
    finally:
        fleet.all({"op": "close"})


def test_after_a_restart_the_fleet_shares_each_new_questions_stream_again(
    upstream: Upstream, redis_server: RedisServer, fleet: Fleet,
) -> None:
    four = range(4)
    namespace = uuid.uuid4().hex
    request: dict[str, Any] = {"model": "local-model", "temperature": 0, "max_tokens": 12}

    def ask(only: range = four) -> list[Any]:
        asked = {**request, "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
        return fleet.all({"op": "response_stream", "request": asked}, only=only)

    upstream.chat_controls(token_delay_seconds=0.01)  # the processes meet while it streams
    try:
        fleet.all({"op": "response_open", "base_url": upstream.base_url, "redis": redis_server.url,
                   "redis_timeout": None, "namespace": namespace}, only=four)
        ask()
        redis_server.kill()
        assert [r["failed"] for r in ask()] == [None] * 4
        redis_server.start()
        restarted = time.monotonic()
        _healed(fleet, restarted, four)
        for round_ in range(10):
            before = upstream.chat_streams()
            replies = ask()
            assert [r["failed"] for r in replies] == [None] * 4
            assert all(r["chunks"] == replies[0]["chunks"] for r in replies)
            assert upstream.chat_streams() - before == 1, f"round {round_}"
    finally:
        upstream.chat_controls(token_delay_seconds=0.0)
        fleet.all({"op": "close"}, only=four)


@pytest.mark.parametrize("stall", [0.5, 1.0, 2.0, "killed"])
def test_a_cold_caller_behind_a_lock_held_through_a_stall_gets_its_prompt_in_its_budget(
    upstream: Upstream, redis_server: RedisServer, fleet: Fleet, stall: float | str,
) -> None:
    holder, waiter = 0, 1
    name = bench_name(60)
    upstream.normal()
    redis_server.command("FLUSHALL")
    try:
        _open(fleet, upstream, redis_server, only=range(2), fetch_timeout=FETCH_TIMEOUT)
        upstream.control(delay=1.5)  # the holder's fetch: slow
        fleet.send(holder, {"op": "load", "names": [name], "callers": 1})
        until_sync(lambda: upstream.requests() == 1)  # it holds the key's lock
        upstream.control(delay=0.0)  # any other fetch: at once
        fleet.send(waiter, {"op": "load", "names": [name], "callers": 1})
        time.sleep(0.1)  # the waiter waits on the holder's lock by now
        if stall == "killed":
            redis_server.kill()
            ready_at = time.time()  # the waiter's tier may know at once
        else:
            assert isinstance(stall, float)
            redis_server.freeze()
            time.sleep(stall)
            redis_server.thaw()
            ready_at = time.time()
        held, waited = fleet.receive(holder), fleet.receive(waiter)
    finally:
        if stall == "killed":
            redis_server.start()
        fleet.all({"op": "close"}, only=range(2))
    assert held["errors"] == 0, held["first_errors"]
    assert waited["errors"] == 0, waited["first_errors"]
    assert waited["versions"] == held["versions"]
    assert waited["seconds"] < BUDGET + MARGIN
    # Once the value is in Redis (the holder wrote it, after the stall) or the waiter's tier
    # is known down: at most one bounded wait more.
    ready_at = max(ready_at, held["ended_at"]) if stall != "killed" else ready_at
    assert waited["ended_at"] - ready_at < ONE_WAIT + MARGIN


@pytest.mark.parametrize("stall", [1.0, 4.0])  # 4 s: past the backoff of a probe that times out
def test_an_invalidation_made_during_a_stall_holds_and_reaches_the_fleet_once_redis_answers(
    upstream: Upstream, redis_server: RedisServer, fleet: Fleet, stall: float,
) -> None:
    name = bench_name(70)
    others = range(1, WORKERS)
    upstream.normal()
    redis_server.command("FLUSHALL")
    try:
        _open(fleet, upstream, redis_server, ttl=600.0)
        old = fleet.all({"op": "load", "names": [name], "callers": 5})[0]["versions"][name]
        new = publish(upstream, name, f"published at {time.time()}")
        assert new > old
        redis_server.freeze()
        try:
            fleet.one(0, {"op": "invalidate", "name": name})
            polled = fleet.one(0, {"op": "poll", "name": name, "seconds": stall})
            assert polled == {"versions": [new], "errors": 0}
            for i in others:
                fleet.send(i, {"op": "watch", "name": name, "version": new, "limit": 5.0})
            time.sleep(0.1)  # they serve the old version from their own memory meanwhile
        finally:
            redis_server.thaw()
            answering_at = time.time()
        seen = [fleet.receive(i)["seen_at"] for i in others]
        assert None not in seen
        late = [round(at - answering_at, 3) for at in seen]
        assert max(late) < 1.0, late
        assert fleet.one(0, {"op": "poll", "name": name, "seconds": 0.2})["versions"] == [new]
    finally:
        fleet.all({"op": "close"})
