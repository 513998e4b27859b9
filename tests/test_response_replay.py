"""The cheap replay of a hit: an unpaced hit is read through an async generator (``async
for``) or a fast path of ``__anext__`` (``anext``, ``async with``), with the chunks, their
boundaries, ``source`` and ``chunks_received`` of the full path; it lets other tasks run
once per ``_FAIR_SECONDS`` (on a fake clock here), not at every chunk; and the key memo gives
the keys ``response_key`` gives. Plus the callgrind figure, where valgrind is installed."""

from __future__ import annotations

import gc
import shutil
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest

from asyncpromptcache import InvalidArgumentError, ResponseCache
from asyncpromptcache.response import Chunk, _cache as cache_module, response_key
from asyncpromptcache.response._keymemo import KeyMemo
from benchmarks import replay_instructions

pytestmark = pytest.mark.anyio

REQUEST: dict[str, Any] = {"model": "m", "temperature": 0,
                           "messages": [{"role": "user", "content": "hi"}]}
CHUNKS: list[Chunk] = ["a", b"b", {"c": 1}, "", {"d": [1, 2]}, "f", "g", "h", "i", "j"]


def producer(chunks: Sequence[Chunk]) -> Any:
    async def produce() -> AsyncIterator[Chunk]:
        for chunk in chunks:
            yield chunk
    return produce


async def test_every_way_of_reading_a_hit_gives_the_stored_chunks() -> None:
    async with ResponseCache() as cache:
        miss = cache.stream(REQUEST, producer(CHUNKS))
        assert [c async for c in miss] == CHUNKS and miss.source == "miss"
        by_for = cache.stream(REQUEST, producer([]))
        got = []
        async for chunk in by_for:
            got.append(chunk)
            assert by_for.source == "hit" and by_for.chunks_received == len(got)
        assert got == CHUNKS
        by_anext = cache.stream(REQUEST, producer([]))
        assert [await anext(by_anext) for _ in CHUNKS] == CHUNKS
        with pytest.raises(StopAsyncIteration):
            await anext(by_anext)
        assert by_anext.chunks_received == len(CHUNKS)
        async with cache.stream(REQUEST, producer([])) as entered:
            assert entered.source == "hit"
            assert [c async for c in entered] == CHUNKS
        paced = cache.stream(REQUEST, producer([]), pace=0)
        assert [c async for c in paced] == CHUNKS
        again = [c async for c in by_for]  # a finished stream stays finished
        assert again == []
        assert cache.stats().hits == 4 and cache.stats().misses == 1


async def test_leaving_a_replay_early_closes_it() -> None:
    async with ResponseCache() as cache:
        await anext(aiter(cache.stream(REQUEST, producer(CHUNKS))))  # the miss, then dropped
        await cache.drain()
        stream = cache.stream(REQUEST, producer([]))
        seen = []
        async for chunk in stream:
            seen.append(chunk)
            if len(seen) == 2:
                await stream.aclose()  # from the loop's body: the loop ends
        assert seen == CHUNKS[:2]
        broken = cache.stream(REQUEST, producer([]))
        iterator = aiter(broken)
        async for _ in iterator:
            break
        await iterator.aclose()  # type: ignore[attr-defined]
        assert [c async for c in broken] == []  # left: nothing more to read
        dropped = cache.stream(REQUEST, producer([]))
        async for _ in dropped:
            break
        del dropped
        gc.collect()  # a replay dropped mid-way is collected without a warning
        assert cache.stats().hits == 3


async def test_a_long_replay_lets_others_run_but_not_at_every_chunk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(10**9))
    monkeypatch.setattr(cache_module, "_now", lambda: next(ticks) * 0.0005)  # 0.5 ms a look
    long = [str(i) for i in range(400)]
    async with ResponseCache() as cache:
        assert len([c async for c in cache.stream(REQUEST, producer(long))]) == 400
        for reading in ("for", "anext"):
            turns = 0
            done = anyio.Event()

            async def other(done: anyio.Event) -> None:
                nonlocal turns
                while not done.is_set():
                    turns += 1
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                tg.start_soon(other, done)
                await anyio.lowlevel.checkpoint()
                before = turns
                stream = cache.stream(REQUEST, producer([]))
                if reading == "for":
                    got = [c async for c in stream]
                else:
                    await stream.start()
                    got = [await anext(stream) for _ in long]
                during = turns - before
                done.set()
            assert got == long
            # A look at the clock every 4 chunks, each 0.5 ms later (and one after each
            # turn given): a turn every 2 or 3 looks, never one per chunk.
            assert 400 // 12 - 2 <= during <= 400 // 8 + 2, during


async def test_a_replay_cancelled_at_its_checkpoint_is_left(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(10**9))
    monkeypatch.setattr(cache_module, "_now", lambda: next(ticks) * 0.01)
    long = [str(i) for i in range(100)]
    async with ResponseCache() as cache:
        await cache.stream(REQUEST, producer(long)).start()
        await cache.drain()
        stream = cache.stream(REQUEST, producer([]))
        got: list[Chunk] = []
        with anyio.CancelScope() as scope:
            async for chunk in stream:
                got.append(chunk)
                if len(got) == 10:
                    scope.cancel()  # delivered at the next checkpoint
        assert 10 <= len(got) < 100
        assert [c async for c in stream] == []


def test_the_memo_gives_the_keys_response_key_gives() -> None:
    memo = KeyMemo(max_entries=3)
    requests: list[dict[str, Any]] = [
        REQUEST, {**REQUEST, "temperature": 0.0}, {"messages": REQUEST["messages"],
                                                   "model": "m", "temperature": 0},
        {**REQUEST, "stream": True}, {**REQUEST, "seed": 1}, {**REQUEST, "n": (1, 2)},
    ]
    for request in requests * 2:
        for namespace, kind in (("", "stream"), ("t", "stream"), ("", "whole")):
            assert memo.key(request, namespace, kind) == response_key(  # type: ignore[arg-type]
                request, namespace=namespace, kind=kind)  # type: ignore[arg-type]
    assert len(memo) == 3  # bounded
    mutated = dict(REQUEST)
    first = memo.key(mutated, "", "stream")
    mutated["model"] = "other"  # the memo is by content, not by the object
    assert memo.key(mutated, "", "stream") == response_key(mutated) != first
    bad_requests: list[dict[Any, Any]] = [
        {**REQUEST, "temperature": float("nan")}, {**REQUEST, "x": object()}, {**REQUEST, 1: "a"}]
    for bad in bad_requests:
        for _ in range(2):  # never memoised: each time the full path refuses it
            with pytest.raises(InvalidArgumentError):
                memo.key(bad, "", "stream")


@pytest.mark.slow
def test_a_replay_costs_less_than_three_floors_of_instructions() -> None:
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed: the instruction count cannot be measured")
    data = replay_instructions.measure(20)
    assert data["x_floor"][replay_instructions.FLOOR] == 1.0
    assert data["x_floor"][replay_instructions.OURS] <= replay_instructions.TARGET, data
