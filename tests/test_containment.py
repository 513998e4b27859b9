"""Contained failures: bad input is refused at the door, a caller's wrong type is its own
affair, whatever a source returns or raises stays in the error tree, an invalid version or a
404 that is not Langfuse's never drops or replaces a cached prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    ChatPrompt,
    FetchError,
    FunctionSource,
    InvalidArgumentError,
    InvalidResponseError,
    PromptCacheError,
    PromptClient,
    PromptKey,
    PromptNotFoundError,
    ServerError,
    TextPrompt,
)
from asyncpromptcache.testing import FakeClock, StaticSource

from .faultserver import FaultServer, fault_server
from .helpers import client_for, until

pytestmark = pytest.mark.anyio

CHAT = [{"role": "system", "content": "Be brief."}]


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with fault_server() as s:
        s.put("greet", "Hello {{name}}")
        s.put_chat("support", CHAT)
        yield s


# -- 5. type= ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["json", "TEXT", "", None, 1])
async def test_a_bad_type_is_refused_before_any_io(server: FaultServer, bad: Any) -> None:
    async with client_for(server, FakeClock()) as client:
        await client.get_prompt("greet")
        get: Any = client.get_prompt
        for name in ("greet", "cold"):  # held and fresh, or never fetched
            with pytest.raises(InvalidArgumentError, match="type"):
                await get(name, type=bad, fallback="Hi")
        assert server.total == 1


def test_a_bad_type_is_refused_by_the_sync_facade() -> None:
    source = StaticSource([TextPrompt(name="greet", version=1, prompt="Hi",
                                      labels=["production"])])
    with PromptClient(source=source, env={}) as client:
        get: Any = client.get_prompt
        with pytest.raises(InvalidArgumentError, match="type"):
            get("greet", type="xml")
        assert source.total_fetches == 0
        assert client.get_prompt("greet").prompt == "Hi"


async def test_a_wrong_type_caller_does_not_fail_the_shared_fetch(server: FaultServer) -> None:
    """A chat caller starts the fetch of a text prompt and a text caller joins it: the text
    caller gets its prompt, the chat caller alone gets the type error (or its fallback)."""
    server.hold()
    got: dict[str, Any] = {}
    async with client_for(server, FakeClock()) as client:

        async def ask(who: str, **kwargs: Any) -> None:
            try:
                got[who] = await client.get_prompt("greet", **kwargs)
            except FetchError as exc:
                got[who] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: ask("chat", type="chat"))
            await until(lambda: server.waiting == 1)
            tg.start_soon(lambda: ask("text"))
            tg.start_soon(lambda: ask("chat-fallback", type="chat", fallback=CHAT))
            await until(lambda: client.stats().joined == 2)
            server.release()
        stats = client.stats()
    assert isinstance(got["text"], TextPrompt) and got["text"].version == 1
    assert isinstance(got["chat"], InvalidResponseError) and got["chat"].field == "type"
    assert isinstance(got["chat-fallback"], ChatPrompt) and got["chat-fallback"].is_fallback
    assert (stats.fetches, stats.fetch_errors, stats.entries) == (1, 0, 1)
    assert server.total == 1


async def test_a_wrong_type_caller_does_not_back_the_key_off(server: FaultServer) -> None:
    """The refresh a wrong-type caller starts is a good refresh for everyone else."""
    clock = FakeClock()
    async with client_for(server, clock) as client:
        await client.get_prompt("greet")
        server.put("greet", "Hello v2")
        clock.advance(61)
        with pytest.raises(InvalidResponseError):
            await client.get_prompt("greet", type="chat")  # stale: starts the refresh
        await until(lambda: client.cache.in_flight == 0)
        stats = client.stats()
        assert (stats.refreshes, stats.refresh_errors) == (1, 0)
        assert stats.keys[0].consecutive_failures == 0 and stats.keys[0].version == 2
        assert (await client.get_prompt("greet")).version == 2


# -- 9. nothing escapes the error tree ------------------------------------------------------


@pytest.mark.parametrize("value", [None, {"name": "greet"}, "Hello", 3])
async def test_a_custom_source_returning_no_prompt_is_an_invalid_response(value: Any) -> None:
    async def fetch(key: PromptKey) -> Any:
        return value

    async with AsyncPromptClient(source=FunctionSource(fetch), env={}) as client:
        with pytest.raises(InvalidResponseError, match="not a prompt"):
            await client.get_prompt("greet")
        assert (await client.get_prompt("other", fallback="Hi")).is_fallback
        assert client.stats().entries == 0 and client.cache.in_flight == 0


async def test_a_fault_in_the_engine_bookkeeping_is_contained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug after the fetch (here: storing the result, and counting a failure) never
    reaches the client's task group: callers get the prompt or a FetchError, the client
    goes on and closes cleanly."""
    source = StaticSource([TextPrompt(name="greet", version=1, prompt="Hi",
                                      labels=["production"])])
    async with AsyncPromptClient(source=source, env={}) as client:

        def broken(*args: object) -> None:
            raise RuntimeError("bookkeeping bug")

        monkeypatch.setattr(client.cache, "_put", broken)
        monkeypatch.setattr(client.cache, "_failed", broken)
        assert (await client.get_prompt("greet")).version == 1
        with pytest.raises(PromptNotFoundError):
            await client.get_prompt("missing")
        monkeypatch.undo()
        for _ in range(20):  # time for a failed task group to tear the client down
            await anyio.lowlevel.checkpoint()
        assert (await client.get_prompt("greet")).version == 1
        assert client.cache.in_flight == 0


async def test_an_error_that_cannot_be_printed_is_contained() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    async def fetch(key: PromptKey) -> TextPrompt:
        raise Unprintable

    async with AsyncPromptClient(source=FunctionSource(fetch), env={}) as client:
        with pytest.raises(FetchError):
            await client.get_prompt("greet")
        assert (await client.get_prompt("greet", fallback="Hi")).is_fallback


@pytest.mark.parametrize(
    ("fault", "error", "attempts"),
    [("deep-200", InvalidResponseError, 1), ("deep-503", ServerError, 3),
     ("deep-404", PromptNotFoundError, 1)],
)
async def test_deep_json_keeps_its_status_meaning(
    server: FaultServer, fault: str, error: type[FetchError], attempts: int
) -> None:
    """A body nested past Python's recursion limit: a typed error of what the status says."""
    clock = FakeClock()
    async with client_for(server, clock) as client:
        held = await client.get_prompt("greet")
        server.fault = fault
        with pytest.raises(FetchError) as info:
            await client.get_prompt("cold")
        assert type(info.value) is error
        assert server.requests["cold"] == attempts
        clock.advance(61)
        await client.get_prompt("greet")
        await until(lambda: client.cache.in_flight == 0)
        if error is PromptNotFoundError:
            assert client.stats().entries == 0  # a 404 still drops the key
        else:
            assert await client.get_prompt("greet") is held


# -- 10. versions count from 1 ----------------------------------------------------------------


@pytest.mark.parametrize("version", [0, -3])
async def test_a_version_below_one_replaces_nothing(server: FaultServer, version: int) -> None:
    clock = FakeClock()
    async with client_for(server, clock) as client:
        held = await client.get_prompt("greet")
        server.put("greet", "bad")
        server.prompts["greet"][-1]["version"] = version
        server.put("cold", "bad")
        server.prompts["cold"][-1]["version"] = version
        clock.advance(61)
        assert await client.get_prompt("greet") is held
        await until(lambda: client.cache.in_flight == 0)
        assert await client.get_prompt("greet") is held
        assert client.stats().keys[0].consecutive_failures == 1
        with pytest.raises(InvalidResponseError) as info:
            await client.get_prompt("cold")
        assert info.value.field == "version"


@pytest.mark.parametrize("version", [0, -1])
async def test_a_custom_source_version_below_one_is_invalid(version: int) -> None:
    async def fetch(key: PromptKey) -> TextPrompt:
        return TextPrompt(name=key.name, version=version, prompt="x")

    async def fallback(key: PromptKey) -> TextPrompt:
        return TextPrompt(name=key.name, version=1, prompt="x", is_fallback=True)

    for source in (fetch, fallback):
        async with AsyncPromptClient(source=FunctionSource(source), env={}) as client:
            with pytest.raises(InvalidResponseError) as info:
                await client.get_prompt("greet")
            assert info.value.field == "version" and client.stats().entries == 0


# -- 11. a 404 that is not Langfuse's ---------------------------------------------------------


@pytest.mark.parametrize("fault", ["html-404", "json-404"])
async def test_a_404_that_is_not_langfuses_keeps_the_cached_copy(
    server: FaultServer, fault: str
) -> None:
    clock = FakeClock()
    async with client_for(server, clock) as client:
        held = await client.get_prompt("greet")
        server.fault = fault
        clock.advance(61)
        assert await client.get_prompt("greet") is held
        await until(lambda: client.cache.in_flight == 0)
        assert await client.get_prompt("greet") is held
        assert await client.get_prompt("greet", cache_ttl_seconds=0) is held
        (key_stats,) = client.stats().keys
        assert key_stats.last_error is not None and key_stats.last_error.startswith("ServerError")
        with pytest.raises(ServerError) as info:
            await client.get_prompt("cold")
        assert info.value.status == 404 and server.requests["cold"] == 3  # retried
        server.fault = "ok"
        clock.advance(61)
        await client.get_prompt("greet")
        await until(lambda: client.cache.in_flight == 0)
        assert (await client.get_prompt("greet")).version == 1
    assert isinstance(info.value, PromptCacheError)
