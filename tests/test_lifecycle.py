"""The client's lifecycle in real code: closed from another task,
inside an AsyncExitStack under a cancel scope, as a pytest-asyncio fixture, used from another
event loop, and entered on trio. Each closes cleanly (warnings are errors: an unclosed
session fails the test) and raises nothing outside the error tree. The response cache hosts
its task group the same way: closed from another task, on asyncio and trio."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import pytest_asyncio
from anyio.abc import TaskGroup

from asyncpromptcache import (
    AsyncPromptClient,
    ClientStateError,
    ConfigurationError,
    FunctionSource,
    LangfuseSource,
    Prompt,
    PromptKey,
    ResponseCache,
    TextPrompt,
)
from asyncpromptcache._core.runtime import HostedTaskGroup
from asyncpromptcache.response import Chunk

from .faultserver import FaultServer, fault_server, fault_server_in_thread


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with fault_server() as s:
        s.put("greet", "Hello")
        yield s


def closed_cleanly(client: AsyncPromptClient) -> bool:
    source = client.source
    assert isinstance(source, LangfuseSource)
    return source._http.session is None and client.cache.in_flight == 0 and len(client.cache) == 0


@pytest.mark.anyio
async def test_closed_from_another_task(server: FaultServer) -> None:
    client = AsyncPromptClient(base_url=server.base_url, env={})
    await client.__aenter__()
    assert (await client.get_prompt("greet")).prompt == "Hello"
    server.hold()  # a fetch in flight when it closes: cancelled, not waited for
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(client.get_prompt, "greet", version=1))
        while not server.waiting:  # noqa: ASYNC110 - the fetch reaches the server
            await anyio.sleep(0.001)
        tg.cancel_scope.cancel()  # the waiter leaves; the fetch goes on
    assert client.cache.in_flight == 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.aclose)  # another task than the one that entered
    server.release()
    assert closed_cleanly(client)
    with pytest.raises(ClientStateError, match="closed"):
        await client.get_prompt("greet", version=2)
    await client.aclose()  # idempotent


@pytest.mark.anyio
async def test_entered_in_one_task_and_closed_in_another(server: FaultServer) -> None:
    client = AsyncPromptClient(base_url=server.base_url, env={})
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.__aenter__)
    assert (await client.get_prompt("greet")).prompt == "Hello"
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.__aexit__, None, None, None)
    assert closed_cleanly(client)


@pytest.mark.anyio
async def test_in_an_exit_stack_under_a_cancel_scope(server: FaultServer) -> None:
    async with AsyncExitStack() as stack:
        with anyio.CancelScope() as scope:
            client = await stack.enter_async_context(
                AsyncPromptClient(base_url=server.base_url, env={}))
            assert (await client.get_prompt("greet")).prompt == "Hello"
            scope.cancel()
            await anyio.sleep_forever()
        # The scope the client was entered in has ended; the stack closes the client now.
    assert scope.cancelled_caught
    assert closed_cleanly(client)


@pytest.mark.anyio
async def test_a_cancel_scope_around_the_whole_use(server: FaultServer) -> None:
    with anyio.CancelScope() as scope:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                AsyncPromptClient(base_url=server.base_url, env={}))
            server.hold()
            scope.cancel()
            await client.get_prompt("greet")  # cancelled while it waits
    server.release()
    assert closed_cleanly(client)


# -- pytest-asyncio's usual fixture ----------------------------------------------------------


@pytest_asyncio.fixture
async def asyncio_client() -> AsyncIterator[tuple[AsyncPromptClient, FaultServer]]:
    async with fault_server() as s:
        s.put("greet", "Hello")
        async with AsyncPromptClient(base_url=s.base_url, env={}) as client:
            yield client, s
        assert closed_cleanly(client)


@pytest.mark.asyncio
async def test_a_pytest_asyncio_fixture(
    asyncio_client: tuple[AsyncPromptClient, FaultServer],
) -> None:
    client, server = asyncio_client
    assert (await client.get_prompt("greet")).prompt == "Hello"
    assert server.total == 1


# -- another event loop ------------------------------------------------------------------


@pytest.fixture
def threaded_server() -> Iterator[FaultServer]:
    with fault_server_in_thread() as s:
        s.put("greet", "Hello")
        yield s


def test_use_from_another_event_loop_is_a_clear_error(threaded_server: FaultServer) -> None:
    client = AsyncPromptClient(base_url=threaded_server.base_url, env={})
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        first.run_until_complete(client.__aenter__())
        assert first.run_until_complete(client.get_prompt("greet")).prompt == "Hello"
        with pytest.raises(ClientStateError, match="another event loop"):
            second.run_until_complete(client.get_prompt("greet", version=1))
        with pytest.raises(ClientStateError, match="another event loop"):
            second.run_until_complete(client.aclose())
        first.run_until_complete(client.aclose())
        assert closed_cleanly(client)
    finally:
        first.close()
        second.close()


def test_a_client_left_open_closes_with_its_loop(threaded_server: FaultServer) -> None:
    client = AsyncPromptClient(base_url=threaded_server.base_url, env={})

    async def open_and_leave() -> None:
        await client.__aenter__()
        await client.get_prompt("greet")

    asyncio.run(open_and_leave())  # the loop ends with the client open: it closes it
    assert closed_cleanly(client)
    with pytest.raises(ClientStateError, match="event loop"):
        asyncio.run(client.get_prompt("greet", version=1))
    asyncio.run(client.aclose())  # already closed: nothing to do


# -- trio ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_http_source_on_trio_is_a_configuration_error(anyio_backend: str) -> None:
    client = AsyncPromptClient(base_url="http://127.0.0.1:9", env={})
    with pytest.raises(ConfigurationError, match="source="):
        await client.__aenter__()
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_other_sources_run_on_trio(anyio_backend: str) -> None:
    fetched: list[PromptKey] = []

    async def fetch(key: PromptKey) -> Prompt:
        fetched.append(key)
        await anyio.lowlevel.checkpoint()
        return TextPrompt(name=key.name, version=1, prompt="from trio")

    async with AsyncPromptClient(source=FunctionSource(fetch), env={}) as client:
        async with anyio.create_task_group() as tg:  # single-flight on trio too
            for _ in range(5):
                tg.start_soon(client.get_prompt, "greet")
        assert (await client.get_prompt("greet")).prompt == "from trio"
    assert fetched == [PromptKey("greet", "production", None)]
    with pytest.raises(ClientStateError):
        await client.get_prompt("other")


# -- the response cache ----------------------------------------------------------------------

REQUEST: dict[str, Any] = {"model": "m", "temperature": 0, "messages": []}


def state(cache: ResponseCache) -> str:
    return cache.state  # read anew each time (not narrowed by an earlier assert)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_response_cache_entered_in_one_task_closes_from_another(
    anyio_backend: str,
) -> None:
    held = anyio.Event()

    async def produce() -> AsyncIterator[Chunk]:
        yield "a"
        yield "b"
        await held.wait()  # in flight when the cache closes: never released
        yield "c"

    async def whole() -> AsyncIterator[Chunk]:
        for chunk in ("x", "y", "z"):
            yield chunk

    cache = ResponseCache()
    async with anyio.create_task_group() as tg:
        tg.start_soon(cache.__aenter__)
    assert state(cache) == "open"
    stored = {**REQUEST, "seed": 1}
    assert [c async for c in cache.stream(stored, whole)] == ["x", "y", "z"]
    replay = cache.stream(stored, whole)
    assert await replay.start() == "hit" and await anext(replay) == "x"
    in_flight = cache.stream(REQUEST, produce)
    assert [await anext(in_flight), await anext(in_flight)] == ["a", "b"]
    waiting: list[BaseException] = []

    async def wait_for_more() -> None:  # a consumer of the stream in flight, in its own task
        joined = cache.stream(REQUEST, produce)
        try:
            async for _ in joined:
                pass
        except ClientStateError as exc:
            waiting.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_for_more)
        while cache.stats().joins == 0:
            await anyio.lowlevel.checkpoint()
        async with anyio.create_task_group() as closer:
            closer.start_soon(cache.aclose)  # neither the task that entered nor a reader
    assert state(cache) == "closed" and cache.stats().in_flight == 0
    # The stream in flight was cancelled: its consumers get ClientStateError after their
    # chunks, as aclose says; the replay is the caller's own and goes on.
    assert len(waiting) == 1 and "closed while the answer was streaming" in str(waiting[0])
    with pytest.raises(ClientStateError, match="closed while the answer was streaming"):
        await anext(in_flight)
    assert [c async for c in replay] == ["y", "z"]
    with pytest.raises(ClientStateError, match="closed"):
        await cache.stream({**REQUEST, "seed": 2}, produce).start()
    await cache.aclose()  # idempotent
    await anyio.lowlevel.checkpoint()  # this task was cancelled by none of it


@pytest.mark.anyio
async def test_a_response_cache_in_an_exit_stack_under_a_cancel_scope() -> None:
    async def produce() -> AsyncIterator[Chunk]:
        yield "a"

    async with AsyncExitStack() as stack:
        with anyio.CancelScope() as scope:
            cache = await stack.enter_async_context(ResponseCache())
            assert [c async for c in cache.stream(REQUEST, produce)] == ["a"]
            scope.cancel()
            await anyio.sleep_forever()
        # The scope the cache was entered in has ended; the stack closes the cache now.
        assert state(cache) == "open"
    assert scope.cancelled_caught and state(cache) == "closed"


def test_a_response_cache_left_open_closes_with_its_loop() -> None:
    cache = ResponseCache()

    async def open_and_leave() -> None:
        await cache.__aenter__()
        stream = cache.stream(REQUEST, _forever)
        assert await stream.start() == "miss"  # in flight as the loop ends

    asyncio.run(open_and_leave())
    assert state(cache) == "closed" and cache.stats().in_flight == 0
    asyncio.run(cache.aclose())  # already closed: nothing to do


async def _forever() -> AsyncIterator[Chunk]:
    yield "a"
    await anyio.sleep_forever()


# -- the host itself -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_hosted_group_that_fails_tells_its_owner_and_a_close_error_reaches_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom() -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError("boom")

    async def failing(tg: TaskGroup) -> None:
        tg.start_soon(boom)

    seen: list[BaseException | None] = []
    failed = HostedTaskGroup("a failing owner", name="test-host")

    async def closed() -> None:
        seen.append(failed.error)

    await failed.start(failing, closed=closed)
    while not failed.stopped:  # the host's own end
        await anyio.lowlevel.checkpoint()
    assert isinstance(seen[0], ValueError) and not failed.stopping
    assert "the task group of a failing owner failed" in caplog.text
    await failed.stop()  # over already: nothing to do

    async def nothing(tg: TaskGroup) -> None:
        pass

    async def closing_fails() -> None:
        raise OSError("the store would not close")

    group = HostedTaskGroup("an owner", name="test-host")
    await group.start(nothing, closed=closing_fails)
    with pytest.raises(OSError, match="would not close"):
        await group.stop()
    assert group.stopped
    await group.stop()  # raised once
