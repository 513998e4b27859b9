"""One upstream stream, many consumers: the in-flight answer (``Flight``), the consumers
reading it (``Consumer``), and where identical requests meet (``LocalFlights``).

A flight keeps every chunk so far in one list shared by its consumers; each consumer is an
index into it. A consumer that joins late therefore reads the chunks so far, then the live
ones: the same sequence as every other. The upstream never waits for a consumer. A consumer's
*buffer* is the live chunks that arrived since it joined and that it has not taken; past
``buffer_chunks`` of them it is dropped with ``SlowConsumerError`` and the others go on.

A consumer that leaves (``Consumer.close``) does not stop the flight. When the last one
leaves, ``on_abandon`` decides: ``"finish"`` lets the upstream run to the end and be stored,
``"cancel"`` cancels it (nothing is stored).

An answer that grows past the store's cap is not stored and stops taking new consumers: a
request that comes after that point starts its own stream (the chunks before it are no
longer kept for it). From then on the flight holds only the chunks a consumer has yet to
take: those every consumer has taken are released as it goes.

Across processes (the shared tier, in Redis: ``_redis.py``): the cache wraps the producer it
hands to a flight (``_across.py``), so a flight's upstream is either the real producer teed to
a publisher (this process claimed the key) or a follower of another process's flight. Local
consumers fan out from that one source either way.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from typing import Literal, TypeAlias

import anyio
import anyio.lowlevel

from .._core.errors import (
    ClientStateError,
    InvalidArgumentError,
    ResponseFailedError,
    SlowConsumerError,
    UpstreamError,
)
from ._keys import Chunk, chunk_size

__all__ = [
    "AbandonPolicy",
    "Consumer",
    "Flight",
    "LocalFlights",
    "Produce",
]

AbandonPolicy: TypeAlias = Literal["finish", "cancel"]
Produce: TypeAlias = Callable[[], AsyncIterable[Chunk]]

_RUNNING, _DONE, _FAILED = "running", "done", "failed"


class Flight:
    """One upstream answer in flight for ``key``, fanned out to its consumers."""

    def __init__(
        self, key: str, *, buffer_chunks: int | None, max_store_bytes: int,
        on_abandon: AbandonPolicy, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self._buffer = math.inf if buffer_chunks is None else buffer_chunks
        self._max_store = max_store_bytes
        self._on_abandon = on_abandon
        self._clock = clock
        self._chunks: list[Chunk] = []
        self._base = 0  # chunks released from the front (only once the answer is not storable)
        self.size = 0
        self.storable = True
        self.joinable = True
        # Following another process's stream for ``mode="cache_only"`` callers: never
        # claims it, so a request that may go upstream does not join it (it follows itself).
        self.follow_only = False
        self.state = _RUNNING
        self.error: BaseException | None = None
        self.consumers: set[Consumer] = set()
        self._changed = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self.started_at = clock()
        self.finished_at: float | None = None
        #: Set when the upstream task is over, the answer stored or not.
        self.settled = anyio.Event()
        self.abandoned = False
        #: False once the key was invalidated: the answer answers its consumers, unstored.
        self.writes_back = True
        self.slow_dropped = 0
        #: Called once when the flight ends, whatever way (the registry forgets it).
        self.on_end: Callable[[Flight], None] | None = None

    def __repr__(self) -> str:
        return (f"<Flight {self.key[:12]} {self.state} chunks={self.total} "
                f"consumers={len(self.consumers)}>")

    @property
    def total(self) -> int:
        """Chunks received from the upstream so far."""
        return self._base + len(self._chunks)

    @property
    def held(self) -> int:
        """Chunks held now: every one while the answer may be stored, then only those a
        consumer has yet to take."""
        return len(self._chunks)

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        """Every chunk, in order (only while the answer is storable)."""
        if self._base:
            raise RuntimeError("the flight released its first chunks")
        return tuple(self._chunks)

    @property
    def duration(self) -> float:
        end = self.finished_at if self.finished_at is not None else self._clock()
        return max(0.0, end - self.started_at)

    # -- consumers -----------------------------------------------------------------------

    def attach(self) -> Consumer:
        """A new consumer that reads from the first chunk."""
        if self._base:
            raise RuntimeError("the flight no longer holds its first chunks")
        consumer = Consumer(self)
        self.consumers.add(consumer)
        return consumer

    def detach(self, consumer: Consumer) -> None:
        if consumer not in self.consumers:
            return
        self.consumers.discard(consumer)
        if not self.storable:
            self._release()
        if not self.consumers and self.state == _RUNNING and self._on_abandon == "cancel":
            self.abandoned = True
            self.joinable = False
            if self._scope is not None:
                self._scope.cancel()
            self.end()

    # -- the upstream --------------------------------------------------------------------

    async def run(self, produce: Produce) -> None:
        """Read ``produce`` to its end into this flight. Raises nothing but the cancellation
        of the surrounding task; the outcome is in ``state`` (``end()`` is the caller's to
        call once the answer is stored)."""
        if self.abandoned:  # every consumer left before the upstream started
            self._fail(ClientStateError("every consumer left before the stream started"))
            return
        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
                iterable = produce()
                iterator: AsyncIterator[Chunk] = aiter(iterable)
                if hasattr(iterator, "aclose"):
                    async with aclosing(iterator):  # type: ignore[type-var]
                        async for chunk in iterator:
                            await self._push(chunk)
                else:
                    async for chunk in iterator:
                        await self._push(chunk)
            except anyio.get_cancelled_exc_class():
                self._fail(ClientStateError(
                    "every consumer left and the stream was cancelled" if self.abandoned
                    else "the response cache closed while the answer was streaming"))
                raise
            except Exception as exc:
                self._fail(exc)
            else:
                if self.state == _RUNNING:
                    self.state = _DONE
                    self.finished_at = self._clock()
                    self._wake()


    async def _push(self, chunk: Chunk) -> None:
        if self.state != _RUNNING:
            return
        size = chunk_size(chunk)  # InvalidArgumentError for a chunk of another type
        self._chunks.append(chunk)
        self.size += size
        if self.storable and self.size > self._max_store:
            self.storable = False
            self.joinable = False
            self.end()  # new requests no longer meet this flight
        total = self.total
        for consumer in list(self.consumers):
            if total - max(consumer.pos, consumer.live_from) > self._buffer:
                self._drop_slow(consumer)
        if not self.storable:
            self._release()
        self._wake()
        # One network read often carries many chunks: let the woken consumers take this one
        # before the next is pushed, so only a consumer that is really not reading falls
        # behind (the upstream itself never waits for anyone).
        await anyio.lowlevel.checkpoint()

    def _drop_slow(self, consumer: Consumer) -> None:
        self.slow_dropped += 1
        consumer.error = SlowConsumerError(
            f"dropped: more than {self._buffer:g} chunks of the live stream were waiting for "
            f"this consumer (it had taken {consumer.pos}); the stream goes on for the others",
            chunks_received=consumer.pos,
        )
        self.detach(consumer)

    def _release(self) -> None:
        """Forget the chunks every consumer has taken (an answer too large to store)."""
        low = min((c.pos for c in self.consumers), default=self.total)
        drop = low - self._base
        if drop > 0:
            del self._chunks[:drop]
            self._base = low

    def _fail(self, error: BaseException) -> None:
        if self.state != _RUNNING:
            return
        self.state = _FAILED
        self.error = error
        self.storable = False
        self.finished_at = self._clock()
        self.end()
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    @property
    def done(self) -> bool:
        """The upstream completed normally."""
        return self.state == _DONE

    def end(self) -> None:
        """The flight takes no new consumers: its ``on_end`` runs (once)."""
        callback, self.on_end = self.on_end, None
        if callback is not None:
            callback(self)


class Consumer:
    """One reader of a flight. ``await next()`` returns the next chunk, raises
    ``StopAsyncIteration`` at the end of a whole answer, ``ResponseFailedError`` after the
    last chunk of a failed one, or ``SlowConsumerError`` once dropped."""

    __slots__ = ("__weakref__", "error", "flight", "live_from", "pos")

    def __init__(self, flight: Flight) -> None:
        self.flight = flight
        self.pos = 0
        self.live_from = flight.total  # chunks before this were history, not buffer
        self.error: BaseException | None = None

    async def next(self) -> Chunk:
        flight = self.flight
        while True:
            if self.error is not None:
                raise self.error
            index = self.pos - flight._base
            if index < len(flight._chunks):
                self.pos += 1
                return flight._chunks[index]
            if flight.state == _DONE:
                self.close()
                raise StopAsyncIteration
            if flight.state == _FAILED:
                self.close()
                self.error = _failed(flight, self.pos)
                raise self.error
            await flight._changed.wait()

    def close(self) -> None:
        """Leave the flight (idempotent): it goes on for the others."""
        self.flight.detach(self)


def _failed(flight: Flight, received: int) -> BaseException:
    cause = flight.error
    if isinstance(cause, ClientStateError):
        return ClientStateError(f"{cause} (after {received} chunks)")
    if isinstance(cause, InvalidArgumentError):
        what = f"the producer yielded a bad chunk: {cause}"
    elif isinstance(cause, UpstreamError):
        what = f"the upstream failed: {type(cause).__name__}: {cause}"
    else:
        what = f"the producer raised {type(cause).__name__}: {cause}"
    error = ResponseFailedError(
        f"{what} (after {received} chunks; nothing was stored)", upstream=cause,
        chunks_received=received,
    )
    error.__cause__ = cause
    return error


class LocalFlights:
    """The flights in flight in this process, by key: where identical requests meet."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: str) -> Flight | None:
        """The joinable flight of ``key``, if any."""
        flight = self._flights.get(key)
        return flight if flight is not None and flight.joinable else None

    def add(self, flight: Flight) -> None:
        """Make ``flight`` the one identical requests join from now on."""
        previous = self._flights.get(flight.key)
        if previous is not None:
            previous.on_end = None
        self._flights[flight.key] = flight
        flight.on_end = self._forget

    def forget(self, key: str) -> None:
        flight = self._flights.pop(key, None)
        if flight is not None:
            flight.on_end = None
            flight.joinable = False
            flight.writes_back = False

    def _forget(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def values(self) -> list[Flight]:
        return list(self._flights.values())
