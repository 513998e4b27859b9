"""Fault scenarios end to end over loopback HTTP.

One scenario per fault, the same four acts each time:

1. a key fetched before the fault keeps being served (stale while revalidate, then stale if
   error), and the failed refresh never replaces it;
2. a cold key gets its fallback, or without one the typed error of that fault, after exactly
   the attempts the retry policy allows (timeouts are small; the error type is asserted, never
   the wall time);
3. once the fault ends, the next refresh and the next cold fetch succeed;
4. nothing is left running: no in-flight fetch, no task, no open session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    AuthenticationError,
    ChatPrompt,
    FetchError,
    FetchTimeoutError,
    InvalidResponseError,
    LangfuseSource,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TextPrompt,
    TransportError,
)
from asyncpromptcache.testing import FakeClock

from .faultserver import FaultServer, fault_server
from .helpers import until

pytestmark = pytest.mark.anyio

RETRIES = 2
NO_WAIT = RetryPolicy(max_retries=RETRIES, base_delay=0.0, max_delay=0.0, max_retry_after=1.0)
TIMEOUT = 0.2
MAX_BYTES = 4096

# fault -> (error a cold key gets, whether it is retried)
SCENARIOS: dict[str, tuple[type[FetchError], bool]] = {
    "down": (TransportError, True),
    "503": (ServerError, True),
    "500": (ServerError, True),
    "html-502": (ServerError, True),
    "429": (RateLimitError, True),
    "429-retry-after": (RateLimitError, True),  # Retry-After: 0.01, honoured
    "429-retry-after-long": (RateLimitError, False),  # Retry-After: 3600, not waited for
    "hang": (FetchTimeoutError, True),
    "drop": (TransportError, True),
    "reset-mid-body": (TransportError, True),
    "slow-drip": (FetchTimeoutError, True),
    "truncated": (InvalidResponseError, False),
    "malformed": (InvalidResponseError, False),
    "latin1": (InvalidResponseError, False),
    "wrong-shape": (InvalidResponseError, False),
    "html": (InvalidResponseError, False),
    "oversized": (InvalidResponseError, False),
    "oversized-chunked": (InvalidResponseError, False),
    "wrong-name": (InvalidResponseError, False),
    "401": (AuthenticationError, False),
}


def own_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("asyncpromptcache:")]


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with fault_server() as s:
        s.max_body = MAX_BYTES
        s.put("greet", "Hello {{name}}")
        s.put("greeting", "Good day {{name}}")
        yield s


async def set_fault(server: FaultServer, fault: str) -> None:
    if fault == "down":
        await server.go_down()
    elif fault.startswith("429-retry-after"):
        server.fault = "429-retry-after"
        server.retry_after = "3600" if fault.endswith("long") else "0.01"
    else:
        server.fault = fault


async def clear_fault(server: FaultServer) -> None:
    server.fault = "ok"
    await server.come_up()


def make_source(server: FaultServer) -> LangfuseSource:
    return LangfuseSource(base_url=server.base_url, timeout_seconds=TIMEOUT, retry=NO_WAIT,
                          max_response_bytes=MAX_BYTES)


@pytest.mark.parametrize("fault", list(SCENARIOS))
async def test_fault_scenario(server: FaultServer, fault: str) -> None:
    error_type, retried = SCENARIOS[fault]
    attempts = RETRIES + 1 if retried else 1
    clock = FakeClock()
    source = make_source(server)
    try:
        async with AsyncPromptClient(source=source, clock=clock, cache_ttl_seconds=60,
                                     refresh_backoff_seconds=1, env={}) as client:
            cached = await client.get_prompt("greet")
            server.put("greet", "Hello again {{name}}")  # what the recovery must bring
            await set_fault(server, fault)
            clock.advance(61)

            # 1. The cached key is served at once, whatever the upstream does.
            for _ in range(20):
                assert await client.get_prompt("greet") is cached
            await until(lambda: client.cache.in_flight == 0)
            assert await client.get_prompt("greet") is cached
            assert await client.get_prompt("greet", cache_ttl_seconds=0) is cached
            stats = client.stats()
            assert (stats.refreshes, stats.refresh_errors) == (1, 1)
            (key_stats,) = stats.keys
            assert key_stats.version == 1 and key_stats.consecutive_failures == 2
            assert key_stats.last_error is not None
            assert key_stats.last_error.startswith(error_type.__name__)

            # 2. A cold key: its fallback, else the fault's typed error, after the attempts
            #    the retry policy allows and no more.
            before = server.requests["greeting"]
            fallback = await client.get_prompt("greeting", fallback="Hi {{name}}")
            assert fallback.is_fallback and fallback.compile(name="Al") == "Hi Al"
            sent = server.requests["greeting"] - before
            #    Without a fallback, within the negative cache: the same typed error at once.
            with pytest.raises(FetchError) as info:
                await client.get_prompt("greeting", label="production")
            assert type(info.value) is error_type, repr(info.value)
            assert info.value.name == "greeting" and "'greeting'" in str(info.value)
            assert server.requests["greeting"] - before == sent
            if fault == "drop":
                # aiohttp itself resends an idempotent request once when the server closes
                # the connection without answering (RFC 9112 9.3.1), inside one attempt.
                assert attempts <= sent <= 2 * attempts
            elif fault != "down":
                assert sent == attempts
            assert "greeting" not in {k.key.name for k in client.stats().keys}

            # 3. The fault ends: the next refresh and the next cold fetch recover.
            await clear_fault(server)
            clock.advance(10)  # past the refresh backoff
            assert await client.get_prompt("greet") is cached  # stale: starts the refresh
            await until(lambda: client.cache.in_flight == 0)
            recovered = await client.get_prompt("greet")
            assert (recovered.version, recovered.prompt) == (2, "Hello again {{name}}")
            assert client.stats().keys[0].consecutive_failures == 0
            assert (await client.get_prompt("greeting")).version == 1
            assert client.cache.in_flight == 0
    finally:
        await source.aclose()
    # 4. Nothing left behind.
    assert not own_tasks()
    assert source._http.session is None  # closed and dropped


async def test_server_down_from_the_start(server: FaultServer) -> None:
    """Never reachable: every cold key gets its fallback or a TransportError, quickly."""
    await server.go_down()
    source = make_source(server)
    clock = FakeClock()
    try:
        async with AsyncPromptClient(source=source, cache_ttl_seconds=60, clock=clock,
                                     env={}) as client:
            with anyio.fail_after(5):
                assert (await client.get_prompt("greet", fallback="fb")).is_fallback
                with pytest.raises(TransportError):
                    await client.get_prompt("greet")
                results = await client.prefetch(["greet", "greeting"])
            assert all(isinstance(r, TransportError) for r in results.values())
            await server.come_up()
            clock.advance(10)  # past the negative cache of the failures
            assert (await client.get_prompt("greet")).version == 1
    finally:
        await source.aclose()


async def test_hanging_upstream_never_blocks_hits(server: FaultServer) -> None:
    """While every refresh hangs, hits are answered without waiting for any of them."""
    clock = FakeClock()
    source = make_source(server)
    names = [f"p{i}" for i in range(20)]
    for name in names:
        server.put(name, name)
    try:
        async with AsyncPromptClient(source=source, clock=clock, cache_ttl_seconds=60,
                                     env={}) as client:
            await client.prefetch(names)
            server.hold()  # every request from now on hangs until released
            clock.advance(61)
            with anyio.fail_after(5):
                for _ in range(5):
                    for name in names:
                        assert (await client.get_prompt(name)).prompt == name
            await until(lambda: server.waiting == len(names))
            assert client.cache.in_flight == len(names)  # one refresh per key, no more
            assert len(own_tasks()) == len(names)
            server.release()
            await until(lambda: client.cache.in_flight == 0)
    finally:
        await source.aclose()
    assert not own_tasks()


async def test_a_prompt_whose_type_changes_between_versions(server: FaultServer) -> None:
    """Production moves from a text version to a chat one (Langfuse forbids it; the fault
    server does not). The key holds what the server serves; the type is each caller's own
    check: text callers get a typed error or their fallback, never a chat prompt, chat
    callers get the chat version, and when production is text again the cache follows."""
    clock = FakeClock()
    source = make_source(server)
    chat = [{"role": "system", "content": "Be brief, {{name}}."}]
    try:
        async with AsyncPromptClient(source=source, clock=clock, cache_ttl_seconds=60,
                                     refresh_backoff_seconds=1, env={}) as client:
            text = await client.get_prompt("greet")
            assert isinstance(text, TextPrompt)
            server.put_chat("greet", chat, labels=("production", "staging"))
            clock.advance(61)
            assert await client.get_prompt("greet") is text  # stale; the refresh starts
            await until(lambda: client.cache.in_flight == 0)
            (key_stats,) = client.stats().keys
            assert key_stats.version == 2 and key_stats.consecutive_failures == 0

            # A caller that asks for the text type gets a typed error naming the field...
            with pytest.raises(InvalidResponseError) as info:
                await client.get_prompt("greet")
            assert info.value.field == "type"
            # ... or its fallback, never the chat prompt.
            fallback = await client.get_prompt("greet", fallback="Hi")
            assert isinstance(fallback, TextPrompt) and fallback.is_fallback
            produced = await client.get_prompt("greet", type="chat")
            assert isinstance(produced, ChatPrompt) and produced.version == 2
            staging = await client.get_prompt("greet", type="chat", label="staging")
            assert isinstance(staging, ChatPrompt) and staging.version == 2
            assert staging.compile(name="Al") == [{"role": "system", "content": "Be brief, Al."}]
            with pytest.raises(InvalidResponseError):
                await client.get_prompt("greet", label="staging")  # text asked, chat held

            # Production becomes text again: the next refresh takes it.
            server.put("greet", "Hello v3 {{name}}")
            clock.advance(61)
            await client.get_prompt("greet", type="chat")
            await until(lambda: client.cache.in_flight == 0)
            assert (await client.get_prompt("greet")).version == 3
    finally:
        await source.aclose()
    assert not own_tasks()


async def test_client_owned_session_is_closed_after_faults(server: FaultServer) -> None:
    """The client's own source and session: closed on exit even with fetches hanging."""
    server.fault = "hang"
    client = AsyncPromptClient(base_url=server.base_url, fetch_timeout_seconds=30,
                               retry=NO_WAIT, env={})
    async with client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.get_prompt("greet", fallback="fb"))
            await until(lambda: server.total == 1)
            tg.cancel_scope.cancel()
        session = client.source._http.session  # type: ignore[attr-defined]
        assert session is not None and not session.closed
    assert session.closed
    assert not own_tasks()
