"""The shared tier on a real Redis Cluster (three masters) and behind a real Sentinel, each
started here on free loopback ports, with the user's own ``redis.asyncio`` client passed as
``RedisTier(client)``: every command must touch one slot (no CROSSSLOT), pub/sub must reach
every client, and the fetch lock must work where the keys live on different nodes."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot

from asyncpromptcache import (
    AsyncPromptClient,
    ConfigurationError,
    PromptKey,
    RedisTier,
    TextPrompt,
)
from asyncpromptcache._prompts.shared_format import Names, namespace_id
from asyncpromptcache.testing import FakeClock, StaticSource

from .helpers import HOST, gather, text, until as wait_until
from .redistopologies import SLOTS, RedisClusterServers, RedisSentinelServers

pytestmark = pytest.mark.anyio

NAMESPACE = "topology"
NAMES_ = Names(namespace_id(NAMESPACE, HOST, None))


def node_of(name: str) -> int:
    """Which of the three masters holds the group of ``name`` (they hold equal thirds of
    the slots, in order)."""
    return min(2, key_slot(NAMES_.index(name).encode()) // (SLOTS // 3))


def spread_names(per_node: int = 3, prefix: str = "p") -> list[str]:
    """Prompt names whose groups hash to slots of each master, ``per_node`` names each."""
    found: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for i in itertools.count():
        name = f"{prefix}{i}"
        owner = found[node_of(name)]
        if len(owner) < per_node:
            owner.append(name)
        if all(len(names) == per_node for names in found.values()):
            return [name for names in found.values() for name in names]
    raise AssertionError("unreachable")


NAMES = spread_names()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers() as servers:
        yield servers


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinelServers]:
    with RedisSentinelServers() as servers:
        yield servers


class Fleet:
    """Clients standing for the processes of a fleet, each with its own redis client."""

    def __init__(self, make_redis: Callable[[], Any], source: StaticSource) -> None:
        self.make_redis, self.source, self.clock = make_redis, source, FakeClock()
        self.redis: list[Any] = []
        self.stack = AsyncExitStack()

    async def client(self, ttl: float = 60.0) -> AsyncPromptClient:
        redis = self.make_redis()  # the user's client: the tier never closes it
        self.redis.append(redis)
        self.stack.push_async_callback(redis.aclose)
        tier = RedisTier(redis, namespace=NAMESPACE, wall_clock=self.clock)
        client = AsyncPromptClient(source=self.source, cache_ttl_seconds=ttl,
                                   clock=self.clock, shared=tier)
        return await self.stack.enter_async_context(client)


@asynccontextmanager
async def fleet(make_redis: Callable[[], Any], *prompts: TextPrompt) -> AsyncIterator[Fleet]:
    made = Fleet(make_redis, StaticSource(prompts))
    async with made.stack:
        yield made


async def close_all(watchers: list[Sentinel]) -> None:
    for watcher in watchers:
        for connection in watcher.sentinels:
            await connection.aclose()


def no_redis_errors(*clients: AsyncPromptClient) -> list[int]:
    return [c.stats().shared.redis_errors for c in clients]  # type: ignore[union-attr]


async def test_the_tier_on_a_redis_cluster(cluster: RedisClusterServers) -> None:
    cluster.flush()

    def cluster_client() -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports])

    async with fleet(cluster_client, *(text(n) for n in NAMES)) as f:
        a, b = await f.client(ttl=10), await f.client(ttl=10)
        assert [a.stats().shared.state, b.stats().shared.state] == ["up", "up"]  # type: ignore[union-attr]

        # A cold fetch by a, then b served from L2 without an upstream request.
        for name in NAMES:
            assert (await a.get_prompt(name)).version == 1
        assert f.source.total_fetches == len(NAMES)
        for name in NAMES:
            assert (await b.get_prompt(name)).version == 1
        assert f.source.total_fetches == len(NAMES)
        assert b.stats().shared.l2_hits == len(NAMES)  # type: ignore[union-attr]
        # The prompts' groups live on every master: a value and an index per name, and no
        # lock left behind (each fetch's compare-and-delete ran on its own group's node).
        per_node = cluster.keys_per_node()
        assert sum(per_node) == 2 * len(NAMES) and all(per_node), per_node
        names, probe = NAMES_, f.redis[0]
        for name in NAMES:
            key = PromptKey(name, "production", None)
            assert await probe.exists(names.value(key)) == 1
            assert await probe.exists(names.lock(key)) == 0

        # The lock: both clients' cold callers of a new prompt make one upstream fetch.
        f.source.add(text("new"))
        f.source.hold()
        async with anyio.create_task_group() as tg:
            for client in (a, b):
                tg.start_soon(gather, client, ["new"], 20)
            await wait_until(lambda: f.source.waiting == 1)
            lock = NAMES_.lock(PromptKey("new", "production", None))
            assert await probe.pttl(lock) > 0  # SET NX PX: held, and expiring
            await wait_until(lambda: sum(
                c.stats().shared.waits for c in (a, b)  # type: ignore[union-attr,misc]
            ) >= 1)
            f.source.release()
        assert f.source.fetches[PromptKey("new", "production", None)] == 1

        # invalidate() on a reaches b's L1 (pub/sub) and drops L2 (the group's keys).
        f.source.add(text("p0", 2))
        assert a.invalidate("p0") == 1
        await wait_until(lambda: b.stats().shared.changes_received == 1)  # type: ignore[union-attr]
        assert (await b.get_prompt("p0")).version == 2
        assert (await a.get_prompt("p0")).version == 2
        before = f.source.total_fetches
        # clear() on b bumps the generation key (one more slot) and reaches a.
        b.clear()
        # The message is counted as it arrives and applied just after: wait for both.
        await wait_until(lambda: a.stats().shared.changes_received == 1  # type: ignore[union-attr]
                         and len(a.cache) == 0)
        assert len(a.cache) == 0
        assert (await a.get_prompt("p1")).version == 1
        assert f.source.total_fetches == before + 1

        assert await probe.exists(lock) == 0  # released by its holder's compare-and-delete
        assert no_redis_errors(a, b) == [0, 0]  # nothing failed, on the client side either
        # No CROSSSLOT, MOVED, ASK... reply on any node; plain ERRs are redis-py's greeting
        # (CLIENT SETINFO, which Redis 6.2 does not know), NOSCRIPT the first EVALSHA of each
        # script on a node (then sent in full once), and no command of the tier's
        # failed (their errors would be counted in redis_errors above).
        assert cluster.error_kinds() <= {"ERR", "NOSCRIPT"}  # NOSCRIPT: a script's first EVALSHA


async def test_a_part_and_the_prompt_composed_of_it_on_different_nodes(
    cluster: RedisClusterServers,
) -> None:
    cluster.flush()
    parent, part, _ = spread_names(1, prefix="composed")  # on the first and second master
    graph = {"root": {"name": parent, "version": 1},
             "dependencies": {parent: [{"name": part, "version": 1}]}}
    composed = TextPrompt(name=parent, version=1, prompt="Intro. the part",
                          labels=["production"], resolution_graph=graph)

    def cluster_client() -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports])

    async with fleet(cluster_client, composed) as f:
        a, b = await f.client(), await f.client()
        await a.get_prompt(parent)
        probe = f.redis[0]
        # The value on its own master, the part's record of it on the part's master.
        assert await probe.exists(NAMES_.dependents(part)) == 1
        assert [node_of(parent), node_of(part)] == [0, 1]

        a.invalidate(part)  # drops the composed value too, across the two masters
        await wait_until(lambda: b.stats().shared.changes_received == 1)  # type: ignore[union-attr]
        assert await probe.exists(NAMES_.value(PromptKey(parent, "production", None))) == 0
        assert await probe.exists(NAMES_.dependents(part)) == 0
        await b.get_prompt(parent)
        assert f.source.total_fetches == 2  # not served from Redis
        assert no_redis_errors(a, b) == [0, 0]
        assert cluster.error_kinds() <= {"ERR", "NOSCRIPT"}  # NOSCRIPT: a script's first EVALSHA


async def test_the_tier_behind_a_sentinel(sentinel: RedisSentinelServers) -> None:
    watchers: list[Sentinel] = []

    def sentinel_client() -> Any:
        watchers.append(Sentinel([("127.0.0.1", sentinel.sentinel_port)]))  # type: ignore[no-untyped-call,unused-ignore]
        return watchers[-1].master_for("mymaster")

    async with AsyncExitStack() as closing, fleet(sentinel_client, text("a"), text("b")) as f:
        # The Sentinel's own connections outlive the master's client: closed last.
        closing.push_async_callback(lambda: close_all(watchers))
        a, b = await f.client(), await f.client()
        assert (await a.get_prompt("a")).version == 1
        assert (await b.get_prompt("a")).version == 1
        assert f.source.total_fetches == 1
        assert b.stats().shared.l2_hits == 1  # type: ignore[union-attr]

        f.source.add(text("a", 2))
        a.invalidate("a")
        await wait_until(lambda: b.stats().shared.changes_received == 1)  # type: ignore[union-attr]
        assert (await b.get_prompt("a")).version == 2
        assert (await a.get_prompt("a")).version == 2
        assert f.source.total_fetches == 2
        assert no_redis_errors(a, b) == [0, 0]


def test_an_asyncio_cluster_client_without_pubsub_is_named_in_the_error() -> None:
    class RedisCluster:  # what redis-py before 8.0 offers: no pubsub() on asyncio's cluster
        pass

    with pytest.raises(ConfigurationError, match=r"RedisCluster without pubsub.*redis-py 8"):
        RedisTier(RedisCluster())
