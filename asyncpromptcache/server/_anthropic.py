"""Anthropic's Messages API (``POST /v1/messages``) on the local server, streaming and not.

As Anthropic's server does, it wants an ``anthropic-version`` header (400 without one),
``model``, ``max_tokens`` and ``messages``; every answer carries a ``request-id`` header, and
errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with Anthropic's
error types (``rate_limit_error`` on 429, ``overloaded_error`` on 529...). A stream is its
event sequence with ``event:`` lines: ``message_start``, per content block
``content_block_start`` (a ``ping`` after the first), ``content_block_delta``...,
``content_block_stop``, then ``message_delta`` (``stop_reason``, ``usage``) and
``message_stop``. The answer is deterministic; what the request asks for shapes it:

* ``thinking`` (``{"type": "enabled", ...}``): a ``thinking`` block first
  (``thinking_delta``s, then a ``signature_delta``);
* ``tools`` (and a ``tool_choice`` other than ``none``): a ``tool_use`` block whose input is
  streamed as ``input_json_delta``s, ``stop_reason`` ``"tool_use"``; with ``tool_choice``
  ``any`` or ``tool`` it is the only block besides thinking.

The text has ``min(max_tokens, default_max_tokens)`` tokens, ``stop_reason`` ``"max_tokens"``
when ``max_tokens`` cut it short, else ``"end_turn"``. Knobs and counts at
``/_admin/messages/...`` (see ``_llmcore``).
"""

from __future__ import annotations

import json
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

__all__ = ["MESSAGES_PATH", "add_anthropic_routes", "anthropic_error"]

MESSAGES_PATH = "/v1/messages"

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}

_MESSAGES = web.AppKey("asyncpromptcache_messages", FakeLLM)


def anthropic_error(status: int, message: str, headers: dict[str, str] | None = None,
                    ) -> web.Response:
    """Anthropic's error answer, with a ``request-id`` header and ``request_id`` field."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    request_id = fixed_id("req_", [status, message], 24)
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id},
        status=status, headers={"request-id": request_id, **(headers or {})})


def add_anthropic_routes(app: web.Application) -> None:
    """Serve ``/v1/messages`` and its admin routes (``/_admin/messages/...``) on ``app``."""
    FakeLLM("messages", anthropic_error).mount(app, _MESSAGES, MESSAGES_PATH, _messages)


# -- the answer (pure) -----------------------------------------------------------------------


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    choice_type = choice.get("type") if isinstance(choice, dict) else None
    if choice_type == "none":
        return None
    wanted = choice.get("name") if choice_type == "tool" else None  # type: ignore[union-attr]
    return pick_tool(body.get("tools"), wanted, kind=None)


class _Answer:
    def __init__(self, body: dict[str, Any], default_max_tokens: int) -> None:
        model, prompt = body.get("model"), [body.get("system"), body.get("messages")]
        self.body = body
        self.mid = fixed_id("msg_", body, 24)
        limit = token_limit(body.get("max_tokens"), default_max_tokens)
        self.tokens = deterministic_tokens([model, prompt], min(limit, default_max_tokens))
        self.stop = "max_tokens" if limit < default_max_tokens else "end_turn"
        thinking = body.get("thinking")
        self.thinking = deterministic_tokens(["thinking", model, prompt],
                                             max(2, len(self.tokens) // 2)) \
            if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive") \
            else []
        self.tool = _chosen_tool(body)
        choice = body.get("tool_choice")
        self.text = not (self.tool and isinstance(choice, dict)
                         and choice.get("type") in ("any", "tool"))
        if self.tool:
            self.stop = "tool_use"
        self.input_tokens = word_count(prompt)

    def _arguments(self) -> str:
        assert self.tool is not None
        return tool_arguments(self.tool.get("input_schema"), self.tokens)

    def _signature(self) -> str:
        return fixed_id("", ["signature", self.mid], 48)

    def blocks(self) -> list[dict[str, Any]]:
        """The content blocks, whole."""
        blocks: list[dict[str, Any]] = []
        if self.thinking:
            blocks.append({"type": "thinking", "thinking": "".join(self.thinking),
                           "signature": self._signature()})
        if self.text:
            blocks.append({"type": "text", "text": "".join(self.tokens)})
        if self.tool:
            blocks.append({"type": "tool_use", "id": "toolu_" + self.mid[4:],
                           "name": self.tool["name"], "input": json.loads(self._arguments())})
        return blocks

    def output_tokens(self) -> int:
        return len(self.thinking) + (len(self.tokens) if self.text else 0) + (
            len(split_arguments(self._arguments())) if self.tool else 0)

    def message(self, done: bool) -> dict[str, Any]:
        return {
            "id": self.mid, "type": "message", "role": "assistant", "model": self.body["model"],
            "content": self.blocks() if done else [],
            "stop_reason": self.stop if done else None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0,
                      "output_tokens": self.output_tokens() if done else 1},
        }

    def events(self) -> list[tuple[dict[str, Any], bool]]:
        """The stream's events, each with whether it is a token (paced) event."""
        out: list[tuple[dict[str, Any], bool]] = [
            ({"type": "message_start", "message": self.message(False)}, False)]
        index = 0

        def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
            nonlocal index
            out.append(({"type": "content_block_start", "index": index,
                         "content_block": start}, False))
            if index == 0:
                out.append(({"type": "ping"}, False))
            out.extend(({"type": "content_block_delta", "index": index, "delta": delta},
                        delta["type"] != "signature_delta") for delta in deltas)
            out.append(({"type": "content_block_stop", "index": index}, False))
            index += 1

        if self.thinking:
            block({"type": "thinking", "thinking": "", "signature": ""},
                  [{"type": "thinking_delta", "thinking": token} for token in self.thinking]
                  + [{"type": "signature_delta", "signature": self._signature()}])
        if self.text:
            block({"type": "text", "text": ""},
                  [{"type": "text_delta", "text": token} for token in self.tokens])
        if self.tool:
            block({"type": "tool_use", "id": "toolu_" + self.mid[4:], "name": self.tool["name"],
                   "input": {}},
                  [{"type": "input_json_delta", "partial_json": piece}
                   for piece in split_arguments(self._arguments())])
        out.append(({"type": "message_delta",
                     "delta": {"stop_reason": self.stop, "stop_sequence": None},
                     "usage": {"output_tokens": self.output_tokens()}}, False))
        out.append(({"type": "message_stop"}, False))
        return out


# -- the handler -----------------------------------------------------------------------------


async def _messages(request: web.Request) -> web.StreamResponse:
    llm = request.app[_MESSAGES]
    body = await llm.read_body(request)
    if isinstance(body, web.Response):
        return body
    if not request.headers.get("anthropic-version"):
        return anthropic_error(400, "anthropic-version: header is required")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return anthropic_error(400, "model: Field required")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return anthropic_error(400, "max_tokens: Field required (an integer of 1 or more)")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return anthropic_error(400, "messages: Field required (a non-empty list)")
    failure = llm.injected_failure()
    if failure is not None:
        return failure
    answer = _Answer(body, llm.controls.default_max_tokens)
    headers = {"request-id": fixed_id("req_", body, 24)}
    if body.get("stream") is not True:
        await llm.before_answer()
        return web.json_response(answer.message(True), headers=headers)
    error = {"type": "error", "error": {"type": "overloaded_error",
                                        "message": "failure injected by the server controls"}}
    return await llm.stream(request, event_frames(answer.events()),
                            error_frame=lambda: sse_frame(error, "error"), headers=headers)
