"""The hit path's index of default-label entries by their name string (``hit_path()``'s
``by_name``): it must follow every change of the entries it mirrors, exactly."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    ClientStateError,
    InvalidArgumentError,
    PromptClient,
    PromptKey,
    PromptNotFoundError,
    TextPrompt,
)
from asyncpromptcache.testing import FakeClock, StaticSource

pytestmark = pytest.mark.anyio

TTL = 60.0


def _prompt(name: str, version: int = 1, labels: tuple[str, ...] = ("production",)) -> TextPrompt:
    return TextPrompt(name=name, version=version, prompt=f"{name} v{version}", labels=list(labels))


def _client(source: StaticSource, clock: FakeClock, max_size: int = 16) -> AsyncPromptClient:
    return AsyncPromptClient(source=source, cache_ttl_seconds=TTL, max_size=max_size,
                             clock=clock, env={})


def _by_name(client: AsyncPromptClient) -> dict[str, object]:
    return client.cache.hit_path()[1]


def _default(name: str) -> PromptKey:
    return PromptKey(name, "production", None)


async def test_a_name_hits_the_entry_its_default_label_fetched_and_no_other() -> None:
    source = StaticSource([_prompt("a"), _prompt("a", 2, ("staging",)), _prompt("ab")])
    async with _client(source, FakeClock()) as client:
        assert (await client.get_prompt("a", label="production")).version == 1
        # One entry, found by the name alone and by the explicit default label.
        assert (await client.get_prompt("a")).version == 1
        assert (await client.get_prompt("a", label="production")).version == 1
        assert (await client.get_prompt("a", label="staging")).version == 2
        assert (await client.get_prompt("a", version=2)).version == 2
        assert source.fetches == {_default("a"): 1, PromptKey("a", "staging", None): 1,
                                  PromptKey("a", None, 2): 1}
        assert set(_by_name(client)) == {"a"}
        stats = client.stats()
        assert (stats.hits, stats.misses, stats.entries) == (2, 3, 3)
        # A key tuple or a PromptKey passed as the name is never found in the index.
        with pytest.raises(InvalidArgumentError):
            await client.get_prompt(("a", "staging", None))  # type: ignore[call-overload]
        with pytest.raises(InvalidArgumentError):
            await client.get_prompt(PromptKey("a", "staging", None))  # type: ignore[call-overload]
        with pytest.raises(InvalidArgumentError):
            await client.get_prompt(["a"])  # type: ignore[call-overload]
        assert client.stats().hits == 2


async def test_invalidating_a_name_or_its_default_label_drops_the_name_entry() -> None:
    source = StaticSource([_prompt("a"), _prompt("a", 2, ("staging",)), _prompt("ab")])
    async with _client(source, FakeClock()) as client:
        for name in ("a", "ab"):
            await client.get_prompt(name)
        await client.get_prompt("a", label="staging")
        assert set(_by_name(client)) == {"a", "ab"}

        assert client.invalidate("a", label="staging") == 1
        assert set(_by_name(client)) == {"a", "ab"}  # another label of "a": kept
        assert client.invalidate("a", label="production") == 1
        assert set(_by_name(client)) == {"ab"}
        await client.get_prompt("a")
        assert source.fetches[_default("a")] == 2

        assert client.invalidate("a") == 1  # every key of "a", never "ab"
        assert set(_by_name(client)) == {"ab"}
        await client.get_prompt("a")
        await client.get_prompt("ab")
        assert source.fetches[_default("a")] == 3
        assert source.fetches[_default("ab")] == 1

        assert client.clear() == 2
        assert _by_name(client) == {}
        await client.get_prompt("ab")
        assert source.fetches[_default("ab")] == 2


async def test_eviction_and_a_removed_prompt_drop_the_name_entry() -> None:
    source = StaticSource([_prompt("a"), _prompt("b"), _prompt("c")])
    async with _client(source, FakeClock(), max_size=2) as client:
        await client.get_prompt("a")
        await client.get_prompt("b")
        await client.get_prompt("a")  # a hit by name: "b" is now the least recently used
        await client.get_prompt("c")
        assert set(_by_name(client)) == {"a", "c"}
        assert client.stats().evictions == 1
        await client.get_prompt("a")
        assert source.fetches[_default("a")] == 1  # still held, found by its name
        await client.get_prompt("b")  # evicts "c", the least recently used now
        assert set(_by_name(client)) == {"a", "b"}
        assert source.fetches[_default("b")] == 2

        # A prompt gone upstream (a 404 on refresh) leaves both indexes.
        source.remove("a")
        with pytest.raises(PromptNotFoundError):
            await client.get_prompt("a", cache_ttl_seconds=0)
        assert set(_by_name(client)) == {"b"}
        assert len(client.cache) == 1


async def test_a_stale_entry_is_found_by_name_and_its_refresh_reindexes_it() -> None:
    clock = FakeClock()
    source = StaticSource([_prompt("a")])
    async with _client(source, clock) as client:
        await client.get_prompt("a")
        source.add(_prompt("a", 2))
        clock.advance(TTL + 1)
        assert (await client.get_prompt("a")).version == 1  # stale: served, refresh started
        for _ in range(100):  # let the refresh run
            if not client.cache.in_flight:
                break
            await anyio.lowlevel.checkpoint()
        fresh = await client.get_prompt("a")
        assert fresh.version == 2
        assert _by_name(client)["a"] is client.cache.hit_path()[0][_default("a")]
        assert client.stats().stale_hits == 1


async def test_expire_all_reaches_the_entries_found_by_name() -> None:
    """What the shared tier does when it may have missed an invalidation: every entry stale,
    the next use of each revalidates, asked for by name or not."""
    source = StaticSource([_prompt("a"), _prompt("b")])
    async with _client(source, FakeClock()) as client:
        await client.get_prompt("a")
        await client.get_prompt("b")
        assert client.cache.expire_all() == 2
        assert _by_name(client)["a"] is client.cache.hit_path()[0][_default("a")]
        await client.get_prompt("a")
        await client.get_prompt("b", label="production")
        stats = client.stats()
        assert (stats.hits, stats.stale_hits, stats.refreshes) == (0, 2, 2)


async def test_a_client_whose_ttl_is_zero_never_serves_by_name_without_a_fetch() -> None:
    """Its calls fetch as ``ttl=0`` calls do: a caller by name joins the fetch in flight
    rather than take the copy held (which the inlined stale path would serve)."""
    source = StaticSource([_prompt("a")])
    async with AsyncPromptClient(source=source, cache_ttl_seconds=0, env={}) as client:
        assert (await client.get_prompt("a")).version == 1
        source.add(_prompt("a", 2))
        source.hold()
        got: list[int] = []

        async def call() -> None:
            got.append((await client.get_prompt("a")).version)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            while not source.waiting:
                await anyio.lowlevel.checkpoint()
            tg.start_soon(call)
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            source.release()
        assert got == [2, 2]
        assert source.fetches[_default("a")] == 2
        assert client.stats().hits == 0


async def test_restore_indexes_default_label_entries_by_name() -> None:
    source = StaticSource([_prompt("a"), _prompt("a", 2, ("staging",))])
    async with _client(source, FakeClock()) as parent:
        await parent.get_prompt("a")
        await parent.get_prompt("a", label="staging")
        snapshot = parent.cache.snapshot()
    other = StaticSource()  # the child could fetch nothing: every hit must come from restore
    child = _client(other, FakeClock())
    assert child.cache.restore(snapshot) == 2
    async with child:
        assert (await child.get_prompt("a")).version == 1
        assert (await child.get_prompt("a", label="staging")).version == 2
        assert set(_by_name(child)) == {"a"}
        assert other.total_fetches == 0
        assert child.stats().hits == 2


def test_sync_facade_hits_by_name_until_invalidated_or_closed() -> None:
    source = StaticSource([_prompt("a")])
    client = PromptClient(source=source, cache_ttl_seconds=TTL, env={})
    try:
        first = client.get_prompt("a")
        assert client.get_prompt("a") is first
        assert client.get_prompt("a", label="production") is first
        assert client.stats().hits == 2
        assert client.invalidate("a") == 1
        client.get_prompt("a")
        assert source.total_fetches == 2
    finally:
        client.close()
    # Closed: a name that was held is not served from the index any more.
    with pytest.raises(ClientStateError):
        client.get_prompt("a")


async def test_options_given_by_position_are_refused_on_a_hit_and_on_a_miss() -> None:
    """The options are keyword-only as typed, also where the hit path's signature takes
    them by position (for its speed): one given by position is refused, never ignored."""
    source = StaticSource([_prompt("a"), _prompt("a", 2, ("staging",))])
    async with _client(source, FakeClock()) as client:
        assert (await client.get_prompt("a")).version == 1
        for args in ((2,), (None, "staging"), (None, None, "text")):
            with pytest.raises(InvalidArgumentError, match="by keyword"):
                await client.get_prompt("a", *args)
            with pytest.raises(InvalidArgumentError, match="by keyword"):
                await client.get_prompt("cold", *args)
        assert source.fetches == {_default("a"): 1}
        assert client.stats().hits == 0
