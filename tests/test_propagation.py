"""A change reaches every process of a fleet through the shared tier: a label moved on the
local server (its signed webhook delivered to one worker's aiohttp app), ``create_prompt`` in
one process, ``invalidate()`` of a part of a composed prompt, and a forged webhook, with 8
real worker processes (benchmarks._fleet), a private redis-server and the local server in a
child process that sends its webhooks to worker 0. Counts and states only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from asyncpromptcache._prompts.signatures import SIGNATURE_HEADER, sign
from devkit.fleet import Fleet, applied
from devkit.redisserver import RedisServer
from devkit.upstream import Upstream, bench_name, create, move_label

pytestmark = pytest.mark.slow

WORKERS = 8
SECRET = "whsec-propagation"
ALL = range(WORKERS)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet(WORKERS) as workers:
        yield workers


@pytest.fixture(scope="module")
def receiver(fleet: Fleet) -> str:
    """The URL of worker 0's webhook receiver (a real aiohttp app in that process)."""
    return str(fleet.one(0, {"op": "listen"})["url"])


@pytest.fixture(scope="module")
def upstream(receiver: str) -> Iterator[Upstream]:
    with Upstream(webhook_url=receiver, webhook_secret=SECRET) as running:
        yield running


@pytest.fixture
def opened(fleet: Fleet, redis_server: RedisServer, upstream: Upstream) -> Iterator[Fleet]:
    """Every worker with a client on the shared tier (fresh namespace), receiver applying."""
    upstream.normal()
    redis_server.command("FLUSHALL")
    replies = fleet.all({"op": "open", "base_url": upstream.base_url, "redis": redis_server.url,
                         "namespace": f"propagation-{time.time()}", "ttl": 600.0,
                         "webhook_secret": SECRET})
    assert [r["shared"] for r in replies] == ["up"] * WORKERS
    fleet.one(0, {"op": "pause", "paused": False})
    try:
        yield fleet
    finally:
        fleet.one(0, {"op": "pause", "paused": False})
        fleet.all({"op": "close"})


def _warm(fleet: Fleet, upstream: Upstream, names: list[str]) -> None:
    """Every worker holds ``names`` (one upstream request each for the fleet)."""
    fleet.all({"op": "load", "names": names, "callers": 4})
    fleet.all({"op": "settle"})
    assert upstream.requests() == len(names)
    upstream.reset()


def _applied(fleet: Fleet, count: int, status: str = "200") -> None:
    """Wait until worker 0's receiver has applied ``count`` webhooks (at most 10 s), or
    with ``status="202"`` taken them while paused: none is left to arrive in a later test."""
    assert applied(fleet, count, status=status) >= count


def test_a_label_moved_on_the_server_is_served_by_every_worker_without_a_fetch(
    opened: Fleet, upstream: Upstream,
) -> None:
    name = bench_name(10)
    # A version without the label first; its "created" webhook moves only ``latest``.
    _warm(opened, upstream, [name])
    before = opened.one(0, {"op": "webhooks"})["received"].get("200", 0)
    version = create(upstream, name, "the version the label moves to", [])
    _applied(opened, before + 2)  # "updated" for version 1 (latest moved off), "created"
    assert [r["version"] for r in opened.all({"op": "text", "name": name})] == [1] * WORKERS

    move_label(upstream, name, version, "production")  # webhooks: old version, then the new
    seen = opened.all({"op": "watch", "name": name, "version": version, "limit": 10})
    assert all(r["seen_at"] is not None for r in seen)
    _applied(opened, before + 4)
    opened.all({"op": "settle"})
    # Served by all 8 from what the webhook wrote through: no GET for the new version.
    assert upstream.requests() == 0
    assert [r["version"] for r in opened.all({"op": "text", "name": name})] == [version] * WORKERS
    assert upstream.requests() == 0


def test_create_prompt_in_one_process_is_served_by_the_others_without_a_fetch(
    opened: Fleet, upstream: Upstream,
) -> None:
    name = bench_name(11)
    _warm(opened, upstream, [name])
    opened.one(0, {"op": "pause", "paused": True})  # only the write itself propagates
    taken = opened.one(0, {"op": "webhooks"})["received"].get("202", 0)
    version = opened.one(3, {"op": "create", "name": name, "prompt": "written by worker 3",
                             "labels": ["production"]})["version"]
    seen = opened.all({"op": "watch", "name": name, "version": version, "limit": 10})
    assert all(r["seen_at"] is not None for r in seen)
    texts = opened.all({"op": "text", "name": name})
    assert [r["text"] for r in texts] == ["written by worker 3"] * WORKERS
    assert upstream.requests() == 0
    _applied(opened, taken + 2, status="202")  # the server's: "updated" v1, "created" v2


def test_invalidating_a_part_re_resolves_the_including_prompt_in_another_process(
    opened: Fleet, upstream: Upstream,
) -> None:
    stamp = time.time_ns()
    part, parent = f"prop-part-{stamp}", f"prop-parent-{stamp}"
    opened.one(0, {"op": "pause", "paused": True})  # the server's webhooks are not applied
    taken = opened.one(0, {"op": "webhooks"})["received"].get("202", 0)
    create(upstream, part, "old part", ["production"])
    create(upstream, parent, f"Intro. @@@langfusePrompt:name={part}|label=production@@@",
           ["production"])
    upstream.reset()
    texts = opened.all({"op": "text", "name": parent})
    assert [r["text"] for r in texts] == ["Intro. old part"] * WORKERS
    opened.all({"op": "settle"})
    assert upstream.requests() == 1  # one fetch for the fleet

    create(upstream, part, "new part", ["production"])  # Langfuse changed; no cache knows
    assert opened.one(2, {"op": "text", "name": parent})["text"] == "Intro. old part"
    opened.one(1, {"op": "invalidate", "name": part})
    opened.all({"op": "settle"}, only=range(1, 2))
    # Every other process's next get_prompt of the parent is the newly resolved text.
    for i in ALL:
        if i == 1:
            continue
        for _ in range(500):  # until the invalidation has reached worker i (at most 5 s)
            if opened.one(i, {"op": "text", "name": parent})["text"] != "Intro. old part":
                break
            time.sleep(0.01)
        assert opened.one(i, {"op": "text", "name": parent})["text"] == "Intro. new part"
    assert opened.one(1, {"op": "text", "name": parent})["text"] == "Intro. new part"
    _applied(opened, taken + 4, status="202")  # created x3, and "updated" for the old part


def test_a_forged_webhook_changes_nothing_anywhere(
    opened: Fleet, upstream: Upstream, receiver: str, redis_server: RedisServer,
) -> None:
    name = bench_name(12)
    _warm(opened, upstream, [name])
    keys_before = sorted(redis_server.command("KEYS", "*"))
    body = json.dumps({
        "id": "forged-1", "timestamp": "2026-01-01T00:00:00.000Z", "type": "prompt-version",
        "apiVersion": "v1", "action": "updated",
        "prompt": {"id": "x", "name": name, "version": 99, "projectId": "p", "createdBy": "API",
                   "labels": ["production"], "prompt": "forged", "type": "text", "config": {},
                   "commitMessage": None, "tags": [], "createdAt": "2026-01-01T00:00:00.000Z",
                   "updatedAt": "2026-01-01T00:00:00.000Z"},
    }).encode()
    forgeries = [
        {SIGNATURE_HEADER: sign("not-the-secret", body, int(time.time()))},  # wrong key
        {SIGNATURE_HEADER: sign(SECRET, body, int(time.time()) - 3600)},  # stale
        {},  # unsigned
    ]
    for headers in forgeries:
        request = urllib.request.Request(receiver, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)  # loopback only
        refused.value.close()
        assert refused.value.code == 401
    assert opened.one(0, {"op": "webhooks"})["received"].get("401") == 3
    stats = [r["stats"] for r in opened.all({"op": "stats"})]
    assert [s["changes_sent"] for s in stats] == [0] * WORKERS
    assert [s["changes_received"] for s in stats] == [0] * WORKERS
    texts = opened.all({"op": "text", "name": name})
    assert {r["version"] for r in texts} == {1}
    assert "forged" not in {r["text"] for r in texts}
    assert sorted(redis_server.command("KEYS", "*")) == keys_before
    assert upstream.requests() == 0
