"""The shared tier against a real redis-server (started here on a free port), with several
clients in one process standing for the processes of a fleet: each has its own connections,
subscription and identity. The multi-process runs are in test_redis_fleet.py."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    ConfigurationError,
    FunctionSource,
    PromptClient,
    PromptKey,
    RedisTier,
    ServerError,
    TextPrompt,
)
from asyncpromptcache._prompts.shared_format import Names, encode_value, namespace_id
from asyncpromptcache.testing import FakeClock, StaticSource
from devkit.redisserver import RedisServer, free_port

from .helpers import HOST, fleet, gather, read_until_eof, text, until as wait_until

pytestmark = pytest.mark.anyio


async def wait_for_version(client: AsyncPromptClient, name: str, version: int,
                           limit: float = 5.0) -> None:
    """Ask ``client`` for ``name`` until it serves ``version`` (a generous safety bound)."""
    with anyio.fail_after(limit):
        for _ in itertools.count():
            if (await client.get_prompt(name)).version == version:
                return
            await anyio.sleep(0.02)


def _state(client: AsyncPromptClient) -> str | None:
    shared = client.stats().shared
    return None if shared is None else shared.state


async def test_one_fetch_for_the_fleet_and_l1_gets_the_remaining_freshness(
    redis_url: str,
) -> None:
    async with fleet(redis_url, text("a"), text("b")) as f:
        clients = [await f.client(ttl=10) for _ in range(4)]
        # Each link subscribes in the background (a client starts L1-only when Redis is slow
        # to answer): the fleet is one cache once every link is up.
        await wait_until(lambda: all(_state(c) == "up" for c in clients))
        f.source.hold()  # every client's callers arrive while the first fetch runs
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(gather, client, ["a", "b"], 50)
            await wait_until(lambda: f.source.waiting == 2)
            await anyio.sleep(0.05)  # the others are waiting on the lock by now
            f.source.release()
        assert f.source.total_fetches == 2
        shared = [c.stats().shared for c in clients]
        assert all(s is not None and s.state == "up" for s in shared)
        assert sum(s.upstream_fetches for s in shared if s) == 2

        f.clock.advance(4)
        late = await f.client(ttl=10)
        assert (await late.get_prompt("a")).prompt == "a v1"
        assert f.source.total_fetches == 2
        (entry,) = [k for k in late.stats().keys if k.key.name == "a"]
        assert entry.age_seconds == pytest.approx(4)  # fresh for 6 s more, not 10
        f.clock.advance(6.5)
        assert late.stats().keys[0].fresh is False


async def test_a_stale_key_is_refreshed_once_for_the_fleet(redis_url: str) -> None:
    async with fleet(redis_url, text("a")) as f:
        clients = [await f.client(ttl=10) for _ in range(5)]
        for client in clients:
            await client.get_prompt("a")
        assert f.source.total_fetches == 1
        f.source.add(text("a", 2))
        f.clock.advance(11)
        for client in clients:  # each serves its stale copy at once and asks for a refresh
            assert (await client.get_prompt("a")).version == 1
        await wait_until(lambda: all(c.cache.in_flight == 0 for c in clients))
        assert f.source.total_fetches == 2
        for client in clients:
            assert (await client.get_prompt("a")).version == 2


async def test_a_stale_shared_copy_is_served_at_once_and_refreshed(redis_url: str) -> None:
    async with fleet(redis_url, text("a")) as f:
        first = await f.client(ttl=10)
        await first.get_prompt("a")
        f.source.add(text("a", 2))
        f.clock.advance(30)
        newcomer = await f.client(ttl=10)
        assert (await newcomer.get_prompt("a")).version == 1  # at once, not after a fetch
        # Its refresh started by itself: no second call was needed to notice the staleness.
        await wait_until(lambda: newcomer.cache.in_flight == 0)
        assert [k.version for k in newcomer.stats().keys] == [2]
        assert f.source.total_fetches == 2


async def test_a_process_started_during_an_outage_serves_last_known_good(
    redis_url: str,
) -> None:
    async with fleet(redis_url, text("a"), text("b")) as f:
        first = await f.client(ttl=10)
        await first.prefetch(["a", "b"])
        f.source.fail_with = ServerError("503", status=503, name=None)
        f.clock.advance(3600)  # long past the TTL: only a stale copy is left
        newcomer = await f.client(ttl=10)
        assert [(await newcomer.get_prompt(n)).prompt for n in ("a", "b")] == ["a v1", "b v1"]
        # Its refreshes fail; it goes on serving the stale copies without an error.
        assert (await newcomer.get_prompt("a")).prompt == "a v1"
        await wait_until(lambda: newcomer.cache.in_flight == 0)
        assert (await newcomer.get_prompt("a")).prompt == "a v1"
        stats = newcomer.stats()
        assert stats.shared is not None and stats.shared.l2_stale_served == 2


async def test_invalidate_and_clear_reach_every_client_exactly(redis_url: str) -> None:
    async with fleet(redis_url, text("greet"), text("greeting")) as f:
        a, b = await f.client(), await f.client()
        for client in (a, b):
            await client.get_prompt("greet")
            await client.get_prompt("greeting")
        assert f.source.total_fetches == 2
        f.source.add(text("greet", 2))
        assert a.invalidate("greet") == 1
        await wait_until(lambda: len(b.cache) == 1)  # "greeting" stays: never by prefix
        assert (await b.get_prompt("greet")).version == 2  # L2 was dropped too
        assert (await a.get_prompt("greet")).version == 2
        assert f.source.total_fetches == 3  # one fetch of the new version for both

        b.invalidate("greeting", label="production")
        await wait_until(lambda: len(a.cache) == 1)
        b.clear()
        await wait_until(lambda: len(a.cache) == 0)
        c = await f.client()
        await c.get_prompt("greet")  # clear() dropped L2 as well: no L2 hit of version 2
        assert f.source.total_fetches == 4
        shared = a.stats().shared
        assert shared is not None and shared.changes_received == 2


async def test_a_fetch_overtaken_by_an_invalidation_is_not_written_to_l2(
    redis_url: str,
) -> None:
    gate, fetched = anyio.Event(), anyio.Event()
    calls: list[PromptKey] = []

    async def slow_old_version(key: PromptKey) -> TextPrompt:
        calls.append(key)
        if len(calls) == 1:  # the first fetch reads version 1, then is slow to answer
            fetched.set()
            await gate.wait()
            return text("a", 1)
        return text("a", 2)

    async with AsyncExitStack() as stack:
        clock = FakeClock()

        async def client() -> AsyncPromptClient:
            return await stack.enter_async_context(AsyncPromptClient(
                source=FunctionSource(slow_old_version), clock=clock,
                shared=RedisTier(redis_url, namespace="race", wall_clock=clock)))

        a, b = await client(), await client()
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.get_prompt, "a")
            await fetched.wait()
            a.invalidate("a")  # version 2 is published while b's fetch of version 1 runs
            await wait_until(lambda: a.stats().shared.changes_sent == 1  # type: ignore[union-attr]
                             and b.stats().shared.changes_received == 1)  # type: ignore[union-attr]
            gate.set()
        c = await client()
        assert (await c.get_prompt("a")).version == 2  # not b's late version 1 from L2
        assert len(calls) == 2


async def test_corrupt_foreign_and_unsigned_values_are_never_served(
    redis_url: str, redis_server: RedisServer,
) -> None:
    names = Names(namespace_id("test", HOST, None))
    key = PromptKey("a", "production", None)
    evil = text("a", 666, "evil")
    bad_values = [
        b"garbage",
        encode_value(key, evil, 1000.0, None)[:-5],  # truncated
        encode_value(PromptKey("b", "production", None), text("b"), 1000.0, None),  # foreign
        b'apc1.-.{"key":["a","production",null],"fetched_at":1000.0,"prompt":{"name":"a"}}',
    ]
    async with fleet(redis_url, text("a")) as f:
        for raw in bad_values:
            await set_raw(redis_server, names.value(key), raw)
            client = await f.client()
            assert (await client.get_prompt("a")).prompt == "a v1"
            stats = client.stats().shared
            # Rejected when read, and again when re-read under the lock; then overwritten.
            assert stats is not None and stats.rejected_values == 2
        fetches = f.source.total_fetches
        assert fetches == len(bad_values)

        # Signed: an unsigned or wrongly signed value is ignored, a rightly signed one served.
        for raw in (encode_value(key, evil, f.clock(), None),
                    encode_value(key, evil, f.clock(), b"not the key")):
            await set_raw(redis_server, names.value(key), raw)
            signed = await f.client(signing_key="the key")
            assert (await signed.get_prompt("a")).prompt == "a v1"
        await set_raw(redis_server, names.value(key),
                      encode_value(key, text("a", 7), f.clock(), b"the key"))
        signed = await f.client(signing_key="the key")
        assert (await signed.get_prompt("a")).version == 7
        assert f.source.total_fetches == fetches + 2


async def set_raw(server: RedisServer, key: str, raw: bytes) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(server.url)
    try:
        await client.set(key, raw)
    finally:
        await client.aclose()


async def test_two_namespaces_side_by_side(redis_url: str) -> None:
    async with fleet(redis_url, text("a")) as f:
        one, two = await f.client(namespace="one"), await f.client(namespace="two")
        await one.get_prompt("a")
        await two.get_prompt("a")
        assert f.source.total_fetches == 2
        one_more = await f.client(namespace="one")
        await one_more.get_prompt("a")
        assert f.source.total_fetches == 2
        one.invalidate("a")
        await wait_until(lambda: len(one_more.cache) == 0)
        await anyio.sleep(0.05)
        assert len(two.cache) == 1


async def test_the_secret_key_never_reaches_redis(redis_url: str) -> None:
    from redis.asyncio import Redis

    source = StaticSource([text("a")])
    async with AsyncPromptClient(public_key="pk-lf-visible", secret_key="sk-lf-SECRET",
                                 source=source, shared=redis_url) as client:
        await client.get_prompt("a")
        client.invalidate("b")
        await wait_until(lambda: client.stats().shared.changes_sent == 1)  # type: ignore[union-attr]
    redis = Redis.from_url(redis_url)
    try:
        keys = await redis.keys("*")
        values = [await redis.get(k) for k in keys if await redis.type(k) == b"string"]
    finally:
        await redis.aclose()
    assert keys and not [b for b in [*keys, *values] if b and b"SECRET" in b]
    assert not [b for b in [*keys, *values] if b and b"pk-lf-visible" in b]  # hashed


async def test_fresh_hits_send_no_command_to_redis(
    redis_url: str, redis_server: RedisServer,
) -> None:
    async with fleet(redis_url, text("a"), text("b")) as f:
        client = await f.client()
        await client.prefetch(["a", "b"])
        before = redis_server.command_counts()
        for _ in range(1000):
            await client.get_prompt("a")
            await client.get_prompt("b")
        assert redis_server.command_counts() == before
        assert client.stats().hits == 2000


async def test_redis_killed_and_restarted_mid_run() -> None:
    server = RedisServer().start()
    try:
        async with fleet(server.url, *[text(f"p{i}") for i in range(6)]) as f:
            a, b = await f.client(), await f.client()
            assert not [r for r in await gather(a, ["p0", "p1"], 40) if isinstance(r, Exception)]
            server.kill()
            # Hits, misses and a stale refresh while Redis is gone: no caller error.
            for client in (a, b):
                results = await gather(client, ["p0", "p1", "p2", "p3"], 40)
                assert not [r for r in results if isinstance(r, Exception)]
            f.clock.advance(120)
            assert not [r for r in await gather(a, ["p0"], 10) if isinstance(r, Exception)]
            stats = a.stats().shared
            assert stats is not None and stats.state == "down" and stats.outages == 1
            server.start()  # the same port, empty: the fleet re-fills it
            await wait_until(lambda: a.stats().shared.state == "up"  # type: ignore[union-attr]
                             and b.stats().shared.state == "up", limit=15)  # type: ignore[union-attr]
            fetches = f.source.total_fetches
            await a.get_prompt("p4")
            await b.get_prompt("p4")
            assert f.source.total_fetches == fetches + 1  # shared again, without a restart
            # L1 was unconfirmed while unsubscribed: entries were marked stale to revalidate.
            assert not [k for k in b.stats().keys if k.key.name == "p2" and k.fresh]
    finally:
        server.kill()


@pytest.mark.parametrize("pause_ms", [3000, 600], ids=["outage", "short-stall"])
async def test_changes_made_while_redis_is_down_are_sent_when_it_is_back(pause_ms: int) -> None:
    # Sent as soon as Redis answers again, whether or not the breaker opened or the
    # subscription dropped; the invalidating process never serves the old version meanwhile.
    server = RedisServer().start()
    try:
        async with fleet(server.url, text("a")) as f:
            a, b = await f.client(redis_timeout=0.25), await f.client(redis_timeout=0.25)
            await a.get_prompt("a")
            await b.get_prompt("a")
            if pause_ms > 1000:
                server.command("CLIENT", "KILL", "TYPE", "pubsub")  # a's and b's subscriptions
            server.command("CLIENT", "PAUSE", str(pause_ms), "ALL")  # nothing answers
            f.source.add(text("a", 2))
            a.invalidate("a")  # its commands time out: queued
            if pause_ms > 1000:
                await wait_until(lambda: a.stats().shared.state == "down", limit=10)  # type: ignore[union-attr]
            assert (await a.get_prompt("a")).version == 2  # the change is applied here at once
            await wait_until(lambda: a.stats().shared.changes_sent == 1, limit=15)  # type: ignore[union-attr]
            # b's copy is dropped by the message, or marked stale when its subscription
            # (cut during the pause) comes back: either way b gets the new version.
            await wait_for_version(b, "a", 2)
    finally:
        server.kill()


async def test_a_full_redis_is_not_an_error(
    redis_url: str, redis_server: RedisServer,
) -> None:
    async with fleet(redis_url, text("a"), text("b")) as f:
        client = await f.client()
        redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis_server.command("CONFIG", "SET", "maxmemory", "1")  # every write: OOM
        try:
            assert (await client.get_prompt("a")).prompt == "a v1"
            stats = client.stats().shared
            assert stats is not None and stats.redis_errors >= 1
        finally:
            redis_server.command("CONFIG", "SET", "maxmemory", "0")
        await wait_until(lambda: client.stats().shared.state == "up")  # type: ignore[union-attr]
        other = await f.client()
        await client.get_prompt("b")
        await other.get_prompt("b")
        assert f.source.total_fetches == 2  # "b" shared again once writes succeed


async def test_your_own_redis_client_is_used_and_left_open(redis_url: str) -> None:
    from redis.asyncio import Redis

    mine = Redis.from_url(redis_url)
    try:
        async with fleet(redis_url, text("a")) as f:
            source = f.source
            for _ in range(2):
                async with AsyncPromptClient(source=source, shared=RedisTier(mine)) as client:
                    assert (await client.get_prompt("a")).prompt == "a v1"
            assert source.total_fetches == 1
            assert await mine.ping()  # not closed by the tier
    finally:
        await mine.aclose()


async def test_redis_absent_from_the_start_is_not_an_error() -> None:
    async with fleet(f"redis://127.0.0.1:{free_port()}/0", text("a")) as f:
        client = await f.client()
        assert (await client.get_prompt("a")).prompt == "a v1"
        stats = client.stats().shared
        assert stats is not None and stats.state == "down"


def test_configuration() -> None:
    with pytest.raises(ConfigurationError, match="redis://"):
        RedisTier("http://localhost")
    with pytest.raises(ConfigurationError, match="namespace"):
        RedisTier("redis://localhost", namespace="")
    tier = RedisTier("redis://user:hunter2@localhost:1/0", signing_key="s3cret")
    assert "hunter2" not in repr(tier) and "s3cret" not in repr(tier)
    env = {"ASYNCPROMPTCACHE_REDIS_URL": "redis://127.0.0.1:1/0"}
    client = AsyncPromptClient(source=StaticSource(), env=env)
    assert client._tier is not None
    assert AsyncPromptClient(source=StaticSource(), env={})._tier is None


def test_without_redis_installed() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import asyncpromptcache as apc\n"
        "apc.AsyncPromptClient(source=apc.FunctionSource(None))\n"
        "try:\n"
        "    apc.AsyncPromptClient(source=apc.FunctionSource(None), shared='redis://x')\n"
        "except apc.ConfigurationError as exc:\n"
        "    print('ConfigurationError:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install 'asyncpromptcache[redis]'" in out


def in_forked_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()`` run in a forked child; its JSON report, read over a pipe."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns about forking a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid != 0:
        os.close(write_end)
        data = read_until_eof(read_end, pid)
        os.waitpid(pid, 0)
        report: dict[str, Any] = json.loads(data)
        return report
    status = 1  # the child never returns into pytest
    try:
        os.close(read_end)
        os.write(write_end, json.dumps(work()).encode())
        status = 0
    finally:
        os._exit(status)


def test_a_forked_sync_client_uses_its_own_connections(redis_url: str) -> None:
    source = StaticSource([text("a"), text("b")])
    with PromptClient(source=source, shared=redis_url) as client:
        assert client.get_prompt("a").prompt == "a v1"

        def child() -> dict[str, Any]:
            # The source object was copied: its counts are the child's own from here.
            before = source.total_fetches
            b = client.get_prompt("b").prompt
            stats = client.stats().shared
            client.close()
            return {"b": b, "fetches": source.total_fetches - before,
                    "state": stats and stats.state, "upstream": stats and stats.upstream_fetches}

        assert in_forked_child(child) == {"b": "b v1", "fetches": 1, "state": "up",
                                          "upstream": 1}
        # The child wrote "b" to L2 over its own connection: the parent reads it from there.
        assert client.get_prompt("b").prompt == "b v1"
        assert source.total_fetches == 1
        stats = client.stats().shared
        assert stats is not None and stats.l2_hits == 1


def test_sync_facade_shares_the_tier(redis_url: str) -> None:
    source = StaticSource([text("a")])
    with PromptClient(source=source, shared=RedisTier(redis_url, namespace="sync")) as one, \
            PromptClient(source=source, shared=redis_url) as other, \
            PromptClient(source=source, shared=RedisTier(redis_url, namespace="sync")) as two:
        assert one.get_prompt("a").prompt == "a v1"
        assert two.get_prompt("a").prompt == "a v1"
        assert other.get_prompt("a").prompt == "a v1"  # another namespace: its own fetch
        assert source.total_fetches == 2
        stats = two.stats().shared
        assert stats is not None and stats.l2_hits == 1
