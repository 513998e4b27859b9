"""Cancellation and shutdown storms over loopback HTTP: thousands of callers cancelled at
random (seeded) points, the client closed while fetches and refreshes hang, and the sync
client closed from another thread while its callers' threads wait.

Nothing may hang (every wait is bounded), leak (no in-flight entry, no task of ours, no open
session, no loop thread) or warn (pytest turns warnings into errors; ``gc.collect()`` makes an
unclosed session or transport warn inside the test rather than later).
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from asyncpromptcache import (
    AsyncPromptClient,
    ClientStateError,
    Prompt,
    PromptClient,
    RetryPolicy,
)
from asyncpromptcache.testing import FakeClock

from .faultserver import FaultServer, fault_server
from .helpers import until, until_sync as wait_for

NO_WAIT = RetryPolicy(max_retries=2, base_delay=0.0, max_delay=0.0)
STALE = [f"stale{i}" for i in range(5)]  # fetched before the storm, then past their TTL
COLD = [f"cold{i}" for i in range(5)]  # never fetched before the storm
BOUND = 10.0


def own_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("asyncpromptcache:")]


def session_of(client: AsyncPromptClient) -> aiohttp.ClientSession:
    session = client.source._http.session  # type: ignore[attr-defined]
    assert isinstance(session, aiohttp.ClientSession)
    return session


def fill(server: FaultServer) -> None:
    for name in STALE + COLD:
        server.put(name, f"I am {name}")


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with fault_server() as s:
        fill(s)
        yield s


def client_for(server: FaultServer, clock: FakeClock) -> AsyncPromptClient:
    return AsyncPromptClient(base_url=server.base_url, clock=clock, cache_ttl_seconds=60,
                             retry=NO_WAIT, fetch_timeout_seconds=30, env={})


async def start_storm(client: AsyncPromptClient, server: FaultServer, clock: FakeClock) -> None:
    """Warm the STALE keys, put a new version of each, hold the server, make them stale."""
    await client.prefetch(STALE)
    for name in STALE:
        server.put(name, f"I am {name}, v2")
    server.hold()
    clock.advance(61)


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_thousands_of_callers_cancelled_at_random_points(
    server: FaultServer, seed: int
) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    n = 2000
    names = [rng.choice(STALE + COLD) for _ in range(n)]
    delays = [rng.randrange(150) for _ in range(n)]  # checkpoints before calling
    scopes = [anyio.CancelScope() for _ in range(n)]
    results: list[Prompt | str | None] = [None] * n
    called = 0

    async def caller(i: int) -> None:
        nonlocal called
        with scopes[i]:
            for _ in range(delays[i]):
                await anyio.lowlevel.checkpoint()
            called += 1
            results[i] = await client.get_prompt(names[i])
        if scopes[i].cancelled_caught:
            results[i] = "cancelled"

    client = client_for(server, clock)
    with anyio.fail_after(BOUND):
        async with client:
            await start_storm(client, server, clock)
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(caller, i)
                victims = rng.sample(range(n), n // 2)
                release_at = rng.randrange(len(victims))
                for j, i in enumerate(victims):
                    if j == release_at:
                        # Every fetch and refresh of the storm is held: 10 requests, no more.
                        await until(lambda: server.waiting == len(STALE + COLD))
                        server.release()
                    scopes[i].cancel()
                    if rng.random() < 0.3:
                        await anyio.lowlevel.checkpoint()
            await until(lambda: client.cache.in_flight == 0)
            stats = client.stats()
            session = session_of(client)
            assert not own_tasks()
    assert session.closed and not own_tasks()

    # Every caller got its own prompt or was cancelled; none saw an error.
    for name, result in zip(names, results, strict=True):
        assert result == "cancelled" or (
            isinstance(result, Prompt) and result.name == name
            and result.version in ((1, 2) if name in STALE else (1,))
        ), (name, result)
    # One fetch per cold key and one refresh per stale key, however many callers gave up.
    assert {name: server.requests[name] for name in STALE + COLD} == {
        **dict.fromkeys(STALE, 2), **dict.fromkeys(COLD, 1)}
    assert (stats.fetches, stats.refreshes, stats.fetch_errors, stats.refresh_errors) == (
        len(STALE + COLD), len(STALE), 0, 0)
    # Every call that reached the client is counted once; the prefetch made 5 misses.
    assert stats.hits + stats.stale_hits + stats.misses == called + len(STALE)
    assert stats.misses == stats.fetches + stats.joined
    assert stats.entries == len(STALE + COLD)
    gc.collect()


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [4, 5, 6, 7])
async def test_closing_while_fetches_and_refreshes_hang(server: FaultServer, seed: int) -> None:
    """Leave ``async with`` at a random point of a storm: callers end with a prompt, a
    ClientStateError or their cancellation, at once, and nothing stays behind."""
    rng = random.Random(seed)
    clock = FakeClock()
    n = 1000
    names = [rng.choice(STALE + COLD) for _ in range(n)]
    delays = [rng.randrange(40) for _ in range(n)]
    scopes = [anyio.CancelScope() for _ in range(n)]
    results: list[Prompt | BaseException | str | None] = [None] * n

    async def caller(i: int) -> None:
        with scopes[i]:
            for _ in range(delays[i]):
                await anyio.lowlevel.checkpoint()
            try:
                results[i] = await client.get_prompt(names[i])
            except ClientStateError as exc:
                results[i] = exc
        if scopes[i].cancelled_caught:
            results[i] = "cancelled"

    client = client_for(server, clock)
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as callers:
            async with client:
                await start_storm(client, server, clock)
                session = session_of(client)
                for i in range(n):
                    callers.start_soon(caller, i)
                for i in rng.sample(range(n), n // 10):
                    scopes[i].cancel()
                for _ in range(rng.randrange(60)):
                    await anyio.lowlevel.checkpoint()
                in_flight = client.cache.in_flight
                assert len(own_tasks()) == in_flight
            # Closed: the fetches and refreshes hanging in the server were cancelled.
            assert not own_tasks() and client.cache.in_flight == 0
            assert session.closed
    assert None not in results
    for name, result in zip(names, results, strict=True):
        if isinstance(result, Prompt):
            assert result.name == name and result.version == 1
        else:
            assert result == "cancelled" or isinstance(result, ClientStateError), result
    if in_flight:
        assert any(isinstance(r, ClientStateError) for r in results)
    with pytest.raises(ClientStateError):
        await client.get_prompt(STALE[0])
    gc.collect()


# -- the sync client -----------------------------------------------------------------------


@pytest.fixture
def threaded_server() -> Iterator[tuple[FaultServer, BlockingPortal]]:
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(fault_server()) as s,
    ):
        fill(s)
        yield s, portal


@pytest.mark.parametrize("seed", [8, 9])
def test_sync_client_closed_from_another_thread_while_threads_wait(
    threaded_server: tuple[FaultServer, BlockingPortal], seed: int
) -> None:
    server, portal = threaded_server
    rng = random.Random(seed)
    clock = FakeClock()
    before = set(threading.enumerate())
    client = PromptClient(base_url=server.base_url, clock=clock, cache_ttl_seconds=60,
                          retry=NO_WAIT, fetch_timeout_seconds=30, env={})
    client.prefetch(STALE)
    portal.call(server.hold)
    clock.advance(61)
    n = 48
    names = [rng.choice(STALE + COLD) for _ in range(n)]
    results: list[object] = [None] * n
    served = [0] * n
    barrier = threading.Barrier(n + 1)

    def call(i: int) -> None:
        barrier.wait()
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:  # a stale key is answered at once, until the close
            try:
                prompt = client.get_prompt(names[i])
            except ClientStateError as exc:
                results[i] = exc
                return
            assert (prompt.name, prompt.version) == (names[i], 1)
            served[i] += 1

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait()
    expected = len({name for name in names if name in COLD}) + len(STALE)
    wait_for(lambda: server.waiting == expected)  # every fetch and refresh hangs
    wait_for(lambda: all(served[i] for i in range(n) if names[i] in STALE))
    closer = threading.Thread(target=client.close)  # neither the maker nor a caller
    closer.start()
    closer.join(BOUND)
    for thread in threads:
        thread.join(BOUND)
    assert not closer.is_alive() and not any(t.is_alive() for t in threads)
    # Every thread ended with the close; cold keys never got an answer, stale ones always.
    assert all(isinstance(result, ClientStateError) for result in results), results
    assert all(served[i] == 0 for i in range(n) if names[i] in COLD)
    assert set(threading.enumerate()) == before  # the loop thread is gone
    assert server.total == len(STALE) + expected  # prefetch, then one request per key
    with pytest.raises(ClientStateError):
        client.get_prompt(STALE[0])
    client.close()  # idempotent
    gc.collect()
