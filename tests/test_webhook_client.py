"""handle_webhook over real HTTP: webhooks delivered to an aiohttp app on 127.0.0.1 (mounted
as examples/webhook_aiohttp.py shows), signed with the Langfuse format; forged, stale,
replayed and malformed ones change nothing and raise typed errors."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from asyncpromptcache import (
    AsyncPromptClient,
    ClientStateError,
    ConfigurationError,
    PromptCacheError,
    PromptClient,
    PromptKey,
    PromptVersionEvent,
    WebhookError,
    WebhookReplayError,
    WebhookSignatureError,
)
from asyncpromptcache._core.secret import Secret
from asyncpromptcache._prompts.langfuse_source import LangfuseSource
from asyncpromptcache.testing import FakeClock
from examples.webhook_aiohttp import CLIENT, add_webhook_route
from tests.faultserver import FaultServer, fault_server
from tests.webapp import serve_app

from .helpers import WEBHOOK_SECRET as SECRET, event, signed

pytestmark = pytest.mark.anyio


class Receiver:
    """An aiohttp app on 127.0.0.1 that applies webhooks to ``client``."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session

    async def deliver(self, body: bytes, signature: str | None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "User-Agent": "Langfuse/1.0"}
        if signature is not None:
            headers["x-langfuse-signature"] = signature
        async with self._session.post(self.url, data=body, headers=headers) as response:
            return response.status, await response.json()


@pytest.fixture
async def upstream() -> AsyncIterator[FaultServer]:
    async with fault_server() as server:
        server.put("p", "text v1", ("production", "staging", "latest"))
        server.put("other", "other v1", ("production",))
        yield server


@pytest.fixture
async def client(upstream: FaultServer) -> AsyncIterator[AsyncPromptClient]:
    async with AsyncPromptClient(
        base_url=upstream.base_url, cache_ttl_seconds=3600, clock=FakeClock(),
        webhook_secret=SECRET, env={},
    ) as opened:
        for label in ("production", "staging", "latest"):
            await opened.get_prompt("p", label=label)
        await opened.get_prompt("p", version=1)
        await opened.get_prompt("other")
        yield opened


@pytest.fixture
async def receiver(client: AsyncPromptClient) -> AsyncIterator[Receiver]:
    app = web.Application()
    app[CLIENT] = client
    add_webhook_route(app)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        yield Receiver(f"{url}/langfuse/webhook", session)


def requests_sent(client: AsyncPromptClient) -> int:
    source = client.source
    assert isinstance(source, LangfuseSource)
    return source.requests_sent


def versions(client: AsyncPromptClient) -> dict[PromptKey, int]:
    return {PromptKey._make(key): entry.prompt.version  # type: ignore[arg-type]
            for key, entry in client.cache.snapshot()}


async def test_a_label_move_is_served_at_once_without_a_fetch(
    client: AsyncPromptClient, receiver: Receiver
) -> None:
    before = requests_sent(client)
    # Langfuse sends "created" for the new version and "updated" for the one that lost labels.
    body = event("created", 2, ["production", "latest"], event_id="e-created")
    assert (await receiver.deliver(body, signed(body)))[0] == 200
    body = event("updated", 1, ["staging"], event_id="e-updated")
    assert (await receiver.deliver(body, signed(body)))[0] == 200
    assert versions(client) == {
        PromptKey("p", "production", None): 2, PromptKey("p", "latest", None): 2,
        PromptKey("p", None, 2): 2, PromptKey("p", "staging", None): 1,
        PromptKey("p", None, 1): 1, PromptKey("other", "production", None): 1,
    }
    assert (await client.get_prompt("p")).prompt == "text v2"
    assert requests_sent(client) == before


async def test_a_late_delivery_of_an_older_state_is_not_applied(
    client: AsyncPromptClient, receiver: Receiver
) -> None:
    # v2 was created (at :01), then v3 took its labels (at :02); the first delivery of v2's
    # "created" failed and Langfuse retried it last.
    for body in (
        event("created", 3, ["production", "latest"], event_id="v3",
              updated_at="2026-11-30T07:00:02.000Z"),
        event("updated", 2, [], event_id="v2-lost-labels", updated_at="2026-11-30T07:00:02Z"),
        event("created", 2, ["production", "latest"], event_id="v2-created-retried",
              updated_at="2026-11-30T07:00:01.000Z"),
    ):
        assert (await receiver.deliver(body, signed(body)))[0] == 200
    held = versions(client)
    assert held[PromptKey("p", "production", None)] == 3
    assert held[PromptKey("p", "latest", None)] == 3


async def test_a_label_that_left_a_version_is_dropped(
    client: AsyncPromptClient, receiver: Receiver
) -> None:
    body = event("updated", 1, ["production", "latest"])  # staging moved to a version not held
    assert (await receiver.deliver(body, signed(body)))[0] == 200
    assert PromptKey("p", "staging", None) not in versions(client)
    assert PromptKey("p", "production", None) in versions(client)


async def test_a_deleted_version_stops_being_served(
    client: AsyncPromptClient, receiver: Receiver
) -> None:
    body = event("deleted", 1, ["production", "staging", "latest"])
    assert (await receiver.deliver(body, signed(body)))[0] == 200
    assert versions(client) == {PromptKey("other", "production", None): 1}


@pytest.mark.parametrize(("case", "status"), [
    ("forged", 401), ("stale", 401), ("future", 401), ("missing", 401), ("malformed-header", 401),
    ("tampered-body", 401), ("not-json", 400), ("wrong-type", 400), ("wrong-api-version", 400),
    ("unknown-action", 400), ("bad-prompt", 400), ("bad-updated-at", 400),
    ("no-prompt", 400), ("no-id", 400),
])
async def test_bad_webhooks_change_nothing(
    client: AsyncPromptClient, receiver: Receiver, case: str, status: int
) -> None:
    body = event("created", 2, ["production", "latest"])
    signature: str | None = signed(body)
    if case == "forged":
        signature = signed(body, secret="not-the-secret")
    elif case == "stale":
        signature = signed(body, at=time.time() - 301)
    elif case == "future":
        signature = signed(body, at=time.time() + 301)
    elif case == "missing":
        signature = None
    elif case == "malformed-header":
        signature = "v1=abc"
    elif case == "tampered-body":
        body = event("created", 3, ["production", "latest"])
    else:
        data = json.loads(body)
        if case == "not-json":
            body = b"{not json"
        else:
            if case == "wrong-type":
                data["type"] = "trace"
            elif case == "wrong-api-version":
                data["apiVersion"] = "v2"
            elif case == "unknown-action":
                data["action"] = "moved"
            elif case == "bad-prompt":
                data["prompt"]["version"] = "2"
            elif case == "bad-updated-at":
                data["prompt"]["updatedAt"] = "yesterday"
            elif case == "no-prompt":
                del data["prompt"]
            elif case == "no-id":
                data["id"] = ""
            body = json.dumps(data).encode()
        signature = signed(body)
    held = client.cache.snapshot()
    assert (await receiver.deliver(body, signature))[0] == status
    expected = WebhookSignatureError if status == 401 else WebhookError
    with pytest.raises(expected) as caught:
        await client.handle_webhook(body, signature)
    assert isinstance(caught.value, PromptCacheError)
    assert client.cache.snapshot() == held
    assert SECRET not in str(caught.value)


async def test_a_replayed_webhook_changes_nothing(
    client: AsyncPromptClient, receiver: Receiver
) -> None:
    body = event("created", 2, ["production", "latest"])
    signature = signed(body)
    assert (await receiver.deliver(body, signature))[0] == 200
    client.invalidate("p")  # so that applying it again would show
    held = client.cache.snapshot()
    # The same delivery again, and the same event re-signed later (Langfuse's own retry).
    status, answer = await receiver.deliver(body, signature)
    assert (status, answer) == (200, {"status": "already applied"})
    with pytest.raises(WebhookReplayError):
        await client.handle_webhook(body, signed(body, at=time.time() + 5))
    assert client.cache.snapshot() == held


async def test_an_unresolved_prompt_is_not_served(
    client: AsyncPromptClient, receiver: Receiver
) -> None:
    body = event("created", 2, ["production"], prompt="@@@langfusePrompt:name=x|label=l@@@")
    assert (await receiver.deliver(body, signed(body)))[0] == 200
    assert PromptKey("p", "production", None) not in versions(client)


async def test_the_secret_comes_from_the_environment_or_is_required(
    upstream: FaultServer,
) -> None:
    body = event("created", 2, ["production"])
    async with AsyncPromptClient(
        base_url=upstream.base_url, env={"LANGFUSE_WEBHOOK_SECRET": SECRET}
    ) as client:
        result = await client.handle_webhook(body, signed(body))
        assert isinstance(result, PromptVersionEvent)
        assert (result.action, result.prompt.version) == ("created", 2)
        assert SECRET not in repr(client)
    async with AsyncPromptClient(base_url=upstream.base_url, env={}) as client:
        with pytest.raises(WebhookError, match="LANGFUSE_WEBHOOK_SECRET"):
            await client.handle_webhook(body, signed(body))
    client = AsyncPromptClient(base_url=upstream.base_url, webhook_secret=SECRET, env={})
    with pytest.raises(ClientStateError):
        await client.handle_webhook(body, signed(body))
    with pytest.raises(ConfigurationError):
        AsyncPromptClient(base_url=upstream.base_url, webhook_secret=" ", env={})


@pytest.mark.parametrize("secret", [SECRET, Secret(SECRET)], ids=["str", "Secret"])
async def test_the_sync_client_handles_webhooks(upstream: FaultServer, secret: Any) -> None:
    def run() -> None:
        with PromptClient(
            base_url=upstream.base_url, webhook_secret=secret, env={}, cache_ttl_seconds=3600
        ) as client:
            assert client.get_prompt("p").version == 1
            body = event("created", 2, ["production"])
            assert client.handle_webhook(body, signed(body)).id == "evt-1"
            assert client.get_prompt("p").prompt == "text v2"
            with pytest.raises(WebhookReplayError):
                client.handle_webhook(body, signed(body))
            with pytest.raises(WebhookSignatureError):
                client.handle_webhook(body, None)

    await anyio.to_thread.run_sync(run)


@pytest.mark.parametrize("app_name", ["app", "starlette_app"])
async def test_the_fastapi_example_mounts_the_receiver(
    upstream: FaultServer, monkeypatch: pytest.MonkeyPatch, app_name: str
) -> None:
    # In process (ASGI), as no ASGI server is a dev dependency; real HTTP is covered above.
    import httpx

    import examples.webhook_fastapi as example

    monkeypatch.setenv("LANGFUSE_BASE_URL", upstream.base_url)
    monkeypatch.setenv("LANGFUSE_WEBHOOK_SECRET", SECRET)
    body = event("created", 2, ["production"], prompt="Hi {{movie}}", name="movie-critic")
    app = getattr(example, app_name)
    async with example.lifespan(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://receiver"
    ) as http:
        answer = await http.post("/langfuse/webhook", content=body,
                                 headers={"x-langfuse-signature": signed(body)})
        assert (answer.status_code, answer.json()) == (200, {"status": "applied", "id": "evt-1"})
        again = await http.post("/langfuse/webhook", content=body,
                                headers={"x-langfuse-signature": signed(body)})
        assert again.json() == {"status": "already applied"}
        forged = await http.post("/langfuse/webhook", content=body,
                                 headers={"x-langfuse-signature": signed(body, secret="x")})
        assert forged.status_code == 401
        # Served from the webhook: the upstream has no such prompt.
        assert (await http.get("/?movie=Dune")).json() == {"prompt": "Hi Dune"}
    assert upstream.requests["movie-critic"] == 0


@pytest.mark.parametrize("make", [AsyncPromptClient, PromptClient])
async def test_a_webhook_secret_that_is_not_text_is_a_configuration_error(make: Any) -> None:
    # Each was an AttributeError, at once (a Secret in a Secret) or in handle_webhook (bytes).
    wrong: list[Any] = [b"whsec", Secret(b"whsec"), Secret(Secret(SECRET)),  # type: ignore[arg-type]
                        Secret(""), Secret("  "), 42, [SECRET]]
    for value in wrong:
        with pytest.raises(ConfigurationError, match="webhook_secret"):
            make(base_url="http://127.0.0.1:9", webhook_secret=value, env={})
