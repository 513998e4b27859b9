"""``AcrossProcesses``: the cross-process part of resolving a request, with the shared tier.

``ResponseCache`` decides locally (join a flight of this process, replay a stored answer,
start a flight) and hands each flight it starts a producer from here: one that claims the
answer in Redis and streams it upstream, teeing every chunk to the other processes, or
follows the process that holds the claim, and takes over when that owner vanishes (its
chunks so far must match, else the flight fails). ``mode="cache_only"`` asks here whether
another process streams the answer or stored it just now.

The Redis side itself (claims, publishing, following, the store) is ``_redis.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Literal

import anyio

from .._core.errors import SharedStreamLostError
from ._fanout import Flight, Produce
from ._keys import Chunk, canonical_json, chunk_size
from ._store import StoredAnswer

if TYPE_CHECKING:
    from ._redis import RedisResponses, _Publisher, _Solo

__all__ = ["AcrossProcesses"]

_CLAIMS = 3  # a follower whose owner vanished claims again at most this often


class AcrossProcesses:
    """Claims answers in Redis, or follows the process that claimed them, for the flights of
    one ``ResponseCache`` (``max_answer_bytes``: its cap on an answer shared)."""

    __slots__ = ("_max_answer", "_shared")

    def __init__(self, shared: RedisResponses, *, max_answer_bytes: int) -> None:
        self._shared = shared
        self._max_answer = max_answer_bytes

    async def elsewhere(self, key: str) -> StoredAnswer | Literal["streaming"] | None:
        """For ``mode="cache_only"``, which found nothing here: ``"streaming"`` if another
        process streams ``key`` (the caller follows it), the answer if another process
        stored it just now, else ``None``."""
        shared = self._shared
        if await shared.streaming(key):
            return "streaming"
        # Not streamed now: it may have been stored since the store was asked (its owner
        # stores it before it lets the claim go).
        return await shared.get(key, count=False)

    def produce(self, flight: Flight, produce: Produce, ttl: float, *,
                refresh: bool, claimed: list[Any], may_claim: bool) -> Produce:
        """``produce`` for a flight with the shared tier: this process claims the key and
        streams upstream, teeing every chunk to the other processes, and stores the whole
        answer in Redis before it marks the stream complete (so a request arriving meanwhile
        either joins the stream or finds the answer); or it follows the process that holds
        the key. A follower whose owner vanished or stopped sharing claims again and goes on
        from where it was (the chunks already sent must match, else the flight fails); one
        of ``mode="cache_only"`` (``may_claim=False``) never goes upstream: it fails then.
        ``claimed``: the claim made before the flight, if any (``None``: follow).

        An answer that grows past ``max_answer_bytes`` is not shared either: its owner stops
        publishing at the first chunk over the cap, cuts the Redis stream down to an end
        entry that sends the followers to claim the answer themselves, and lets its claim
        go. Nothing here keeps the chunks (the flight holds them while they may be stored)."""
        shared, key = self._shared, flight.key

        async def through() -> AsyncIterator[Chunk]:
            sent = _Sent()
            lost: SharedStreamLostError | None = None
            for attempt in range(_CLAIMS):
                publisher = claimed.pop() if claimed else await shared.claim(key, after=lost)
                if publisher is None:
                    try:
                        async with aclosing(self._follow(key, sent)) as chunks:
                            async for chunk in chunks:
                                yield chunk
                        return
                    except SharedStreamLostError as exc:
                        if not may_claim or attempt == _CLAIMS - 1:
                            raise
                        lost = exc
                        continue
                async with aclosing(self._own(flight, produce, ttl, publisher, sent,
                                              refresh=refresh)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return

        return through

    async def _follow(self, key: str, sent: _Sent) -> AsyncGenerator[Chunk, None]:
        """The chunks of the answer another process streams, past those already sent;
        ``SharedStreamLostError`` when its owner vanished or the stream differs."""
        index = 0
        async with aclosing(self._shared.follow(key)) as chunks:
            async for chunk in chunks:
                if sent.fresh(index, chunk, following=True):
                    yield chunk
                index += 1
        sent.ended(index)

    async def _own(self, flight: Flight, produce: Produce, ttl: float,
                   publisher: _Publisher | _Solo, sent: _Sent, *,
                   refresh: bool) -> AsyncGenerator[Chunk, None]:
        """This process holds the claim: the answer stored meanwhile, else the upstream's
        chunks, published as they come (up to the cap), then stored in Redis."""
        shared, key = self._shared, flight.key
        # Stored between the store's read and this claim? (Not asked of a Redis that just
        # failed to answer the claim.)
        try:
            stored = None if refresh or not publisher.sharing else await shared.get(
                key, count=False)
        except BaseException as exc:  # cancelled: the claim is let go, not left to expire
            with anyio.CancelScope(shield=True):
                await publisher.fail(exc)
            raise
        if stored is not None:
            await publisher.withdraw()
            for index, chunk in enumerate(stored.chunks):
                if sent.fresh(index, chunk, following=False):
                    yield chunk
            sent.ended(len(stored.chunks))
            return
        try:
            index = size = 0
            iterator = aiter(produce())
            try:
                async for chunk in iterator:
                    size += chunk_size(chunk)  # not published unless it is a chunk
                    if size > self._max_answer:
                        await publisher.stop_sharing()  # once; then a no-op
                    else:
                        await publisher.publish(chunk)
                    if sent.fresh(index, chunk, following=False):
                        yield chunk
                    index += 1
            finally:
                if hasattr(iterator, "aclose"):
                    await iterator.aclose()
            sent.ended(index)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await publisher.fail(exc)
            raise
        if flight.storable and flight.writes_back:
            try:
                await shared.put(key, StoredAnswer(flight.chunks, flight.size, flight.duration),
                                 ttl)
            except BaseException as exc:  # cancelled while storing: followers take over
                with anyio.CancelScope(shield=True):
                    await publisher.fail(exc)
                raise
        await publisher.complete()


class _Sent:
    """What a flight's shared-tier upstream has given so far: a count, and while following
    another process a digest of the chunks (not the chunks: the flight holds them, and not
    past the cap). A stream taken over, or followed again, must begin with them: it is read
    without yielding up to there, then compared."""

    __slots__ = ("_digest", "_replay", "count")

    def __init__(self) -> None:
        self.count = 0
        self._digest = hashlib.sha256()
        self._replay = hashlib.sha256()

    def fresh(self, index: int, chunk: Chunk, *, following: bool) -> bool:
        """Whether the ``index``-th chunk of a stream is new (to yield); raises
        ``SharedStreamLostError`` once a stream's first ``count`` chunks differ from the
        ones sent. ``following``: the digest is kept up to date (an owner's is not needed:
        nothing takes over from the owner)."""
        if index >= self.count:
            self.count += 1
            if following:
                self._digest.update(_chunk_bytes(chunk))
            return True
        if index == 0:
            self._replay = hashlib.sha256()
        self._replay.update(_chunk_bytes(chunk))
        if index == self.count - 1 and self._replay.digest() != self._digest.digest():
            raise SharedStreamLostError(
                f"the answer was taken over after {self.count} chunks and the new stream "
                "differs within them")
        return False

    def ended(self, total: int) -> None:
        """A stream ended after ``total`` chunks: ``SharedStreamLostError`` if it is
        shorter than the chunks already sent."""
        if total < self.count:
            raise SharedStreamLostError(
                f"the answer was taken over after {self.count} chunks and the new stream "
                f"has only {total}")


def _chunk_bytes(chunk: Chunk) -> bytes:
    """``chunk`` as bytes for a digest: its type, its length, its content (a dict's as
    canonical JSON), so that equal chunks give equal bytes and no two differ alike."""
    if isinstance(chunk, str):
        body = b"s" + chunk.encode("utf-8", "surrogatepass")
    elif isinstance(chunk, bytes):
        body = b"b" + chunk
    else:
        body = b"d" + canonical_json(chunk)
    return len(body).to_bytes(8, "big") + body
