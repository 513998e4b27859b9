"""How changes travel through the shared tier, in one process with several clients standing
for a fleet's processes (a real redis-server): a label that left a version (Langfuse's first
webhook of a move) holds the fleet's readers until the version it moved to is written
through, instead of sending them upstream; a part of a composed prompt that changes drops
the including prompt from Redis too."""

from __future__ import annotations

import anyio
import pytest

from asyncpromptcache import AsyncPromptClient, PromptKey, TextPrompt
from asyncpromptcache.testing import FakeClock, StaticSource

from .helpers import (
    event,
    propagation_client as client,
    received,
    signed,
    until,
)

pytestmark = pytest.mark.anyio

PRODUCTION = PromptKey("p", "production", None)


def waits(client: AsyncPromptClient) -> int:
    """How often ``client`` waited for another process's fetch (or a label's new version)."""
    shared = client.stats().shared
    return 0 if shared is None else shared.waits


async def test_readers_of_a_label_that_moved_wait_for_its_new_version_instead_of_fetching(
    redis_url: str,
) -> None:
    v1 = TextPrompt(name="p", version=1, prompt="text v1", labels=["production"])
    source, clock = StaticSource([v1]), FakeClock()
    async with client(redis_url, source, clock) as a, client(redis_url, source, clock) as b:
        assert (await b.get_prompt("p")).version == 1
        assert (await a.get_prompt("p")).version == 1  # from Redis
        assert source.total_fetches == 1

        # Langfuse's first webhook of a move: "production" left version 1.
        left = event("updated", 1, [], event_id="e1", prompt="text v1",
                     updated_at="2026-11-30T07:00:01.000Z")
        await a.handle_webhook(left, signed(left))
        await until(lambda: not b.cache.holds(PRODUCTION))

        seen: list[int] = []

        async def read() -> None:
            seen.append((await b.get_prompt("p")).version)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await until(lambda: bool(seen) or waits(b) > 0)
            # Then its new holder: written through by the receiving process.
            moved = event("updated", 2, ["production"], event_id="e2", prompt="text v2",
                          updated_at="2026-11-30T07:00:02.000Z")
            await a.handle_webhook(moved, signed(moved))
        assert seen == [2]
        assert source.total_fetches == 1  # the new version came from Redis, not upstream


async def test_a_label_removed_for_good_is_fetched_once_the_grace_is_over(
    redis_url: str,
) -> None:
    v1 = TextPrompt(name="p", version=1, prompt="text v1", labels=["production"])
    source, clock = StaticSource([v1]), FakeClock()
    async with client(redis_url, source, clock, grace=0.05) as a, \
            client(redis_url, source, clock, grace=0.05) as b:
        await b.get_prompt("p")
        await a.get_prompt("p")
        left = event("updated", 1, [], event_id="e1", prompt="text v1",
                     updated_at="2026-11-30T07:00:01.000Z")
        await a.handle_webhook(left, signed(left))
        await until(lambda: not b.cache.holds(PRODUCTION))
        assert (await b.get_prompt("p")).version == 1  # what upstream answers now
        assert source.total_fetches == 2


async def test_a_composed_prompt_fetched_while_its_part_changed_is_not_kept_in_redis(
    redis_url: str,
) -> None:
    graph = {"root": {"name": "parent", "version": 1},
             "dependencies": {"parent": [{"name": "part", "version": 1}]}}
    parent = TextPrompt(name="parent", version=1, prompt="Intro. old part",
                        labels=["production"], resolution_graph=graph)
    source, clock = StaticSource([parent]), FakeClock()
    async with client(redis_url, source, clock) as a, client(redis_url, source, clock) as b, \
            client(redis_url, source, clock) as c:
        source.hold()
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.get_prompt, "parent")
            await until(lambda: source.total_fetches == 1)
            a.invalidate("part")  # while b's fetch of the including prompt runs
            await until(lambda: received(b) > 0)
            source.release()
        # Resolved from the old part: b's callers got it, the fleet's Redis did not.
        await c.get_prompt("parent")
        assert source.total_fetches == 2


