"""The Responses API and Anthropic Messages producers, through ``ResponseCache``, against the
local server: a miss streams once, a hit replays the same events without the upstream, the
terminal events end the streams, the protocols' error events and statuses become our typed
errors and nothing failed is stored. Assertions are on chunks and the server's counts."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from asyncpromptcache import (
    PromptCacheError,
    ResponseCache,
    ResponseFailedError,
    UpstreamEventError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTransportError,
)
from asyncpromptcache.response import (
    AnthropicMessagesProducer,
    OpenAIResponsesProducer,
    SSEEvent,
    SSEProducer,
    chunk_text,
)
from asyncpromptcache.response.providers._anthropic import messages_event
from asyncpromptcache.response.providers._responses import responses_event
from asyncpromptcache.server import run_server

from .fakellm import FakeLLMAdmin as Server

pytestmark = pytest.mark.anyio

KEY = "sk-provider-secret"
RESPONSES: dict[str, Any] = {"model": "m", "input": "What does the cache do?",
                             "temperature": 0, "max_output_tokens": 6}
MESSAGES: dict[str, Any] = {"model": "claude-x", "max_tokens": 1024, "temperature": 0,
                            "messages": [{"role": "user", "content": "What does it do?"}]}


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with run_server() as running, aiohttp.ClientSession() as http:
        yield Server(running.base_url, http)


def producers(server: Server) -> list[tuple[str, SSEProducer, dict[str, Any]]]:
    return [
        ("responses", OpenAIResponsesProducer(base_url=server.base_url + "/v1", api_key=KEY),
         RESPONSES),
        ("messages", AnthropicMessagesProducer(base_url=server.base_url, api_key=KEY),
         MESSAGES),
    ]


async def test_a_miss_streams_once_and_a_hit_replays_the_same_events(server: Server) -> None:
    await server.control("responses", hold_after_chunks=4)
    await server.control("messages", hold_after_chunks=4)
    for name, llm, request in producers(server):
        async with llm, ResponseCache() as cache:
            got: list[list[Any]] = [[] for _ in range(5)]
            streams = [cache.stream(request, llm.producer(request)) for _ in range(5)]

            async def read(i: int) -> None:
                async for chunk in streams[i]:  # noqa: B023 - awaited within the turn
                    got[i].append(chunk)  # noqa: B023

            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(read, i)
                with anyio.fail_after(10):  # a safety bound: the server holds the stream
                    while (await server.counts(name))["chunks"] < 4:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                await server.release(name)
            replay = cache.stream(request, llm.producer(request))
            replayed: list[Any] = [chunk async for chunk in replay]
            whole = await llm.complete(request)
        assert [s.source for s in streams].count("miss") == 1
        assert replay.source == "hit" and all(g == replayed for g in got)
        counts = await server.counts(name)
        assert (counts["streams"], counts["streams_completed"]) == (1, 1)
        assert llm.requests_sent == 2  # the stream and the whole answer, nothing for the hit
        terminal = "response.completed" if name == "responses" else "message_stop"
        assert replayed[-1]["type"] == terminal
        assert all(chunk["type"] != "ping" for chunk in replayed)
        text = "".join(chunk_text(chunk) for chunk in replayed)
        assert text and text == chunk_text(whole)
        if name == "responses":
            assert chunk_text(replayed[-1]["response"]) == text


async def test_thinking_tool_use_and_reasoning_events_are_kept(server: Server) -> None:
    tools = [{"name": "weather", "input_schema": {"type": "object",
                                                  "properties": {"city": {}}}}]
    request = {**MESSAGES, "tools": tools, "thinking": {"type": "enabled", "budget_tokens": 1}}
    async with AnthropicMessagesProducer(base_url=server.base_url) as llm:
        events = [chunk async for chunk in llm.stream(request)]
    deltas = {e["delta"]["type"] for e in events if e["type"] == "content_block_delta"}
    assert deltas == {"thinking_delta", "signature_delta", "text_delta", "input_json_delta"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    request = {**RESPONSES, "reasoning": {"effort": "low"}}
    async with OpenAIResponsesProducer(base_url=server.base_url + "/v1") as responses:
        types = [chunk["type"] async for chunk in responses.stream(request)]
    assert "response.reasoning_summary_text.delta" in types
    assert types[-1] == "response.completed"


@pytest.mark.parametrize(("mode", "cause"), [
    ("error_event", UpstreamEventError),
    ("truncate", UpstreamProtocolError),
    ("disconnect", UpstreamTransportError),
])
async def test_a_failing_stream_raises_typed_and_is_never_stored(
        server: Server, mode: str, cause: type[Exception]) -> None:
    for name, llm, request in producers(server):
        await server.control(name, fail_after_chunks=3, fail_mode=mode)
        async with llm, ResponseCache() as cache:
            got: list[Any] = []

            async def read() -> None:
                async for chunk in cache.stream(request, llm.producer(request)):  # noqa: B023
                    got.append(chunk)  # noqa: B023

            with pytest.raises(ResponseFailedError) as caught:
                await read()
            # Three events sent; the third of a Messages stream is its ping, dropped.
            assert isinstance(caught.value.upstream, cause)
            assert len(got) == (3 if name == "responses" else 2)
            if mode == "error_event":
                assert caught.value.upstream.error_type == (  # type: ignore[attr-defined]
                    "server_error" if name == "responses" else "overloaded_error")
            assert (cache.stats().stored, cache.stats().entries) == (0, 0)
            await server.control(name, fail_after_chunks=None)
            again = cache.stream(request, llm.producer(request))
            assert [c async for c in again][:len(got)] == got and again.source == "miss"


async def test_statuses_become_upstream_status_errors(server: Server) -> None:
    for name, llm, request in producers(server):
        await server.control(name, fail_status=429)
        async with llm:
            with pytest.raises(UpstreamStatusError) as caught:
                await llm.complete(request)
            assert (caught.value.status, caught.value.retry_after) == (429, 1.0)
            assert caught.value.error_type == "rate_limit_error"
            with pytest.raises(UpstreamStatusError):
                async for _ in llm.stream(request):
                    pass
    assert "x-api-key" not in repr(caught.value) and KEY not in str(caught.value)


async def test_the_key_goes_in_each_protocols_header_and_nowhere_else(server: Server) -> None:
    fingerprint = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()[:16]
    bearer = "sha256:" + hashlib.sha256(f"Bearer {KEY}".encode()).hexdigest()[:16]
    for name, llm, request in producers(server):
        assert KEY not in repr(llm)
        async with llm:
            await llm.complete(request)
        (logged,) = await server.recent(name)
        if name == "messages":
            assert logged["headers"]["x-api-key"] == fingerprint
            assert logged["headers"]["anthropic-version"] == "2023-06-01"
            assert "authorization" not in logged["headers"]
        else:
            assert logged["headers"]["authorization"] == bearer
        assert logged["body"]["stream"] is False


def test_the_event_readers_are_pure() -> None:
    assert messages_event(SSEEvent("{}", "ping")) == (None, False)
    assert messages_event(SSEEvent('{"type":"message_stop"}', "message_stop")) == (
        {"type": "message_stop"}, True)
    with pytest.raises(UpstreamEventError) as caught:
        messages_event(SSEEvent('{"type":"error","error":{"type":"overloaded_error",'
                                '"message":"Overloaded"}}', "error"))
    assert caught.value.error_type == "overloaded_error" and "Overloaded" in str(caught.value)
    with pytest.raises(UpstreamEventError) as failed:
        responses_event(SSEEvent('{"type":"response.failed","response":{"error":'
                                 '{"code":"server_error","message":"boom"}}}',
                                 "response.failed"))
    assert failed.value.error_type == "server_error" and "boom" in str(failed.value)
    assert responses_event(SSEEvent('{"type":"response.incomplete"}'))[1] is True
    assert responses_event(SSEEvent("[DONE]")) == (None, False)
    for reader in (messages_event, responses_event):
        with pytest.raises(UpstreamProtocolError):
            reader(SSEEvent("[1]", "message_start"))
        with pytest.raises(PromptCacheError):
            reader(SSEEvent("not json"))
