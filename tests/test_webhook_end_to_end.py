"""End to end over real HTTP both ways: the local server sends its signed prompt-version
webhooks to a client app (examples/webhook_aiohttp.py's route) that verifies and applies them;
the label moves and part changes made by another client (as CI would) reach the app's cache
without a TTL and without a fetch of the new version."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from asyncpromptcache import AsyncPromptClient
from asyncpromptcache._prompts.langfuse_source import LangfuseSource
from asyncpromptcache.server import PromptDraft, PromptStore, RunningServer, run_server
from asyncpromptcache.testing import FakeClock
from examples.webhook_aiohttp import CLIENT, langfuse_webhook
from tests.webapp import serve_app

pytestmark = pytest.mark.anyio

SECRET = "whsec-end-to-end"
PK, SK = "pk-lf-e2e", "sk-lf-e2e"


class App:
    """The client app: the example's webhook route, counting the deliveries it answered."""

    def __init__(self, client: AsyncPromptClient) -> None:
        self.client = client
        self.statuses: list[int] = []
        self._answered = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await langfuse_webhook(request)
        async with self._answered:
            self.statuses.append(response.status)
            self._answered.notify_all()
        return response

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10), self._answered:  # a bound, never the measure
            await self._answered.wait_for(lambda: len(self.statuses) >= count)


@asynccontextmanager
async def deployment(
    *seed: PromptDraft,
) -> AsyncIterator[tuple[RunningServer, App, AsyncPromptClient]]:
    """The local server (holding ``seed``, made before any webhook was set up), a worker app
    whose client caches for an hour (on a clock that never moves), and a writer client."""
    # The app's socket is bound first: the server must know where to send, the app's client
    # where to fetch from.
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/langfuse/webhook"
    with sock, PromptStore() as store:
        for draft in seed:
            await store.create(draft)
        async with serving(store, url, sock) as running:
            yield running


@asynccontextmanager
async def serving(
    store: PromptStore, url: str, sock: socket.socket
) -> AsyncIterator[tuple[RunningServer, App, AsyncPromptClient]]:
    async with run_server(
        store=store, webhook_url=url, webhook_secret=SECRET, public_key=PK, secret_key=SK
    ) as server:
        worker = AsyncPromptClient(
            base_url=server.base_url, cache_ttl_seconds=3600, clock=FakeClock(),
            webhook_secret=SECRET, env={}, public_key=PK, secret_key=SK,
        )
        app = App(worker)
        web_app = web.Application()
        web_app[CLIENT] = worker
        web_app.router.add_post("/langfuse/webhook", app.handle)
        async with serve_app(web_app, sock), worker, AsyncPromptClient(
            base_url=server.base_url, env={}, public_key=PK, secret_key=SK
        ) as writer:
            yield server, app, writer


def fetches(client: AsyncPromptClient) -> int:
    source = client.source
    assert isinstance(source, LangfuseSource)
    return source.requests_sent


async def test_a_label_moved_on_the_server_is_served_by_the_app_without_a_fetch() -> None:
    async with deployment(
        PromptDraft(name="greeting", prompt="hello", labels=("production",))
    ) as (_, app, writer):
        worker = app.client
        await writer.create_prompt(name="p", prompt="v1", labels=["production"])
        await writer.create_prompt(name="p", prompt="v2")
        await app.wait_for(3)  # created v1; created v2 and updated v1 (latest moved)
        greeting = await worker.get_prompt("greeting")
        before = fetches(worker)
        assert (await worker.get_prompt("p")).prompt == "v1"  # from the webhooks
        # The label moves on the server (another process did it): two events, v2 "updated"
        # (gained production) and v1 "updated" (lost it).
        await writer.update_prompt(name="p", version=2, new_labels=["production"])
        await app.wait_for(5)
        assert app.statuses == [200] * 5
        moved = await worker.get_prompt("p")
        assert (moved.version, moved.prompt) == (2, "v2")
        assert (await worker.get_prompt("p", label="latest")).version == 2
        assert await worker.get_prompt("greeting") is greeting
        assert fetches(worker) == before


async def test_a_part_changed_on_the_server_reaches_the_app_composed_three_deep() -> None:
    async with deployment(
        PromptDraft(name="c", prompt="C1", labels=("production",)),
        PromptDraft(name="b", prompt="B[@@@langfusePrompt:name=c|label=production@@@]",
                    labels=("production",)),
        PromptDraft(name="a", prompt="A[@@@langfusePrompt:name=b|label=production@@@]",
                    labels=("production",)),
        PromptDraft(name="greeting", prompt="hello", labels=("production",)),
    ) as (_, app, writer):
        worker = app.client
        assert (await worker.get_prompt("a")).prompt == "A[B[C1]]"
        greeting = await worker.get_prompt("greeting")
        await writer.create_prompt(name="c", prompt="C2", labels=["production"])
        await app.wait_for(2)  # created c v2, updated c v1
        assert app.statuses == [200] * 2
        # Within the hour-long TTL: the part's webhook dropped the prompts that include it,
        # and nothing else.
        assert (await worker.get_prompt("a")).prompt == "A[B[C2]]"
        assert await worker.get_prompt("greeting") is greeting
