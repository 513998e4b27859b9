"""What the local server's fake LLM endpoints share: their knobs (``LLMControls``), their
counts (``LLMCounter``), a log of the requests they received, their admin routes and the
writing of an event stream with delays, holds and injected failures.

Each protocol (``_openai``, ``_responses``, ``_anthropic``, ``_embeddings``) builds its own
answer and frames from a ``FakeLLM``; none of them writes the pacing or failure logic again.
Every endpoint ``NAME`` has ``/_admin/NAME/controls`` (GET, POST), ``/_admin/NAME/requests``
(GET counts, DELETE resets them and the log), ``/_admin/NAME/recent`` (the last requests'
bodies and headers, credentials as fingerprints) and ``POST /_admin/NAME/release``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import anyio
import attrs
from aiohttp import web

from .._core.json_values import NotJSON, read_json

__all__ = [
    "MAX_TOKENS",
    "STREAM_FIELDS",
    "FailMode",
    "FakeLLM",
    "Frame",
    "LLMControls",
    "LLMCounter",
    "deterministic_tokens",
    "event_frames",
    "fixed_id",
    "pick_tool",
    "split_arguments",
    "sse_frame",
    "token_limit",
    "tool_arguments",
    "word_count",
]

MAX_TOKENS = 100_000
_TEXT = (
    "the cache answers once and every caller reads the same stream of tokens while "
    "a second request joins late and still sees each chunk in order so nothing is lost "
    "and nothing is asked twice of the model which keeps latency low and costs down"
)
_WORDS = tuple(_TEXT.split())
#: Request headers whose values the request log shows only as a fingerprint.
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})
_RECENT = 50

FailMode = Literal["error_event", "truncate", "disconnect"]
#: One SSE event as written, and whether ``token_delay_seconds`` applies before it.
Frame = tuple[bytes, bool]


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
class LLMControls:
    """Knobs on one fake LLM endpoint; change them while the server runs.

    * ``token_delay_seconds``: wait before each token event after the first;
      ``first_token_delay_seconds`` before the first event (time to first token), and before
      a non-streaming answer.
    * ``fail_status``: answer every request with this status and the protocol's error body
      (``Retry-After: 1`` on 429 and 503).
    * ``fail_after_chunks``: after this many SSE events, fail as ``fail_mode`` says:
      ``error_event`` (the protocol's ``event: error``), ``truncate`` (end the body before
      the protocol's terminal event) or ``disconnect`` (drop the connection).
    * ``hold_after_chunks``: after this many events, wait for ``POST /_admin/NAME/release``.
    * ``default_max_tokens``: tokens in an answer whose request sets no limit.
    """

    token_delay_seconds: float = attrs.field(default=0.0, validator=_number(0, 60))
    first_token_delay_seconds: float = attrs.field(default=0.0, validator=_number(0, 600))
    fail_status: int | None = attrs.field(default=None, validator=_optional_int(400, 599))
    fail_after_chunks: int | None = attrs.field(
        default=None, validator=_optional_int(0, MAX_TOKENS))
    fail_mode: FailMode = attrs.field(default="error_event", validator=_fail_mode)
    hold_after_chunks: int | None = attrs.field(
        default=None, validator=_optional_int(0, MAX_TOKENS))
    default_max_tokens: int = attrs.field(default=16, validator=_optional_int(1, MAX_TOKENS))

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        """Set the fields named in ``changes``; all or nothing. Raises ``ValueError``."""
        unknown = sorted(set(changes) - set(attrs.fields_dict(LLMControls)))
        if unknown:
            raise ValueError(f"unknown controls: {', '.join(unknown)}")
        merged = attrs.evolve(self, **changes)
        for key in changes:
            setattr(self, key, getattr(merged, key))


STREAM_FIELDS = ("requests", "streams", "streams_completed", "completions", "chunks")


class LLMCounter:
    """What an endpoint served, by field (by default ``requests`` (all), ``streams``
    (streams begun), ``streams_completed`` (ended with the terminal event), ``completions``
    (non-streaming answers), ``chunks`` (SSE events written)). Thread-safe."""

    def __init__(self, fields: Sequence[str] = STREAM_FIELDS) -> None:
        self._fields = tuple(fields)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self._fields, 0)

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            self._counts[field] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._fields, 0)


ErrorResponse = Callable[[int, str, "dict[str, str] | None"], web.Response]


class FakeLLM:
    """The state of one fake endpoint: controls, counter, request log, release gate, and the
    protocol's error response (``error(status, message, headers)``)."""

    def __init__(self, name: str, error: ErrorResponse, *,
                 controls: LLMControls | None = None,
                 counter_fields: Sequence[str] = STREAM_FIELDS) -> None:
        self.name = name
        self.controls = controls or LLMControls()
        self.counter = LLMCounter(counter_fields)
        self.error = error
        self.gate = anyio.Event()
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=_RECENT)
        self._lock = threading.Lock()

    def mount(self, app: web.Application, key: web.AppKey[FakeLLM], path: str,
              handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        """Serve ``POST path`` with ``handler`` (which finds this at ``app[key]``) and the
        admin routes ``/_admin/NAME/...`` on ``app``."""
        app[key] = self
        app.router.add_post(path, handler)
        self.add_admin_routes(app)

    def add_admin_routes(self, app: web.Application) -> None:
        prefix = f"/_admin/{self.name}"
        app.router.add_get(prefix + "/controls", self._get_controls)
        app.router.add_post(prefix + "/controls", self._set_controls)
        app.router.add_get(prefix + "/requests", self._get_counts)
        app.router.add_delete(prefix + "/requests", self._reset_counts)
        app.router.add_get(prefix + "/recent", self._get_recent)
        app.router.add_post(prefix + "/release", self._release)

    async def read_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """Count and log the request; its JSON object body, or the 400 to answer."""
        self.counter.add("requests")
        try:
            body = read_json(await request.read())
        except NotJSON as exc:
            return self.error(400, f"the body is {exc}", None)
        if not isinstance(body, dict):
            return self.error(400, "the body must be a JSON object", None)
        with self._lock:
            self._recent.append({
                "path": request.rel_url.raw_path, "headers": _logged_headers(request),
                "body": body,
            })
        return body

    def injected_failure(self) -> web.Response | None:
        """The error answer ``fail_status`` asks for, if it is set."""
        status = self.controls.fail_status
        if status is None:
            return None
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return self.error(status, "failure injected by the server controls", headers)

    async def before_answer(self) -> None:
        """The wait before a non-streaming answer, which is then counted."""
        if self.controls.first_token_delay_seconds:
            await anyio.sleep(self.controls.first_token_delay_seconds)
        self.counter.add("completions")

    async def stream(self, request: web.Request, frames: Sequence[Frame], *,
                     error_frame: Callable[[], bytes], done: bytes = b"",
                     headers: dict[str, str] | None = None) -> web.StreamResponse:
        """Write ``frames`` as an event stream, then ``done`` (a terminal marker that is not
        an event, such as ``data: [DONE]``), obeying the controls."""
        controls = self.controls
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            **(headers or {}),
        })
        await response.prepare(request)
        self.counter.add("streams")
        for sent, (frame, paced) in enumerate(frames):
            if controls.hold_after_chunks is not None and sent == controls.hold_after_chunks:
                await self.gate.wait()
            if controls.fail_after_chunks is not None and sent == controls.fail_after_chunks:
                return await self._fail(request, response, error_frame)
            delay = controls.first_token_delay_seconds if sent == 0 else (
                controls.token_delay_seconds if paced else 0.0)
            if delay:
                await anyio.sleep(delay)
            await response.write(frame)
            self.counter.add("chunks")
        if done:
            await response.write(done)
        await response.write_eof()
        self.counter.add("streams_completed")
        return response

    async def _fail(self, request: web.Request, response: web.StreamResponse,
                    error_frame: Callable[[], bytes]) -> web.StreamResponse:
        mode = self.controls.fail_mode
        if mode == "error_event":
            await response.write(error_frame())
            await response.write_eof()
        elif mode == "truncate":
            await response.write_eof()
        else:
            transport = request.transport
            if transport is not None:
                transport.abort()
        return response

    async def _get_controls(self, request: web.Request) -> web.Response:
        return web.json_response(self.controls.to_dict())

    async def _set_controls(self, request: web.Request) -> web.Response:
        try:
            body = read_json(await request.read())  # NotJSON is a ValueError
            if not isinstance(body, dict):
                raise ValueError("the body should be a JSON object of controls")
            self.controls.update(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return self.error(400, str(exc), None)
        return web.json_response(self.controls.to_dict())

    async def _get_counts(self, request: web.Request) -> web.Response:
        return web.json_response(self.counter.snapshot())

    async def _reset_counts(self, request: web.Request) -> web.Response:
        self.counter.reset()
        with self._lock:
            self._recent.clear()
        return web.Response(status=204)

    async def _get_recent(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(list(self._recent))

    async def _release(self, request: web.Request) -> web.Response:
        """Let every stream waiting at ``hold_after_chunks`` go on."""
        gate, self.gate = self.gate, anyio.Event()
        gate.set()
        return web.Response(status=204)


def _logged_headers(request: web.Request) -> dict[str, str]:
    logged: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in _CREDENTIAL_HEADERS:
            value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]
        logged[lower] = value
    return logged


# -- deterministic material (pure) ----------------------------------------------------------


def deterministic_tokens(material: Any, count: int) -> list[str]:
    """``count`` words drawn from a hash of ``material`` (JSON-able): the same material always
    gives the same words; the first is capitalised, the others carry a leading space."""
    count = min(count, MAX_TOKENS)
    digest = hashlib.sha256(json.dumps(
        material, sort_keys=True, separators=(",", ":"), default=str).encode()).digest()
    tokens: list[str] = []
    while len(tokens) < count:
        digest = hashlib.sha256(digest).digest()
        for byte in digest:
            if len(tokens) == count:
                break
            word = _WORDS[byte % len(_WORDS)]
            tokens.append(word.capitalize() if not tokens else " " + word)
    return tokens


def token_limit(value: Any, default: int) -> int:
    """A request's token limit if it is a positive int, else ``default``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, MAX_TOKENS)
    return default


def fixed_id(prefix: str, body: Any, length: int = 24) -> str:
    """An id derived from the request: the same request gets the same answer byte for byte."""
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return prefix + hashlib.sha256(raw).hexdigest()[:length]


def word_count(value: Any) -> int:
    """A rough token count of any JSON value: the words of its strings."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(word_count(item) for item in value)
    if isinstance(value, dict):
        return sum(word_count(item) for item in value.values())
    return 0


def sse_frame(data: Any, event: str | None = None) -> bytes:
    """One SSE event: an optional ``event:`` line and the compact JSON of ``data``."""
    payload = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    return b"event: " + event.encode() + b"\n" + payload if event else payload


def event_frames(events: Sequence[tuple[dict[str, Any], bool]], *,
                 numbered: bool = False) -> list[Frame]:
    """Typed events (``{"type": ..., ...}``, each with whether it is a token) as frames with
    ``event:`` lines named by their type, and a ``sequence_number`` when ``numbered``. The
    token delay applies to every token event after the first."""
    first = next((i for i, (_, token) in enumerate(events) if token), len(events))
    return [(sse_frame({**event, "sequence_number": n} if numbered else event, event["type"]),
             token and n > first) for n, (event, token) in enumerate(events)]


def pick_tool(tools: Any, wanted: Any = None, *, kind: str | None = "function",
              inner: str | None = None) -> dict[str, Any] | None:
    """The tool a request makes the model call: the one named ``wanted``, else the first.
    A tool is a dict of type ``kind`` (any type when ``None``) whose name is at ``name``, or
    in its ``inner`` dict (Chat Completions' ``{"function": {"name": ...}}``)."""
    if not isinstance(tools, list):
        return None
    named = []
    for tool in tools:
        if not isinstance(tool, dict) or (kind is not None and tool.get("type") != kind):
            continue
        spec = tool.get(inner) if inner else tool
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            named.append(spec)
    if wanted is not None:
        named = [spec for spec in named if spec["name"] == wanted]
    return named[0] if named else None


def split_arguments(text: str, pieces: int = 4) -> list[str]:
    """``text`` cut into at most ``pieces`` parts, as a model streams a tool's arguments."""
    size = max(1, -(-len(text) // pieces))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def tool_arguments(schema: Any, tokens: Sequence[str]) -> str:
    """Deterministic JSON arguments for a tool: each string property of its schema (or
    ``input`` without one) gets some of the answer's words."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    names = [name for name in properties if isinstance(name, str)] if isinstance(
        properties, dict) else []
    text = "".join(tokens[:4]).strip()
    return json.dumps({name: text for name in (names[:3] or ["input"])},
                      separators=(",", ":"))
