"""The Redis kit both tiers use: its health policy (pure, on a fake clock), its URL checks,
and what it promises against a real redis-server that the tests restart, freeze, flush or
fill with a foreign lock."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest

from asyncpromptcache import ConfigurationError, RedisTier
from asyncpromptcache._prompts.keys import PromptKey
from asyncpromptcache._prompts.shared_format import Names, encode_value, namespace_id
from asyncpromptcache._tiers.redis import Breaker
from devkit.redisserver import RedisServer

from .helpers import HOST, fleet, raw_redis, text, until as wait_until

pytestmark = pytest.mark.anyio

# -- the health policy ----------------------------------------------------------------------


def test_one_failure_among_successes_does_not_open_the_breaker() -> None:
    breaker = Breaker()
    assert breaker.success() is False and breaker.state == "up"
    for _ in range(30):
        assert breaker.failure(0.0) is False  # a slow reply, now and then
        breaker.success()
        breaker.success()
    assert breaker.state == "up" and breaker.allow(0.0)


def test_consecutive_failures_open_it_then_one_probe_at_a_time() -> None:
    breaker = Breaker(failures=3, base_seconds=1.0, max_seconds=4.0)
    breaker.success()
    assert not breaker.failure(0.0) and not breaker.failure(0.0)
    assert breaker.failure(0.0) and breaker.state == "down"  # reported once
    assert not breaker.failure(0.1)  # not again while down
    assert not breaker.allow(0.5)  # open: nothing is tried
    assert breaker.allow(1.0) and not breaker.allow(1.0)  # half-open: a single probe
    assert not breaker.failure(1.0)  # the probe failed: open for twice as long
    assert not breaker.allow(2.9) and breaker.allow(3.0)
    assert breaker.success() is True  # reported once
    assert breaker.state == "up"  # type: ignore[comparison-overlap]


def test_a_failure_ratio_over_the_window_opens_it() -> None:
    breaker = Breaker(failures=100, ratio=0.5, window=10)
    breaker.success()
    for _ in range(10):
        breaker.success()
        if breaker.failure(0.0):  # one in two failed: no two in a row, yet sustained
            break
    assert breaker.state == "down"


def test_a_failure_before_any_reply_starts_without_the_tier() -> None:
    breaker = Breaker()
    assert breaker.failure(0.0, certain=True) and breaker.state == "down"


# -- the URL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "redis://[::1/0", "redis://:s3cret@[::1/0", "redis://[::1]:notaport/0",
    "redis://127.0.0.1:99999/0?password=s3cret", "redis://127.0.0.1/0?db=x&password=s3cret",
])
def test_a_malformed_url_is_a_configuration_error_without_its_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RedisTier(url)
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize("url", [
    "redis://user:s3cret@127.0.0.1:6390/0", "redis://127.0.0.1:6390/0?password=s3cret",
    "rediss://[::1]:6390/0?password=s3cret&ssl_cert_reqs=none",
    "redis://:s3cret@[::1]:6390/0",
])
def test_a_password_never_appears_in_the_repr(url: str) -> None:
    tier = RedisTier(url)
    assert "s3cret" not in repr(tier) and "***" in repr(tier)


# -- against a real Redis ------------------------------------------------------------------


async def test_a_restart_on_the_same_port_shares_again_at_once() -> None:
    server = RedisServer().start()
    try:
        async with fleet(server.url, *(text(f"p{i}") for i in range(12))) as f:
            clients = [await f.client(redis_timeout=0.25) for _ in range(4)]
            for client in clients:
                await client.get_prompt("p0")
            server.kill()
            server.start()  # empty, same port: every pooled connection is dead
            await clients[0].get_prompt("p11")  # the first command finds them dead
            with anyio.fail_after(5):  # a generous safety bound (the test counts fetches)
                for i in range(1, 11):
                    before = f.source.total_fetches
                    for client in clients:
                        await client.get_prompt(f"p{i}")
                    if f.source.total_fetches == before + 1:
                        continue
                    raise AssertionError(f"round {i}: {f.source.total_fetches - before} fetches")
    finally:
        server.kill()


async def test_a_lock_that_never_expires_costs_one_bounded_wait() -> None:
    server = RedisServer().start()
    try:
        async with fleet(server.url, text("a")) as f:
            client = await f.client(fetch_timeout_seconds=1.0)
            names = Names(namespace_id("test", HOST, None))
            server.command("SET", names.lock(PromptKey("a", "production", None)), "foreign")
            with anyio.fail_after(5):  # safety bound: the wait itself is far shorter
                assert (await client.get_prompt("a")).version == 1
            stats = client.stats().shared
            assert stats is not None and stats.waits == 1 and stats.takeovers == 1
            assert f.source.total_fetches == 1
    finally:
        server.kill()


async def test_a_waiter_wakes_on_its_own_when_the_fill_message_is_lost() -> None:
    # Another process holds the lock, writes the value, and its "filled" message never
    # arrives: the waiter's bounded re-check finds the value in Redis, with no fetch.
    server = RedisServer().start()
    try:
        async with fleet(server.url, text("a")) as f:
            reader = await f.client(fetch_timeout_seconds=5.0)
            names = Names(namespace_id("test", HOST, None))
            key = PromptKey("a", "production", None)
            server.command("SET", names.lock(key), "holder", "PX", "30000")
            async with anyio.create_task_group() as tg:
                got: list[str] = []

                async def read() -> None:
                    got.append((await reader.get_prompt("a")).prompt)

                tg.start_soon(read)
                await wait_until(lambda: bool(reader.stats().shared.waits))  # type: ignore[union-attr]
                async with raw_redis(server.url) as r:
                    await r.set(names.value(key), encode_value(
                        key, text("a", 1, "written elsewhere"), f.clock(), None), px=60_000)
            assert got == ["written elsewhere"]
            assert f.source.total_fetches == 0
    finally:
        server.kill()


async def test_a_frozen_redis_costs_no_caller_its_budget() -> None:
    server = RedisServer().start()
    try:
        async with fleet(server.url, text("a"), text("b")) as f:
            client = await f.client(redis_timeout=0.25, fetch_timeout_seconds=1.0)
            await client.get_prompt("a")
            server.freeze()
            try:
                with anyio.fail_after(4):  # safety bound; the budget is about 3 s in all
                    assert (await client.get_prompt("b")).version == 1
            finally:
                server.thaw()
            await wait_until(lambda: client.stats().shared.state == "up")  # type: ignore[union-attr]
    finally:
        server.kill()


async def test_a_lost_generation_key_never_splits_the_fleet() -> None:
    server = RedisServer().start()
    prompts = [text(f"c{i}") for i in range(20)]
    try:
        async with fleet(server.url, *prompts) as f:
            a = await f.client()
            a.clear()
            a.clear()
            await wait_until(lambda: a.stats().shared.changes_sent == 2)  # type: ignore[union-attr]
            server.command("FLUSHALL")  # the generation key is gone
            b = await f.client()  # starts reading none
            with anyio.fail_after(10):  # safety bound: the fleet re-agrees within seconds
                for i in itertools.count():
                    before = f.source.total_fetches
                    await a.get_prompt(f"c{i}")
                    await b.get_prompt(f"c{i}")
                    if f.source.total_fetches == before + 1:
                        break  # one fetch for both: one generation again
                    await anyio.sleep(0.2)
            before = f.source.total_fetches
            a.clear()  # and the next clear() moves both on, past the lost one
            await wait_until(lambda: b.stats().shared.changes_received == 1)  # type: ignore[union-attr]
            await a.get_prompt("c19")
            await b.get_prompt("c19")
            assert f.source.total_fetches == before + 1
    finally:
        server.kill()


async def test_foreign_members_in_the_suspects_set_are_skipped() -> None:
    server = RedisServer().start()
    try:
        async with fleet(server.url, text("a"), text("b")) as f:
            a, b = await f.client(), await f.client()
            await b.get_prompt("b")
            names = Names(namespace_id("test", HOST, None))
            async with raw_redis(server.url) as r:
                await r.sadd(names.suspect_names, b"\xff\xfe")  # not UTF-8: not ours
            a.invalidate("a")  # reads that set: its foreign member is skipped
            await wait_until(lambda: b.stats().shared.changes_received == 1)  # type: ignore[union-attr]
            assert a.stats().shared.redis_errors == 0  # type: ignore[union-attr]
    finally:
        server.kill()


async def test_a_webhook_handler_cancelled_after_its_claim_releases_it() -> None:
    server = RedisServer().start()
    try:
        async with fleet(server.url, text("a")) as f:
            client = await f.client()  # a generous Redis timeout: the release outlasts a pause
            link = client._link
            assert link is not None and await link.claim_event("e1")
            server.command("CLIENT", "PAUSE", "400", "ALL")
            with anyio.move_on_after(0.1):  # the handler is cancelled mid-way
                await link.newest_state("a", 1, 1.0, claimed="e1")
            event = Names(namespace_id("test", HOST, None)).event("e1")
            assert server.command("EXISTS", event) == ":0"  # released: a retry applies it
            assert await link.claim_event("e1")
    finally:
        server.kill()


@pytest.mark.parametrize("form", ["userinfo", "query"])
async def test_a_refused_password_never_shows_in_a_log_line_a_repr_or_the_stats(
    form: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that refuses the URL's password: both tiers run without it (a caller never
    sees its error), and the password reaches no log line (with its traceback), repr or
    stats, whether it came in the URL's userinfo or its ``?password=``."""
    import logging
    import traceback

    from asyncpromptcache import ResponseCache

    secret = "wr0ng-Pa55word"
    with RedisServer() as server:
        assert server.command("CONFIG", "SET", "requirepass", "the-real-one") == "+OK"
        host = server.url.removeprefix("redis://").removesuffix("/0")
        url = (f"redis://:{secret}@{host}/0" if form == "userinfo"
               else f"redis://{host}/0?password={secret}")
        shown: list[str] = []
        with caplog.at_level(logging.DEBUG, logger="asyncpromptcache"):
            async with fleet(url, text("a")) as f:
                client = await f.client(url=url, redis_timeout=0.5)
                assert (await client.get_prompt("a")).prompt == "a v1"
                shared = client.stats().shared
                assert shared is not None and shared.state == "down"
                shown += [repr(client), repr(client.stats())]
            async with ResponseCache(shared=RedisTier(url, timeout_seconds=0.5)) as cache:

                async def answer() -> Any:
                    yield "x"

                chunks = [chunk async for chunk in cache.stream({"model": "m"}, answer)]
                assert chunks == ["x"]
                shown += [repr(cache), repr(cache.stats())]
        for record in caplog.records:
            shown.append(record.getMessage())
            if record.exc_info:
                shown.append("".join(traceback.format_exception(*record.exc_info)))
    # The refusal is said once, at warning level, naming its kind but not the password.
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("AuthenticationError" in line for line in warned), warned
    assert not [line for line in shown if secret in line]


async def test_a_read_waits_for_every_change_of_its_process_also_one_made_as_the_first_settled(
    redis_url: str,
) -> None:
    """A read behind this process's own changes waits until they are all in Redis, then
    reads Redis: a second change begun just as the first settled (a label move's second
    webhook) does not send it upstream (it did: one GET in some label-move runs)."""
    async with fleet(redis_url, text("a"), text("b"), text("c")) as f:
        writer, reader = await f.client(), await f.client()
        await writer.get_prompt("a")  # in Redis; never read by ``reader``
        assert f.source.total_fetches == 1
        link = reader._link
        assert link is not None
        reader.invalidate("b")  # the first change, on its way to Redis
        assert link._pending == 1
        settled = link._settled

        async def second_change_as_the_first_settles() -> None:
            await settled.wait()  # woken before the read below: it waited first
            reader.invalidate("c")

        async with anyio.create_task_group() as tg:
            tg.start_soon(second_change_as_the_first_settles)
            await anyio.lowlevel.checkpoint()
            prompt = await reader.get_prompt("a")
        assert prompt.prompt == "a v1"
        assert f.source.total_fetches == 1  # from Redis, not upstream
