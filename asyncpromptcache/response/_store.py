"""Where completed answers are kept: the ``ResponseStore`` protocol (the seam a shared store,
such as a Redis one, implements) and ``MemoryStore``, the in-process store bounded by bytes
(LRU), by TTL on an injectable monotonic clock, and by a per-answer size cap."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import attrs
import cachetools

from ._keys import Chunk

__all__ = ["MemoryStore", "ResponseStore", "StoreStats", "StoredAnswer"]


@attrs.frozen(slots=True)
class StoredAnswer:
    """One whole answer: its chunks with their original boundaries.

    ``size`` is the bytes the chunks take (``chunk_size``); ``duration_seconds`` how long the
    upstream took from its start to its last chunk (for replay paced as the original).
    Chunks are shared by every replay: treat dict chunks as read-only.
    """

    chunks: tuple[Chunk, ...]
    size: int
    duration_seconds: float = 0.0


@attrs.frozen
class StoreStats:
    """What a store holds and has dropped."""

    entries: int
    bytes: int
    max_bytes: int | None
    evictions: int
    expirations: int


@runtime_checkable
class ResponseStore(Protocol):
    """Completed answers by key. The cache calls only these; a store never raises for a
    missing key, and a store of a shared tier treats its own trouble as a miss (``get``
    returns ``None``, ``put`` returns ``False``) rather than a caller's error.

    Keys are sha256 hex digests (``response_key``). A store that serialises must give back
    each chunk with its type (str, bytes or dict) and its boundaries.
    """

    async def get(self, key: str) -> StoredAnswer | None:
        """The answer stored for ``key`` while within its TTL, else ``None``."""

    async def put(self, key: str, answer: StoredAnswer, ttl_seconds: float) -> bool:
        """Store ``answer`` for ``ttl_seconds``; ``False`` when it was not stored."""

    async def delete(self, key: str) -> bool:
        """Drop ``key``; whether there was an answer."""

    async def clear(self) -> int:
        """Drop every answer; how many there were (when the store knows)."""

    def stats(self) -> StoreStats: ...

    async def aclose(self) -> None: ...


@attrs.frozen(slots=True)
class _Entry:
    answer: StoredAnswer
    ttl: float


def _expiry(_key: str, entry: _Entry, now: float) -> float:
    return now + entry.ttl


def _entry_size(entry: _Entry) -> int:
    return max(1, entry.answer.size)  # an empty answer still takes a slot


class _Answers(cachetools.TLRUCache[str, _Entry]):
    """LRU by bytes with a TTL per entry; counts what it drops."""

    def __init__(self, max_bytes: int, clock: Callable[[], float]) -> None:
        super().__init__(max_bytes, _expiry, timer=clock, getsizeof=_entry_size)
        self.evictions = 0
        self.expirations = 0

    def popitem(self) -> tuple[str, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item

    def expire(self, time: Any = None) -> list[tuple[str, _Entry]]:
        expired = super().expire(time)
        self.expirations += len(expired)
        return expired


class MemoryStore:
    """Answers in this process: at most ``max_bytes`` of chunks (least recently used dropped
    first); an answer lives for the TTL it was put with, on ``clock`` (monotonic seconds)."""

    def __init__(self, *, max_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self._answers = _Answers(max_bytes, clock)

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._answers)} answers, {self._answers.currsize} bytes>"

    async def get(self, key: str) -> StoredAnswer | None:
        return self.peek(key)

    def peek(self, key: str) -> StoredAnswer | None:
        """``get`` without awaiting: this store never waits."""
        try:
            entry = self._answers[key]  # one look (``get`` looks twice); expired is missing
        except KeyError:
            return None
        return entry.answer

    async def put(self, key: str, answer: StoredAnswer, ttl_seconds: float) -> bool:
        if ttl_seconds <= 0 or _entry_size(_Entry(answer, ttl_seconds)) > self._answers.maxsize:
            self._answers.pop(key, None)
            return False
        self._answers[key] = _Entry(answer, ttl_seconds)  # may evict the LRU answers first
        return True

    async def delete(self, key: str) -> bool:
        return self._answers.pop(key, None) is not None

    async def clear(self) -> int:
        count = len(self._answers)
        self._answers.clear()
        return count

    def stats(self) -> StoreStats:
        self._answers.expire()
        return StoreStats(
            entries=len(self._answers), bytes=int(self._answers.currsize),
            max_bytes=int(self._answers.maxsize), evictions=self._answers.evictions,
            expirations=self._answers.expirations,
        )

    async def aclose(self) -> None:
        return None
