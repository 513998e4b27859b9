"""``AsyncCacheTransport``: a ``ResponseCache`` between an async SDK and the network."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ..._core.errors import ConfigurationError
from .._cache import ResponseCache
from ._adapt import Library, bases, library_of
from ._engine import Answer, Engine, Headers, Reject, Untouched, Upstream, local_answer
from ._policy import Bypass, route_of

__all__ = ["AsyncCacheTransport"]

if TYPE_CHECKING:
    import httpx
    import httpx2

    class _Base(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):  # type: ignore[misc]
        ...
else:
    _Base = type("_Base", bases("AsyncBaseTransport"), {})


class _Network:
    """An upstream answer of an async transport."""

    __slots__ = ("headers", "response", "status")

    def __init__(self, response: Any) -> None:
        self.response = response
        self.status: int = response.status_code
        self.headers: Headers = response.headers.multi_items()

    def chunks(self) -> AsyncIterator[bytes]:
        chunks: AsyncIterator[bytes] = self.response.aiter_bytes()
        return chunks

    async def aclose(self) -> None:
        await self.response.aclose()


class CacheHost:
    """Opens a ``ResponseCache`` on the first request (once, however many ask at once) and
    closes it on ``stop``, from whichever task: the cache hosts its own task group."""

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache
        self._opened: anyio.Event | None = None

    async def open(self) -> ResponseCache:
        if self._opened is None:
            self._opened = anyio.Event()
            try:
                await self.cache.__aenter__()
            finally:
                self._opened.set()
        elif not self._opened.is_set():
            with anyio.CancelScope(shield=True):
                await self._opened.wait()
        return self.cache

    async def stop(self) -> None:
        if self._opened is not None:
            await self.cache.aclose()


def check_cache(cache: ResponseCache | None, options: dict[str, Any]) -> ResponseCache:
    if cache is None:
        return ResponseCache(**options)
    if options:
        raise ConfigurationError(
            f"pass a cache or the options to build one, not both (got {', '.join(options)})")
    if not isinstance(cache, ResponseCache):
        raise ConfigurationError(f"cache must be a ResponseCache, got {type(cache).__name__}")
    return cache


def origin_and_target(url: Any) -> tuple[str, str]:
    """``scheme://host:port`` and the path with its query, of an httpx(2) URL."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.scheme}://{url.host}:{port}", url.raw_path.decode("ascii")


def rejected(plan: Reject) -> Answer:
    return local_answer(plan.status, plan.message, "invalid_cache_directive", "bypass")


class AsyncCacheTransport(_Base):
    """An HTTP transport for ``httpx.AsyncClient`` and ``httpx2.AsyncClient`` that answers
    LLM calls through a ``ResponseCache``; hand it to an SDK and keep its code::

        client = AsyncOpenAI(http_client=httpx2.AsyncClient(
            transport=AsyncCacheTransport(ttl_seconds=3600)))

    * ``cache``: a ``ResponseCache``; without one, one is built from ``cache_options``
      (``ResponseCache``'s keyword arguments). A cache not yet entered is entered on first
      use and closed with the transport (``aclose``, which the client calls as it closes);
      an open one is used as it is and left to its owner.
    * ``transport``: the network transport underneath (default: the library's own
      ``AsyncHTTPTransport``, built on first use); closed with this one.
    * ``share_across_keys``: by default a digest of the request's credentials is part of
      every key, so two API keys never share an answer; ``True`` shares them.
    * ``cache_sampled``: cache sampled requests (temperature above 0...); by default what
      the cache says (``cache_nondeterministic``).
    * ``wall_clock``: seconds since the epoch, for the ``age`` of answers (tests).

    Chat Completions, the Responses API, Anthropic Messages (streamed or not) and embeddings
    are cached; every other request goes to ``transport`` untouched. One transport serves
    one event loop.
    """

    def __init__(self, cache: ResponseCache | None = None, *, transport: Any = None,
                 share_across_keys: bool = False, cache_sampled: bool | None = None,
                 wall_clock: Callable[[], float] = time.time, **cache_options: Any) -> None:
        cache = check_cache(cache, cache_options)
        self._cache = cache
        self._host = CacheHost(cache) if cache.state == "new" else None
        self._transport = transport
        self._own_transports: dict[str, Any] = {}
        self._engine = Engine(share_across_keys=share_across_keys, cache_sampled=cache_sampled,
                              wall_clock=wall_clock)

    def __repr__(self) -> str:
        return f"<AsyncCacheTransport cache={self._cache!r}>"

    @property
    def cache(self) -> ResponseCache:
        """The cache answering through this transport (its ``stats()``, ``invalidate()``)."""
        return self._cache

    def _network(self, library: Library) -> Any:
        if self._transport is not None:
            return self._transport
        name = library.module.__name__
        transport = self._own_transports.get(name)
        if transport is None:
            transport = self._own_transports[name] = library.module.AsyncHTTPTransport()
        return transport

    async def handle_async_request(self, request: Any) -> Any:
        library = library_of(request)
        network = self._network(library)
        route = route_of(request.method, request.url.path)
        if route is None:
            return await network.handle_async_request(request)
        body = await request.aread()
        cache = self._cache if self._host is None else await self._host.open()
        origin, target = origin_and_target(request.url)
        plan = self._engine.plan(cache, route, origin, target, library.headers(request), body)
        if isinstance(plan, Untouched):
            return await network.handle_async_request(request)
        if isinstance(plan, Reject):
            return library.response(rejected(plan), request)
        if isinstance(plan.decision, Bypass):
            response = await network.handle_async_request(
                library.request(request, plan.headers, plan.body))
            response.headers["x-cache"] = "bypass"
            return response
        send = functools.partial(_send, library, network, request)
        answer = await self._engine.answer(cache, plan, plan.decision, send, library.cut)
        return library.response(answer, request)

    async def aclose(self) -> None:
        """Close the cache if this transport opened it, then the network transports."""
        if self._host is not None:
            await self._host.stop()
        transports = list(self._own_transports.values())
        self._own_transports.clear()
        if self._transport is not None:
            transports.append(self._transport)
        for transport in transports:
            await transport.aclose()

    async def __aenter__(self) -> AsyncCacheTransport:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None = None,
                        exc: BaseException | None = None,
                        tb: TracebackType | None = None) -> None:
        await self.aclose()


async def _send(library: Library, network: Any, template: Any, headers: Headers,
                body: bytes) -> Upstream:
    response = await network.handle_async_request(library.request(template, headers, body))
    return _Network(response)
