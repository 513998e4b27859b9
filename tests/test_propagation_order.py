"""Changes through the shared tier, at the edges of a client's life and of what the fleet
knows (real redis-server, several clients in one process standing for a fleet's processes):
a change made just before closing still reaches the fleet; a composed prompt written through
by a webhook (parts unknown) is dropped everywhere, Redis included, when another prompt
changes; a webhook event id is applied once in the whole fleet; an invalidation is not undone
by another process's fetch that read the old version upstream."""

from __future__ import annotations

import anyio
import pytest

from asyncpromptcache import PromptKey, TextPrompt, WebhookReplayError
from asyncpromptcache.testing import FakeClock, StaticSource

from .helpers import event, propagation_client as client, received, signed, until

pytestmark = pytest.mark.anyio

PRODUCTION = PromptKey("p", "production", None)


async def test_a_change_made_just_before_closing_reaches_the_other_processes(
    redis_url: str,
) -> None:
    v1 = TextPrompt(name="p", version=1, prompt="v1", labels=["production"])
    source, clock = StaticSource([v1]), FakeClock()
    async with client(redis_url, source, clock) as b:
        assert (await b.get_prompt("p")).prompt == "v1"
        source.add(TextPrompt(name="p", version=2, prompt="v2", labels=[]))
        async with client(redis_url, source, clock) as a:  # a short-lived admin script
            await a.update_prompt(name="p", version=2, new_labels=["production"])
        await until(lambda: received(b) > 0)
        fetches = source.total_fetches
        assert (await b.get_prompt("p")).prompt == "v2"
        assert source.total_fetches == fetches  # written through to Redis before closing


def composed(version: int, text: str) -> TextPrompt:
    graph = {"root": {"name": "c", "version": version},
             "dependencies": {f"c:{version}": [{"name": "part", "version": 1}]}}
    return TextPrompt(name="c", version=version, prompt=text, labels=["production"],
                      resolution_graph=graph)


async def test_a_webhooks_composed_prompt_is_dropped_from_redis_when_another_prompt_changes(
    redis_url: str,
) -> None:
    # The webhook's body has no resolutionGraph: which parts "c" includes is unknown.
    source, clock = StaticSource([composed(1, "c1 says old part")]), FakeClock()
    async with client(redis_url, source, clock) as a, client(redis_url, source, clock) as b:
        created = event("created", 2, ["production"], event_id="e1", name="c",
                        prompt="c2 says old part")
        await a.handle_webhook(created, signed(created))
        await until(lambda: received(b) > 0)
        assert (await b.get_prompt("c")).prompt == "c2 says old part"  # from Redis
        assert source.total_fetches == 0

        source.add(composed(2, "c2 says new part"))  # Langfuse re-resolves it
        a.invalidate("part")
        await until(lambda: received(b) > 1)
        assert not b.cache.holds(PromptKey("c", "production", None))
        assert (await b.get_prompt("c")).prompt == "c2 says new part"
        assert (await a.get_prompt("c")).prompt == "c2 says new part"
        assert source.total_fetches == 1  # one fetch for the fleet, then Redis again


async def test_a_webhooks_prompt_of_the_changed_name_itself_stays_in_redis(
    redis_url: str,
) -> None:
    v1 = TextPrompt(name="p", version=1, prompt="v1", labels=["production"])
    source, clock = StaticSource([v1]), FakeClock()
    async with client(redis_url, source, clock) as a, client(redis_url, source, clock) as b:
        other = event("created", 1, ["production"], event_id="e1", name="q", prompt="q1")
        await a.handle_webhook(other, signed(other))
        moved = event("created", 2, ["production"], event_id="e2", prompt="v2")
        await a.handle_webhook(moved, signed(moved))
        await until(lambda: received(b) > 1)
        assert (await b.get_prompt("p")).prompt == "v2"  # from Redis, the other's suspect
        assert source.total_fetches == 0  # did not drop the change's own prompt


async def test_a_webhook_event_is_applied_once_in_the_fleet(redis_url: str) -> None:
    v1 = TextPrompt(name="p", version=1, prompt="v1", labels=["production"])
    source, clock = StaticSource([v1]), FakeClock()
    async with client(redis_url, source, clock) as a, client(redis_url, source, clock) as b:
        body = event("created", 2, ["production"], event_id="e1", prompt="v2")
        await a.handle_webhook(body, signed(body))
        with pytest.raises(WebhookReplayError, match="another process"):
            await b.handle_webhook(body, signed(body))  # Langfuse's retry, on another worker
        b.invalidate("q")  # sent after anything the replay would have sent
        await until(lambda: received(a) > 0)
        assert received(a) == 1  # the replay changed nothing anywhere


async def test_an_older_state_of_a_version_is_not_applied_in_another_process(
    redis_url: str,
) -> None:
    v1 = TextPrompt(name="p", version=1, prompt="v1", labels=["production"])
    source, clock = StaticSource([v1]), FakeClock()
    async with client(redis_url, source, clock) as a, client(redis_url, source, clock) as b:
        # "production" left version 1 (its newest state), then a late retry of an older one.
        newer = event("updated", 1, [], event_id="e2", prompt="v1",
                      updated_at="2026-11-30T07:00:02.000Z")
        await a.handle_webhook(newer, signed(newer))
        older = event("updated", 1, ["production"], event_id="e1", prompt="v1",
                      updated_at="2026-11-30T07:00:01.000Z")
        await b.handle_webhook(older, signed(older))
        assert not b.cache.holds(PRODUCTION)
        b.invalidate("q")  # sent after anything the older state would have sent
        await until(lambda: received(a) > 0)
        assert received(a) == 1  # the older state was not applied, so nothing was sent


async def _redis_keys(url: str, kind: str) -> list[bytes | str]:
    """The keys of ``kind`` (``v``: values, ``l``: fetch locks) in the server."""
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    try:
        return list(await redis.keys(f"apc:*:{kind}:*"))
    finally:
        await redis.aclose()


async def test_an_invalidation_deletes_the_lock_of_a_fetch_in_flight(redis_url: str) -> None:
    v1 = TextPrompt(name="p", version=1, prompt="v1", labels=["production"])
    source, clock = StaticSource([v1]), FakeClock()
    async with client(redis_url, source, clock) as a, client(redis_url, source, clock) as b:
        source.hold()
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.get_prompt, "p")
            await until(lambda: source.total_fetches == 1)
            assert len(await _redis_keys(redis_url, "l")) == 1  # b's fetch holds the lock
            a.invalidate("p")
            await until(lambda: received(b) > 0)
            # The fetch may have read the old version: its lock is gone with the value.
            assert await _redis_keys(redis_url, "l") == []
            source.release()


async def test_a_fetch_whose_lock_was_deleted_does_not_write_to_redis(redis_url: str) -> None:
    from redis.asyncio import Redis

    v1 = TextPrompt(name="p", version=1, prompt="v1", labels=["production"])
    source, clock = StaticSource([v1]), FakeClock()
    async with client(redis_url, source, clock) as b:
        source.hold()
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.get_prompt, "p")
            await until(lambda: source.total_fetches == 1)
            # Another process's invalidation landed in Redis (value and lock deleted); its
            # message has not reached b yet when b's fetch of the old version returns.
            redis = Redis.from_url(redis_url)
            try:
                assert await redis.delete(*await _redis_keys(redis_url, "l")) == 1
            finally:
                await redis.aclose()
            source.release()
        assert await _redis_keys(redis_url, "v") == []  # b's callers got it; Redis did not


async def test_a_process_reading_a_webhooks_prompt_from_redis_knows_its_parts_are_unknown(
    redis_url: str,
) -> None:
    source, clock = StaticSource([composed(1, "c1 says old part")]), FakeClock()
    async with client(redis_url, source, clock) as a, client(redis_url, source, clock) as b:
        created = event("created", 2, ["production"], event_id="e1", name="c",
                        prompt="c2 says old part")
        await a.handle_webhook(created, signed(created))
        await until(lambda: received(b) > 0)
        assert (await b.get_prompt("c")).prompt == "c2 says old part"  # from Redis
        assert b.invalidate("part") == 1  # dropped here at once: "c" may include "part"


async def test_a_label_that_moved_takes_the_lock_from_a_fetch_in_flight(redis_url: str) -> None:
    from redis.asyncio import Redis

    v1 = TextPrompt(name="p", version=1, prompt="v1", labels=["production"])
    source, clock = StaticSource([v1]), FakeClock()
    async with client(redis_url, source, clock) as a, client(redis_url, source, clock) as b:
        await a.get_prompt("p")  # a holds "production" at version 1
        redis = Redis.from_url(redis_url)
        try:
            await redis.delete(*await _redis_keys(redis_url, "v"))  # gone from Redis (expired)
            source.hold()
            async with anyio.create_task_group() as tg:
                tg.start_soon(b.get_prompt, "p")
                await until(lambda: source.total_fetches == 2)
                left = event("updated", 1, [], event_id="e1", prompt="v1",
                             updated_at="2026-11-30T07:00:01.000Z")
                await a.handle_webhook(left, signed(left))
                await until(lambda: received(b) > 0)
                locks = [await redis.get(k) for k in await _redis_keys(redis_url, "l")]
                assert locks == [b"moved"]  # b's fetch (maybe of the old version) lost it
                source.release()
        finally:
            await redis.aclose()
