"""``SSEProducer``: what every producer of ours shares, whatever its protocol. One
``aiohttp.ClientSession`` (``OwnedSession``), the API key as a ``Secret``, the timeouts and
proxy, a streaming POST read through ``SSEDecoder``, a whole-answer POST, and the one place
aiohttp's and the socket's exceptions become our ``UpstreamError``s (``from`` the original).

A protocol is a subclass naming its path, its default base URL, how it sends the key and its
fixed headers, and ``read_event``: an event in, ``(chunk or None, whether it ends the
stream)`` out, raising our errors for the protocol's error events.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

import aiohttp
import yarl

from ..._core.errors import (
    ConfigurationError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    UpstreamTransportError,
)
from ..._core.secret import Redactor, Secret
from ..._http.session import OwnedSession
from ..._http.urls import check_http_url
from ._sse import SSEDecoder, SSEEvent, status_error

__all__ = ["SSEProducer"]

_USER_AGENT = "asyncpromptcache/0.1"


class SSEProducer:
    """Base of the producers (see the subclasses for their protocols).

    ``stream(request)`` yields each chunk of the request sent with ``stream: true`` until the
    protocol's terminal event; ``complete(request)`` returns the whole answer's JSON object.
    ``producer(request)`` and ``whole(request)`` are the zero-argument callables
    ``ResponseCache.stream`` and ``ResponseCache.get`` take. ``read_timeout_seconds`` bounds
    each wait for data (the first token included), ``connect_timeout_seconds`` the
    connection. One ``aiohttp.ClientSession`` for the producer's life unless one is passed
    (then never closed here). ``proxy`` is an http(s) proxy URL (``user:password@`` in it is
    sent as ``Proxy-Authorization``); without one, ``trust_env`` takes it from
    ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY``, read here. The API key
    never appears in a repr, a message or a traceback's frame locals.
    """

    #: Appended to ``base_url``.
    path: ClassVar[str]
    default_base_url: ClassVar[str]
    #: The header that carries the API key, and what precedes the key in it.
    auth_header: ClassVar[str] = "Authorization"
    auth_prefix: ClassVar[str] = "Bearer "
    #: Headers the protocol wants on every request (a caller's ``headers`` override them).
    protocol_headers: ClassVar[Mapping[str, str]] = {}
    #: What the stream must end with, for the error when it does not.
    terminal: ClassVar[str]

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout_seconds: float = 10.0,
        read_timeout_seconds: float = 60.0,
        max_error_bytes: int = 64 * 1024,
        verify_ssl: bool = True,
        trust_env: bool = True,
        proxy: str | None = None,
    ) -> None:
        # A Secret from the first statement on: error reporters record the locals of frames.
        self.__auth = None if api_key is None else Secret(self.auth_prefix + api_key)
        del api_key
        if base_url is None:
            base_url = self.default_base_url
        if not isinstance(base_url, str):
            raise ConfigurationError(f"base_url must be a string, got {type(base_url).__name__}")
        check_http_url(base_url, "base_url", "")
        self._url = str(yarl.URL(base_url)).rstrip("/") + self.path
        self._headers = {"User-Agent": _USER_AGENT, **self.protocol_headers, **(headers or {})}
        self._http = OwnedSession(
            self._url, session, verify_ssl=verify_ssl, trust_env=trust_env, proxy=proxy,
            secrets=(self.__auth,))
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_seconds, sock_read=read_timeout_seconds)
        self._max_error = max_error_bytes
        #: Requests sent (streaming and not), for tests and benchmarks.
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def read_event(self, event: SSEEvent,
                   redact: Redactor) -> tuple[dict[str, Any] | None, bool]:
        """The chunk ``event`` carries (``None`` for none) and whether the stream ends."""
        raise NotImplementedError

    def _post(self, body: Mapping[str, Any], accept: str | None) -> Any:
        """The request, its headers (the API key among them) a temporary that it consumes, so
        that no frame that may raise holds the key in a local."""
        self.requests_sent += 1
        return self._http.get().post(
            self._url, json=body, timeout=self._timeout, allow_redirects=False,
            headers={
                **self._headers, **({"Accept": accept} if accept else {}),
                **({self.auth_header: self.__auth.reveal()} if self.__auth else {}),
                **self._http.request_headers(),
            },
            proxy=self._http.proxy, proxy_headers=self._http.connect_headers(),
        )

    def producer(self, request: Mapping[str, Any]) -> Callable[[], AsyncIterator[dict[str, Any]]]:
        """``produce`` for ``ResponseCache.stream``: streams ``request`` when called."""
        return functools.partial(self.stream, request)

    def whole(self, request: Mapping[str, Any]) -> Callable[[], Any]:
        """``produce_whole`` for ``ResponseCache.get``: completes ``request`` when called."""
        return functools.partial(self.complete, request)

    async def stream(self, request: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks of ``request`` sent with ``stream: true``; raises ``UpstreamError``s."""
        with self._converted():
            async with self._post({**request, "stream": True}, "text/event-stream") as response:
                if response.status != 200:
                    raise await self._status_error(response)
                decoder = SSEDecoder()
                async for raw in response.content.iter_any():
                    for event in decoder.feed(raw):
                        chunk, last = self.read_event(event, self._http.redact)
                        if chunk is not None:
                            yield chunk
                        if last:
                            return
        raise UpstreamProtocolError(f"the stream ended before its {self.terminal}")

    async def complete(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The whole answer to ``request`` sent without streaming."""
        with self._converted():
            async with self._post({**request, "stream": False}, None) as response:
                if response.status != 200:
                    raise await self._status_error(response)
                try:
                    data = await response.json(content_type=None)
                except ValueError as exc:
                    raise UpstreamProtocolError("the answer is not JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamProtocolError("the answer is not a JSON object")
        return data

    def _converted(self) -> contextlib.AbstractContextManager[None]:
        """aiohttp's and the socket's exceptions, as our ``UpstreamError``s."""
        return self._http.converted(
            lambda: UpstreamTimeoutError(f"no data from {self._url} within the read timeout"),
            lambda cause: UpstreamTransportError(f"{self._url}: {cause}"))

    async def _status_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        body = await response.content.read(self._max_error)
        return status_error(response.status, body, response.headers.get("Retry-After"),
                            self._http.redact)
