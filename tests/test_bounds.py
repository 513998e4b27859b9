"""Bounded waits and cheap bookkeeping: a caller's own budget, one deadline per fetch, the
negative cache of failed cold keys, ``ttl=0`` from any source, ``stats()`` on a big cache.

Times here are small and only bound how long a broken build would hang; what is asserted is
counts, error types and states, never the wall time.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    ConfigurationError,
    FetchTimeoutError,
    FunctionSource,
    LangfuseSource,
    PromptKey,
    PromptNotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TextPrompt,
)
from asyncpromptcache._prompts import engine as cache_module
from asyncpromptcache._prompts.engine import AsyncPromptCache
from asyncpromptcache._prompts.source import FetchOptions
from asyncpromptcache.testing import FakeClock

from .faultserver import FaultServer, fault_server
from .helpers import client_for, until

pytestmark = pytest.mark.anyio



@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with fault_server() as s:
        s.put("greet", "Hello {{name}}")
        yield s


# -- 1. a caller's own budget bounds its own wait -------------------------------------------


async def test_a_joiner_waits_only_its_own_budget(server: FaultServer) -> None:
    """A caller with a short budget joins a fetch started by one with a long budget: it gets
    its fallback or a typed error when its own budget runs out; the fetch goes on, once."""
    server.hold()  # the upstream answers only when released
    results: dict[str, object] = {}
    async with client_for(server, FakeClock(), fetch_timeout_seconds=30) as client:
        async with anyio.create_task_group() as tg:

            async def patient() -> None:
                results["patient"] = await client.get_prompt("greet")

            tg.start_soon(patient)
            await until(lambda: server.waiting == 1)
            with anyio.fail_after(5):  # on a broken build the joiners wait for the release
                with pytest.raises(FetchTimeoutError) as info:
                    await client.get_prompt("greet", fetch_timeout_seconds=0.05, max_retries=0)
                assert info.value.name == "greet"
                fallback = await client.get_prompt(
                    "greet", fallback="Hi", fetch_timeout_seconds=0.05, max_retries=1)
            assert fallback.is_fallback
            assert "patient" not in results and client.cache.in_flight == 1
            server.release()
        stats = client.stats()
    assert isinstance(results["patient"], TextPrompt) and results["patient"].version == 1
    assert server.total == 1
    assert (stats.joined, stats.wait_timeouts, stats.fetch_errors) == (2, 2, 0)


async def test_a_joiner_whose_budget_runs_out_gets_the_stale_copy(server: FaultServer) -> None:
    """``ttl=0`` with a copy held: past its own budget the caller gets that copy."""
    clock = FakeClock()
    async with client_for(server, clock, fetch_timeout_seconds=30) as client:
        held = await client.get_prompt("greet")
        server.hold()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.get_prompt("greet", cache_ttl_seconds=0))
            await until(lambda: server.waiting == 1)
            with anyio.fail_after(5):
                assert await client.get_prompt(
                    "greet", cache_ttl_seconds=0, fetch_timeout_seconds=0.05,
                    max_retries=0) is held
            server.release()


# -- 2. the budget is a deadline ------------------------------------------------------------


class Sleeps:
    """A ``sleep`` for ``LangfuseSource`` that returns at once, moving a fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)


async def test_a_retry_after_past_the_deadline_ends_the_retries(server: FaultServer) -> None:
    """A 429 asking for 10 s when the call's deadline (0.2 s x 3 attempts) is nearer: no
    wait, no retry, the RateLimitError at once."""
    server.fault = "429-retry-after"
    server.retry_after = "10"
    clock = FakeClock()
    sleeps = Sleeps(clock)
    source = LangfuseSource(base_url=server.base_url, timeout_seconds=0.2,
                            retry=RetryPolicy(max_retries=2), sleep=sleeps, clock=clock)
    try:
        with pytest.raises(RateLimitError) as info:
            await source.fetch(PromptKey("greet", "production", None), FetchOptions())
    finally:
        await source.aclose()
    assert info.value.retry_after == 10
    assert sleeps.slept == [] and server.total == 1


async def test_backoff_waits_count_against_the_deadline(server: FaultServer) -> None:
    """Ten retries allowed, but each wait of 2.5 s eats the budget of 11 x 2 s: the call
    stops when the next wait would end past its deadline. (The waits are on the fake clock;
    each attempt's own timeout is real, so it is long enough for a loaded machine.)"""
    server.fault = "503"
    clock = FakeClock()
    sleeps = Sleeps(clock)
    policy = RetryPolicy(max_retries=10, base_delay=2.5, max_delay=2.5, rng=lambda: 1.0)
    source = LangfuseSource(base_url=server.base_url, timeout_seconds=2.0, retry=policy,
                            sleep=sleeps, clock=clock)
    try:
        with pytest.raises(ServerError):
            await source.fetch(PromptKey("greet", "production", None), FetchOptions())
    finally:
        await source.aclose()
    assert sum(sleeps.slept) < policy.budget_seconds(2.0) == pytest.approx(22.0)
    assert sleeps.slept == [2.5] * 8 and server.total == 9


def test_the_policy_gives_up_on_a_wait_past_the_deadline() -> None:
    policy = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=1.0, rng=lambda: 1.0)
    error = ServerError("x", status=503)
    assert policy.delay(1, error) == 1.0
    assert policy.delay(1, error, remaining=1.5) == 1.0
    assert policy.delay(1, error, remaining=1.0) is None
    limited = RateLimitError("x", retry_after=3.0)
    assert policy.delay(1, limited, remaining=3.5) == 3.0
    assert policy.delay(1, limited, remaining=2.0) is None
    assert policy.budget_seconds(0.5) == 3.0


async def test_a_hung_custom_source_is_cut_off_at_the_call_budget() -> None:
    """The client's safety net for any source: timeout x attempts (and a little), not the
    old worst case with every Retry-After added (11 s here)."""

    async def hang(key: PromptKey) -> TextPrompt:
        await anyio.sleep_forever()
        raise AssertionError

    async with AsyncPromptClient(source=FunctionSource(hang), clock=FakeClock(),
                                 env={}) as client:
        with anyio.fail_after(5):
            with pytest.raises(FetchTimeoutError):
                await client.get_prompt("greet", fetch_timeout_seconds=0.05, max_retries=1)
        with anyio.fail_after(3):  # the fetch itself ended, not only this caller's wait
            while client.cache.in_flight:  # noqa: ASYNC110
                await anyio.sleep(0.005)


# -- 3. the negative cache ------------------------------------------------------------------


async def test_a_missing_prompt_with_a_fallback_is_asked_for_once_per_window(
    server: FaultServer,
) -> None:
    clock = FakeClock()
    async with client_for(server, clock) as client:
        for _ in range(50):
            prompt = await client.get_prompt("missing", fallback="Hi")
            assert prompt.is_fallback
        with pytest.raises(PromptNotFoundError):
            await client.get_prompt("missing")
        assert server.requests["missing"] == 1
        stats = client.stats()
        assert (stats.negative_hits, stats.negative_entries, stats.fallbacks) == (50, 1, 50)
        server.put("missing", "Now here")
        clock.advance(4.9)
        assert (await client.get_prompt("missing", fallback="Hi")).is_fallback
        clock.advance(0.2)  # the window (5 s by default) is over: asked again
        assert (await client.get_prompt("missing")).prompt == "Now here"
        assert server.requests["missing"] == 2 and client.stats().negative_entries == 0


async def test_an_outage_costs_one_fetch_per_cold_key_per_window(server: FaultServer) -> None:
    clock = FakeClock()
    server.fault = "503"
    async with client_for(server, clock, negative_cache_seconds=2) as client:
        for _ in range(20):
            with pytest.raises(ServerError):
                await client.get_prompt("greet")
        assert server.total == 3  # one fetch: its 3 attempts
        assert client.stats().fetch_errors == 1
        server.fault = "ok"
        clock.advance(2)
        assert (await client.get_prompt("greet")).version == 1


async def test_the_negative_cache_yields_to_ttl_zero_invalidation_and_can_be_off(
    server: FaultServer,
) -> None:
    clock = FakeClock()
    async with client_for(server, clock) as client:
        with pytest.raises(PromptNotFoundError):
            await client.get_prompt("missing")
        server.put("missing", "Here")
        assert (await client.get_prompt("missing", cache_ttl_seconds=0)).prompt == "Here"
        client.invalidate("missing")
        server.prompts.pop("missing")
        with pytest.raises(PromptNotFoundError):
            await client.get_prompt("missing")
        server.put("missing", "Back")
        assert client.invalidate("missing") == 0  # drops the negative entry too
        assert (await client.get_prompt("missing")).prompt == "Back"
    server.requests.clear()
    async with client_for(server, clock, negative_cache_seconds=0) as client:
        for _ in range(3):
            with pytest.raises(PromptNotFoundError):
                await client.get_prompt("nobody")
    assert server.requests["nobody"] == 3


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "soon"])
def test_negative_cache_seconds_is_checked(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="negative_cache_seconds"):
        AsyncPromptClient(negative_cache_seconds=bad, env={})


# -- 8. cache_ttl_seconds=0 from any source ---------------------------------------------------


@pytest.mark.parametrize("given", ["call", "constructor", "env"])
async def test_ttl_zero_behaves_the_same_however_given(server: FaultServer, given: str) -> None:
    """Every call waits for a fetch (single-flight), including while one is in flight and
    when another caller stored the key with a TTL."""
    clock = FakeClock()
    options: dict[str, Any] = {"cache_ttl_seconds": 60}
    if given == "constructor":
        options["cache_ttl_seconds"] = 0
    elif given == "env":
        options = {"cache_ttl_seconds": None,
                   "env": {"LANGFUSE_PROMPT_CACHE_TTL_SECONDS": "0"}}
    per_call: dict[str, Any] = {"cache_ttl_seconds": 0} if given == "call" else {}
    async with client_for(server, clock, **options) as client:
        assert (await client.get_prompt("greet", **per_call)).version == 1
        server.put("greet", "v2")
        server.hold()
        got: list[int] = []

        async def call() -> None:
            got.append((await client.get_prompt("greet", **per_call)).version)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await until(lambda: server.waiting == 1)
            tg.start_soon(call)  # joins the fetch in flight; is not served v1
            await until(lambda: client.stats().joined == 1)
            server.release()
        assert got == [2, 2] and server.total == 2
        # A copy stored with a TTL by some other call does not answer a TTL-0 call.
        await client.get_prompt("greet", cache_ttl_seconds=60)  # stale: refreshed with TTL 60
        await until(lambda: client.cache.in_flight == 0)
        assert server.total == 3
        assert (await client.get_prompt("greet", **per_call)).version == 2
        assert server.total == 4


# -- 20. stats() on a big cache -------------------------------------------------------------


async def test_stats_on_a_big_cache_builds_per_key_detail_only_when_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = 0
    real = cache_module.KeyStats

    def counting(**fields: Any) -> Any:
        nonlocal built
        built += 1
        return real(**fields)

    monkeypatch.setattr(cache_module, "KeyStats", counting)
    clock = FakeClock()
    cache = AsyncPromptCache(max_size=50_000, clock=clock)
    prompt = TextPrompt(name="p", version=1, prompt="x")
    for i in range(50_000):
        cache._put((f"p{i}", "production", None), prompt, 60)
    stats = cache.stats()
    assert built == 0 and stats.entries == 50_000
    clock.advance(61)
    cache.clear()
    keys = stats.keys  # as they were when stats() was called
    assert built == 50_000 and len(keys) == 50_000 and stats.keys is keys
    assert keys[0].key == PromptKey("p0", "production", None) and keys[0].fresh
    assert keys[-1].age_seconds == 0 and keys[-1].version == 1
    assert cache.stats().keys == ()


async def test_an_entry_costs_about_the_prompt_not_a_set_per_index() -> None:
    """What the cache allocates per entry it holds (traced bytes, not time): the entry, its
    place in the LRU store and the indexes, without a set or an empty frozenset per entry in
    the composition index (those once took 450 of 930 bytes an entry)."""
    import gc
    import tracemalloc

    from asyncpromptcache import FunctionSource, TextPrompt

    count = 5000
    prompts = {f"p{i}": TextPrompt(name=f"p{i}", version=1, prompt=f"hello {i}",
                                   labels=["production"]) for i in range(count)}

    async def lookup(key: PromptKey) -> TextPrompt:
        return prompts[key.name]

    async with AsyncPromptClient(source=FunctionSource(lookup), max_size=2 * count,
                                 cache_ttl_seconds=600, env={}) as client:
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for name in prompts:
                await client.get_prompt(name)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert client.stats().entries == count
    assert held / count < 650, held / count
