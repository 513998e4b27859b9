"""The response cache's pure parts (keys, SSE) and its bounds, with in-memory producers and a
FakeClock. The behaviour over real HTTP streams is in test_response_http.py."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import pytest
from hypothesis import given, strategies as st

from asyncpromptcache import (
    ClientStateError,
    ConfigurationError,
    InvalidArgumentError,
    PromptCacheError,
    ResponseCache,
    ResponseFailedError,
    UpstreamEventError,
    UpstreamProtocolError,
)
from asyncpromptcache._http.retry import parse_retry_after
from asyncpromptcache.response import (
    Chunk,
    MemoryStore,
    ResponseStore,
    SSEDecoder,
    SSEEvent,
    StoredAnswer,
    canonical_json,
    chunk_text,
    is_deterministic,
    openai_chunk,
    response_key,
)
from asyncpromptcache.response.providers._sse import status_error
from asyncpromptcache.testing import FakeClock

REQUEST: dict[str, Any] = {"model": "m", "temperature": 0,
                           "messages": [{"role": "user", "content": "hi"}]}


class Producer:
    """Yields ``chunks``; counts calls; fails after ``fail_after`` chunks when set."""

    def __init__(self, chunks: list[Chunk], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.calls = 0

    async def __call__(self) -> AsyncIterator[Chunk]:
        self.calls += 1
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_after:
                raise RuntimeError("boom")
            yield chunk


async def read(stream: Any) -> list[Chunk]:
    return [chunk async for chunk in stream]


# -- keys ----------------------------------------------------------------------------------


def test_equal_requests_have_one_key_whatever_their_spelling() -> None:
    a = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "é"}]}
    b = {"messages": ({"content": "é", "role": "user"},), "temperature": 0.0, "model": "m",
         "stream": True}
    assert response_key(a) == response_key(b)
    assert canonical_json(a) == '{"messages":[{"content":"é","role":"user"}],"model":"m",' \
        '"temperature":0}'.encode()
    assert len(response_key(a)) == 64


@pytest.mark.parametrize("change", [
    {"temperature": 0.5}, {"model": "n"}, {"seed": 1}, {"max_tokens": 5},
    {"messages": [{"role": "user", "content": "hi "}]},
    {"messages": [{"role": "user", "content": "é"}]},  # NFD: no normalisation
])
def test_any_other_field_value_changes_the_key(change: dict[str, Any]) -> None:
    assert response_key({**REQUEST, **change}) != response_key(REQUEST)


def test_namespace_and_kind_are_part_of_the_key() -> None:
    keys = {response_key(REQUEST), response_key(REQUEST, namespace="t1"),
            response_key(REQUEST, namespace="t2"), response_key(REQUEST, kind="whole")}
    assert len(keys) == 4


@pytest.mark.parametrize("bad", [
    {"x": float("nan")}, {"x": {1: "a"}}, {"x": {1, 2}}, {"x": object()}, {"x": b"raw"},
])
def test_what_json_cannot_carry_exactly_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        response_key(bad)


@pytest.mark.parametrize(("request_", "expected"), [
    ({}, False),  # the provider's default temperature (1)
    ({"temperature": 0}, True),
    ({"temperature": 0.7}, False),
    ({"temperature": 0.7, "seed": 3}, True),
    ({"temperature": 0, "n": 2}, False),
    ({"temperature": 0, "n": 1}, True),
    ({"temperature": "hot"}, False),
])
def test_which_requests_are_deterministic(request_: dict[str, Any], expected: bool) -> None:
    assert is_deterministic(request_) is expected


def test_default_temperature_is_the_providers() -> None:
    assert is_deterministic({}, default_temperature=0) is True


# -- SSE ---------------------------------------------------------------------------------------

STREAM = (b": keep-alive\r\n\r\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\nid: 7\r\n\r\n"
          b"data:{\"b\":2}\n\ndata: [DONE]\r\r")
EVENTS = [SSEEvent('{"a":\n1}', "message", "7"), SSEEvent('{"b":2}', "message", "7"),
          SSEEvent("[DONE]", "message", "7")]


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=8))
def test_sse_events_are_the_same_however_the_bytes_are_split(cuts: list[int]) -> None:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for start, end in itertools.pairwise(bounds):
        events += decoder.feed(STREAM[start:end])
    assert events == EVENTS


def test_an_sse_event_split_inside_a_utf8_character_decodes() -> None:
    raw = 'data: "é"\n\n'.encode()
    decoder = SSEDecoder()
    assert decoder.feed(raw[:8]) == [] and decoder.feed(raw[8:]) == [SSEEvent('"é"')]


def test_openai_events() -> None:
    assert openai_chunk(SSEEvent('{"choices":[{"delta":{"content":"x"}}]}')) == {
        "choices": [{"delta": {"content": "x"}}]}
    assert openai_chunk(SSEEvent("[DONE]")) is None
    with pytest.raises(UpstreamEventError) as caught:
        openai_chunk(SSEEvent('{"error":{"message":"over\\ncapacity","type":"server_error"}}',
                              "error"))
    assert caught.value.error_type == "server_error" and "\n" not in str(caught.value)
    for bad in ("{not json", "[1]"):
        with pytest.raises(UpstreamProtocolError):
            openai_chunk(SSEEvent(bad))
    error = status_error(503, b'{"error":{"message":"down"}}', "2")
    assert (error.status, error.retry_after, str(error)) == (503, 2.0, "HTTP 503: down")
    assert chunk_text({"choices": [{"message": {"content": "whole"}}]}) == "whole"
    assert chunk_text("not a chunk") == ""


def test_an_upstream_retry_after_is_read_as_the_prompt_source_reads_it() -> None:
    """One Retry-After parser: delta-seconds or an HTTP date (the LLM producer ignored
    dates)."""
    soon = datetime.now(UTC) + timedelta(seconds=30)
    error = status_error(429, b"", format_datetime(soon, usegmt=True))
    assert error.retry_after is not None and 20 < error.retry_after <= 31
    assert error.retry_after == pytest.approx(
        parse_retry_after(format_datetime(soon, usegmt=True)), abs=2)
    assert status_error(503, b"", "Wed, 21 Oct 2015 07:28:00 GMT").retry_after == 0.0
    assert status_error(503, b"", "soon").retry_after is None


def test_an_endless_sse_line_is_refused() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(b"data: " + b"x" * 200)


# -- the cache with in-memory producers --------------------------------------------------------


def cache_with(clock: FakeClock, **options: Any) -> ResponseCache:
    return ResponseCache(clock=clock, **options)


@pytest.mark.anyio
async def test_ttl_on_the_injected_clock() -> None:
    clock = FakeClock()
    produce = Producer(["a", "b"])
    async with cache_with(clock, ttl_seconds=10) as cache:
        assert await read(cache.stream(REQUEST, produce)) == ["a", "b"]
        clock.advance(9.9)
        assert await cache.stream(REQUEST, produce).start() == "hit"
        clock.advance(0.2)
        stream = cache.stream(REQUEST, produce)
        assert await read(stream) == ["a", "b"] and stream.source == "miss"
        short = {**REQUEST, "model": "short"}
        await read(cache.stream(short, produce, ttl_seconds=1))
        clock.advance(1)
        assert await cache.stream(short, produce).start() == "miss"
        assert cache.stats().expirations >= 2
    assert produce.calls == 4


@pytest.mark.anyio
async def test_the_store_is_bounded_by_bytes_least_recently_used_first() -> None:
    produce = Producer(["x" * 40])
    requests = [{**REQUEST, "model": f"m{i}"} for i in range(4)]
    async with ResponseCache(max_bytes=100) as cache:
        for request in requests[:2]:
            await read(cache.stream(request, produce))
        await read(cache.stream(requests[0], produce))  # m0 is now the most recent
        await read(cache.stream(requests[2], produce))  # evicts m1
        sources = [await cache.stream(r, produce).start() for r in requests[:3]]
        stats = cache.stats()
    assert sources == ["hit", "miss", "hit"]
    assert stats.bytes <= 100 and stats.evictions >= 1


@pytest.mark.anyio
async def test_an_answer_over_the_cap_is_streamed_but_not_stored() -> None:
    produce = Producer(["abc"] * 10)
    async with ResponseCache(max_answer_bytes=20) as cache:
        first, second = cache.stream(REQUEST, produce), cache.stream(REQUEST, produce)
        got: list[list[Chunk]] = [[], []]
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _into(first, got[0]))
            tg.start_soon(lambda: _into(second, got[1]))
        assert got == [["abc"] * 10] * 2
        assert (first.source, second.source) == ("miss", "join")
        assert await cache.stream(REQUEST, produce).start() == "miss"
        stats = cache.stats()
    assert (stats.too_large, stats.stored, stats.entries) == (1, 0, 0)


@pytest.mark.anyio
async def test_an_answer_past_the_cap_is_not_held_and_a_later_request_goes_upstream() -> None:
    held = anyio.Event()
    calls = 0

    async def produce() -> AsyncIterator[Chunk]:
        nonlocal calls
        calls += 1
        for i in range(100):
            if i == 50 and calls == 1:
                await held.wait()
            yield f"{i:010d}"  # 10 bytes: the cap of 100 is passed at the 11th chunk

    async with ResponseCache(max_answer_bytes=100) as cache:
        first = cache.stream(REQUEST, produce)
        early = cache.stream(REQUEST, produce)
        assert (await first.start(), await early.start()) == ("miss", "join")
        got: list[Chunk] = []
        got_early: list[Chunk] = []
        for _ in range(50):  # 500 bytes so far
            got.append(await anext(first))
            got_early.append(await anext(early))
        flight = first._consumer.flight  # type: ignore[union-attr]
        # Past the cap, a chunk every consumer has taken is released as the next comes in.
        assert flight.total == 50 and not flight.storable and flight.held <= 2
        late = cache.stream(REQUEST, produce)  # after the cap: its own upstream stream
        assert await late.start() == "miss"
        assert len([c async for c in late]) == 100 and calls == 2
        held.set()
        got += [c async for c in first]
        got_early += [c async for c in early]
        assert flight.held == 0
        stats = cache.stats()
    assert got == got_early == [f"{i:010d}" for i in range(100)]
    assert (stats.too_large, stats.stored, stats.entries, stats.misses) == (2, 0, 0, 2)


async def _into(stream: Any, out: list[Chunk]) -> None:
    async for chunk in stream:
        out.append(chunk)


@pytest.mark.anyio
async def test_replay_is_paced_when_asked() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    clock = FakeClock()

    async def timed() -> AsyncIterator[Chunk]:
        for chunk in ("a", "b", "c", "d"):
            clock.advance(0.5)
            yield chunk

    async with ResponseCache(clock=clock, sleep=sleep, replay_pace=0.01) as cache:
        await read(cache.stream(REQUEST, timed))
        assert slept == []  # a miss streams as the upstream does
        assert await read(cache.stream(REQUEST, timed)) == ["a", "b", "c", "d"]
        assert slept == [0.01] * 3
        slept.clear()
        await read(cache.stream(REQUEST, timed, pace="original"))
        assert slept == [0.5] * 3  # 2 s over 4 chunks
        slept.clear()
        await read(cache.stream(REQUEST, timed, pace=None))
        assert slept == []


@pytest.mark.anyio
async def test_a_failing_producer_is_not_stored_and_its_error_is_typed() -> None:
    produce = Producer(["a", "b", "c"], fail_after=2)
    async with ResponseCache() as cache:
        got: list[Chunk] = []
        with pytest.raises(ResponseFailedError) as caught:
            await _into(cache.stream(REQUEST, produce), got)
        assert got == ["a", "b"]
        assert isinstance(caught.value.upstream, RuntimeError)
        assert isinstance(caught.value, PromptCacheError)
        produce.fail_after = None
        assert await read(cache.stream(REQUEST, produce)) == ["a", "b", "c"]
        produce.fail_after = 1
        with pytest.raises(ResponseFailedError):  # a bypass fails the same way
            await read(cache.stream(REQUEST, produce, mode="bypass"))
    assert produce.calls == 3


@pytest.mark.anyio
async def test_a_chunk_of_another_type_fails_the_stream() -> None:
    produce = Producer(["a", 42])  # type: ignore[list-item]
    async with ResponseCache() as cache:
        with pytest.raises(ResponseFailedError) as caught:
            await read(cache.stream(REQUEST, produce))
        assert isinstance(caught.value.upstream, InvalidArgumentError)
        assert cache.stats().entries == 0


@pytest.mark.anyio
async def test_chunk_types_and_boundaries_survive_a_replay() -> None:
    chunks: list[Chunk] = ["text", b"\x00bytes", {"choices": [{"delta": {"content": "d"}}]}, ""]
    produce = Producer(chunks)
    async with ResponseCache() as cache:
        assert await read(cache.stream(REQUEST, produce)) == chunks
        replay = await read(cache.stream(REQUEST, produce))
    assert replay == chunks and [type(c) for c in replay] == [type(c) for c in chunks]


@pytest.mark.anyio
async def test_invalidate_and_clear() -> None:
    produce = Producer(["a"])
    async with ResponseCache() as cache:
        await read(cache.stream(REQUEST, produce))
        await cache.get(REQUEST, _whole("w"))
        assert await cache.invalidate(REQUEST) is True
        assert await cache.stream(REQUEST, produce).start() == "miss"
        await cache.drain()  # the stream left unread is finished and stored
        assert await cache.clear() == 1


def _whole(value: Chunk) -> Callable[[], Any]:
    async def produce() -> Chunk:
        return value
    return produce


@pytest.mark.anyio
async def test_lifecycle_and_arguments() -> None:
    cache = ResponseCache()
    with pytest.raises(ClientStateError):
        cache.stream(REQUEST, Producer([]))
    async with cache:
        with pytest.raises(InvalidArgumentError):
            cache.stream(REQUEST, Producer([]), mode="sometimes")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            cache.stream(["not", "a", "mapping"], Producer([]))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            cache.stream(REQUEST, Producer([]), pace=-1)
    with pytest.raises(ClientStateError):
        await cache.get(REQUEST, _whole("x"))
    for shared in ("http://localhost", 42):  # a Redis URL or a RedisTier
        with pytest.raises(ConfigurationError, match="shared"):
            ResponseCache(shared=shared)
    for bad in ({"max_bytes": 0}, {"ttl_seconds": -1}, {"on_abandon": "maybe"},
                {"consumer_buffer": 0}):
        with pytest.raises(ConfigurationError):
            ResponseCache(**bad)


def test_memory_store_is_a_response_store() -> None:
    store = MemoryStore(max_bytes=10)
    assert isinstance(store, ResponseStore)

    async def main() -> None:
        assert await store.put("k", StoredAnswer(("a" * 11,), 11), 60) is False
        assert await store.put("k", StoredAnswer(("a",), 1), 0) is False
        assert await store.put("k", StoredAnswer(("a",), 1), 60) is True
        assert (await store.get("k")) == StoredAnswer(("a",), 1)
        assert await store.delete("k") and not await store.delete("k")

    anyio.run(main)
