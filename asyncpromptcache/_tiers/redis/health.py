"""The one health policy of a Redis connection: a circuit breaker per connection (never per
call site), pure and driven by an injected clock.

* **Closed** (``up``, or ``starting`` before the first reply): every command is tried. The
  breaker opens on *sustained* trouble only: ``failures`` consecutive failures, or a failure
  ratio of ``ratio`` or more over the last ``window`` commands (at least ``window // 2`` of
  them). One slow or failed reply among successes does not open it.
* **Open** (``down``): commands are not tried (the tiers then act as a single process's cache
  would) until ``retry_at``; the open time starts at ``base_seconds`` and doubles on each
  failed probe up to ``max_seconds``.
* **Half-open**: once ``retry_at`` has passed, one probe at a time is let through; its
  success closes the breaker, its failure opens it again.

``failure``/``success`` say whether the state changed, so that going down and coming back is
logged once each per outage, never per command.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

__all__ = ["Breaker", "State"]

State = Literal["starting", "up", "down"]


class Breaker:
    def __init__(
        self, *, failures: int = 3, ratio: float = 0.5, window: int = 20,
        base_seconds: float = 0.05, max_seconds: float = 5.0,
    ) -> None:
        self._failures = failures
        self._ratio = ratio
        self._recent: deque[bool] = deque(maxlen=window)  # True: a failure
        self._min_samples = max(1, window // 2)
        self._base = base_seconds
        self._max = max(base_seconds, max_seconds)
        self._open_for = base_seconds
        self._consecutive = 0
        self.state: State = "starting"
        self.retry_at = 0.0
        self._probing = False

    def allow(self, now: float) -> bool:
        """Whether a command may be tried now (in the open state: one probe, once due)."""
        if self.state != "down":
            return True
        if self._probing or now < self.retry_at:
            return False
        self._probing = True
        return True

    def success(self) -> bool:
        """A command succeeded; true when that closes an open breaker (or ends ``starting``)."""
        self._consecutive = 0
        self._recent.append(False)
        self._probing = False
        if self.state == "up":
            return False
        came_back = self.state == "down"
        self.state = "up"
        self._open_for = self._base
        self._recent.clear()
        return came_back

    def failure(self, now: float, *, certain: bool = False) -> bool:
        """A command failed (``certain``: Redis is surely unreachable, e.g. refused); true
        when that opens the breaker."""
        self._consecutive += 1
        self._recent.append(True)
        if self.state == "down":
            if self._probing:  # the probe failed: stay open, longer
                self._probing = False
                self._open_for = min(self._max, 2 * self._open_for)
                self.retry_at = now + self._open_for
            return False
        ratio_tripped = (len(self._recent) >= self._min_samples
                         and sum(self._recent) / len(self._recent) >= self._ratio)
        if not (certain or self._consecutive >= self._failures or ratio_tripped):
            return False
        self.state = "down"
        self.retry_at = now + self._open_for
        return True

    def release_probe(self) -> None:
        """A probe let through was never sent (cancelled): let another one through."""
        self._probing = False
