"""The local server's fake LLM endpoints against the official SDKs: ``openai``
(``chat.completions``, ``responses``, ``embeddings``) and ``anthropic`` (``messages``),
streaming and not, pointed at the server with ``base_url=``. What the SDKs parse is what a
real provider's answer gives them; the knobs and counts are those of every endpoint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from asyncpromptcache.server import run_server
from asyncpromptcache.server._embeddings import embedding_vector

from .fakellm import FakeLLMAdmin as Admin

pytestmark = pytest.mark.anyio

# The SDKs' typed overloads are not what these tests check: their clients are ``Any`` here.
MESSAGES = [{"role": "user", "content": "What does the cache do?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    async with run_server() as server, aiohttp.ClientSession() as http:
        yield Admin(server.base_url, http)


@pytest.fixture
async def oai(admin: Admin) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=admin.base_url + "/v1", api_key="sk-test",
                                  max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(admin: Admin) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=admin.base_url, api_key="sk-ant-test",
                                        max_retries=0) as client:
        yield client


# -- chat completions --------------------------------------------------------------------------


async def test_chat_streams_and_completions_agree(oai: Any, admin: Admin) -> None:
    whole = await oai.chat.completions.create(model="m", messages=MESSAGES,
                                              max_tokens=6)
    stream = await oai.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=6, stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(text.split()) == 6
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6 == whole.usage.completion_tokens
    assert await admin.counts("chat") == {"requests": 2, "streams": 1, "streams_completed": 1,
                                          "completions": 1, "chunks": 1 + 6 + 1 + 1}


async def test_chat_tool_call_deltas_and_reasoning(oai: Any) -> None:
    tools: Any = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}]
    stream = await oai.chat.completions.create(
        model="m", messages=MESSAGES, tools=tools, reasoning_effort="low",
        stream=True)
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert reasoning and not any(d.content for d in deltas)
    assert calls[0].id and calls[0].function and calls[0].function.name == "weather"
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    assert len(calls) > 2 and set(json.loads(arguments)) == {"city"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    whole = await oai.chat.completions.create(model="m", messages=MESSAGES,
                                              tools=tools, reasoning_effort="low")
    message = whole.choices[0].message
    assert message.tool_calls and message.tool_calls[0].function.arguments == arguments
    assert whole.choices[0].finish_reason == "tool_calls"


# -- the Responses API -------------------------------------------------------------------------


async def test_responses_stream_is_the_api_event_sequence(oai: Any,
                                                         admin: Admin) -> None:
    whole = await oai.responses.create(model="m", input="Hello", max_output_tokens=5)
    events = [e async for e in await oai.responses.create(
        model="m", input="Hello", max_output_tokens=5, stream=True)]
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * 5,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == final.output_text and len(text.split()) == 5
    assert final.usage is not None and final.usage.output_tokens == 5
    assert (await admin.counts("responses"))["streams_completed"] == 1
    # The SDK's own event accumulator accepts the sequence.
    async with oai.responses.stream(model="m", input="Hello", max_output_tokens=5) as stream:
        assert (await stream.get_final_response()).output_text == text


async def test_responses_reasoning_and_function_call(oai: Any) -> None:
    tools: Any = [{"type": "function", "name": "weather", "parameters": WEATHER,
                   "strict": False}]
    async with oai.responses.stream(model="m", input="Weather?", tools=tools,
                                    reasoning={"effort": "low", "summary": "auto"}) as stream:
        types = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "response.reasoning_summary_text.delta" in types
    assert "response.function_call_arguments.delta" in types
    reasoning, call = final.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text
    assert call.type == "function_call" and call.name == "weather"
    assert set(json.loads(call.arguments)) == {"city"}


async def test_responses_error_event_and_status(oai: Any, admin: Admin) -> None:
    await admin.control("responses", fail_after_chunks=3)
    events = [e async for e in await oai.responses.create(model="m", input="x", stream=True)]
    assert [e.type for e in events][-1] == "error"
    assert events[-1].sequence_number == 3
    await admin.control("responses", fail_after_chunks=None, fail_status=429)
    with pytest.raises(openai.RateLimitError):
        await oai.responses.create(model="m", input="x")
    assert await admin.counts("responses") == {"requests": 2, "streams": 1,
                                               "streams_completed": 0, "completions": 0,
                                               "chunks": 3}


# -- embeddings --------------------------------------------------------------------------------


async def test_embeddings_are_deterministic_per_input(oai: Any,
                                                     admin: Admin) -> None:
    both = await oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    one = await oai.embeddings.create(model="text-embedding-3-small", input="beta",
                                      encoding_format="float")
    assert [d.index for d in both.data] == [0, 1] and len(both.data[0].embedding) == 1536
    assert both.data[1].embedding == one.data[0].embedding  # base64 (the SDK's default) = float
    assert both.data[0].embedding != both.data[1].embedding
    assert abs(sum(v * v for v in one.data[0].embedding) - 1) < 1e-5
    short = await oai.embeddings.create(model="text-embedding-3-small", input="beta",
                                        dimensions=8)
    assert short.data[0].embedding == embedding_vector("text-embedding-3-small", "beta", 8)
    assert both.usage.prompt_tokens == 2 == both.usage.total_tokens
    assert await admin.counts("embeddings") == {"requests": 3, "completions": 3, "inputs": 4}
    status, _, body = await admin.post("/v1/embeddings", {"model": "m", "input": []})
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


# -- Anthropic Messages ------------------------------------------------------------------------


async def test_messages_stream_and_message_agree(claude: Any,
                                                admin: Admin) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="claude-x", max_tokens=1000, messages=MESSAGES)
    assert raw.headers["request-id"].startswith("req_")
    whole = await raw.parse()
    events = [e async for e in await claude.messages.create(
        model="claude-x", max_tokens=1000, messages=MESSAGES, stream=True)]
    assert [e.type for e in events] == [
        "message_start", "content_block_start", *["content_block_delta"] * 16,
        "content_block_stop", "message_delta", "message_stop"]  # the SDK skips the ping
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta"
                   and e.delta.type == "text_delta")
    assert whole.content[0].type == "text" and whole.content[0].text == text
    assert whole.stop_reason == "end_turn" == events[-2].delta.stop_reason
    assert events[-2].usage.output_tokens == 16 == whole.usage.output_tokens
    assert await admin.counts("messages") == {"requests": 2, "streams": 1,
                                              "streams_completed": 1, "completions": 1,
                                              "chunks": 1 + 1 + 1 + 16 + 1 + 2}
    short = await claude.messages.create(model="claude-x", max_tokens=3, messages=MESSAGES)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


async def test_messages_wire_has_event_lines_and_ping(admin: Admin) -> None:
    body = {"model": "c", "max_tokens": 2, "messages": MESSAGES, "stream": True}
    status, headers, raw = await admin.post("/v1/messages", body, **{
        "anthropic-version": "2023-06-01"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    names = [line[len("event: "):] for line in raw.decode().split("\n")
             if line.startswith("event: ")]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta",
                     "message_stop"]
    status, headers, raw = await admin.post("/v1/messages", body)
    assert status == 400 and "anthropic-version" in json.loads(raw)["error"]["message"]
    assert headers["request-id"] == json.loads(raw)["request_id"]


async def test_messages_thinking_and_tool_use(claude: Any) -> None:
    tools: Any = [{"name": "weather", "input_schema": WEATHER}]
    async with claude.messages.stream(
            model="claude-x", max_tokens=2000, messages=MESSAGES, tools=tools,
            thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        deltas = [e.delta.type async for e in stream if e.type == "content_block_delta"]
        final = await stream.get_final_message()
    assert {"thinking_delta", "signature_delta", "text_delta", "input_json_delta"} <= set(deltas)
    thinking, text, tool = final.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    assert text.type == "text" and text.text
    assert tool.type == "tool_use" and tool.name == "weather" and set(tool.input) == {"city"}
    assert final.stop_reason == "tool_use"
    whole = await claude.messages.create(
        model="claude-x", max_tokens=2000, messages=MESSAGES, tools=tools,
        thinking={"type": "enabled", "budget_tokens": 1024})
    assert [block.type for block in whole.content] == ["thinking", "text", "tool_use"]
    assert whole.content[2].input == tool.input


async def test_messages_errors_reach_the_sdk_typed(claude: Any,
                                                  admin: Admin) -> None:
    await admin.control("messages", fail_status=429)
    with pytest.raises(anthropic.RateLimitError) as caught:
        await claude.messages.create(model="c", max_tokens=5, messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")
    await admin.control("messages", fail_status=529)
    with pytest.raises(anthropic.InternalServerError):
        await claude.messages.create(model="c", max_tokens=5, messages=MESSAGES)
    await admin.control("messages", fail_status=None, fail_after_chunks=4)
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async for _ in await claude.messages.create(
                model="c", max_tokens=5, messages=MESSAGES, stream=True):
            pass
    counts = await admin.counts("messages")
    assert (counts["streams"], counts["streams_completed"], counts["chunks"]) == (1, 0, 4)


async def test_the_request_log_shows_credentials_only_as_fingerprints(
        claude: Any, admin: Admin) -> None:
    await claude.messages.create(model="c", max_tokens=1, messages=MESSAGES)
    (logged,) = await admin.recent("messages")
    assert logged["path"] == "/v1/messages" and logged["body"]["max_tokens"] == 1
    # This SDK sends its key as ``Authorization: Bearer``; older ones as ``x-api-key``.
    (credential,) = {"authorization", "x-api-key"} & set(logged["headers"])
    assert logged["headers"][credential].startswith("sha256:")
    assert "sk-ant-test" not in json.dumps(logged)
    assert logged["headers"]["anthropic-version"]
