"""What the cache engine remembers of failed fetches. Pure bookkeeping: no I/O, no tasks.

Per key whose refreshes fail while an entry is held: the failures in a row, the last error
and when the next refresh may start (``refresh_backoff_seconds * 2**(failures-1)``, capped
at ``refresh_backoff_max_seconds``). Per key that failed with nothing servable held: the
failure itself, answered again for ``negative_ttl_seconds`` (the negative cache; ``0``: none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import attrs
import cachetools

from .._core.checks import check_seconds
from .._core.errors import PromptCacheError

__all__ = ["Failures", "KeyInfo"]

_NEVER = -math.inf


@attrs.define(slots=True)
class KeyInfo:
    """Failure bookkeeping, made on a key's first failed fetch (most keys never need one)."""

    last_error: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    retry_not_before: float = _NEVER


class Failures:
    """The engine's memory of failures: ``info`` per key, and ``negative`` (``None`` when off),
    both read directly on the engine's hot paths."""

    def __init__(
        self, max_size: int, clock: Callable[[], float], negative_ttl_seconds: float,
        refresh_backoff_seconds: float, refresh_backoff_max_seconds: float,
    ) -> None:
        negative_ttl_seconds = check_seconds(negative_ttl_seconds, "negative_ttl_seconds")
        self._backoff = check_seconds(refresh_backoff_seconds, "refresh_backoff_seconds")
        self._backoff_max = check_seconds(
            refresh_backoff_max_seconds, "refresh_backoff_max_seconds")
        self.info: dict[Hashable, KeyInfo] = {}
        # Recent failures of keys with nothing servable: key -> the error, raised again.
        self.negative: cachetools.TTLCache[Hashable, PromptCacheError] | None = (
            cachetools.TTLCache(max_size, negative_ttl_seconds, timer=clock)
            if negative_ttl_seconds > 0 else None
        )

    def remember(self, key: Hashable, error: PromptCacheError) -> None:
        """Answer the key's callers with ``error`` for a while (nothing servable is held)."""
        if self.negative is not None:
            self.negative[key] = error

    def back_off(self, key: Hashable, error: PromptCacheError, now: float) -> tuple[int, float]:
        """Count a failed refresh of ``key`` at ``now``; returns the failures in a row and
        how long the key now waits before the next refresh."""
        info = self.info.get(key)
        if info is None:
            info = self.info[key] = KeyInfo()
        info.consecutive_failures += 1
        info.last_error = f"{type(error).__name__}: {error}"
        info.last_error_at = now
        delay = min(self._backoff * 2.0 ** (info.consecutive_failures - 1), self._backoff_max)
        info.retry_not_before = now + delay
        return info.consecutive_failures, delay

    def succeeded(self, key: Hashable) -> None:
        """``key`` was stored: no failure to answer with, no backoff (the last error stays
        visible in the stats)."""
        if self.negative is not None:
            self.negative.pop(key, None)
        info = self.info.get(key)
        if info is not None:
            info.consecutive_failures = 0
            info.retry_not_before = _NEVER

    def clear(self) -> None:
        self.info.clear()
        if self.negative is not None:
            self.negative.clear()
