"""``SharedStats``: a shared tier's state and counters, the same type for the prompt tier (in
``CacheStats.shared``) and the response cache."""

from __future__ import annotations

import attrs

__all__ = ["SharedStats"]


@attrs.frozen
class SharedStats:
    """The shared tier's state and counters, in ``CacheStats.shared``.

    ``state`` is ``"up"``, ``"down"`` (L1-only until Redis answers again) or ``"starting"``.
    """

    state: str
    l2_hits: int = 0
    l2_stale_served: int = 0
    l2_misses: int = 0
    upstream_fetches: int = 0
    waits: int = 0
    takeovers: int = 0
    rejected_values: int = 0
    redis_errors: int = 0
    outages: int = 0
    changes_sent: int = 0
    changes_received: int = 0
