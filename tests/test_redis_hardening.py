"""The shared tier against what a Redis others can write may hold, and against its own
failures: foreign set members, values nested too deep, lone surrogates, forged or unsigned
change messages, a bad URL, an outage at start or mid-write. None of it fails a caller or
closes a client (a real redis-server, as in test_redis_tier.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    ClientStateError,
    ConfigurationError,
    PromptKey,
    RedisTier,
    SharedStreamLostError,
    TextPrompt,
)
from asyncpromptcache._prompts import shared as redis_module, shared_values
from asyncpromptcache._prompts.shared_format import Names, namespace_id
from asyncpromptcache.response._redis import RedisResponses
from asyncpromptcache.response._wire import ResponseNames, encode_chunk_entry
from asyncpromptcache.testing import StaticSource
from devkit.redisserver import RedisServer, free_port

from .helpers import HOST, fleet, raw_redis, text, until as wait_until

pytestmark = pytest.mark.anyio

DEEP = b"[" * 100_000  # json.loads recurses past the interpreter's limit on it


def shared_stats(client: AsyncPromptClient) -> Any:
    stats = client.stats().shared
    assert stats is not None
    return stats


def fresh(client: AsyncPromptClient, name: str) -> bool:
    return any(k.fresh for k in client.stats().keys if k.key.name == name)


# -- 1. errors in propagation never reach the client's task group --------------------------


async def test_a_foreign_non_utf8_member_of_an_index_set_does_not_close_the_client(
    redis_url: str,
) -> None:
    async with fleet(redis_url, text("a")) as f:
        client = await f.client()
        await client.get_prompt("a")
        async with raw_redis(redis_url) as r:
            for index in await r.keys("*:i"):
                await r.sadd(index, b"\xff\xfe")
        client.invalidate("a")
        await wait_until(lambda: shared_stats(client).changes_sent == 1)
        assert client._state == "open"
        assert (await client.get_prompt("a")).prompt == "a v1"
        assert f.source.total_fetches == 2  # the value was dropped from L2 all the same


async def test_lone_surrogates_round_trip_through_the_tier(redis_url: str) -> None:
    odd = "a\ud800b"
    async with fleet(redis_url, text("a", body=odd)) as f:
        one, two = await f.client(), await f.client()
        assert (await one.get_prompt("a")).prompt == odd
        assert (await two.get_prompt("a")).prompt == odd  # from L2
        assert f.source.total_fetches == 1
        async with raw_redis(redis_url) as r:
            assert await r.keys("*:l:*") == []  # the fetch's lock was released
        # A write through with one (its put is written to L2 by the client's task group).
        await one.create_prompt(name="a", prompt="c\udfffd", labels=["production"])
        await wait_until(lambda: shared_stats(two).changes_received == 1)
        assert one._state == two._state == "open"
        assert (await two.get_prompt("a")).prompt == "c\udfffd"


async def test_a_change_that_fails_to_send_is_dropped_not_raised(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> bytes:
        raise RuntimeError("cannot encode")

    async with fleet(redis_url, text("a")) as f:
        client = await f.client()
        await client.get_prompt("a")
        monkeypatch.setattr(redis_module, "encode_change", broken)
        client.invalidate("a")
        await wait_until(lambda: shared_stats(client).redis_errors == 1)
        assert client._state == "open"
        monkeypatch.undo()
        assert (await client.get_prompt("a")).prompt == "a v1"


async def test_a_foreign_non_utf8_key_does_not_break_clearing_answers(redis_url: str) -> None:
    names = ResponseNames.of("test")
    async with raw_redis(redis_url) as r:
        await r.set(names.pattern[:-1].encode() + b"\xff:a", b"foreign")
        await r.set(names.answer("k" * 64), b"ours")
    shared = RedisResponses(RedisTier(redis_url, namespace="test"))
    try:
        assert await shared.clear() == 1
    finally:
        await shared.aclose()


# -- 2. a fetch whose L2 write fails still returns, and frees the fleet's lock --------------


async def test_a_fetch_that_cannot_be_written_to_l2_is_returned_and_its_lock_freed(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> bytes:
        raise RuntimeError("cannot encode")

    async with fleet(redis_url, text("a")) as f:
        client = await f.client()
        monkeypatch.setattr(shared_values, "encode_value", broken)
        assert (await client.get_prompt("a")).prompt == "a v1"
        assert shared_stats(client).redis_errors == 1
        async with raw_redis(redis_url) as r:
            assert await r.keys("*:l:*") == []


# -- 3. values nested too deep are rejected values, never caller errors ---------------------


async def test_a_value_nested_too_deep_is_rejected_not_raised(
    redis_url: str, redis_server: RedisServer,
) -> None:
    names = Names(namespace_id("test", HOST, None))
    async with raw_redis(redis_url) as r:
        await r.set(names.value(PromptKey("a", "production", None)), b"apc1.-." + DEEP)
    async with fleet(redis_url, text("a")) as f:
        client = await f.client()
        assert (await client.get_prompt("a")).prompt == "a v1"
        assert shared_stats(client).rejected_values == 2  # read, and read again under the lock


async def test_a_dependents_member_nested_too_deep_is_skipped(redis_url: str) -> None:
    async with fleet(redis_url, text("a"), text("b")) as f:
        one, two = await f.client(), await f.client()
        await one.get_prompt("b")
        await two.get_prompt("b")
        names = Names(namespace_id("test", HOST, None))
        async with raw_redis(redis_url) as r:
            await r.sadd(names.dependents("b"), DEEP)
        one.invalidate("b")  # its dependents are looked up in L2 (composed prompts)
        await wait_until(lambda: shared_stats(two).changes_received == 1)
        assert shared_stats(one).redis_errors == 0


async def test_a_change_message_nested_too_deep_is_ignored(redis_url: str) -> None:
    names = Names(namespace_id("test", HOST, None))
    async with fleet(redis_url, text("a"), text("b")) as f:
        one, two = await f.client(), await f.client()
        await one.get_prompt("b")
        async with raw_redis(redis_url) as r:
            await r.publish(names.channel, DEEP)
        await two.get_prompt("b")
        two.invalidate("b")
        await wait_until(lambda: shared_stats(one).changes_received == 1)
        stats = shared_stats(one)
        assert stats.outages == 0 and stats.redis_errors == 0 and stats.state == "up"


async def test_response_values_and_entries_nested_too_deep_are_rejected(
    redis_url: str,
) -> None:
    tier = RedisTier(redis_url, namespace="test")
    names = ResponseNames.of("test")
    key = "k" * 64
    async with raw_redis(redis_url) as r:
        await r.set(names.answer(key), b"apr1.-." + DEEP)
        await r.xadd(names.stream(key), {b"e": b"apr1.-." + DEEP})
        await r.set(names.lock(key), b"someone")
    shared = RedisResponses(tier)
    try:
        assert await shared.fetch(key) is None
        assert shared.stats().rejected_values == 1
        with pytest.raises(SharedStreamLostError, match="not one to serve"):
            async for _ in shared.follow(key):
                pass
        assert shared.stats().rejected_values == 2
        # A well-formed entry is still followed (the check above is not a blanket refusal).
        async with raw_redis(redis_url) as r:
            await r.delete(names.stream(key))
            await r.xadd(names.stream(key), {b"e": encode_chunk_entry(key, 0, "hi", None)})
        follower = shared.follow(key)
        assert await follower.__anext__() == "hi"
        await follower.aclose()
    finally:
        await shared.aclose()


# -- 4. a URL redis-py cannot use is a configuration error; a failed link is L1-only --------


def test_a_url_redis_py_cannot_use_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="notaport"):
        RedisTier("redis://127.0.0.1:notaport/0")
    with pytest.raises(ConfigurationError) as caught:
        RedisTier("redis://user:hunter2@127.0.0.1:notaport/0")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError):
        AsyncPromptClient(source=StaticSource(), shared="redis://127.0.0.1:notaport/0")


async def test_a_link_that_cannot_start_runs_the_client_without_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: RedisTier, read_timeout: float | None = None) -> Any:
        raise ValueError("no client")

    monkeypatch.setattr(RedisTier, "_connect", broken)
    tier = RedisTier(f"redis://127.0.0.1:{free_port()}/0")
    async with AsyncPromptClient(source=StaticSource([text("a")]), shared=tier) as client:
        assert (await client.get_prompt("a")).prompt == "a v1"
        assert shared_stats(client).state == "down"


async def test_a_client_whose_task_group_fails_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(cls: type, tier: RedisTier, /, **kwargs: Any) -> Any:
        raise RuntimeError("the link could not be opened")

    monkeypatch.setattr(redis_module.SharedPrompts, "open", classmethod(broken))
    tier = RedisTier(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ClientStateError, match="the link could not be opened"):
        async with AsyncPromptClient(source=StaticSource([text("a")]), shared=tier):
            pass


# -- 6. changes queued while down are replayed without their puts --------------------------


async def test_puts_queued_during_an_outage_are_dropped_from_l2_not_written() -> None:
    server = RedisServer().start()
    prompts = [TextPrompt(name="p", version=v, prompt=f"v{v}",
                          labels=["production"] if v == 1 else []) for v in (1, 2, 3)]
    source = StaticSource(prompts)

    def tier() -> RedisTier:
        return RedisTier(server.url, namespace="t", reconnect_max_seconds=0.05)

    try:
        async with AsyncPromptClient(source=source, shared=tier()) as b:
            assert (await b.get_prompt("p")).version == 1
            server.kill()
            await b.update_prompt(name="p", version=2, new_labels=["production"])
            # Meanwhile another process moves production on to v3 (its change reached no
            # Redis either: here, a process without the tier).
            async with AsyncPromptClient(source=source) as other:
                await other.update_prompt(name="p", version=3, new_labels=["production"])
            server.start()
            await wait_until(lambda: shared_stats(b).changes_sent == 1, limit=10)
            async with AsyncPromptClient(source=source, shared=tier()) as fresh_process:
                assert (await fresh_process.get_prompt("p")).version == 3
    finally:
        server.kill()


# -- 10. change messages: signed with the signing key, expire local, generation re-read ----


async def test_with_a_signing_key_unsigned_change_messages_are_ignored(redis_url: str) -> None:
    names = Names(namespace_id("test", HOST, None))
    forged = json.dumps({"v": 1, "kind": "clear", "origin": "x", "keys": [], "names": []})
    async with fleet(redis_url, text("a"), text("b")) as f:
        one, two = await f.client(signing_key="k"), await f.client(signing_key="k")
        await one.get_prompt("a")
        await one.get_prompt("b")
        async with raw_redis(redis_url) as r:
            await r.publish(names.channel, forged)
            await r.publish(names.channel, b"apm1." + b"0" * 64 + b"." + forged.encode())
        two.invalidate("b")  # a signed change: applied
        await wait_until(lambda: shared_stats(one).changes_received == 1)
        assert shared_stats(one).rejected_values == 2
        assert fresh(one, "a") and not fresh(one, "b")


async def test_expire_is_not_accepted_from_the_wire(redis_url: str) -> None:
    names = Names(namespace_id("test", HOST, None))
    expire = json.dumps({"v": 1, "kind": "expire", "origin": "x", "keys": [], "names": []})
    async with fleet(redis_url, text("a"), text("b")) as f:
        one, two = await f.client(), await f.client()
        await one.get_prompt("a")
        await one.get_prompt("b")
        async with raw_redis(redis_url) as r:
            await r.publish(names.channel, expire)
        two.invalidate("b")
        await wait_until(lambda: shared_stats(one).changes_received == 1)
        assert fresh(one, "a")


async def test_a_clear_message_does_not_set_the_generation(redis_url: str) -> None:
    names = Names(namespace_id("test", HOST, None))
    forged = json.dumps({"v": 1, "kind": "clear", "origin": "x", "keys": [], "names": [],
                         "generation": 10**12})
    async with fleet(redis_url, text("a")) as f:
        one, two = await f.client(), await f.client()
        await two.get_prompt("a")  # in L2, at the namespace's generation
        async with raw_redis(redis_url) as r:
            await r.publish(names.channel, forged)
        await wait_until(lambda: shared_stats(one).changes_received == 1)
        assert (await one.get_prompt("a")).prompt == "a v1"
        assert f.source.total_fetches == 1  # one still reads the fleet's generation


# -- 11. a first connection after entries were cached marks them stale ---------------------


async def test_a_first_connection_after_an_outage_at_start_marks_entries_stale() -> None:
    server = RedisServer()
    tier = RedisTier(server.url, namespace="t", reconnect_max_seconds=0.05)
    try:
        async with AsyncPromptClient(source=StaticSource([text("a")]), shared=tier) as client:
            await client.get_prompt("a")
            assert fresh(client, "a") and shared_stats(client).state == "down"
            server.start()
            await wait_until(lambda: shared_stats(client).state == "up", limit=10)
            assert not fresh(client, "a")  # invalidations may have been missed meanwhile
    finally:
        server.kill()
