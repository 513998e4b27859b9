"""OpenAI's Responses API (``POST /v1/responses``) on the local server, streaming and not.

The answer is deterministic (the same request, the same bytes). A stream is the API's event
sequence, each event with its ``event:`` line and a ``sequence_number``: ``response.created``,
``response.in_progress``, then per output item ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, and ``response.completed``
(with ``usage``) last. What the request asks for shapes the output:

* ``reasoning`` (an object): a ``reasoning`` item first, its summary streamed as
  ``response.reasoning_summary_text.delta`` events;
* ``tools`` (and a ``tool_choice`` other than ``"none"``): a ``function_call`` item instead
  of the message, its arguments streamed as ``response.function_call_arguments.delta``.

``max_output_tokens`` sets the number of text tokens (else ``default_max_tokens``). An
injected error mid-stream is the API's ``error`` event. Knobs and counts at
``/_admin/responses/...`` (see ``_llmcore``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ._llmcore import (
    FakeLLM,
    deterministic_tokens,
    event_frames,
    fixed_id,
    pick_tool,
    split_arguments,
    sse_frame,
    token_limit,
    tool_arguments,
    word_count,
)
from ._openai import openai_error

__all__ = ["RESPONSES_PATH", "add_responses_routes"]

RESPONSES_PATH = "/v1/responses"
_CREATED = 1_700_000_000

_RESPONSES = web.AppKey("asyncpromptcache_responses", FakeLLM)


def add_responses_routes(app: web.Application) -> None:
    """Serve ``/v1/responses`` and its admin routes (``/_admin/responses/...``) on ``app``."""
    FakeLLM("responses", openai_error).mount(app, _RESPONSES, RESPONSES_PATH, _responses)


# -- the answer (pure) -----------------------------------------------------------------------


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    wanted = choice.get("name") if isinstance(choice, dict) else None
    return pick_tool(body.get("tools"), wanted)


class _Answer:
    """The output items of one request, whole (``response(...)``) or as events
    (``events()``)."""

    def __init__(self, body: dict[str, Any], default_max_tokens: int) -> None:
        self.body = body
        model, prompt = body.get("model"), [body.get("instructions"), body.get("input")]
        self.rid = fixed_id("resp_", body, 32)
        self.tokens = deterministic_tokens(
            [model, prompt, body.get("seed")],
            token_limit(body.get("max_output_tokens"), default_max_tokens))
        reasoning = body.get("reasoning")
        self.summary = deterministic_tokens(["reasoning", model, prompt],
                                            max(2, len(self.tokens) // 2)) \
            if isinstance(reasoning, dict) else []
        self.tool = _chosen_tool(body)
        self.input_tokens = word_count(prompt)

    # The items, in progress (``done=False``) or completed.

    def _reasoning_item(self, done: bool) -> dict[str, Any]:
        summary = [{"type": "summary_text", "text": "".join(self.summary)}] if done else []
        return {"id": "rs_" + self.rid[5:], "type": "reasoning", "summary": summary}

    def _message_item(self, done: bool) -> dict[str, Any]:
        return {"id": "msg_" + self.rid[5:], "type": "message",
                "status": "completed" if done else "in_progress",
                "content": [self._text_part(True)] if done else [], "role": "assistant"}

    def _text_part(self, done: bool) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [],
                "text": "".join(self.tokens) if done else ""}

    def _arguments(self) -> str:
        assert self.tool is not None
        return tool_arguments(self.tool.get("parameters"), self.tokens)

    def _call_item(self, done: bool) -> dict[str, Any]:
        assert self.tool is not None
        return {"id": "fc_" + self.rid[5:], "type": "function_call",
                "status": "completed" if done else "in_progress",
                "arguments": self._arguments() if done else "",
                "call_id": "call_" + self.rid[-20:], "name": self.tool["name"]}

    def _items(self) -> list[dict[str, Any]]:
        items = [self._reasoning_item(True)] if self.summary else []
        items.append(self._call_item(True) if self.tool else self._message_item(True))
        return items

    def _usage(self) -> dict[str, Any]:
        output = len(self.summary) + (len(split_arguments(self._arguments())) if self.tool
                                      else len(self.tokens))
        return {"input_tokens": self.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": len(self.summary)},
                "total_tokens": self.input_tokens + output}

    def response(self, done: bool) -> dict[str, Any]:
        body = self.body
        reasoning = body.get("reasoning")
        tools = body.get("tools")
        return {
            "id": self.rid, "object": "response", "created_at": _CREATED,
            "status": "completed" if done else "in_progress", "background": False,
            "completed_at": _CREATED if done else None, "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "metadata": {},
            "model": body["model"], "output": self._items() if done else [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
            if isinstance(reasoning, dict) else {"effort": None, "summary": None},
            "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": tools if isinstance(tools, list) else [],
            "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": self._usage() if done else None, "user": None,
        }

    def events(self) -> list[tuple[dict[str, Any], bool]]:
        """The stream's events (without ``sequence_number``), each with whether it is a
        token (paced) event."""
        out: list[tuple[dict[str, Any], bool]] = [
            ({"type": "response.created", "response": self.response(False)}, False),
            ({"type": "response.in_progress", "response": self.response(False)}, False),
        ]
        index = 0
        if self.summary:
            item = self._reasoning_item(False)
            rid = item["id"]
            where = {"item_id": rid, "output_index": index, "summary_index": 0}
            text = "".join(self.summary)
            out.append(({"type": "response.output_item.added", "output_index": index,
                         "item": item}, False))
            out.append(({"type": "response.reasoning_summary_part.added", **where,
                         "part": {"type": "summary_text", "text": ""}}, False))
            out += [({"type": "response.reasoning_summary_text.delta", **where,
                      "delta": token}, True) for token in self.summary]
            out.append(({"type": "response.reasoning_summary_text.done", **where,
                         "text": text}, False))
            out.append(({"type": "response.reasoning_summary_part.done", **where,
                         "part": {"type": "summary_text", "text": text}}, False))
            out.append(({"type": "response.output_item.done", "output_index": index,
                         "item": self._reasoning_item(True)}, False))
            index += 1
        if self.tool:
            item = self._call_item(False)
            where = {"item_id": item["id"], "output_index": index}
            out.append(({"type": "response.output_item.added", "output_index": index,
                         "item": item}, False))
            out += [({"type": "response.function_call_arguments.delta", **where,
                      "delta": piece}, True) for piece in split_arguments(self._arguments())]
            out.append(({"type": "response.function_call_arguments.done", **where,
                         "arguments": self._arguments()}, False))
            out.append(({"type": "response.output_item.done", "output_index": index,
                         "item": self._call_item(True)}, False))
        else:
            item = self._message_item(False)
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out.append(({"type": "response.output_item.added", "output_index": index,
                         "item": item}, False))
            out.append(({"type": "response.content_part.added", **where,
                         "part": self._text_part(False)}, False))
            out += [({"type": "response.output_text.delta", **where, "delta": token,
                      "logprobs": []}, True) for token in self.tokens]
            out.append(({"type": "response.output_text.done", **where,
                         "text": "".join(self.tokens), "logprobs": []}, False))
            out.append(({"type": "response.content_part.done", **where,
                         "part": self._text_part(True)}, False))
            out.append(({"type": "response.output_item.done", "output_index": index,
                         "item": self._message_item(True)}, False))
        out.append(({"type": "response.completed", "response": self.response(True)}, False))
        return out


# -- the handler -----------------------------------------------------------------------------


async def _responses(request: web.Request) -> web.StreamResponse:
    llm = request.app[_RESPONSES]
    body = await llm.read_body(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("model"), str) or not body["model"]:
        return openai_error(400, "'model' is required (a string)")
    if not isinstance(body.get("input"), str | list) or not body["input"]:
        return openai_error(400, "'input' is required (a string or a non-empty list)")
    failure = llm.injected_failure()
    if failure is not None:
        return failure
    answer = _Answer(body, llm.controls.default_max_tokens)
    if body.get("stream") is not True:
        await llm.before_answer()
        return web.json_response(answer.response(True))
    events = answer.events()
    frames = event_frames(events, numbered=True)

    def error_frame() -> bytes:
        sent = llm.controls.fail_after_chunks or 0
        return sse_frame({"type": "error", "code": "server_error",
                          "message": "failure injected by the server controls",
                          "param": None, "sequence_number": sent}, "error")

    return await llm.stream(request, frames, error_frame=error_frame)
