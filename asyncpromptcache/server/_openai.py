"""An OpenAI-compatible ``POST /v1/chat/completions`` on the local server, streaming and not,
for the demo, the tests and the benchmarks of the response cache: no API key, no network.

The answer is deterministic: the same request always gets the same text, cut into the same
tokens (``max_tokens`` or ``max_completion_tokens`` of them, else ``default_max_tokens``).
Knobs (``ChatControls``, also at ``POST /_admin/chat/controls``): a delay before the first
token and between tokens, an HTTP error status, a failure after N chunks (an error event, a
stream cut short before ``[DONE]``, or a dropped connection), and a hold after N chunks that
waits for ``POST /_admin/chat/release``. ``GET /_admin/chat/requests`` counts requests and
streams (``DELETE`` resets the counts).
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, Literal

import anyio
import attrs
from aiohttp import web

from .._json import NotJSON, read_json

__all__ = ["ChatControls", "ChatCounter", "add_openai_routes", "answer_tokens"]

COMPLETIONS_PATH = "/v1/chat/completions"
_CREATED = 1_700_000_000  # a fixed "created": answers are reproducible byte for byte
_MAX_TOKENS = 100_000
_TEXT = (
    "the cache answers once and every caller reads the same stream of tokens while "
    "a second request joins late and still sees each chunk in order so nothing is lost "
    "and nothing is asked twice of the model which keeps latency low and costs down"
)
_WORDS = tuple(_TEXT.split())

FailMode = Literal["error_event", "truncate", "disconnect"]


def _number(low: float, high: float) -> Any:
    def check(_: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                low <= value <= high):
            raise ValueError(f"{attribute.name} must be a number from {low:g} to {high:g}, "
                             f"got {value!r}")
    return check


def _optional_int(low: int, high: int) -> Any:
    def check(_: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{attribute.name} must be null or an integer from {low} to "
                             f"{high}, got {value!r}")
    return check


def _fail_mode(_: Any, __: Any, value: Any) -> None:
    if value not in ("error_event", "truncate", "disconnect"):
        raise ValueError(f"fail_mode must be error_event, truncate or disconnect, got {value!r}")


@attrs.define
class ChatControls:
    """Knobs on ``/v1/chat/completions``; change them while the server runs.

    * ``token_delay_seconds``: wait before each token chunk after the first;
      ``first_token_delay_seconds`` before the first (time to first token).
    * ``fail_status``: answer every request with this status and an OpenAI error body.
    * ``fail_after_chunks``: after this many SSE chunks, fail as ``fail_mode`` says:
      ``error_event`` (an ``event: error`` with an OpenAI error body), ``truncate`` (end the
      body without ``[DONE]``) or ``disconnect`` (drop the connection).
    * ``hold_after_chunks``: after this many chunks, wait for ``POST /_admin/chat/release``.
    * ``default_max_tokens``: tokens in an answer whose request sets no ``max_tokens``.
    """

    token_delay_seconds: float = attrs.field(default=0.0, validator=_number(0, 60))
    first_token_delay_seconds: float = attrs.field(default=0.0, validator=_number(0, 600))
    fail_status: int | None = attrs.field(default=None, validator=_optional_int(400, 599))
    fail_after_chunks: int | None = attrs.field(
        default=None, validator=_optional_int(0, _MAX_TOKENS))
    fail_mode: FailMode = attrs.field(default="error_event", validator=_fail_mode)
    hold_after_chunks: int | None = attrs.field(
        default=None, validator=_optional_int(0, _MAX_TOKENS))
    default_max_tokens: int = attrs.field(default=16, validator=_optional_int(1, _MAX_TOKENS))

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        """Set the fields named in ``changes``; all or nothing. Raises ``ValueError``."""
        unknown = sorted(set(changes) - set(attrs.fields_dict(ChatControls)))
        if unknown:
            raise ValueError(f"unknown controls: {', '.join(unknown)}")
        merged = attrs.evolve(self, **changes)
        for key in changes:
            setattr(self, key, getattr(merged, key))


class ChatCounter:
    """What the endpoint served: ``requests`` (all), ``streams`` (streams begun),
    ``streams_completed`` (ended with ``[DONE]``), ``completions`` (non-streaming answers),
    ``chunks`` (SSE chunks written). Thread-safe."""

    _FIELDS = ("requests", "streams", "streams_completed", "completions", "chunks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self._FIELDS, 0)

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            self._counts[field] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._FIELDS, 0)


@attrs.define
class _ChatState:
    controls: ChatControls
    counter: ChatCounter
    gate: anyio.Event = attrs.field(factory=anyio.Event)


_CHAT = web.AppKey("asyncpromptcache_chat", _ChatState)


def add_openai_routes(app: web.Application, controls: ChatControls | None = None) -> None:
    """Serve ``/v1/chat/completions`` and its admin routes on ``app``."""
    app[_CHAT] = _ChatState(controls or ChatControls(), ChatCounter())
    app.router.add_post(COMPLETIONS_PATH, _completions)
    app.router.add_get("/_admin/chat/controls", _get_controls)
    app.router.add_post("/_admin/chat/controls", _set_controls)
    app.router.add_get("/_admin/chat/requests", _get_counts)
    app.router.add_delete("/_admin/chat/requests", _reset_counts)
    app.router.add_post("/_admin/chat/release", _release)


# -- the deterministic answer (pure) ---------------------------------------------------------


def answer_tokens(request: dict[str, Any], default_max_tokens: int = 16) -> list[str]:
    """The answer's tokens: the same request always gives the same ones."""
    limit = request.get("max_completion_tokens", request.get("max_tokens"))
    count = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 \
        else default_max_tokens
    count = min(count, _MAX_TOKENS)
    material = json.dumps(
        [request.get("model"), request.get("messages"), request.get("seed")],
        sort_keys=True, separators=(",", ":"), default=str,
    ).encode()
    digest = hashlib.sha256(material).digest()
    tokens: list[str] = []
    while len(tokens) < count:
        digest = hashlib.sha256(digest).digest()
        for byte in digest:
            if len(tokens) == count:
                break
            word = _WORDS[byte % len(_WORDS)]
            tokens.append(word.capitalize() if not tokens else " " + word)
    return tokens


def _completion_id(request: dict[str, Any]) -> str:
    raw = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "chatcmpl-" + hashlib.sha256(raw).hexdigest()[:24]


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion.chunk", "created": _CREATED, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _error(status: int, message: str, kind: str = "invalid_request_error",
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(_error_body(message, kind), status=status, headers=headers)


# -- handlers ----------------------------------------------------------------------------------


async def _completions(request: web.Request) -> web.StreamResponse:
    state = request.app[_CHAT]
    controls = state.controls
    state.counter.add("requests")
    try:
        body = read_json(await request.read())
    except NotJSON as exc:
        return _error(400, f"the body is {exc}")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        return _error(400, "'model' is required (a string)")
    if not isinstance(messages, list) or not messages:
        return _error(400, "'messages' is required (a non-empty list)")
    if controls.fail_status is not None:
        status = controls.fail_status
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        kind = "rate_limit_error" if status == 429 else (
            "server_error" if status >= 500 else "invalid_request_error")
        return _error(status, "failure injected by the server controls", kind, headers)
    tokens = answer_tokens(body, controls.default_max_tokens)
    cid = _completion_id(body)
    if body.get("stream") is not True:
        if controls.first_token_delay_seconds:
            await anyio.sleep(controls.first_token_delay_seconds)
        state.counter.add("completions")
        text = "".join(tokens)
        return web.json_response({
            "id": cid, "object": "chat.completion", "created": _CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": _usage(messages, tokens),
        })
    return await _stream(request, state, body, model, cid, tokens)


def _usage(messages: list[Any], tokens: list[str]) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
    return {"prompt_tokens": prompt, "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens)}


async def _stream(request: web.Request, state: _ChatState, body: dict[str, Any], model: str,
                  cid: str, tokens: list[str]) -> web.StreamResponse:
    controls = state.controls
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
    })
    await response.prepare(request)
    state.counter.add("streams")
    events: list[dict[str, Any]] = [_chunk(cid, model, {"role": "assistant", "content": ""},
                                           None)]
    events += [_chunk(cid, model, {"content": token}, None) for token in tokens]
    events.append(_chunk(cid, model, {}, "stop"))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        usage = _chunk(cid, model, {}, None)
        usage["choices"] = []
        usage["usage"] = _usage(body["messages"], tokens)
        events.append(usage)
    for sent, event in enumerate(events):
        if controls.hold_after_chunks is not None and sent == controls.hold_after_chunks:
            await state.gate.wait()
        if controls.fail_after_chunks is not None and sent == controls.fail_after_chunks:
            return await _fail(request, response, controls.fail_mode)
        delay = controls.first_token_delay_seconds if sent == 0 else (
            controls.token_delay_seconds if sent > 1 else 0.0)
        if delay:
            await anyio.sleep(delay)
        await response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode()
                             + b"\n\n")
        state.counter.add("chunks")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    state.counter.add("streams_completed")
    return response


async def _fail(request: web.Request, response: web.StreamResponse,
                mode: FailMode) -> web.StreamResponse:
    if mode == "error_event":
        error = _error_body("failure injected by the server controls", "server_error")
        await response.write(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
        await response.write_eof()
    elif mode == "truncate":
        await response.write_eof()
    else:
        transport = request.transport
        if transport is not None:
            transport.abort()
    return response


async def _get_controls(request: web.Request) -> web.Response:
    return web.json_response(request.app[_CHAT].controls.to_dict())


async def _set_controls(request: web.Request) -> web.Response:
    controls = request.app[_CHAT].controls
    try:
        body = read_json(await request.read())  # NotJSON is a ValueError
        if not isinstance(body, dict):
            raise ValueError("the body should be a JSON object of controls")
        controls.update(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, str(exc))
    return web.json_response(controls.to_dict())


async def _get_counts(request: web.Request) -> web.Response:
    return web.json_response(request.app[_CHAT].counter.snapshot())


async def _reset_counts(request: web.Request) -> web.Response:
    request.app[_CHAT].counter.reset()
    return web.Response(status=204)


async def _release(request: web.Request) -> web.Response:
    """Let every stream waiting at ``hold_after_chunks`` go on."""
    state = request.app[_CHAT]
    gate, state.gate = state.gate, anyio.Event()
    gate.set()
    return web.Response(status=204)
