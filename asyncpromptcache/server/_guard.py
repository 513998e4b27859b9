"""Connection limits of the local server, so that slow or silent clients cannot starve real ones.

aiohttp waits as long as its keep-alive timeout for a request's headers and accepts as many
connections as the process has file descriptors, so a handful of slow-loris sockets (headers
sent a byte at a time, or never finished) could hold the server. The guard sits between the
listening socket and aiohttp's protocol:

- a connection that has not finished its first request's headers within ``header_timeout``
  seconds is closed (a kept-alive connection that goes quiet after a request is closed by
  aiohttp's keep-alive timeout, 75 s, left as it is: a shorter one would race clients that
  reuse connections idle for up to 15 s, aiohttp's client default);
- at most ``max_connections`` are open: a new connection beyond that closes the oldest one
  still waiting for its first headers, or, when every connection is past that point, is
  itself closed at once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

__all__ = ["DEFAULT_HEADER_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "ConnectionGuard"]

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HEADER_TIMEOUT = 10.0
_END_OF_HEADERS = b"\r\n\r\n"


class _Connection:
    __slots__ = ("headers_done", "tail", "timer", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.headers_done = False
        self.tail = b""  # the last bytes seen, to find "\r\n\r\n" split across reads
        self.timer: asyncio.TimerHandle | None = None


class ConnectionGuard:
    """Counts the server's connections and closes those that break the limits above."""

    def __init__(
        self, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        if isinstance(header_timeout, bool) or not isinstance(header_timeout, int | float) \
                or not math.isfinite(header_timeout) or header_timeout <= 0:
            raise ValueError(
                f"header_timeout must be a finite number > 0, got {header_timeout!r}"
            )
        self.max_connections = max_connections
        self.header_timeout = float(header_timeout)
        self._open: dict[asyncio.Transport, _Connection] = {}  # in the order they opened
        self.closed_slow = 0
        self.closed_over_limit = 0

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around aiohttp's (``runner.server``)."""
        return lambda: _GuardedProtocol(self, factory())

    def _opened(self, transport: asyncio.Transport) -> _Connection:
        conn = _Connection(transport)
        self._open[transport] = conn
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_later(self.header_timeout, self._expire, conn)
        if len(self._open) > self.max_connections:
            victim = next((c for c in self._open.values() if not c.headers_done), conn)
            self.closed_over_limit += 1
            self._close(victim)
        return conn

    def _closed(self, conn: _Connection) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        self._open.pop(conn.transport, None)

    def _expire(self, conn: _Connection) -> None:
        conn.timer = None
        if not conn.headers_done and conn.transport in self._open:
            self.closed_slow += 1
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        # Forget it now, not when the close completes: the count must drop at once.
        self._closed(conn)
        conn.transport.abort()

    @staticmethod
    def _seen(conn: _Connection, data: bytes) -> None:
        if conn.headers_done:
            return
        window = conn.tail + data
        if _END_OF_HEADERS in window:
            conn.headers_done = True
            conn.tail = b""
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
        else:
            conn.tail = window[-(len(_END_OF_HEADERS) - 1):]


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard watching it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._conn: _Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._inner.connection_made(transport)
        self._conn = self._guard._opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._guard._closed(self._conn)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._conn is not None:
            self._guard._seen(self._conn, data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
