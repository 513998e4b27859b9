"""The local server sends Langfuse's signed prompt-version webhooks: received here by a real
aiohttp app on 127.0.0.1 and checked with the SDK's own verifier."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from asyncpromptcache import ConfigurationError
from asyncpromptcache._prompts.signatures import SIGNATURE_HEADER, verify_signature
from asyncpromptcache._store._schema import PromptDraft
from asyncpromptcache.server import PromptStore, RunningServer, ServerThread, run_server
from asyncpromptcache.server._outbox import WebhookSender

pytestmark = pytest.mark.anyio

SECRET = "whsec-local-test"
PROMPTS = "/api/public/v2/prompts"
PROMPT_KEYS = ["id", "name", "version", "projectId", "createdBy", "labels", "prompt", "type",
               "config", "commitMessage", "tags", "createdAt", "updatedAt"]


class Receiver:
    """A webhook endpoint: records each delivery; answers ``fail`` 500s first, or waits for
    ``release`` when ``hold`` is set."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.fail = 0
        self.hold = False
        self.release = asyncio.Event()
        self.arrived = asyncio.Condition()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.arrived:
            self.deliveries.append((dict(request.headers), body))
            self.arrived.notify_all()
        if self.hold:
            await self.release.wait()
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=500)
        return web.Response(status=204)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10), self.arrived:  # a bound, never the measure
            await self.arrived.wait_for(lambda: len(self.deliveries) >= count)

    def events(self) -> list[dict[str, Any]]:
        """The bodies, each checked against its signature as a client would."""
        events = []
        for headers, body in self.deliveries:
            verify_signature(SECRET, body, headers[SIGNATURE_HEADER], now=time.time())
            assert headers["Content-Type"] == "application/json"
            assert headers["User-Agent"] == "Langfuse/1.0"
            events.append(json.loads(body))
        return events


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield hook
    finally:
        hook.release.set()
        await runner.cleanup()


@pytest.fixture
async def server(receiver: Receiver) -> AsyncIterator[RunningServer]:
    async with run_server(webhook_url=receiver.url, webhook_secret=SECRET) as running:
        yield running


async def call(server: RunningServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(
        method, server.base_url + path, json=body
    ) as response:
        return response.status, (await response.json() if response.status != 204 else None)


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, int, list[str]]]:
    return [(e["action"], e["prompt"]["name"], e["prompt"]["version"], e["prompt"]["labels"])
            for e in events]


async def test_create_label_move_and_delete_send_langfuses_events(
    server: RunningServer, receiver: Receiver
) -> None:
    status, v1 = await call(server, "POST", PROMPTS, {
        "name": "greet", "prompt": "Hi {{name}}", "labels": ["production"],
        "config": {"model": "m"}, "tags": ["t"], "commitMessage": "first",
    })
    assert status == 201
    await receiver.wait_for(1)
    (event,) = receiver.events()
    assert list(event) == ["id", "timestamp", "type", "apiVersion", "action", "prompt"]
    assert list(event["prompt"]) == PROMPT_KEYS
    assert event["type"] == "prompt-version" and event["apiVersion"] == "v1"
    assert event["action"] == "created"
    assert event["timestamp"].endswith("Z")
    assert event["prompt"] == {
        "id": v1["id"], "name": "greet", "version": 1, "projectId": v1["projectId"],
        "createdBy": "API", "labels": ["production", "latest"], "prompt": "Hi {{name}}",
        "type": "text", "config": {"model": "m"}, "commitMessage": "first", "tags": ["t"],
        "createdAt": v1["createdAt"], "updatedAt": v1["updatedAt"],
    }

    # A second version with the label: v1 loses "production" and "latest" (updated), then
    # v2 is created, as Langfuse's createPrompt reports it.
    await call(server, "POST", PROMPTS,
               {"name": "greet", "prompt": "Hello", "labels": ["production"]})
    await receiver.wait_for(3)
    assert summary(receiver.events()[1:]) == [
        ("updated", "greet", 1, []),
        ("created", "greet", 2, ["production", "latest"]),
    ]

    # Moving the label back changes both versions: the one it left first, then its target.
    status, _ = await call(server, "PATCH", f"{PROMPTS}/greet/versions/1",
                           {"newLabels": ["production"]})
    assert status == 200
    await receiver.wait_for(5)
    assert summary(receiver.events()[3:]) == [
        ("updated", "greet", 2, ["latest"]),
        ("updated", "greet", 1, ["production"]),
    ]

    assert (await call(server, "DELETE", f"{PROMPTS}/greet?version=2"))[0] == 204
    await receiver.wait_for(6)
    assert summary(receiver.events()[5:]) == [("deleted", "greet", 2, ["latest"])]
    assert len({e["id"] for e in receiver.events()}) == 6  # one id per event


async def test_webhooks_carry_the_resolved_prompt(
    server: RunningServer, receiver: Receiver
) -> None:
    await call(server, "POST", PROMPTS, {"name": "part", "prompt": "P", "labels": ["production"]})
    await call(server, "POST", PROMPTS, {
        "name": "whole", "prompt": "W[@@@langfusePrompt:name=part|label=production@@@]",
    })
    await receiver.wait_for(2)
    assert receiver.events()[1]["prompt"]["prompt"] == "W[P]"
    assert "resolutionGraph" not in receiver.events()[1]["prompt"]


async def test_a_slow_receiver_never_holds_up_the_write(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.hold = True
    for i in range(3):
        status, _ = await call(server, "POST", PROMPTS, {"name": f"p{i}", "prompt": "x"})
        assert status == 201  # answered while the first webhook is still unanswered
    await receiver.wait_for(1)
    assert len(receiver.deliveries) == 1  # one at a time, in order
    receiver.release.set()
    await receiver.wait_for(3)
    assert [e["prompt"]["name"] for e in receiver.events()] == ["p0", "p1", "p2"]


async def test_failed_deliveries_are_retried_with_the_same_signed_body(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.fail = 3  # Langfuse makes four attempts: the fourth one lands
    await call(server, "POST", PROMPTS, {"name": "p", "prompt": "x"})
    await receiver.wait_for(4)
    assert len({body for _, body in receiver.deliveries}) == 1
    assert len({headers[SIGNATURE_HEADER] for headers, _ in receiver.deliveries}) == 1


async def test_backoff_is_langfuses_and_gives_up_after_four_attempts(receiver: Receiver) -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    receiver.fail = 1000
    sender = WebhookSender(receiver.url, SECRET, project_id="proj", sleep=sleep)
    app = web.Application()
    with PromptStore() as store:
        sender.attach(app, store)
        runner = web.AppRunner(app)
        await runner.setup()  # runs the sender's startup hook
        try:
            await store.create(PromptDraft(name="a", prompt="x"))
            await receiver.wait_for(4)
            receiver.fail = 0
            await store.create(PromptDraft(name="b", prompt="x"))
            await receiver.wait_for(5)
        finally:
            await runner.cleanup()
    assert delays == [0.1, 0.2, 0.4]  # exponential-backoff's defaults: 100 ms, doubling
    assert [json.loads(body)["prompt"]["name"] for _, body in receiver.deliveries] == \
        ["a"] * 4 + ["b"]
    assert (sender.failed, sender.delivered) == (1, 1)


def test_server_thread_takes_the_webhook_options() -> None:
    with pytest.raises(ConfigurationError, match="webhook URL and a webhook secret"):
        ServerThread(webhook_url="http://127.0.0.1:9/hook")
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        ServerThread(webhook_url="ftp://x", webhook_secret=SECRET)
    with pytest.raises(ConfigurationError, match="secret must not be empty"):
        ServerThread(webhook_url="http://127.0.0.1:9/hook", webhook_secret=" ")
