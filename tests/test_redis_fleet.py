"""The shared tier with several real processes (benchmarks._fleet) against the local prompt
server in a child process and a private redis-server: fleet-wide single-flight, one refresh
per TTL, last-known-good during an outage, invalidation reaching every process."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from devkit.fleet import Fleet
from devkit.redisserver import RedisServer
from devkit.upstream import Upstream, bench_name, publish

pytestmark = pytest.mark.slow

WORKERS, CALLERS, PROMPTS = 8, 200, 20
NAMES = [bench_name(i) for i in range(PROMPTS)]
TTL = 1.5


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet(WORKERS + 1) as workers:  # the last one joins later
        yield workers


def test_the_fleet_shares_fetches_refreshes_invalidations_and_outages(
    upstream: Upstream, redis_server: RedisServer, fleet: Fleet,
) -> None:
    upstream.normal()
    redis_server.command("FLUSHALL")
    first = range(WORKERS)
    opened = fleet.all({"op": "open", "base_url": upstream.base_url, "redis": redis_server.url,
                        "namespace": "fleet", "ttl": TTL})
    assert [r["shared"] for r in opened] == ["up"] * (WORKERS + 1)

    # Cold: 8 processes x 200 callers x 20 prompts -> one request per prompt.
    replies = fleet.all({"op": "load", "names": NAMES, "callers": CALLERS}, only=first)
    assert [r["errors"] for r in replies] == [0] * WORKERS
    assert upstream.requests() == PROMPTS

    # Past the TTL: stale copies are served while one refresh per prompt runs for the fleet.
    time.sleep(TTL + 0.1)
    replies = fleet.all({"op": "load", "names": NAMES, "callers": CALLERS}, only=first)
    assert [r["errors"] for r in replies] == [0] * WORKERS
    assert [r["shared"] for r in fleet.all({"op": "settle"}, only=first)] == ["up"] * WORKERS
    assert upstream.requests() == 2 * PROMPTS

    # Invalidation in one process reaches every other one.
    version = publish(upstream, NAMES[0], "a new version")
    fleet.one(0, {"op": "invalidate", "name": NAMES[0]})
    seen = fleet.all({"op": "watch", "name": NAMES[0], "version": version, "limit": 5},
                     only=first)
    assert all(r["seen_at"] is not None for r in seen)

    # Langfuse down: a process started now serves every prompt the fleet had cached.
    upstream.control(fail_status=503)
    try:
        late = range(WORKERS, WORKERS + 1)
        reply, = fleet.all({"op": "load", "names": NAMES, "callers": CALLERS}, only=late)
        assert reply["errors"] == 0, reply["first_errors"]
        assert len(reply["versions"]) == PROMPTS
        assert reply["versions"][NAMES[0]] == version
    finally:
        upstream.control(fail_status=None)
        fleet.all({"op": "close"})
