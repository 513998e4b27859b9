"""The edge to ``httpx`` and ``httpx2``: the library of a request, its response and stream
classes, its errors and its default transports. Both libraries have the same API under two
names; neither is imported until a request of it arrives (or ``bases`` is asked)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs

from ..._core.errors import ResponseFailedError
from ._engine import Answer, Headers

__all__ = ["Library", "bases", "library_of"]

_NAMES = ("httpx", "httpx2")


def bases(name: str) -> tuple[type, ...]:
    """The ``name`` class (``AsyncBaseTransport``, ``BaseTransport``) of each installed
    library, so a cache transport is one of theirs for ``isinstance`` and type checkers."""
    found: list[type] = []
    for library in _NAMES:
        try:
            module = importlib.import_module(library)
        except ImportError:
            continue
        found.append(getattr(module, name))
    return tuple(found) or (object,)


@attrs.frozen
class Library:
    """One of the two libraries, with the classes the transports build on it."""

    module: Any
    async_body: type
    sync_body: type
    cut_error: Any

    def headers(self, request: Any) -> Headers:
        pairs: Headers = request.headers.multi_items()
        return pairs

    def request(self, template: Any, headers: Headers, body: bytes) -> Any:
        """A copy of ``template`` with ``headers`` and ``body``."""
        return self.module.Request(template.method, template.url, headers=headers,
                                   content=body, extensions=template.extensions)

    def response(self, answer: Answer, request: Any, *, stream: Any = None) -> Any:
        """The library's response for ``answer``; ``stream`` is the body stream (default: an
        async one over ``answer.stream``)."""
        if answer.body is not None:
            return self.module.Response(answer.status, headers=answer.headers,
                                        content=answer.body, request=request)
        if stream is None:
            assert answer.stream is not None
            stream = self.async_body(answer.stream)
        return self.module.Response(answer.status, headers=answer.headers, stream=stream,
                                    request=request)

    def cut(self, exc: ResponseFailedError) -> BaseException:
        error: BaseException = self.cut_error(
            f"the answer's stream was cut off after {exc.chunks_received} events; it was not "
            "stored", upstream=exc.upstream, chunks_received=exc.chunks_received)
        return error


_libraries: dict[str, Library] = {}


def library_of(request: Any) -> Library:
    """The library ``request`` belongs to (by its class's module)."""
    name = type(request).__module__.partition(".")[0]
    known = _libraries.get(name)
    if known is None:
        if name not in _NAMES:
            raise TypeError(f"a cache transport serves httpx and httpx2 requests, not "
                            f"{type(request).__module__}.{type(request).__name__}")
        known = _libraries[name] = _build(sys.modules[name])
    return known


def _build(module: Any) -> Library:
    class AsyncBody(module.AsyncByteStream):  # type: ignore[misc]
        """The body of an answer from the cache, event by event."""

        def __init__(self, chunks: AsyncIterator[bytes]) -> None:
            self._chunks = chunks

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._chunks:
                yield chunk

        async def aclose(self) -> None:
            close = getattr(self._chunks, "aclose", None)
            if close is not None:
                await close()

    class SyncBody(module.SyncByteStream):  # type: ignore[misc]
        """The body of an answer from the cache, read from another thread's event loop:
        ``pull`` returns the next chunk or ``None`` at the end, ``close`` ends it early."""

        def __init__(self, first: list[bytes], pull: Callable[[], bytes | None] | None,
                     close: Callable[[], None] | None) -> None:
            self._first = first
            self._pull = pull
            self._close = close

        def __iter__(self) -> Iterator[bytes]:
            yield from self._first
            if self._pull is not None:
                while (chunk := self._pull()) is not None:
                    yield chunk
                self._pull = self._close = None

        def close(self) -> None:
            close, self._pull, self._close = self._close, None, None
            if close is not None:
                close()

    class StreamCutError(module.RemoteProtocolError, ResponseFailedError):  # type: ignore[misc]
        """An answer's stream was cut off (upstream, or the stream it joined): the
        library's ``RemoteProtocolError`` and our ``ResponseFailedError`` at once."""

        def __init__(self, message: str, *, upstream: BaseException | None,
                     chunks_received: int) -> None:
            module.RemoteProtocolError.__init__(self, message)
            self.upstream = upstream
            self.chunks_received = chunks_received

    return Library(module, AsyncBody, SyncBody, StreamCutError)

