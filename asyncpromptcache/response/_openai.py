"""``OpenAIChatProducer``: streams ``POST {base_url}/chat/completions`` of any
OpenAI-compatible endpoint over aiohttp. The only module of the response cache that sees
aiohttp's exceptions: each becomes an ``UpstreamError``, ``from`` the original."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import yarl

from .._errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    UpstreamTransportError,
)
from .._langfuse import _forget_credentials
from ._sse import SSEDecoder, openai_chunk, status_error

__all__ = ["OpenAIChatProducer"]

_USER_AGENT = "asyncpromptcache/0.1"


class OpenAIChatProducer:
    """Chat completions from an OpenAI-compatible endpoint, as producers for
    ``ResponseCache``::

        async with OpenAIChatProducer(base_url="http://127.0.0.1:3000/v1") as llm:
            async for chunk in cache.stream(request, llm.producer(request)):
                print(chunk_text(chunk), end="")

    ``stream(request)`` yields each chunk object of ``stream=true`` (``[DONE]`` ends it);
    ``complete(request)`` returns the whole ``chat.completion`` object. ``read_timeout_seconds``
    bounds each wait for data (the first token included), ``connect_timeout_seconds`` the
    connection. One ``aiohttp.ClientSession`` for the producer's life unless one is passed
    (then never closed here). The API key never appears in a repr or a message.
    """

    def __init__(
        self,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout_seconds: float = 10.0,
        read_timeout_seconds: float = 60.0,
        max_error_bytes: int = 64 * 1024,
        verify_ssl: bool = True,
    ) -> None:
        url = yarl.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self._url = str(url).rstrip("/") + "/chat/completions"
        self.__headers = {"User-Agent": _USER_AGENT, **(headers or {})}
        if api_key is not None:
            self.__headers["Authorization"] = f"Bearer {api_key}"
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_seconds, sock_read=read_timeout_seconds)
        self._max_error = max_error_bytes
        self._verify_ssl = verify_ssl
        #: Requests sent (streaming and not), for tests and benchmarks.
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"OpenAIChatProducer(url={self._url!r})"

    async def __aenter__(self) -> OpenAIChatProducer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._verify_ssl))
            self._owns_session = True
        return self._session

    def producer(self, request: Mapping[str, Any]) -> Callable[[], AsyncIterator[dict[str, Any]]]:
        """``produce`` for ``ResponseCache.stream``: streams ``request`` when called."""
        return functools.partial(self.stream, request)

    def whole(self, request: Mapping[str, Any]) -> Callable[[], Any]:
        """``produce_whole`` for ``ResponseCache.get``: completes ``request`` when called."""
        return functools.partial(self.complete, request)

    async def stream(self, request: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks of ``request`` sent with ``stream=true``; raises ``UpstreamError``s."""
        body = {**request, "stream": True}
        headers = {**self.__headers, "Accept": "text/event-stream"}
        session = self._get_session()
        self.requests_sent += 1
        with self._converted():
            async with session.post(self._url, json=body, headers=headers,
                                    timeout=self._timeout, allow_redirects=False) as response:
                if response.status != 200:
                    raise await self._status_error(response)
                decoder = SSEDecoder()
                async for raw in response.content.iter_any():
                    for event in decoder.feed(raw):
                        chunk = openai_chunk(event)
                        if chunk is None:
                            return
                        yield chunk
        raise UpstreamProtocolError("the stream ended before its [DONE] marker")

    async def complete(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The ``chat.completion`` object of ``request`` sent without streaming."""
        body = {**request, "stream": False}
        session = self._get_session()
        self.requests_sent += 1
        with self._converted():
            async with session.post(self._url, json=body, headers=self.__headers,
                                    timeout=self._timeout, allow_redirects=False) as response:
                if response.status != 200:
                    raise await self._status_error(response)
                try:
                    data = await response.json(content_type=None)
                except ValueError as exc:
                    raise UpstreamProtocolError("the answer is not JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamProtocolError("the answer is not a JSON object")
        return data

    @contextlib.contextmanager
    def _converted(self) -> Iterator[None]:
        """aiohttp's and the socket's exceptions, as our ``UpstreamError``s."""
        try:
            yield
        except UpstreamError:
            raise
        except TimeoutError as exc:
            raise UpstreamTimeoutError(
                f"no data from {self._url} within the read timeout") from exc
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            _forget_credentials(exc)  # the API key must not ride along in the cause
            raise UpstreamTransportError(f"{self._url}: {type(exc).__name__}: {exc}") from exc

    async def _status_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        body = await response.content.read(self._max_error)
        return status_error(response.status, body, response.headers.get("Retry-After"))
