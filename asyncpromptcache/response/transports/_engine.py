"""The transports' engine: one request of a cached route, answered through a
``ResponseCache``. Knows nothing of httpx or httpx2: the adapters give it the request's
parts and a ``Send`` to the network, and turn its ``Answer`` into their library's response.

A stored answer is its chunks: first a dict (the upstream's status, the headers kept, the
wall-clock time it was made, whether it is an event stream), then the body: one chunk per
event of an event stream (the raw bytes, so a replay is byte-identical), or the whole body
as one chunk. Only a 200 whose stream ended whole is stored (``StreamCheck``); any other
answer reaches its callers as it came and is never stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeAlias

import attrs

from ..._core.errors import (
    NotCachedError,
    PromptCacheError,
    ResponseFailedError,
    UpstreamStatusError,
)
from .._cache import ResponseCache, ResponseStream
from .._keys import Chunk
from ._frames import EventSplitter, StreamCheck
from ._policy import (
    DIRECTIVE_HEADERS,
    Bypass,
    DirectiveError,
    Lookup,
    Route,
    decide,
    key_material,
    parse_directives,
    replayed_headers,
)

__all__ = [
    "Answer", "CutError", "Engine", "ErrorAnswer", "Plan", "Reject", "Send", "Unfinished",
    "Untouched", "Upstream", "error_body", "failed_answer", "local_answer", "not_cached_answer",
    "read_all",
]

Headers: TypeAlias = list[tuple[str, str]]
_MAX_ERROR_BODY = 1024 * 1024
_NOT_SENT = frozenset({"content-length", "transfer-encoding"})


class Upstream(Protocol):
    """The network's answer, as an adapter hands it over: the body decoded."""

    status: int
    headers: Headers

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


#: Send a request upstream: the headers to send (lower-case names) and the body.
Send: TypeAlias = Callable[[Headers, bytes], Awaitable[Upstream]]
#: Turns a failure after the answer began into the library's error (a cut stream).
CutError: TypeAlias = Callable[[ResponseFailedError], BaseException]


@attrs.frozen
class Untouched:
    """Not for the cache: send the request as it is."""


@attrs.frozen
class Reject:
    """Answer here without going upstream (a directive the transport cannot read)."""

    status: int
    message: str


@attrs.frozen
class Plan:
    """A request of a cached route, read: what to send upstream and what to ask the cache."""

    route: Route
    headers: Headers  # without the directives
    body: bytes
    decision: Bypass | Lookup
    material: Mapping[str, Any]
    json: Mapping[str, Any]


@attrs.define
class Answer:
    """What an adapter turns into its library's response: a whole ``body``, or ``stream``
    (an async iterator of bytes; ``close`` ends it early)."""

    status: int
    headers: Headers
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


class ErrorAnswer(UpstreamStatusError):
    """An upstream answer that is not a 200: passed to its callers as it came, never stored."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        super().__init__(f"the upstream answered HTTP {status}", status=status)
        self.headers = headers
        self.body = body


class Unfinished(PromptCacheError):
    """An event stream that ended without its protocol's last event, or with an error."""


def error_body(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": kind}}).encode()


def local_answer(status: int, message: str, kind: str, source: str) -> Answer:
    """An error answered by the transport itself; the SDKs do not retry it
    (``x-should-retry: false``): asking again would get the same answer."""
    return Answer(status, [("content-type", "application/json"), ("x-cache", source),
                           ("x-should-retry", "false")], body=error_body(message, kind))


def not_cached_answer() -> Answer:
    return local_answer(504, "only-if-cached: no answer is stored or in flight for this "
                        "request", "only_if_cached", "miss")


def failed_answer(exc: ResponseFailedError, source: str | None, cut: CutError) -> Answer:
    """The answer to callers of a failed flight: an upstream error answer as it came; the
    network's own error raised again for the SDK; else the library's cut-stream error."""
    upstream = exc.upstream
    if isinstance(upstream, ErrorAnswer):
        headers = list(upstream.headers)
        headers.append(("x-cache", source or "miss"))
        return Answer(upstream.status, headers, body=upstream.body)
    if upstream is not None and not isinstance(upstream, PromptCacheError):
        raise upstream  # a refused connection, a timeout...: the SDK retries as it does
    raise cut(exc) from exc


class Engine:
    """Plans requests (pure) and answers the cached ones through ``cache``."""

    def __init__(self, *, share_across_keys: bool, cache_sampled: bool | None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._share = share_across_keys
        self._sampled = cache_sampled
        self._wall = wall_clock

    def plan(self, cache: ResponseCache, route: Route, origin: str, target: str,
             headers: Headers, body: bytes) -> Plan | Untouched | Reject:
        """Read a request of ``route``; ``headers`` have lower-case names."""
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return Untouched()
        if not isinstance(parsed, dict):
            return Untouched()
        try:
            directives = parse_directives(h for h in headers if h[0] in DIRECTIVE_HEADERS)
        except DirectiveError as exc:
            return Reject(400, str(exc))
        sent = [h for h in headers if h[0] not in DIRECTIVE_HEADERS and h[0] not in _NOT_SENT]
        sampled = self._sampled
        if sampled is None:  # the cache's own choice: does it cache a request with n=2?
            sampled = cache.is_cacheable({"n": 2})
        decision = decide(route, parsed, directives, cache_sampled=sampled)
        material = key_material(route, origin, target, parsed, sent, tenant=directives.tenant,
                                share_across_keys=self._share)
        return Plan(route, sent, body, decision, material, parsed)

    async def answer(self, cache: ResponseCache, plan: Plan, lookup: Lookup, send: Send,
                     cut: CutError) -> Answer:
        """The answer to a planned request through ``cache`` (see the module docstring)."""
        if plan.route == "embeddings":
            from ._embeddings import answer_embeddings  # it builds on this module

            whole = await answer_embeddings(cache, plan, lookup, send, cut, self._wall)
            if whole is not None:
                return whole
        mode = lookup.mode
        while True:
            stream = cache.stream(plan.material, self._producer(plan, send), mode=mode,
                                  ttl_seconds=lookup.ttl, cache_nondeterministic=True)
            try:
                meta = await anext(stream)
            except NotCachedError:
                await stream.aclose()
                return not_cached_answer()
            except ResponseFailedError as exc:
                await stream.aclose()
                return failed_answer(exc, stream.source, cut)
            except BaseException:
                await stream.aclose()
                raise
            source = stream.source
            assert isinstance(meta, dict) and source is not None and stream.key is not None
            age = max(0.0, self._wall() - float(meta["created"]))
            if source == "hit" and lookup.max_age is not None and age > lookup.max_age:
                await stream.aclose()
                mode = "refresh"
                continue
            break
        headers: Headers = [(name, value) for name, value in meta["headers"]]
        headers += [("x-cache", source), ("x-cache-key", stream.key)]
        if source == "hit":
            headers.append(("age", str(int(age))))
        if not meta["sse"]:
            try:
                body = await anext(stream)
            except ResponseFailedError as exc:
                return failed_answer(exc, stream.source, cut)
            finally:
                await stream.aclose()
            assert isinstance(body, bytes)
            return Answer(int(meta["status"]), headers, body=body)
        return Answer(int(meta["status"]), headers, stream=_events(stream, cut))

    def _producer(self, plan: Plan, send: Send) -> Callable[[], AsyncIterator[Chunk]]:
        wall = self._wall

        async def produce() -> AsyncIterator[Chunk]:
            upstream = await send(plan.headers, plan.body)
            try:
                kept = replayed_headers(upstream.headers)
                if upstream.status != 200:
                    raise ErrorAnswer(upstream.status, [(k, v) for k, v in kept],
                                       await read_all(upstream, _MAX_ERROR_BODY))
                content_type = next((v for k, v in kept if k == "content-type"), "")
                sse = content_type.startswith("text/event-stream")
                yield {"status": 200, "headers": kept, "created": wall(), "sse": sse}
                if not sse:
                    yield await read_all(upstream, None)
                    return
                splitter, check = EventSplitter(), StreamCheck(plan.route)
                async for data in upstream.chunks():
                    for event in splitter.feed(data):
                        check.feed(event)
                        yield event
                rest = splitter.rest()
                if rest:
                    check.feed(rest)
                    yield rest
                if not check.whole:
                    raise Unfinished(
                        "the event stream sent an error" if check.failed else
                        f"the event stream ended before its last event ({plan.route})")
            finally:
                await upstream.aclose()

        return produce


async def read_all(upstream: Upstream, limit: int | None = None) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for data in upstream.chunks():
        parts.append(data)
        size += len(data)
        if limit is not None and size > limit:
            break
    return b"".join(parts)


async def _events(stream: ResponseStream, cut: CutError) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            assert isinstance(chunk, bytes)
            yield chunk
    except ResponseFailedError as exc:
        raise cut(exc) from exc
    finally:
        await stream.aclose()

