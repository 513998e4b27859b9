"""The response cache's shared tier against a real redis-server and the
local server's OpenAI-compatible endpoint: answers streamed in one cache are joined by
identical requests of other caches (each with its own Redis connections, as other processes
have) and replayed by them; failures, corrupt values and Redis outages never reach a caller
as a Redis error; invalidations and clears reach every cache of the namespace, and no
other. Answers past the cap stop being shared, ``mode="cache_only"`` follows another
process's stream, and a follower of a Redis that falls silent goes on. The last tests run 4
real processes."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from asyncpromptcache import (
    ConfigurationError,
    NotCachedError,
    RedisTier,
    ResponseCache,
    ResponseFailedError,
    SharedStreamError,
    SharedStreamLostError,
)
from asyncpromptcache._core.sealing import seal
from asyncpromptcache.response import Chunk, ResponseStore
from asyncpromptcache.response._redis import RedisResponses
from asyncpromptcache.response._wire import Dropped, ResponseNames, encode_message
from devkit.redisserver import RedisServer

from .helpers import (
    BOUND,
    CHUNKS,
    REQUEST,
    Upstream,
    until,
    upstream as upstream,  # the local endpoint, a fixture
)

pytestmark = pytest.mark.anyio


class Fleet:
    """``n`` caches sharing one Redis namespace, each with its own connections."""

    def __init__(self, redis: RedisServer, upstream: Upstream | None = None, *,
                 signing_key: str | None = None, namespace: str | None = None) -> None:
        self.namespace = namespace or uuid.uuid4().hex
        self.redis = redis
        self.upstream = upstream
        self.signing_key = signing_key

    def cache(self, **options: Any) -> ResponseCache:
        tier = RedisTier(self.redis.url, namespace=self.namespace,
                         signing_key=self.signing_key, timeout_seconds=0.5)
        shared = RedisResponses(tier, namespace=options.get("namespace", ""),
                                lock_seconds=1.0, block_seconds=0.2)
        return ResponseCache(shared=shared, **options)

    def names(self, tenant: str = "") -> ResponseNames:
        """The Redis names of the caches of ``namespace=tenant``."""
        return ResponseNames.of(self.namespace, tenant)

    def produce(self, request: dict[str, Any] = REQUEST) -> Any:
        upstream = self.upstream
        assert upstream is not None
        return lambda: upstream.llm.stream(request)


class Chunks:
    """A producer of ``count`` chunks of 10 bytes, the same on every call. A call waits
    before the chunk of each index in ``holds`` until the test sets ``gates[index]``;
    ``calls`` counts the calls, and ``on_call`` runs at each."""

    def __init__(self, count: int, *, holds: tuple[int, ...] = (),
                 on_call: Callable[[], None] | None = None) -> None:
        self.count = count
        self.gates = {index: anyio.Event() for index in holds}
        self.calls = 0
        self.on_call = on_call

    @property
    def expected(self) -> list[Chunk]:
        return [f"{i:010d}" for i in range(self.count)]

    async def __call__(self) -> AsyncIterator[Chunk]:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        for i, chunk in enumerate(self.expected):
            gate = self.gates.get(i)
            if gate is not None:
                await gate.wait()
            yield chunk


async def read_into(cache: ResponseCache, produce: Chunks, into: list[Chunk],
                    failures: list[BaseException] | None = None, **options: Any) -> None:
    """Read ``REQUEST``'s answer into ``into``; a ``ResponseFailedError`` into ``failures``
    when given (else it is raised)."""
    try:
        async for chunk in cache.stream(REQUEST, produce, **options):
            into.append(chunk)
    except ResponseFailedError as exc:
        if failures is None:
            raise
        failures.append(exc)


async def read(cache: ResponseCache, fleet: Fleet, into: list[Chunk] | None = None,
               request: dict[str, Any] = REQUEST) -> tuple[list[Chunk], str | None]:
    chunks: list[Chunk] = [] if into is None else into
    stream = cache.stream(request, fleet.produce(request))
    async for chunk in stream:
        chunks.append(chunk)
    return chunks, stream.source


async def subscribed(redis: RedisServer, channel: str, count: int) -> None:
    """Wait until ``count`` connections subscribe to ``channel`` (the caches' subscriptions
    start with them, in the background)."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis.url)
    try:
        with anyio.fail_after(BOUND):
            while (await client.pubsub_numsub(channel))[0][1] != count:  # noqa: ASYNC110 - a count in Redis
                await anyio.sleep(0.005)
    finally:
        await client.aclose()


async def until_not_cached(cache: ResponseCache, fleet: Fleet) -> None:
    """Ask ``cache`` for ``REQUEST`` (``cache_only``: a hit, or ``NotCachedError``; never an
    upstream stream) until it no longer has the answer. Bounded."""
    with anyio.fail_after(BOUND):
        while True:
            try:
                async with cache.stream(REQUEST, fleet.produce(), mode="cache_only"):
                    pass
            except NotCachedError:
                return
            await anyio.sleep(0.002)


async def test_a_stream_in_one_cache_is_joined_by_another_and_replayed_by_a_third(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    expected = await upstream.direct(REQUEST)
    await upstream.control(hold_after_chunks=3)
    fleet = Fleet(redis_server, upstream, signing_key="k")  # stream entries signed, values too
    sources: list[str | None] = []

    async def read_source(cache: ResponseCache, into: list[Chunk]) -> None:
        sources.append((await read(cache, fleet, into))[1])

    async with fleet.cache() as first, fleet.cache() as second, \
            anyio.create_task_group() as tg:
        got_first: list[Chunk] = []
        got_second: list[Chunk] = []
        tg.start_soon(read_source, first, got_first)
        await until(lambda: len(got_first) == 3)  # the first cache holds the key's claim
        tg.start_soon(read_source, second, got_second)
        await until(lambda: len(got_second) == 3)  # followed from the first chunk on
        await upstream.release()
    assert got_first == expected and got_second == expected
    assert sorted(map(str, sources)) == ["join", "miss"]  # the follower of another process
    assert second.stats().joins == 1 and second.stats().misses == 0
    assert first.stats().shared.l2_misses == 1  # type: ignore[union-attr]  # once, not twice
    assert (await upstream.counts())["streams"] == 2  # the direct one and one for both
    assert first.stats().shared.upstream_fetches == 1  # type: ignore[union-attr]
    assert second.stats().shared.waits == 1  # type: ignore[union-attr]
    assert second.stats().shared.upstream_fetches == 0  # type: ignore[union-attr]

    async with fleet.cache() as third:
        replayed, source = await read(third, fleet)
    assert source == "hit" and replayed == expected
    assert [type(c) for c in replayed] == [type(c) for c in expected]
    assert (await upstream.counts())["streams"] == 2


async def test_chunks_keep_their_types_and_boundaries_through_redis(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    chunks: list[Chunk] = ["Hel", "lo", b"\x00\xffraw", {"delta": {"content": "!"}, "n": [1]}]

    async def produce() -> AsyncIterator[Chunk]:
        for chunk in chunks:
            yield chunk

    fleet = Fleet(redis_server, upstream, signing_key="s3cret")
    async with fleet.cache() as first:
        assert [c async for c in first.stream(REQUEST, produce)] == chunks
    async with fleet.cache() as second:
        stream = second.stream(REQUEST, produce)
        assert [c async for c in stream] == chunks
        assert stream.source == "hit"
        assert isinstance(second._store, ResponseStore)
        assert isinstance(second._store.shared, ResponseStore)  # type: ignore[attr-defined]
        assert await second.clear() == 1  # from Redis too
    async with fleet.cache() as third:
        stream = third.stream(REQUEST, produce)
        assert [c async for c in stream] == chunks
        assert stream.source == "miss"


async def test_a_failed_stream_is_never_stored_and_its_followers_get_a_typed_error(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    await upstream.control(hold_after_chunks=2, fail_after_chunks=4)
    fleet = Fleet(redis_server, upstream)
    async with fleet.cache() as first, fleet.cache() as second:
        got_first: list[Chunk] = []
        got_second: list[Chunk] = []
        errors: dict[str, BaseException] = {}

        async def reader(name: str, cache: ResponseCache, into: list[Chunk]) -> None:
            try:
                await read(cache, fleet, into)
            except ResponseFailedError as exc:
                errors[name] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, "first", first, got_first)
            await until(lambda: len(got_first) == 2)
            tg.start_soon(reader, "second", second, got_second)
            await until(lambda: len(got_second) == 2)
            await upstream.release()
        assert len(got_first) == 4 and got_second == got_first
        assert isinstance(errors["second"].__cause__, SharedStreamError)
        assert errors["first"].chunks_received == errors["second"].chunks_received == 4  # type: ignore[attr-defined]
        key = first.key_for(REQUEST)
        assert redis_server.command("EXISTS", ResponseNames.of(fleet.namespace).answer(key)) == ":0"

        await upstream.control(hold_after_chunks=None, fail_after_chunks=None)
        answer, source = await read(second, fleet)  # goes upstream again
    assert source == "miss" and len(answer) == CHUNKS
    assert (await upstream.counts())["streams"] == 2


@pytest.mark.parametrize("same", [True, False])
async def test_a_follower_whose_owner_died_claims_again_and_goes_on(
    redis_server: RedisServer, upstream: Upstream, same: bool,
) -> None:
    expected = await upstream.direct(REQUEST)
    fleet = Fleet(redis_server, upstream)
    # An owner that published two chunks, then died: no end entry, its claim not kept alive.
    dead = RedisResponses(RedisTier(redis_server.url, namespace=fleet.namespace),
                          lock_seconds=0.3)
    async with fleet.cache() as probe:
        key = probe.key_for(REQUEST)
    publisher = await dead.claim(key)
    assert publisher is not None
    first = expected[:2] if same else ["not", "these"]
    for chunk in first:
        await publisher.publish(chunk)
    await dead.aclose()

    async with fleet.cache() as follower:
        got: list[Chunk] = []
        if same:  # taken over: the rest comes from its own upstream stream
            await read(follower, fleet, got)
            assert got == expected
        else:  # the new stream differs from what was sent: a typed error after the chunks
            with pytest.raises(ResponseFailedError) as failed:
                await read(follower, fleet, got)
            assert got == first
            assert isinstance(failed.value.__cause__, SharedStreamLostError)
        stats = follower.stats().shared
        assert stats is not None and stats.takeovers == 1 and stats.upstream_fetches == 1
    assert (await upstream.counts())["streams"] == 2


async def test_an_owner_whose_consumers_all_left_hands_the_answer_over(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    expected = await upstream.direct(REQUEST)
    await upstream.control(hold_after_chunks=3)
    fleet = Fleet(redis_server, upstream)
    async with fleet.cache(on_abandon="cancel") as owner, fleet.cache() as follower, \
            anyio.create_task_group() as tg:
        got: list[Chunk] = []
        leaving = owner.stream(REQUEST, fleet.produce())
        assert [await anext(leaving) for _ in range(3)] == expected[:3]
        tg.start_soon(read, follower, fleet, got)
        await until(lambda: len(got) == 3)
        await upstream.control(hold_after_chunks=None)
        await leaving.aclose()  # the owner's stream is cancelled: the follower takes over
    assert got == expected
    assert owner.stats().abandoned == 1
    stats = follower.stats().shared
    assert stats is not None and stats.upstream_fetches == 1 and stats.waits == 1
    assert (await upstream.counts())["streams"] == 3


async def test_the_environment_variable_sets_the_tier_and_false_turns_it_off(
    redis_server: RedisServer, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNCPROMPTCACHE_REDIS_URL", redis_server.url)
    fleet = Fleet(redis_server, upstream)
    async with ResponseCache() as first:
        await read(first, fleet)
        assert first.stats().shared is not None
    async with ResponseCache() as second:
        _, source = await read(second, fleet)
        assert source == "hit"  # from Redis: another process's answer
    async with ResponseCache(shared=False) as alone:
        _, source = await read(alone, fleet)
        assert source == "miss" and alone.stats().shared is None


async def test_an_answer_stored_between_the_read_and_the_claim_is_not_fetched_again(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    fleet = Fleet(redis_server, upstream)
    async with fleet.cache() as first:
        expected, _ = await read(first, fleet)
    late = fleet.cache()
    shared = late._store.shared  # type: ignore[attr-defined]
    real, reads = shared.fetch, []

    async def fetch_after_the_write(key: str, count: bool = True) -> Any:
        reads.append(key)  # the first read ran just before another process stored it
        return None if len(reads) == 1 else await real(key, count=count)

    shared.fetch = fetch_after_the_write
    async with late:
        answer, source = await read(late, fleet)
        assert source == "miss" and answer == expected and len(reads) == 2
        stats = late.stats().shared
        assert stats is not None and stats.upstream_fetches == 0
    assert (await upstream.counts())["streams"] == 1


async def test_a_corrupt_or_foreign_value_in_redis_is_never_served(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    fleet = Fleet(redis_server, upstream, signing_key="k1")
    async with fleet.cache() as first:
        good, _ = await read(first, fleet)
        key = first.key_for(REQUEST)
    name = ResponseNames.of(fleet.namespace).answer(key)
    value = redis_server.command("GET", name)
    assert value.startswith("$")
    for bad in ("apr1.-.{not json", "garbage",
                'apr1.-.{"key":"' + key + '","chunks":[["s","x"]],"duration":0,'
                '"expires_at":9e99}'):  # unsigned, for a tier with a signing key
        assert redis_server.command("SET", name, bad) == "+OK"
        async with fleet.cache() as other:
            answer, source = await read(other, fleet)
            assert source == "miss" and answer == good  # from the upstream, not from Redis
            # Refused twice: the store's read, and the read again once the key is claimed.
            assert other.stats().shared.rejected_values == 2  # type: ignore[union-attr]
    assert (await upstream.counts())["streams"] == 4


async def test_redis_down_is_never_a_callers_error(
    upstream: Upstream,
) -> None:
    with RedisServer() as private:
        fleet = Fleet(private, upstream)
        expected = await upstream.direct(REQUEST)
        await upstream.control(hold_after_chunks=3)
        async with fleet.cache() as first, fleet.cache() as second, \
                anyio.create_task_group() as tg:
            got_first: list[Chunk] = []
            got_second: list[Chunk] = []
            tg.start_soon(read, first, fleet, got_first)
            await until(lambda: len(got_first) == 3)
            tg.start_soon(read, second, fleet, got_second)
            await until(lambda: len(got_second) == 3)
            await upstream.control(hold_after_chunks=None)  # the stream held stays held
            private.kill()  # mid-stream: the follower goes on from its own upstream
            await until(lambda: second.stats().shared.state == "down")  # type: ignore[union-attr]
            await upstream.release()
        assert got_first == expected and got_second == expected
        assert (await upstream.counts())["streams"] == 3  # direct, first, second's own

        async with fleet.cache() as third:  # Redis still down: a plain local cache
            answer, source = await read(third, fleet)
            assert source == "miss" and answer == expected
            answer, source = await read(third, fleet)
            assert source == "hit" and answer == expected

            private.start()  # back on the same port: tried again after the backoff
            other = {**REQUEST, "seed": 1}
            with anyio.fail_after(10):
                while (await read(third, fleet, request=other))[1] != "miss" or \
                        third.stats().shared.state != "up":  # type: ignore[union-attr]
                    other = {**other, "seed": other["seed"] + 1}
                    await anyio.sleep(0.05)
        async with fleet.cache() as fourth:  # shared again: the last answer is in Redis
            answer, source = await read(fourth, fleet, request=other)
            assert source == "hit" and len(answer) == CHUNKS


# -- invalidate() and clear() across processes ---------------------------------------------


@pytest.mark.parametrize("change", ["invalidate", "clear"])
async def test_a_change_in_one_cache_drops_the_answer_from_the_others_memory(
    redis_server: RedisServer, upstream: Upstream, change: str,
) -> None:
    fleet = Fleet(redis_server, upstream, signing_key="k")
    async with fleet.cache() as first, fleet.cache() as second:
        await subscribed(redis_server, fleet.names().channel, 2)
        _, source = await read(first, fleet)
        assert source == "miss"
        _, source = await read(second, fleet)
        assert source == "hit"  # from Redis, kept in memory
        assert first.stats().entries == second.stats().entries == 1
        assert (await upstream.counts())["streams"] == 1

        if change == "invalidate":
            assert await first.invalidate(REQUEST) is True
        else:
            assert await first.clear() == 1
        await until_not_cached(second, fleet)  # its memory no longer serves the old answer
        assert second.stats().entries == 0
        assert (await upstream.counts())["streams"] == 1
        _, source = await read(second, fleet)
        assert source == "miss"
        assert (await upstream.counts())["streams"] == 2
        # One message per key dropped (an invalidate drops the streamed and the whole
        # answer's keys), none applied by the cache that sent it.
        sent = 2 if change == "invalidate" else 1
        first_shared, second_shared = first.stats().shared, second.stats().shared
        assert first_shared is not None and second_shared is not None
        assert (first_shared.changes_sent, first_shared.changes_received) == (sent, 0)
        assert (second_shared.changes_sent, second_shared.changes_received) == (0, sent)
        assert first.stats().entries == 0


async def test_one_namespaces_clear_leaves_another_namespaces_answers(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    fleet = Fleet(redis_server, upstream)
    async with fleet.cache(namespace="a") as a, fleet.cache(namespace="a") as other_a, \
            fleet.cache(namespace="b") as b:
        await subscribed(redis_server, fleet.names("a").channel, 2)
        await subscribed(redis_server, fleet.names("b").channel, 1)
        for cache, expected in ((a, "miss"), (other_a, "hit"), (b, "miss")):
            _, source = await read(cache, fleet)
            assert source == expected
        assert (await upstream.counts())["streams"] == 2  # a's and b's answers
        in_a = fleet.names("a").answer(a.key_for(REQUEST))
        in_b = fleet.names("b").answer(b.key_for(REQUEST))
        assert redis_server.command("EXISTS", in_a) == redis_server.command("EXISTS", in_b) == ":1"

        assert await a.clear() == 1
        await until_not_cached(other_a, fleet)  # the namespace's other cache heard it
        assert redis_server.command("EXISTS", in_a) == ":0"
        assert redis_server.command("EXISTS", in_b) == ":1"  # b's answer, in Redis...
        assert b.stats().entries == 1  # ...and in b's memory
        _, source = await read(b, fleet)
        assert source == "hit"
        assert b.stats().shared.changes_received == 0  # type: ignore[union-attr]
        assert (await upstream.counts())["streams"] == 2


async def test_a_shared_tier_made_for_another_namespace_is_refused(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    shared = RedisResponses(RedisTier(redis_server.url), namespace="a")
    with pytest.raises(ConfigurationError, match="namespace"):
        ResponseCache(shared=shared, namespace="b")
    fleet = Fleet(redis_server, upstream)
    cache = fleet.cache()
    async with cache:
        await read(cache, fleet)
    assert await cache.invalidate(REQUEST) is True  # closed: from its memory; never raises


async def test_forged_or_malformed_messages_are_ignored_and_counted(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    from redis.asyncio import Redis

    fleet = Fleet(redis_server, upstream, signing_key="k")
    channel = fleet.names().channel
    async with fleet.cache() as cache:
        await subscribed(redis_server, channel, 1)
        await read(cache, fleet)
        key = cache.key_for(REQUEST)
        body = json.dumps({"origin": "elsewhere", "keys": [key]})
        forged = [
            encode_message(Dropped("elsewhere", (key,)), None),  # unsigned
            encode_message(Dropped("elsewhere", (key,)), b"not the key"),  # wrongly signed
            encode_message(Dropped("elsewhere", None), b"not the key"),  # a clear, too
            b"garbage", b"", b"arm1.-.", body.encode(),  # not sealed at all
            seal(b"apr1", body.encode(), b"k"),  # a value's tag, not a message's
            # Signed with the right key, but not a message to apply:
            seal(b"arm1", b"{not json", b"k"),
            seal(b"arm1", b'["a","list"]', b"k"),
            seal(b"arm1", json.dumps({"keys": [key]}).encode(), b"k"),  # no origin
            seal(b"arm1", b'{"origin":"elsewhere","keys":["../not-a-key"]}', b"k"),
            seal(b"arm1", b'{"origin":"elsewhere","keys":[]}', b"k"),
            seal(b"arm1", json.dumps({"origin": "elsewhere", "keys": key}).encode(), b"k"),
        ]
        client = Redis.from_url(redis_server.url)
        try:
            for message in forged:
                assert await client.publish(channel, message) == 1
            await until(lambda: cache.stats().shared.rejected_values == len(forged))  # type: ignore[union-attr]
            _, source = await read(cache, fleet)
            assert source == "hit" and cache.stats().entries == 1
            assert cache.stats().shared.changes_received == 0  # type: ignore[union-attr]
            # The same message from a process that holds the key is applied (to memory:
            # Redis is its sender's to change).
            await client.publish(channel, encode_message(Dropped("elsewhere", (key,)), b"k"))
            await until(lambda: cache.stats().entries == 0)
        finally:
            await client.aclose()
        shared = cache.stats().shared
        assert shared is not None and shared.changes_received == 1
        assert shared.rejected_values == len(forged)
        assert (await upstream.counts())["streams"] == 1


async def test_a_change_made_while_redis_is_down_is_sent_when_it_answers(
    upstream: Upstream,
) -> None:
    with RedisServer() as private:
        fleet = Fleet(private, upstream)
        async with fleet.cache() as first, fleet.cache() as second:
            await subscribed(private, fleet.names().channel, 2)
            await read(first, fleet)
            _, source = await read(second, fleet)
            assert source == "hit" and second.stats().entries == 1
            private.freeze()  # no answer, connections kept: the subscriptions hold
            try:
                assert await first.invalidate(REQUEST) is True
                assert first.stats().entries == 0  # applied here at once
                assert first.stats().shared.changes_sent == 0  # type: ignore[union-attr]
                assert second.stats().entries == 1
            finally:
                private.thaw()
            await until_not_cached(second, fleet)  # sent once Redis answers again
        assert (await upstream.counts())["streams"] == 1


# -- answers past the cap, cache_only, a silent Redis ------------------------------------------


async def test_an_answer_past_the_cap_stops_being_published_and_leaves_one_entry_in_redis(
    redis_server: RedisServer,
) -> None:
    fleet = Fleet(redis_server)
    produce = Chunks(40, holds=(20,))  # 10 bytes each: the cap of 100 is passed at the 11th
    names = ResponseNames.of(fleet.namespace)
    before = redis_server.command_counts().get("xadd", 0)
    async with fleet.cache(max_answer_bytes=100) as owner, anyio.create_task_group() as tg:
        key = owner.key_for(REQUEST)
        got: list[Chunk] = []
        tg.start_soon(read_into, owner, produce, got)
        await until(lambda: len(got) == 20)
        # Past the cap: the stream is cut down to its end entry, the claim let go.
        assert redis_server.command("XLEN", names.stream(key)) == ":1"
        assert redis_server.command("EXISTS", names.lock(key)) == ":0"
        produce.gates[20].set()
    assert got == produce.expected
    assert redis_server.command("XLEN", names.stream(key)) == ":1"
    assert redis_server.command("EXISTS", names.answer(key)) == ":0"
    # Ten chunks and the end entry were ever added, not forty.
    assert redis_server.command_counts()["xadd"] - before == 11
    assert owner.stats().too_large == 1


async def test_followers_of_an_answer_past_the_cap_take_it_over(redis_server: RedisServer) -> None:
    fleet = Fleet(redis_server)
    first = Chunks(40, holds=(5, 20))
    second = Chunks(40)
    async with fleet.cache(max_answer_bytes=100) as owner, \
            fleet.cache(max_answer_bytes=100) as follower, anyio.create_task_group() as tg:
        got_owner: list[Chunk] = []
        got_follower: list[Chunk] = []
        tg.start_soon(read_into, owner, first, got_owner)
        await until(lambda: len(got_owner) == 5)
        stream = follower.stream(REQUEST, second)
        assert await stream.start() == "join"  # follows the owner from its first chunk

        async def follow() -> None:
            async for chunk in stream:
                got_follower.append(chunk)

        tg.start_soon(follow)
        await until(lambda: len(got_follower) == 5)
        first.gates[5].set()  # the owner passes the cap: the follower streams it itself
        await until(lambda: len(got_follower) == 40)
        first.gates[20].set()
    assert got_owner == got_follower == first.expected
    assert (first.calls, second.calls) == (1, 1)
    shared = follower.stats().shared
    assert shared is not None and shared.waits == 1 and shared.upstream_fetches == 1
    assert owner.stats().too_large == follower.stats().too_large == 1


async def test_cache_only_follows_an_answer_streaming_in_another_process(
    redis_server: RedisServer,
) -> None:
    fleet = Fleet(redis_server)
    produce = Chunks(12, holds=(3,))
    never = Chunks(12)
    async with fleet.cache() as owner, fleet.cache() as other, anyio.create_task_group() as tg:
        got_owner: list[Chunk] = []
        tg.start_soon(read_into, owner, produce, got_owner)
        await until(lambda: len(got_owner) == 3)
        stream = other.stream(REQUEST, never, mode="cache_only")
        assert await stream.start() == "join"
        got = [await anext(stream) for _ in range(3)]
        produce.gates[3].set()
        got += [chunk async for chunk in stream]
    assert got == got_owner == produce.expected
    stats = other.stats()
    assert (stats.joins, stats.misses, stats.cache_only_misses) == (1, 0, 0)
    assert stats.shared is not None
    assert (stats.shared.waits, stats.shared.upstream_fetches) == (1, 0)
    async with fleet.cache() as third:  # stored by its owner: a hit; nowhere: not cached
        assert await third.stream(REQUEST, never, mode="cache_only").start() == "hit"
        with pytest.raises(NotCachedError):
            await third.stream({**REQUEST, "seed": 1}, never, mode="cache_only").start()
        assert third.stats().cache_only_misses == 1
    assert never.calls == 0


async def test_cache_only_never_takes_over_an_answer_whose_owner_stopped(
    redis_server: RedisServer,
) -> None:
    fleet = Fleet(redis_server)
    produce = Chunks(12, holds=(3,))
    never = Chunks(12)
    async with fleet.cache(on_abandon="cancel") as owner, fleet.cache() as other, \
            anyio.create_task_group() as tg:
        leaving = owner.stream(REQUEST, produce)
        assert [await anext(leaving) for _ in range(3)] == produce.expected[:3]
        got: list[Chunk] = []
        failures: list[BaseException] = []
        tg.start_soon(lambda: read_into(other, never, got, failures, mode="cache_only"))
        await until(lambda: len(got) == 3)
        await leaving.aclose()  # the owner's stream is cancelled
        await until(lambda: bool(failures))
    assert got == produce.expected[:3] and never.calls == 0
    assert isinstance(failures[0].__cause__, SharedStreamLostError)
    assert failures[0].chunks_received == 3  # type: ignore[attr-defined]


async def test_a_normal_request_does_not_join_a_cache_only_follower_and_so_can_take_over(
    redis_server: RedisServer,
) -> None:
    """A ``cache_only`` caller follows another process's stream and never claims it; a
    normal request for the same answer in that process follows on its own, so when the
    owner stops it takes the answer over with its own producer, where the ``cache_only``
    caller fails."""
    fleet = Fleet(redis_server)
    produce = Chunks(12, holds=(3,))
    never = Chunks(12)
    mine = Chunks(12)
    async with fleet.cache(on_abandon="cancel") as owner, fleet.cache() as other, \
            anyio.create_task_group() as tg:
        leaving = owner.stream(REQUEST, produce)
        assert [await anext(leaving) for _ in range(3)] == produce.expected[:3]
        only: list[Chunk] = []
        normal: list[Chunk] = []
        failures: list[BaseException] = []
        tg.start_soon(lambda: read_into(other, never, only, failures, mode="cache_only"))
        await until(lambda: len(only) == 3)
        tg.start_soon(lambda: read_into(other, mine, normal))
        await until(lambda: len(normal) == 3)
        await leaving.aclose()  # the owner's stream is cancelled
        await until(lambda: bool(failures) and len(normal) == 12)
    assert never.calls == 0 and isinstance(failures[0].__cause__, SharedStreamLostError)
    assert normal == mine.expected and mine.calls == 1


async def test_a_follower_of_a_silent_redis_goes_on_without_waiting_on_it_again() -> None:
    with RedisServer() as private:
        fleet = Fleet(private)  # timeout 0.5 s, blocks of 0.2 s
        produce = Chunks(12, holds=(3,))
        errors_at_takeover: list[int] = []

        def took_over() -> None:
            shared = follower.stats().shared
            assert shared is not None
            errors_at_takeover.append(shared.redis_errors)

        own = Chunks(12, on_call=took_over)
        never = Chunks(12)
        async with fleet.cache() as owner, fleet.cache() as follower, \
                fleet.cache() as only, anyio.create_task_group() as tg:
            got_owner: list[Chunk] = []
            got: list[Chunk] = []
            got_only: list[Chunk] = []
            failures: list[BaseException] = []
            tg.start_soon(read_into, owner, produce, got_owner)
            await until(lambda: len(got_owner) == 3)
            tg.start_soon(read_into, follower, own, got)
            tg.start_soon(lambda: read_into(only, never, got_only, failures, mode="cache_only"))
            await until(lambda: len(got) == len(got_only) == 3)
            private.freeze()  # connections stay open; nothing answers
            # A bound for a loaded machine, not a timing: each outcome is asserted below.
            with anyio.fail_after(10):
                await until(lambda: len(got) == 12 and bool(failures))
            private.kill()
            produce.gates[3].set()
        assert got == got_owner == produce.expected
        # The follower streamed on its own once its blocking read timed out: neither a claim
        # nor a read went to the silent Redis first (each would have waited its timeout).
        assert errors_at_takeover == [1] and own.calls == 1
        # cache_only never goes upstream: a typed error after the chunks it had.
        assert got_only == produce.expected[:3] and never.calls == 0
        assert isinstance(failures[0].__cause__, SharedStreamLostError)


# -- 4 real processes ------------------------------------------------------------------------


def _chat_streams(base_url: str) -> int:
    with urllib.request.urlopen(base_url + "/_admin/chat/requests", timeout=10) as response:
        return int(json.loads(response.read())["streams"])


def _chat_release(base_url: str) -> None:
    request = urllib.request.Request(base_url + "/_admin/chat/release", data=b"",
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10):  # loopback only
        pass


def _chat_controls(base_url: str, **changes: Any) -> None:
    request = urllib.request.Request(
        base_url + "/_admin/chat/controls", data=json.dumps(changes).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):  # loopback only
        pass


def _ask_at_once(processes: Any, redis: RedisServer, base_url: str,
                 request: dict[str, Any]) -> list[Any]:
    """Processes 0-3 ask for ``request`` (stored nowhere yet) at once; their replies. The
    answer is held after 2 chunks until all four have asked for it (each tries to claim it
    once: a SET NX), so they meet while it streams."""
    _chat_controls(base_url, hold_after_chunks=2)
    claims = redis.command_counts().get("set", 0)
    for i in range(4):
        processes.send(i, {"op": "response_stream", "request": request})
    deadline = time.monotonic() + 30
    while redis.command_counts().get("set", 0) - claims < 4:
        assert time.monotonic() < deadline, "the four processes did not all ask"
        time.sleep(0.01)
    _chat_controls(base_url, hold_after_chunks=None)
    _chat_release(base_url)
    replies = [processes.receive(i) for i in range(4)]
    expected = replies[0]["chunks"]
    assert len(expected) == CHUNKS
    for reply in replies:
        assert reply["failed"] is None
        assert reply["chunks"] == expected
    assert sum(r["shared"]["upstream_fetches"] for r in replies) == 1
    assert sum(r["shared"]["waits"] for r in replies) == 3  # joined it in flight
    return replies


@pytest.mark.slow
def test_four_processes_asking_at_once_make_one_upstream_stream(redis_server: RedisServer) -> None:
    from devkit.fleet import Fleet as Processes
    from devkit.upstream import Upstream as ServerProcess

    request = {**REQUEST, "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    with ServerProcess() as server, Processes(5) as processes:
        _chat_controls(server.base_url, token_delay_seconds=0.005)
        namespace = uuid.uuid4().hex
        processes.all({"op": "response_open", "base_url": server.base_url,
                       "redis": redis_server.url, "namespace": namespace})
        # Without the tier, the same question from each process is its own stream.
        direct = processes.one(4, {"op": "response_stream", "request": request})
        assert direct["failed"] is None and len(direct["chunks"]) == CHUNKS
        assert _chat_streams(server.base_url) == 1
        processes.one(4, {"op": "response_open", "base_url": server.base_url})
        request = {**request, "seed": 7}  # a new key: nothing stored for it
        replies = _ask_at_once(processes, redis_server, server.base_url, request)
        assert _chat_streams(server.base_url) == 2  # one for the four processes
        expected = [chunk for chunk in replies[0]["chunks"]]
        # A fifth process (no shared tier) as the control: its own stream, same chunks.
        alone = processes.one(4, {"op": "response_stream", "request": request})
        assert alone["chunks"] == expected and _chat_streams(server.base_url) == 3
        # A process that did not take part replays the answer from Redis: no upstream call.
        processes.one(4, {"op": "response_open", "base_url": server.base_url,
                          "redis": redis_server.url, "namespace": namespace})
        replay = processes.one(4, {"op": "response_stream", "request": request})
        assert replay["source"] == "hit" and replay["chunks"] == expected
        assert _chat_streams(server.base_url) == 3
        with contextlib.suppress(Exception):
            processes.all({"op": "close"})


@pytest.mark.slow
def test_four_processes_configured_by_the_environment_alone_share_and_invalidate(
    redis_server: RedisServer,
) -> None:
    """``ResponseCache()`` in 4 processes whose environment names the Redis: they share one
    upstream stream, then an ``invalidate()`` in one reaches the other three's memory within
    100 ms (measured in each, from the invalidate's return to its first ask that the cache
    no longer answers)."""
    from redis import Redis

    from devkit.fleet import Fleet as Processes
    from devkit.upstream import Upstream as ServerProcess

    request = {**REQUEST, "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    channel = ResponseNames.of("default").channel  # RedisTier(url)'s namespace, tenant ""
    with ServerProcess() as server, \
            Processes(4, env={"ASYNCPROMPTCACHE_REDIS_URL": redis_server.url}) as processes, \
            contextlib.closing(Redis.from_url(redis_server.url)) as client:
        _chat_controls(server.base_url, token_delay_seconds=0.005)
        processes.all({"op": "response_open", "base_url": server.base_url,
                       "environment": True})
        deadline = time.monotonic() + 30
        while client.pubsub_numsub(channel)[0][1] != 4:  # each process is listening
            assert time.monotonic() < deadline, "the four processes did not all subscribe"
            time.sleep(0.01)
        replies = _ask_at_once(processes, redis_server, server.base_url, request)
        assert _chat_streams(server.base_url) == 1  # one for the four processes
        assert [reply["entries"] for reply in replies] == [1, 1, 1, 1]  # each in memory

        watchers = range(1, 4)
        for watched in processes.all({"op": "response_watch", "request": request},
                                     only=watchers):
            assert watched["done"] is False  # answered from memory, and still asking
        at = processes.one(0, {"op": "response_invalidate", "request": request})["at"]
        seen = processes.all({"op": "response_watched"}, only=watchers)
        for watched in seen:
            assert watched["hits"] >= 1 and watched["seen_at"] is not None
            assert watched["seen_at"] - at < 0.1, seen
        assert _chat_streams(server.base_url) == 1  # the watchers never went upstream

        again = processes.one(1, {"op": "response_stream", "request": request})
        assert again["source"] == "miss" and again["chunks"] == replies[0]["chunks"]
        assert _chat_streams(server.base_url) == 2
        replay = processes.one(2, {"op": "response_stream", "request": request})
        assert replay["source"] == "hit" and _chat_streams(server.base_url) == 2
        with contextlib.suppress(Exception):
            processes.all({"op": "close"})


async def test_a_clear_racing_reads_leaves_no_dropped_answer_in_the_callers_memory(
    redis_server: RedisServer, upstream: Upstream,
) -> None:
    """Reads of answers in Redis while this cache's own ``clear()`` deletes them: none of
    what they read before a delete landed stays in this process's memory (the message the
    clear sends is not applied by its sender)."""
    fleet = Fleet(redis_server, upstream)
    requests = [{**REQUEST, "messages": [{"role": "user", "content": f"q{i}"}]}
                for i in range(400)]

    async def whole() -> Chunk:
        return {"answer": 42}

    async def never() -> Chunk:
        raise AssertionError("cache_only never goes upstream")

    async with fleet.cache() as writer:
        for request in requests:
            await writer.get(request, whole)
    async with fleet.cache() as cache:
        async def reader() -> None:
            for request in requests:
                with contextlib.suppress(NotCachedError):
                    await cache.get(request, never, mode="cache_only")

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(reader)
            await anyio.sleep(0.01)  # the readers are under way
            assert await cache.clear() > 0
        assert cache.stats().entries == 0
        for request in requests:
            with pytest.raises(NotCachedError):
                await cache.get(request, never, mode="cache_only")


async def test_a_change_made_while_the_cache_closes_starts_nothing_in_its_ended_group() -> None:
    """A store whose close suspends leaves a window after the cache's task group ended:
    an ``invalidate()`` then, with Redis gone, is kept, and starts no resend in the ended
    group (that raised anyio's RuntimeError to the caller, not one of ours)."""
    from asyncpromptcache.response import MemoryStore

    closing, release = anyio.Event(), anyio.Event()

    class SlowToClose(MemoryStore):
        async def aclose(self) -> None:
            closing.set()
            await release.wait()
            await super().aclose()

    with RedisServer() as private:
        cache = ResponseCache(store=SlowToClose(),
                              shared=RedisTier(private.url, timeout_seconds=0.5))
        await cache.__aenter__()
        private.kill()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cache.aclose)
                await closing.wait()
                try:
                    assert await cache.invalidate(REQUEST) is False  # kept, never raised
                finally:
                    release.set()
        assert cache.state == "closed"
