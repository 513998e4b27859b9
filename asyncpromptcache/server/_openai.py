"""An OpenAI-compatible ``POST /v1/chat/completions`` on the local server, streaming and not,
for the demo, the tests and the benchmarks of the response cache: no API key, no network.

The answer is deterministic: the same request always gets the same text, cut into the same
tokens (``max_tokens`` or ``max_completion_tokens`` of them, else ``default_max_tokens``).
What the request asks for shapes the answer, so that every kind of chunk can be produced:

* ``tools`` (and a ``tool_choice`` other than ``"none"``): the model calls the chosen (else
  the first) function, with deterministic arguments streamed in pieces as ``tool_calls``
  deltas; ``finish_reason`` is ``"tool_calls"``.
* ``reasoning_effort``: ``reasoning_content`` deltas come before the text, as reasoning
  models behind OpenAI-compatible servers send them, and ``usage`` counts them.
* ``stream_options.include_usage``: a last chunk with ``usage`` and no choices.

Knobs (``ChatControls``, also at ``POST /_admin/chat/controls``), counts
(``GET /_admin/chat/requests``) and the other admin routes are those of every fake endpoint
(see ``_llmcore``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ._llmcore import (
    FakeLLM,
    Frame,
    LLMControls,
    LLMCounter,
    deterministic_tokens,
    fixed_id,
    pick_tool,
    split_arguments,
    sse_frame,
    token_limit,
    tool_arguments,
    word_count,
)

__all__ = ["COMPLETIONS_PATH", "ChatControls", "ChatCounter", "add_openai_routes",
           "answer_tokens", "openai_error"]

COMPLETIONS_PATH = "/v1/chat/completions"
_CREATED = 1_700_000_000  # a fixed "created": answers are reproducible byte for byte

#: The knobs of ``/v1/chat/completions`` (the same for every fake endpoint).
ChatControls = LLMControls
ChatCounter = LLMCounter

_CHAT = web.AppKey("asyncpromptcache_chat", FakeLLM)


def openai_error(status: int, message: str, headers: dict[str, str] | None = None,
                 ) -> web.Response:
    """OpenAI's error answer: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "rate_limit_error" if status == 429 else (
        "server_error" if status >= 500 else "invalid_request_error")
    return web.json_response(_error_body(message, kind), status=status, headers=headers)


def add_openai_routes(app: web.Application, controls: ChatControls | None = None) -> None:
    """Serve ``/v1/chat/completions`` and its admin routes (``/_admin/chat/...``) on ``app``."""
    FakeLLM("chat", openai_error, controls=controls).mount(
        app, _CHAT, COMPLETIONS_PATH, _completions)


# -- the deterministic answer (pure) ---------------------------------------------------------


def answer_tokens(request: dict[str, Any], default_max_tokens: int = 16) -> list[str]:
    """The answer's tokens: the same request always gives the same ones."""
    count = token_limit(request.get("max_completion_tokens", request.get("max_tokens")),
                        default_max_tokens)
    return deterministic_tokens(
        [request.get("model"), request.get("messages"), request.get("seed")], count)


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function a request with ``tools`` makes the model call, or ``None``."""
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    wanted = choice["function"].get("name") if isinstance(choice, dict) and isinstance(
        choice.get("function"), dict) else None
    return pick_tool(body.get("tools"), wanted, inner="function")


def _reasoning(body: dict[str, Any], tokens: list[str]) -> list[str]:
    if not isinstance(body.get("reasoning_effort"), str):
        return []
    return deterministic_tokens(["reasoning", body.get("model"), body.get("messages")],
                                max(2, len(tokens) // 2))


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion.chunk", "created": _CREATED, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _usage(messages: list[Any], tokens: list[str], reasoning: list[str]) -> dict[str, Any]:
    prompt = sum(word_count(m.get("content", "")) for m in messages if isinstance(m, dict))
    completion = len(tokens) + len(reasoning)
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": len(reasoning)}
    return usage


def _tool_call(cid: str, tool: dict[str, Any], tokens: list[str]) -> dict[str, Any]:
    return {"id": "call_" + cid[-20:], "type": "function",
            "function": {"name": tool["name"],
                         "arguments": tool_arguments(tool.get("parameters"), tokens)}}


# -- handlers ----------------------------------------------------------------------------------


async def _completions(request: web.Request) -> web.StreamResponse:
    llm = request.app[_CHAT]
    body = await llm.read_body(request)
    if isinstance(body, web.Response):
        return body
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        return openai_error(400, "'model' is required (a string)")
    if not isinstance(messages, list) or not messages:
        return openai_error(400, "'messages' is required (a non-empty list)")
    failure = llm.injected_failure()
    if failure is not None:
        return failure
    tokens = answer_tokens(body, llm.controls.default_max_tokens)
    reasoning = _reasoning(body, tokens)
    tool = _chosen_tool(body)
    cid = fixed_id("chatcmpl-", body)
    call = _tool_call(cid, tool, tokens) if tool is not None else None
    if body.get("stream") is not True:
        await llm.before_answer()
        message: dict[str, Any] = {"role": "assistant",
                                   "content": None if call else "".join(tokens)}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if call:
            message["tool_calls"] = [call]
        return web.json_response({
            "id": cid, "object": "chat.completion", "created": _CREATED, "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if call else "stop"}],
            "usage": _usage(messages, tokens, reasoning),
        })
    events = [_chunk(cid, model, {"role": "assistant", "content": ""}, None)]
    events += [_chunk(cid, model, {"reasoning_content": token}, None) for token in reasoning]
    if call is None:
        events += [_chunk(cid, model, {"content": token}, None) for token in tokens]
    else:
        start = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
        events.append(_chunk(cid, model, {"tool_calls": [{"index": 0, **start}]}, None))
        events += [_chunk(cid, model, {"tool_calls": [
            {"index": 0, "function": {"arguments": piece}}]}, None)
            for piece in split_arguments(call["function"]["arguments"])]
    events.append(_chunk(cid, model, {}, "tool_calls" if call else "stop"))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        usage = _chunk(cid, model, {}, None)
        usage["choices"] = []
        usage["usage"] = _usage(messages, tokens, reasoning)
        events.append(usage)
    # The token delay applies from the second token on (the role chunk and the first token
    # come at once), as before the first event only the time to first token does.
    frames: list[Frame] = [(sse_frame(event), sent > 1) for sent, event in enumerate(events)]
    error = _error_body("failure injected by the server controls", "server_error")
    return await llm.stream(request, frames, error_frame=lambda: sse_frame(error, "error"),
                            done=b"data: [DONE]\n\n")
