"""The response cache over real HTTP streams from the local server's OpenAI-compatible
endpoint. Nothing waits on the wall clock: a stream is paused at a chunk by the server's
``hold_after_chunks`` and let go by the test; assertions are on chunks and counts."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asyncpromptcache import (
    ClientStateError,
    NotCachedError,
    ResponseCache,
    ResponseFailedError,
    SlowConsumerError,
    UpstreamEventError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTransportError,
)
from asyncpromptcache.response import Chunk, chunk_text

from .helpers import CHUNKS, REQUEST, Upstream, until, upstream as upstream

pytestmark = pytest.mark.anyio


async def collect(stream: Any, into: list[Chunk]) -> None:
    async for chunk in stream:
        into.append(chunk)


async def test_100_identical_concurrent_streams_make_one_upstream_stream(
    upstream: Upstream,
) -> None:
    await upstream.control(hold_after_chunks=3)
    results: list[list[Chunk]] = [[] for _ in range(100)]
    async with ResponseCache() as cache, anyio.create_task_group() as tg:
        streams = [cache.stream(REQUEST, upstream.llm.producer(REQUEST)) for _ in range(100)]
        for i in range(50):  # early: they join before the first chunk arrives
            tg.start_soon(collect, streams[i], results[i])
        await until(lambda: len(results[0]) == 3)  # the server holds after 3 chunks
        for i in range(50, 100):  # late: they get the 3 chunks so far, then the live ones
            tg.start_soon(collect, streams[i], results[i])
        await until(lambda: all(len(r) == 3 for r in results))
        await upstream.release()
    assert (await upstream.counts())["streams"] == 1
    assert [s.source for s in streams].count("miss") == 1
    assert [s.source for s in streams].count("join") == 99
    await upstream.control(hold_after_chunks=None)
    expected = await upstream.direct(REQUEST)
    assert len(expected) == CHUNKS
    assert all(r == expected for r in results)
    assert cache.stats().stored == 1


async def test_a_hit_replays_the_same_chunk_boundaries_without_upstream(
    upstream: Upstream,
) -> None:
    async def words() -> AsyncIterator[str]:  # text chunks: boundaries are the test
        async for chunk in upstream.llm.stream(REQUEST):
            yield chunk_text(chunk)

    async with ResponseCache() as cache:
        first = cache.stream(REQUEST, words)
        original = [c async for c in first]
        second = cache.stream(REQUEST, words)
        replayed = [c async for c in second]
        dicts = [c async for c in cache.stream(REQUEST, upstream.llm.producer(REQUEST),
                                                namespace="tenant-b")]
        dicts_again = cache.stream(REQUEST, upstream.llm.producer(REQUEST), namespace="tenant-b")
        assert [c async for c in dicts_again] == dicts
    assert (first.source, second.source, dicts_again.source) == ("miss", "hit", "hit")
    assert replayed == original and len(original) == CHUNKS
    assert (await upstream.counts())["streams"] == 2  # one per namespace, none for the hits
    assert cache.stats().hits == 2


@pytest.mark.parametrize(("mode", "cause"), [
    ("error_event", UpstreamEventError),
    ("truncate", UpstreamProtocolError),
    ("disconnect", UpstreamTransportError),
])
async def test_a_stream_failing_midway_is_never_stored(
    upstream: Upstream, mode: str, cause: type[Exception],
) -> None:
    await upstream.control(fail_after_chunks=5, fail_mode=mode)
    expected = (await upstream.direct({**REQUEST, "max_tokens": 3}))[:0]  # warm the session
    got: list[list[Chunk]] = [[], [], []]
    errors: list[ResponseFailedError] = []

    async def consume(i: int) -> None:
        try:
            await collect(cache.stream(REQUEST, upstream.llm.producer(REQUEST)), got[i])
        except ResponseFailedError as exc:
            errors.append(exc)

    async with ResponseCache() as cache:
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(consume, i)
        assert len(errors) == 3
        assert all(isinstance(e.upstream, cause) and e.__cause__ is e.upstream for e in errors)
        assert all(e.chunks_received == 5 for e in errors)
        stats = cache.stats()
        assert (stats.stored, stats.entries, stats.upstream_errors) == (0, 0, 1)

        await upstream.control(fail_after_chunks=None)
        expected = await upstream.direct(REQUEST)
        assert all(g == expected[:5] for g in got)
        again = cache.stream(REQUEST, upstream.llm.producer(REQUEST))
        assert [c async for c in again] == expected
        assert again.source == "miss"
    counts = await upstream.counts()
    assert counts["streams"] == 1 + 1 + 1 + 1  # failed, warm-up, direct, the retry


async def test_a_cancelled_consumer_changes_nothing_for_the_others(upstream: Upstream) -> None:
    await upstream.control(hold_after_chunks=4)
    kept: list[list[Chunk]] = [[], []]
    cancelled: list[Chunk] = []
    async with ResponseCache() as cache:
        leaver = anyio.CancelScope()

        async def leave() -> None:
            with leaver:
                await collect(cache.stream(REQUEST, upstream.llm.producer(REQUEST)), cancelled)

        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(collect, cache.stream(REQUEST, upstream.llm.producer(REQUEST)),
                              kept[i])
            tg.start_soon(leave)
            await until(lambda: len(cancelled) == 4)
            leaver.cancel()
            await until(lambda: leaver.cancelled_caught)
            gc.collect()
            await upstream.release()
        assert cache.stats().stored == 1
        await upstream.control(hold_after_chunks=None)
        expected = await upstream.direct(REQUEST)
    assert kept[0] == kept[1] == expected
    assert cancelled == expected[:4]
    assert (await upstream.counts())["streams"] == 2  # the shared one, and the direct one


async def test_a_slow_consumer_is_dropped_and_the_others_go_on(upstream: Upstream) -> None:
    fast: list[Chunk] = []
    slow: list[Chunk] = []
    go_on = anyio.Event()

    async def lagging() -> None:
        stream = cache.stream(REQUEST, upstream.llm.producer(REQUEST))
        slow.append(await anext(stream))
        await go_on.wait()  # takes nothing more while the answer streams
        with pytest.raises(SlowConsumerError) as caught:
            await collect(stream, slow)
        assert caught.value.chunks_received == 1

    async with ResponseCache(consumer_buffer=4) as cache:
        async with anyio.create_task_group() as tg:
            await upstream.control(hold_after_chunks=1)
            tg.start_soon(lagging)
            await until(lambda: len(slow) == 1)
            await upstream.control(hold_after_chunks=None)
            await upstream.release()
            await collect(cache.stream(REQUEST, upstream.llm.producer(REQUEST)), fast)
            await cache.drain()
            go_on.set()
        stats = cache.stats()
    expected = await upstream.direct(REQUEST)
    assert fast == expected and slow == expected[:1]
    assert (stats.slow_consumers, stats.stored) == (1, 1)


async def test_last_consumer_leaving_finishes_and_stores_by_default(upstream: Upstream) -> None:
    await upstream.control(hold_after_chunks=3)
    async with ResponseCache() as cache:
        stream = cache.stream(REQUEST, upstream.llm.producer(REQUEST))
        assert len([await anext(stream) for _ in range(2)]) == 2
        await stream.aclose()
        await upstream.release()
        await cache.drain()
        assert cache.stats().stored == 1
        hit = cache.stream(REQUEST, upstream.llm.producer(REQUEST), mode="cache_only")
        assert len([c async for c in hit]) == CHUNKS and hit.source == "hit"


async def test_last_consumer_leaving_cancels_when_asked(upstream: Upstream) -> None:
    await upstream.control(hold_after_chunks=3)
    async with ResponseCache(on_abandon="cancel") as cache:
        async for _ in cache.stream(REQUEST, upstream.llm.producer(REQUEST)):
            break  # the stream object is dropped here and leaves when collected
        gc.collect()
        await cache.drain()
        stats = cache.stats()
        assert (stats.abandoned, stats.stored, stats.in_flight) == (1, 0, 0)
        await upstream.control(hold_after_chunks=None)
        again = cache.stream(REQUEST, upstream.llm.producer(REQUEST))
        assert len([c async for c in again]) == CHUNKS and again.source == "miss"


async def test_whole_answers_are_single_flight_and_cached(upstream: Upstream) -> None:
    await upstream.control(first_token_delay_seconds=0.05)
    answers: list[Chunk] = []

    async def ask() -> None:
        answers.append(await cache.get(REQUEST, upstream.llm.whole(REQUEST)))

    async with ResponseCache() as cache:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(ask)
        await ask()
        stats = cache.stats()
    counts = await upstream.counts()
    assert counts["completions"] == 1 and counts["streams"] == 0
    assert len(answers) == 21 and all(a == answers[0] for a in answers)
    assert chunk_text(answers[0]) == "".join(
        chunk_text(c) for c in await upstream.direct(REQUEST))
    assert (stats.misses, stats.joins, stats.hits) == (1, 19, 1)


async def test_modes_bypass_refresh_and_cache_only(upstream: Upstream) -> None:
    async with ResponseCache() as cache:
        with pytest.raises(NotCachedError):
            await cache.stream(REQUEST, upstream.llm.producer(REQUEST), mode="cache_only").start()
        await cache.get(REQUEST, upstream.llm.whole(REQUEST))
        with pytest.raises(NotCachedError):  # a whole answer is not a streamed one
            await cache.stream(REQUEST, upstream.llm.producer(REQUEST), mode="cache_only").start()
        sources = []
        for mode in ("normal", "bypass", "refresh", "normal", "cache_only"):
            stream = cache.stream(REQUEST, upstream.llm.producer(REQUEST), mode=mode)
            assert len([c async for c in stream]) == CHUNKS
            sources.append(stream.source)
        stats = cache.stats()
    assert sources == ["miss", "bypass", "miss", "hit", "hit"]
    assert (await upstream.counts())["streams"] == 3
    assert (stats.stored, stats.bypasses, stats.cache_only_misses) == (3, 1, 2)


async def test_nondeterministic_requests_pass_through_unless_opted_in(
    upstream: Upstream,
) -> None:
    sampled = {k: v for k, v in REQUEST.items() if k != "temperature"}  # provider default: 1
    async with ResponseCache() as cache:
        for _ in range(2):
            stream = cache.stream(sampled, upstream.llm.producer(sampled))
            assert len([c async for c in stream]) == CHUNKS and stream.source == "bypass"
        seeded = {**sampled, "seed": 7}
        assert [await cache.stream(seeded, upstream.llm.producer(seeded)).start()
                for _ in range(1)] == ["miss"]
        for _ in range(2):
            stream = cache.stream(sampled, upstream.llm.producer(sampled),
                                  cache_nondeterministic=True)
            assert len([c async for c in stream]) == CHUNKS
        assert stream.source == "hit"
        assert cache.stats().bypasses == 2


async def test_http_errors_become_typed_errors_and_are_not_cached(upstream: Upstream) -> None:
    await upstream.control(fail_status=429)
    async with ResponseCache() as cache:
        with pytest.raises(ResponseFailedError) as caught:
            async for _ in cache.stream(REQUEST, upstream.llm.producer(REQUEST)):
                pass
        error = caught.value.upstream
        assert isinstance(error, UpstreamStatusError)
        assert (error.status, error.retry_after, error.error_type) == (429, 1.0,
                                                                       "rate_limit_error")
        with pytest.raises(ResponseFailedError):
            await cache.get(REQUEST, upstream.llm.whole(REQUEST))
        await upstream.control(fail_status=None)
        assert await cache.get(REQUEST, upstream.llm.whole(REQUEST))
        assert cache.stats().upstream_errors == 2


async def test_closing_the_cache_mid_stream_ends_its_consumers_with_a_typed_error(
    upstream: Upstream,
) -> None:
    await upstream.control(hold_after_chunks=2)
    got: list[Chunk] = []
    cache = ResponseCache()
    async with cache:
        stream = cache.stream(REQUEST, upstream.llm.producer(REQUEST))
        got += [await anext(stream), await anext(stream)]
    with pytest.raises(ClientStateError):
        await anext(stream)
    assert cache.stats().stored == 0 and len(got) == 2
