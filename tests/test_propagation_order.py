"""Changes through the shared tier, at the edges of a client's life and of what the fleet
knows (real redis-server, several clients in one process standing for a fleet's processes):
a change made just before closing still reaches the fleet; a composed prompt written through
by a webhook (parts unknown) is dropped everywhere, Redis included, when another prompt
changes; a webhook event id is applied once in the whole fleet; an invalidation is not undone
by another process's fetch that read the old version upstream."""

from __future__ import annotations

import pytest

from asyncpromptcache import PromptKey, TextPrompt
from asyncpromptcache.testing import FakeClock, StaticSource

from . import test_redis_tier
from .test_propagation_tier import client, received, until

pytestmark = pytest.mark.anyio

redis_server, redis_url = test_redis_tier.redis_server, test_redis_tier.redis_url
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
