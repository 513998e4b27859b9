"""Typed at every door: whatever a caller hands the SDK, and whatever an upstream answers,
what comes out is an error under ``PromptCacheError`` (or an HTTP 4xx from the local
server), never a ``TypeError``, ``RecursionError`` or ``ValueError`` of the standard library."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    InvalidArgumentError,
    ResponseCache,
    TextPrompt,
    UpstreamProtocolError,
    UpstreamStatusError,
    WebhookError,
    WebhookSignatureError,
)
from asyncpromptcache._prompts.signatures import sign
from asyncpromptcache.response import OpenAIChatProducer
from asyncpromptcache.server import run_server
from asyncpromptcache.testing import StaticSource
from tests.webapp import serve_app

pytestmark = pytest.mark.anyio

SECRET = "whsec-doors"
DEEP = 100_000


def _prompt() -> TextPrompt:
    return TextPrompt(name="p", version=1, prompt="hi", labels=("production",))


@pytest.fixture
async def client() -> AsyncIterator[AsyncPromptClient]:
    async with AsyncPromptClient(source=StaticSource([_prompt()]), webhook_secret=SECRET,
                                 env={}) as opened:
        yield opened


# -- handle_webhook ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["{}", memoryview(b"{}"), None, 7])
async def test_a_webhook_body_that_is_not_bytes_is_a_webhook_error(
        client: AsyncPromptClient, body: Any) -> None:
    with pytest.raises(WebhookError, match="body"):
        await client.handle_webhook(body, sign(SECRET, b"{}", int(time.time())))


@pytest.mark.parametrize("signature", [b"t=1,v1=ab", 12, ["t=1,v1=ab"]])
async def test_a_webhook_signature_that_is_not_text_is_a_signature_error(
        client: AsyncPromptClient, signature: Any) -> None:
    with pytest.raises(WebhookSignatureError, match="signature"):
        await client.handle_webhook(b"{}", signature)


async def test_a_signed_webhook_nested_100000_deep_is_a_webhook_error(
        client: AsyncPromptClient) -> None:
    body = b"[" * DEEP + b"]" * DEEP
    with pytest.raises(WebhookError, match="nested too deeply"):
        await client.handle_webhook(body, sign(SECRET, body, int(time.time())))
    prompt_body = (b'{"id":"e","timestamp":"2026-01-01T00:00:00Z","type":"prompt-version",'
                   b'"apiVersion":"v1","action":"created","prompt":{"config":'
                   + b"[" * DEEP + b"]" * DEEP + b"}}")
    with pytest.raises(WebhookError):
        await client.handle_webhook(prompt_body, sign(SECRET, prompt_body, int(time.time())))


# -- create_prompt -----------------------------------------------------------------------------


@pytest.mark.parametrize("config", [{"tags": {1, 2}}, {1: "a"}, {"x": float("nan")}, object()])
async def test_create_prompt_with_a_config_json_cannot_carry_is_refused_before_sending(
        client: AsyncPromptClient, config: Any) -> None:
    source = client._source
    assert isinstance(source, StaticSource)
    before = len(source._prompts)
    with pytest.raises(InvalidArgumentError, match="config"):
        await client.create_prompt(name="p", prompt="v2", config=config)
    assert len(source._prompts) == before


async def test_create_prompt_config_nested_past_the_recursion_limit_is_refused(
        client: AsyncPromptClient) -> None:
    config: Any = []
    for _ in range(sys.getrecursionlimit() * 2):
        config = [config]
    with pytest.raises(InvalidArgumentError, match="config"):
        await client.create_prompt(name="p", prompt="v2", config={"deep": config})


# -- the response cache's keys -----------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _cyclic() -> Any:
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    messages.append(messages)
    return messages


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hi", "n": 10 ** 5000}],
    _nested(sys.getrecursionlimit() * 2),
    _cyclic(),
], ids=["5000-digit integer", "past the recursion limit", "a cycle"])
async def test_a_request_json_cannot_carry_is_an_invalid_argument(messages: Any) -> None:
    request = {"model": "m", "temperature": 0, "messages": messages}
    async with ResponseCache() as cache:
        with pytest.raises(InvalidArgumentError, match="request"):
            cache.key_for(request)

        async def never() -> AsyncIterator[str]:
            raise AssertionError("no upstream call for a request that cannot be keyed")
            yield ""  # pragma: no cover

        with pytest.raises(InvalidArgumentError):
            async for _ in cache.stream(request, never):
                pass


# -- OpenAIChatProducer on its own --------------------------------------------------------------


async def test_the_producer_reads_a_deeply_nested_event_as_a_protocol_error() -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: " + b"[" * DEEP + b"]" * DEEP + b"\n\n")
        return response

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500, body=b"[" * DEEP + b"]" * DEEP)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/failing/chat/completions", failing)
    async with serve_app(app) as url, OpenAIChatProducer(base_url=url + "/v1") as llm, \
            OpenAIChatProducer(base_url=url + "/failing") as broken:
        with pytest.raises(UpstreamProtocolError, match="nested too deeply"):
            async for _ in llm.stream({"model": "m", "messages": []}):
                pass
        with pytest.raises(UpstreamStatusError, match="HTTP 500"):
            async for _ in broken.stream({"model": "m", "messages": []}):
                pass


# -- the local server ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [DEEP, 5000])
async def test_the_local_server_answers_a_deeply_nested_chat_request_with_a_400(
        depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = ('{"model":"m","messages":[{"role":"user","content":' + nested + "}]}").encode()
    async with run_server() as server, aiohttp.ClientSession() as session:
        async with session.post(server.base_url + "/v1/chat/completions", data=body,
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400, await response.text()
            answer = await response.json()
        assert answer["error"]["type"] == "invalid_request_error"
        # and it still answers
        async with session.post(server.base_url + "/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "user", "content": "hi"}]}) as response:
            assert response.status == 200
            assert json.loads(await response.read())["object"] == "chat.completion"

