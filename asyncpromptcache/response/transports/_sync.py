"""``CacheTransport``: a ``ResponseCache`` between a sync SDK and the network.

The cache runs on an event-loop thread of the transport's own (the ``PromptClient``'s
machinery: one anyio blocking portal), so identical requests from many threads share one
upstream stream. The network is the sync transport underneath, called in worker threads of
that loop. A hit crosses to the loop thread once: its stored events come back together.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ..._core.errors import ClientStateError
from ..._prompts.sync import _LoopThread
from .._cache import ResponseCache
from ._adapt import Library, bases, library_of
from ._async import check_cache, origin_and_target, rejected
from ._engine import Answer, Engine, Headers, Plan, Reject, Untouched, Upstream
from ._policy import Bypass, Lookup, route_of

__all__ = ["CacheTransport"]

if TYPE_CHECKING:
    import httpx
    import httpx2

    class _Base(httpx.BaseTransport, httpx2.BaseTransport):  # type: ignore[misc]
        ...
else:
    _Base = type("_Base", bases("BaseTransport"), {})

_END = object()


class _ThreadNetwork:
    """An upstream answer of a sync transport, read in worker threads."""

    __slots__ = ("headers", "response", "status")

    def __init__(self, response: Any) -> None:
        self.response = response
        self.status: int = response.status_code
        self.headers: Headers = response.headers.multi_items()

    async def chunks(self) -> AsyncIterator[bytes]:
        iterator = iter(self.response.iter_bytes())
        while (chunk := await anyio.to_thread.run_sync(next, iterator, _END)) is not _END:
            assert isinstance(chunk, bytes)
            yield chunk

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.response.close)


class CacheTransport(_Base):
    """An HTTP transport for ``httpx.Client`` and ``httpx2.Client`` that answers LLM calls
    through a ``ResponseCache``; safe to share among threads::

        client = OpenAI(http_client=httpx2.Client(transport=CacheTransport(ttl_seconds=3600)))

    Options as ``AsyncCacheTransport``'s. A ``cache`` you pass must not be entered yet: it
    is entered on the transport's own event-loop thread (started on first use) and closed
    with the transport (``close``, which the client calls as it closes). ``transport`` is
    the sync network transport underneath (default: the library's own ``HTTPTransport``).
    """

    def __init__(self, cache: ResponseCache | None = None, *, transport: Any = None,
                 share_across_keys: bool = False, cache_sampled: bool | None = None,
                 wall_clock: Callable[[], float] = time.time, **cache_options: Any) -> None:
        cache = check_cache(cache, cache_options)
        if cache.state != "new":
            raise ClientStateError("a CacheTransport enters its cache on its own event loop: "
                                   "pass a ResponseCache that is not entered yet")
        self._cache = cache
        self._transport = transport
        self._own_transports: dict[str, Any] = {}
        self._engine = Engine(share_across_keys=share_across_keys, cache_sampled=cache_sampled,
                              wall_clock=wall_clock)
        self._lock = threading.Lock()
        self._loop: _LoopThread[ResponseCache] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<CacheTransport cache={self._cache!r}>"

    @property
    def cache(self) -> ResponseCache:
        """The cache (its ``stats()`` may be read from any thread)."""
        return self._cache

    def _running(self) -> _LoopThread[ResponseCache]:
        loop = self._loop
        if loop is None:
            with self._lock:
                if self._closed:
                    raise ClientStateError("the CacheTransport is closed")
                if self._loop is None:
                    started = _LoopThread(self._cache)
                    started.start()
                    self._loop = started
                loop = self._loop
        return loop

    def _network(self, library: Library) -> Any:
        if self._transport is not None:
            return self._transport
        name = library.module.__name__
        with self._lock:
            transport = self._own_transports.get(name)
            if transport is None:
                transport = self._own_transports[name] = library.module.HTTPTransport()
        return transport

    def handle_request(self, request: Any) -> Any:
        library = library_of(request)
        network = self._network(library)
        route = route_of(request.method, request.url.path)
        if route is None:
            return network.handle_request(request)
        body = request.read()
        origin, target = origin_and_target(request.url)
        plan = self._engine.plan(self._cache, route, origin, target, library.headers(request),
                                 body)
        if isinstance(plan, Untouched):
            return network.handle_request(request)
        if isinstance(plan, Reject):
            return library.response(rejected(plan), request)
        if isinstance(plan.decision, Bypass):
            response = network.handle_request(library.request(request, plan.headers,
                                                              plan.body))
            response.headers["x-cache"] = "bypass"
            return response
        loop = self._running()
        send = functools.partial(_send, library, network, request)
        answer, first = loop.portal.call(self._answer, plan, plan.decision, send, library)
        if answer.stream is None:
            return library.response(answer, request)
        stream = answer.stream
        if first is not None:  # a hit: every event is here already
            body_stream = library.sync_body(first, None, None)
        else:
            body_stream = library.sync_body(
                [], functools.partial(loop.portal.call, _next, stream),
                functools.partial(loop.portal.call, _aclose, stream))
        return library.response(answer, request, stream=body_stream)

    async def _answer(self, plan: Plan, lookup: Lookup, send: Any,
                      library: Library) -> tuple[Answer, list[bytes] | None]:
        answer = await self._engine.answer(self._cache, plan, lookup, send, library.cut)
        if answer.stream is not None and ("x-cache", "hit") in answer.headers:
            return answer, [chunk async for chunk in answer.stream]
        return answer, None

    def close(self) -> None:
        """Close the cache and its event-loop thread, then the network transports."""
        with self._lock:
            self._closed = True
            loop, self._loop = self._loop, None
            transports = list(self._own_transports.values())
            self._own_transports.clear()
        if loop is not None:
            loop.stop(10.0)
        if self._transport is not None:
            transports.append(self._transport)
        for transport in transports:
            transport.close()

    def __enter__(self) -> CacheTransport:
        return self

    def __exit__(self, exc_type: type[BaseException] | None = None,
                 exc: BaseException | None = None, tb: TracebackType | None = None) -> None:
        self.close()


async def _next(stream: AsyncIterator[bytes]) -> bytes | None:
    return await anext(stream, None)


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


async def _send(library: Library, network: Any, template: Any, headers: Headers,
                body: bytes) -> Upstream:
    request = library.request(template, headers, body)
    response = await anyio.to_thread.run_sync(network.handle_request, request)
    return _ThreadNetwork(response)
