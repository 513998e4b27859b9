"""AsyncPromptClient from the user's side, over real loopback HTTP with injected faults.

Time never decides an assertion: freshness runs on a FakeClock, "slow" is a gate the test
opens, and assertions are on counts (requests the server saw) and states (entries, flights).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    ClientStateError,
    FetchError,
    FetchTimeoutError,
    InvalidArgumentError,
    InvalidResponseError,
    PromptCacheError,
    PromptKey,
    PromptNotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TextPrompt,
    TransportError,
)
from asyncpromptcache.testing import FakeClock

from .faultserver import FaultServer, fault_server
from .helpers import client_for, until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with fault_server() as s:
        s.put("greet", "Hello {{name}}")
        s.put("greeting", "Good day {{name}}")
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def own_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("asyncpromptcache:"))


async def test_cold_fetch_then_fresh_hit_without_io(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock) as client:
        prompt = await client.get_prompt("greet")
        assert isinstance(prompt, TextPrompt)
        assert prompt.compile(name="Ann") == "Hello Ann"
        assert (prompt.version, prompt.labels, prompt.is_fallback) == (1, ("production",), False)
        for _ in range(100):
            assert await client.get_prompt("greet") is prompt
        assert server.total == 1
        stats = client.stats()
        assert (stats.misses, stats.hits, stats.fetches, stats.entries) == (1, 100, 1, 1)


async def test_fresh_hit_does_not_suspend(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock) as client:
        await client.get_prompt("greet")
        coro = client.get_prompt("greet")
        # A coroutine that never suspends finishes on its first send.
        with pytest.raises(StopIteration) as done:
            coro.send(None)
        assert isinstance(done.value.value, TextPrompt)


async def test_stampede_one_key_one_request(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock) as client:
        results: list[TextPrompt] = []

        async def call() -> None:
            results.append(await client.get_prompt("greet"))

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(call)
        assert len(results) == 1000
        assert all(r is results[0] for r in results)
        assert server.requests["greet"] == 1 and server.total == 1
        stats = client.stats()
        assert (stats.fetches, stats.joined, stats.misses) == (1, 999, 1000)


async def test_stampede_hundred_keys_hundred_requests(
    server: FaultServer, clock: FakeClock
) -> None:
    names = [f"team/p{i}" for i in range(100)]
    for name in names:
        server.put(name, f"I am {name}")
    async with client_for(server, clock) as client:
        async with anyio.create_task_group() as tg:
            for name in names:
                for _ in range(10):
                    tg.start_soon(client.get_prompt, name)
        assert server.total == 100
        assert all(server.requests[name] == 1 for name in names)
        assert len(client.cache) == 100


async def test_cancelled_waiters_do_not_cancel_the_fetch(
    server: FaultServer, clock: FakeClock
) -> None:
    server.hold()
    async with client_for(server, clock) as client:
        got: list[TextPrompt] = []
        scopes = [anyio.CancelScope() for _ in range(50)]

        async def waiter(scope: anyio.CancelScope | None) -> None:
            with scope or anyio.CancelScope():  # the second half is never cancelled
                got.append(await client.get_prompt("greet"))

        async with anyio.create_task_group() as tg:
            for scope in scopes:
                tg.start_soon(waiter, scope)
            for _ in range(50):
                tg.start_soon(waiter, None)
            await until(lambda: server.waiting == 1)
            for scope in scopes:
                scope.cancel()
            await anyio.lowlevel.checkpoint()
            server.release()
        assert len(got) == 50
        assert server.total == 1
        assert client.cache.in_flight == 0
        assert own_tasks() == 0
        assert len(client.cache) == 1


async def test_every_waiter_cancelled_fetch_still_fills_cache(
    server: FaultServer, clock: FakeClock
) -> None:
    server.hold()
    async with client_for(server, clock) as client:
        with anyio.move_on_after(0.05):
            await client.get_prompt("greet")
        assert server.waiting == 1
        server.release()
        await until(lambda: client.cache.in_flight == 0)
        assert (await client.get_prompt("greet")).version == 1
        assert server.total == 1


async def test_stale_while_revalidate(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock) as client:
        first = await client.get_prompt("greet")
        server.put("greet", "Hi {{name}}, v2")
        clock.advance(61)
        server.hold()  # the refresh will hang until released
        for _ in range(200):
            assert await client.get_prompt("greet") is first  # stale, at once
        await until(lambda: server.waiting == 1)
        assert server.requests["greet"] == 2  # exactly one refresh request
        stats = client.stats()
        assert (stats.stale_hits, stats.refreshes) == (200, 1)
        server.release()
        await until(lambda: client.cache.in_flight == 0)
        fresh = await client.get_prompt("greet")
        assert fresh.version == 2 and fresh.compile(name="Bo") == "Hi Bo, v2"
        assert server.requests["greet"] == 2


@pytest.mark.parametrize("fault", ["503", "500", "hang", "drop", "429"])
async def test_outage_serves_cached_keys_and_falls_back_for_cold_ones(
    server: FaultServer, clock: FakeClock, fault: str
) -> None:
    async with client_for(server, clock, fetch_timeout_seconds=0.2) as client:
        cached = await client.get_prompt("greet")
        server.fault = fault
        clock.advance(120)
        for _ in range(20):
            assert await client.get_prompt("greet") is cached
        await until(lambda: client.cache.in_flight == 0)
        assert await client.get_prompt("greet") is cached
        assert client.stats().refresh_errors == 1

        fallback = await client.get_prompt("greeting", fallback="Hey {{name}}")
        assert fallback.is_fallback and fallback.compile(name="Cy") == "Hey Cy"
        assert (fallback.version, fallback.labels) == (0, ("production",))
        assert "greeting" not in {k.key.name for k in client.stats().keys}  # not cached
        with pytest.raises(FetchError) as info:
            await client.get_prompt("greeting", label="staging")
        assert isinstance(info.value, TransportError | ServerError | RateLimitError)
        assert "greeting" in str(info.value)


async def test_retries_then_gives_typed_error_within_budget(
    server: FaultServer, clock: FakeClock
) -> None:
    server.fault = "503"
    async with client_for(server, clock) as client:
        with pytest.raises(ServerError) as info:
            await client.get_prompt("greet", max_retries=3)
        assert info.value.status == 503 and info.value.name == "greet"
        assert server.total == 4  # 1 + 3 retries
        server.requests.clear()
        clock.advance(10)  # past the negative cache of that failure
        server.fault = "hang"
        with pytest.raises(FetchTimeoutError):
            await client.get_prompt("greet", max_retries=1, fetch_timeout_seconds=0.1)
        assert server.total == 2


@pytest.mark.parametrize(("fault", "expected"), [("401", 1), ("wrong-type", 1), ("429", 3)])
async def test_what_is_retried(
    server: FaultServer, clock: FakeClock, fault: str, expected: int
) -> None:
    server.fault = fault
    async with client_for(server, clock) as client:
        with pytest.raises(FetchError):
            await client.get_prompt("greet")
        assert server.total == expected


async def test_not_found_is_not_retried(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock) as client:
        with pytest.raises(PromptNotFoundError) as info:
            await client.get_prompt("nobody")
        assert "nobody" in str(info.value)
        assert server.total == 1


async def test_retry_after_is_honoured(server: FaultServer, clock: FakeClock) -> None:
    server.fault = "429-retry-after"
    server.retry_after = "0.01"
    slept: list[float] = []
    async with client_for(server, clock) as client:
        with pytest.raises(RateLimitError) as info:
            await client.get_prompt("greet")
        assert info.value.retry_after == pytest.approx(0.01)
        assert server.total == 3
        del slept
        server.requests.clear()
        clock.advance(10)  # past the negative cache of that failure
        server.retry_after = "3600"  # longer than anyone should wait: fail at once
        with pytest.raises(RateLimitError):
            await client.get_prompt("greet")
        assert server.total == 1


@pytest.mark.parametrize(
    "fault",
    ["malformed", "truncated", "wrong-type", "wrong-shape", "html", "oversized", "wrong-name",
     "reset-mid-body"],
)
async def test_bad_responses_never_replace_a_cached_prompt(
    server: FaultServer, clock: FakeClock, fault: str
) -> None:
    server.max_body = 1000
    async with client_for(server, clock) as client:
        client.source._max_bytes = 1000  # type: ignore[attr-defined]
        good = await client.get_prompt("greet")
        server.fault = fault
        clock.advance(61)
        assert await client.get_prompt("greet") is good
        await until(lambda: client.cache.in_flight == 0)
        assert await client.get_prompt("greet") is good
        assert await client.get_prompt("greet", cache_ttl_seconds=0) is good  # stale-if-error
        with pytest.raises((InvalidResponseError, TransportError)) as info:
            await client.get_prompt("greeting")
        if isinstance(info.value, InvalidResponseError) and fault in ("wrong-type", "wrong-shape"):
            assert info.value.field in ("type", "name", "version", "prompt")
        server.fault = "ok"
        clock.advance(10)  # past the refresh backoff
        assert (await client.get_prompt("greeting")).version == 1


async def test_not_found_evicts_the_key(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock) as client:
        server.put("greet", "staging text", labels=("staging",))
        assert (await client.get_prompt("greet", label="staging")).version == 2
        server.prompts["greet"][1]["labels"] = []  # the label is removed on the server
        clock.advance(61)
        await client.get_prompt("greet", label="staging")  # stale, starts the refresh
        await until(lambda: client.cache.in_flight == 0)
        assert PromptKey("greet", "staging", None) not in {k.key for k in client.stats().keys}
        with pytest.raises(PromptNotFoundError):
            await client.get_prompt("greet", label="staging")


async def test_leaving_async_with_while_refreshes_hang(
    server: FaultServer, clock: FakeClock
) -> None:
    server.fault = "hang"
    client = client_for(server, clock, fetch_timeout_seconds=30)
    async with client:
        server.fault = "ok"
        await client.get_prompt("greet")
        await client.get_prompt("greeting")
        server.fault = "hang"
        clock.advance(61)
        await client.get_prompt("greet")
        await client.get_prompt("greeting")
        await until(lambda: server.total == 4)
        assert client.cache.in_flight == 2 and own_tasks() == 2
    # Returned without waiting for the 30 s timeout: nothing of ours is left running.
    assert own_tasks() == 0
    assert client.cache.in_flight == 0
    with pytest.raises(ClientStateError):
        await client.get_prompt("greet")


async def test_waiters_get_an_error_when_the_client_closes(
    server: FaultServer, clock: FakeClock
) -> None:
    server.hold()
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg, client_for(server, clock) as client:

        async def waiter() -> None:
            try:
                await client.get_prompt("greet")
            except PromptCacheError as exc:
                errors.append(exc)

        tg.start_soon(waiter)
        await until(lambda: server.waiting == 1)
    assert len(errors) == 1 and isinstance(errors[0], ClientStateError)


async def test_use_before_entering_is_a_clear_error(server: FaultServer) -> None:
    client = AsyncPromptClient(base_url=server.base_url, env={})
    with pytest.raises(ClientStateError, match="async with"):
        await client.get_prompt("greet")
    assert server.total == 0
    await client.aclose()


async def test_invalidation_is_exact(server: FaultServer, clock: FakeClock) -> None:
    server.put("greet", "staging", labels=("staging",))
    async with client_for(server, clock) as client:
        await client.prefetch(["greet", "greeting", PromptKey("greet", "staging", None)])
        assert len(client.cache) == 3
        assert client.invalidate("greet", label="staging") == 1
        assert len(client.cache) == 2
        assert client.invalidate("greet") == 1
        remaining = {k.key for k in client.stats().keys}
        assert remaining == {PromptKey("greeting", "production", None)}
        assert client.clear() == 1 and len(client.cache) == 0
        with pytest.raises(InvalidArgumentError):
            client.invalidate("greet", label="a", version=1)


async def test_invalidated_in_flight_fetch_does_not_write_back(
    server: FaultServer, clock: FakeClock
) -> None:
    server.hold()
    async with client_for(server, clock) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get_prompt, "greet")
            await until(lambda: server.waiting == 1)
            client.invalidate("greet")
            server.release()
        assert len(client.cache) == 0
        await client.get_prompt("greet")
        assert server.total == 2


async def test_bounded_store_evicts_least_recently_used(
    server: FaultServer, clock: FakeClock
) -> None:
    for i in range(5):
        server.put(f"p{i}", str(i))
    async with client_for(server, clock, max_size=3) as client:
        for i in range(3):
            await client.get_prompt(f"p{i}")
        await client.get_prompt("p0")  # p0 is now the most recently used
        await client.get_prompt("p3")  # evicts p1
        held = {k.key.name for k in client.stats().keys}
        assert held == {"p0", "p2", "p3"}
        await client.get_prompt("p4")  # evicts p2
        assert {k.key.name for k in client.stats().keys} == {"p0", "p3", "p4"}
        assert client.stats().evictions == 2


async def test_ttl_zero_always_fetches_with_single_flight_and_stale_if_error(
    server: FaultServer, clock: FakeClock
) -> None:
    async with client_for(server, clock) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(lambda: client.get_prompt("greet", cache_ttl_seconds=0))
        assert server.total == 1
        await client.get_prompt("greet", cache_ttl_seconds=0)
        assert server.total == 2
        server.fault = "503"
        assert (await client.get_prompt("greet", cache_ttl_seconds=0)).version == 1


async def test_failing_refresh_backs_off(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock, refresh_backoff_seconds=10, retry=RetryPolicy(
            max_retries=0)) as client:
        await client.get_prompt("greet")
        server.fault = "503"
        clock.advance(61)
        failures = []
        for step in range(6):
            for _ in range(50):
                await client.get_prompt("greet")
            await until(lambda: client.cache.in_flight == 0)
            failures.append(server.total - 1)
            clock.advance(10 * 2**step + 0.1)
        # one refresh per backoff window (10, 20, 40... s), not one per call
        assert failures == [1, 2, 3, 4, 5, 6]
        key_stats = client.stats().keys[0]
        assert key_stats.consecutive_failures == 6
        assert key_stats.last_error is not None and "503" in key_stats.last_error
        server.fault = "ok"
        clock.advance(1000)
        await client.get_prompt("greet")
        await until(lambda: client.cache.in_flight == 0)
        assert client.stats().keys[0].consecutive_failures == 0


async def test_max_stale_stops_serving_old_prompts(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock, max_stale_seconds=30) as client:
        await client.get_prompt("greet")
        server.fault = "503"
        clock.advance(60 + 31)
        with pytest.raises(ServerError):
            await client.get_prompt("greet")


async def test_fallback_forms(server: FaultServer, clock: FakeClock) -> None:
    server.fault = "503"

    async def chat_fallback() -> list[dict[str, object]]:
        return [{"role": "system", "content": "Be brief, {{user}}."}]

    async with client_for(server, clock, retry=RetryPolicy(max_retries=0)) as client:
        empty = await client.get_prompt("greet", fallback="")
        assert empty.is_fallback and empty.prompt == ""  # an empty fallback is still one
        assert (await client.get_prompt("greet", fallback=lambda: "x")).prompt == "x"
        chat = await client.get_prompt("support", type="chat", fallback=chat_fallback)
        assert chat.is_fallback
        assert chat.compile(user="Ann") == [{"role": "system", "content": "Be brief, Ann."}]
        with pytest.raises(InvalidArgumentError):
            await client.get_prompt("greet", fallback=["not", "text"])  # type: ignore[call-overload]
        assert client.stats().fallbacks == 3
        assert client.stats().entries == 0


async def test_bad_arguments(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock) as client:
        for kwargs in ({"version": 1, "label": "x"}, {"label": ""}, {"version": 0}):
            with pytest.raises(InvalidArgumentError):
                await client.get_prompt("greet", **kwargs)
        with pytest.raises(ValueError, match="name"):
            await client.get_prompt("")
        assert server.total == 0


@pytest.mark.parametrize(
    "name",
    ["team/agent/greet", "..", "../greet", "a?b=c", "a#b", "a%2Fb", "100%", "with space",
     "ünïcødé/名前", "greet/../greeting", "x" * 1000],
)
async def test_names_reach_exactly_their_prompt(
    server: FaultServer, clock: FakeClock, name: str
) -> None:
    server.put(name, f"I am {name}")
    async with client_for(server, clock) as client:
        prompt = await client.get_prompt(name)
        assert prompt.name == name and prompt.prompt == f"I am {name}"
        assert server.requests == {name: 1}


async def test_secret_never_shown(
    server: FaultServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-lf-very-secret-value"
    caplog.set_level(logging.DEBUG)
    server.fault = "401"
    client = client_for(server, clock, public_key="pk-lf-1", secret_key=secret)
    async with client:
        with pytest.raises(FetchError) as info:
            await client.get_prompt("greet", fallback=None)
        texts = [repr(client), repr(client.source), str(info.value), repr(info.value),
                 caplog.text]
        assert all(secret not in text for text in texts)
        assert "pk-lf-1" in repr(client.source)


async def test_prefetch_reports_each_key(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock) as client:
        results = await client.prefetch(["greet", "greeting", "missing"])
        assert isinstance(results[PromptKey("greet", "production", None)], TextPrompt)
        assert isinstance(results[PromptKey("missing", "production", None)], PromptNotFoundError)
        assert server.total == 3
        await client.get_prompt("greet")
        assert server.total == 3


async def test_eviction_follows_the_latest_use(server: FaultServer, clock: FakeClock) -> None:
    # Uses since the last insertion are applied in the order of their latest use: after
    # A, B, A the least recently used of the two is B, whatever order they were first used in.
    for name in ("a", "b", "c"):
        server.put(name, name)
    async with client_for(server, clock, max_size=2) as client:
        await client.get_prompt("a")
        clock.advance(1)
        await client.get_prompt("b")
        clock.advance(1)
        await client.get_prompt("a")  # hit
        clock.advance(1)
        await client.get_prompt("b")  # hit
        clock.advance(1)
        await client.get_prompt("a")  # hit: "a" is the most recently used now
        clock.advance(1)
        await client.get_prompt("c")
        assert {k.key.name for k in client.stats().keys} == {"a", "c"}


async def test_stale_hits_do_not_suspend(server: FaultServer, clock: FakeClock) -> None:
    async with client_for(server, clock) as client:
        first = await client.get_prompt("greet")
        clock.advance(61)
        server.hold()
        for _ in range(3):  # the first starts the refresh, the others find it running
            coro = client.get_prompt("greet")
            with pytest.raises(StopIteration) as done:
                coro.send(None)
            assert done.value.value is first
        await until(lambda: server.waiting == 1)
        stats = client.stats()
        assert (stats.stale_hits, stats.refreshes, stats.misses) == (3, 1, 1)
        server.release()
