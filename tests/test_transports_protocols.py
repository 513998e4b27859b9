"""The cache transports on every route they cache: Chat Completions, the Responses API and
Anthropic Messages, through their official SDKs, against the local server.

Golden replays: for each kind of stream (text, tool calls, reasoning / thinking, usage) the
bytes of a hit equal the upstream's own bytes for the request, event for event, and the SDK
parses a hit into the same events as the miss it replays.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import httpx2
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from asyncpromptcache.response import AsyncCacheTransport
from asyncpromptcache.server import run_server

pytestmark = pytest.mark.anyio

MESSAGES: Any = [{"role": "user", "content": "What does the cache do?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "messages": "/v1/messages"}
CHAT: dict[str, Any] = {"model": "m", "temperature": 0, "messages": MESSAGES, "stream": True,
                        "stream_options": {"include_usage": True}}
RESPONSES: dict[str, Any] = {"model": "m", "temperature": 0, "input": "What is cached?",
                             "stream": True}
MESSAGES_API: dict[str, Any] = {"model": "m", "temperature": 0, "max_tokens": 16,
                                "messages": MESSAGES, "stream": True}
GOLDEN = {
    "chat-text": ("chat", CHAT),
    "chat-tool-calls": ("chat", {**CHAT, "tools": [
        {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]}),
    "chat-reasoning": ("chat", {**CHAT, "reasoning_effort": "low"}),
    "responses-text": ("responses", RESPONSES),
    "responses-function-call": ("responses", {**RESPONSES, "tools": [
        {"type": "function", "name": "get_weather", "parameters": SCHEMA}]}),
    "responses-reasoning": ("responses", {**RESPONSES, "reasoning": {"effort": "low",
                                                                     "summary": "auto"}}),
    "messages-text": ("messages", MESSAGES_API),
    "messages-tool-use": ("messages", {**MESSAGES_API, "tools": [
        {"name": "get_weather", "input_schema": SCHEMA}]}),
    "messages-thinking": ("messages", {**MESSAGES_API, "temperature": 1, "max_tokens": 64,
                                       "thinking": {"type": "enabled", "budget_tokens": 32}}),
}


class Server:
    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.http = http

    async def admin(self, name: str, verb: str, route: str, **body: Any) -> Any:
        url = f"{self.base_url}/_admin/{name}/{route}"
        async with self.http.request(verb, url, json=body if body else None) as r:
            assert r.status in (200, 204), await r.text()
            return await r.json() if r.status == 200 else None

    async def counts(self, name: str) -> dict[str, int]:
        counts: dict[str, int] = await self.admin(name, "GET", "requests")
        return counts

    async def direct(self, route: str, body: dict[str, Any]) -> bytes:
        """The upstream's own bytes for ``body``, without the cache (counts reset after)."""
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        async with self.http.post(self.base_url + PATHS[route], json=body,
                                  headers=headers) as r:
            assert r.status == 200, await r.text()
            raw = await r.read()
        await self.admin(route, "DELETE", "requests")
        return raw

    async def release_when_held(self, name: str, chunks: int = 2) -> None:
        with anyio.fail_after(10):
            while (await self.counts(name))["chunks"] < chunks:  # noqa: ASYNC110 - HTTP
                await anyio.sleep(0.005)
        await self.admin(name, "POST", "release")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with run_server() as running, aiohttp.ClientSession() as http:
        yield Server(running.base_url, http)


@pytest.mark.parametrize("case", sorted(GOLDEN))
async def test_a_hit_replays_the_upstreams_bytes_event_for_event(server: Server,
                                                                case: str) -> None:
    route, body = GOLDEN[case]
    direct = await server.direct(route, body)
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with AsyncCacheTransport(cache_sampled=True) as transport, \
            httpx2.AsyncClient(transport=transport, base_url=server.base_url) as http:
        replies = []
        for _ in range(2):
            async with http.stream("POST", PATHS[route], json=body, headers=headers) as r:
                events = [event async for event in r.aiter_raw()]
                replies.append((r.headers["x-cache"], events))
            await transport.cache.drain()
    (first, miss), (second, hit) = replies
    assert (first, second) == ("miss", "hit")
    assert b"".join(miss) == b"".join(hit) == direct
    assert hit == [e + b"\n\n" for e in direct.split(b"\n\n") if e]  # one event a chunk
    assert (await server.counts(route))["requests"] == 1


def openai_client(server: Server, transport: AsyncCacheTransport) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.base_url + "/v1", api_key="k", max_retries=0,
                       http_client=httpx2.AsyncClient(transport=transport))


def anthropic_client(server: Server, transport: AsyncCacheTransport) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=server.base_url, api_key="k", max_retries=0,
                          http_client=httpx2.AsyncClient(transport=transport))


async def responses_call(server: Server, transport: AsyncCacheTransport) -> Any:
    return await openai_client(server, transport).responses.create(
        model="m", temperature=0, input="What is cached?", stream=True)


async def messages_call(server: Server, transport: AsyncCacheTransport) -> Any:
    # anthropic 2.x has no temperature argument: the API's field goes in extra_body
    return await anthropic_client(server, transport).messages.create(
        model="m", max_tokens=16, messages=MESSAGES, stream=True,
        extra_body={"temperature": 0})


def dumped(events: list[Any]) -> list[str]:
    return [json.dumps(event.model_dump(), sort_keys=True) for event in events]


@pytest.mark.parametrize(("route", "call"), [("responses", responses_call),
                                             ("messages", messages_call)])
async def test_fifty_sdk_streams_one_upstream_then_ten_replays(
        server: Server, route: str, call: Any) -> None:
    await server.admin(route, "POST", "controls", hold_after_chunks=2)
    async with AsyncCacheTransport() as transport:
        sources: list[str] = []
        parsed: list[list[str]] = []

        async def one() -> None:
            stream = await call(server, transport)
            sources.append(stream.response.headers["x-cache"])
            parsed.append(dumped([event async for event in stream]))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
            with anyio.fail_after(10):
                while len(sources) < 50:  # noqa: ASYNC110 - fed by the tasks' socket reads
                    await anyio.sleep(0.001)
            await server.release_when_held(route)
        assert sorted(set(sources)) == ["join", "miss"] and sources.count("miss") == 1
        assert len({json.dumps(p) for p in parsed}) == 1 and parsed[0]
        await transport.cache.drain()
        for _ in range(10):
            stream = await call(server, transport)
            assert stream.response.headers["x-cache"] == "hit"
            assert dumped([event async for event in stream]) == parsed[0]
        counts = await server.counts(route)
        assert counts["requests"] == 1 and counts["streams_completed"] == 1


async def test_anthropic_default_temperature_samples(server: Server) -> None:
    async with AsyncCacheTransport() as transport:
        client = anthropic_client(server, transport)
        for _ in range(2):  # no temperature: Anthropic's default, 1.0
            raw = await client.messages.with_raw_response.create(
                model="m", max_tokens=16, messages=MESSAGES)
            assert raw.headers["x-cache"] == "bypass"
        cached = []
        for _ in range(2):
            cached.append(await client.messages.with_raw_response.create(
                model="m", max_tokens=16, messages=MESSAGES, extra_body={"temperature": 0}))
            await transport.cache.drain()
        assert cached[0].headers["x-cache"] == "miss"
        assert (await cached[0].parse()).content == (await cached[1].parse()).content
        assert cached[1].headers["x-cache"] == "hit"
    assert (await server.counts("messages"))["requests"] == 3


async def test_anthropic_errors_pass_through_with_their_request_id(server: Server) -> None:
    import anthropic

    await server.admin("messages", "POST", "controls", fail_status=429)
    async with AsyncCacheTransport() as transport:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await anthropic_client(server, transport).messages.create(
                model="m", max_tokens=16, messages=MESSAGES, extra_body={"temperature": 0})
        assert caught.value.request_id
        assert caught.value.response.headers["retry-after"] == "1"
        assert transport.cache.stats().stored == 0


async def test_directives_never_reach_the_upstream(server: Server) -> None:
    async with AsyncCacheTransport() as transport:
        client = openai_client(server, transport)
        for directive in ("no-cache", "no-store", "max-age=0"):  # each goes upstream
            await client.responses.create(
                model="m", temperature=0, input="What is cached?",
                extra_headers={"Cache-Control": directive, "X-Cache-TTL": "60",
                               "X-Cache-Namespace": "t"})
    recent = await server.admin("responses", "GET", "recent")
    assert len(recent) == 3
    for logged in recent:
        names = {name.lower() for name in logged["headers"]}
        assert not names & {"cache-control", "x-cache-ttl", "x-cache-namespace"}


async def test_embeddings_on_the_local_server_send_only_the_missing_inputs(
        server: Server) -> None:
    async with AsyncCacheTransport() as transport:
        client = openai_client(server, transport)
        first = await client.embeddings.create(model="text-embedding-3-small",
                                               input=["alpha", "beta"], dimensions=8)
        await transport.cache.drain()
        second = await client.embeddings.create(model="text-embedding-3-small",
                                                input=["beta", "gamma"], dimensions=8)
        async with AsyncCacheTransport() as other:  # no cache shared with the first
            direct = await openai_client(server, other).embeddings.create(
                model="text-embedding-3-small", input=["beta", "gamma"], dimensions=8)
    recent = await server.admin("embeddings", "GET", "recent")
    assert [r["body"]["input"] for r in recent] == [["alpha", "beta"], ["gamma"],
                                                    ["beta", "gamma"]]
    assert recent[0]["body"]["encoding_format"] == "base64"  # the SDK's default
    assert second.data[0].embedding == first.data[1].embedding
    assert [d.embedding for d in second.data] == [d.embedding for d in direct.data]
    assert [d.index for d in second.data] == [0, 1]
