"""Log lines that say where they come from, even in an app that configured no logging.

Python's fallback for unconfigured logging (``logging.lastResort``) prints only the message,
so a warning such as "refresh of 'greet' failed" would reach stderr without saying which
library wrote it. The handler below stands in for that fallback on the ``asyncpromptcache``
loggers only, and only while the app has configured nothing: once the root logger has a
handler (``logging.basicConfig(...)``, a framework's setup, pytest), it stays silent and the
app's own handlers decide.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog", "install_default_handler"]

_FORMAT = "%(levelname)s %(name)s: %(message)s"


class _UnconfiguredHandler(logging.Handler):
    """Writes to stderr (as ``lastResort`` does) while the root logger has no handler."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)  # lastResort's level
        self.setFormatter(logging.Formatter(_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        try:
            sys.stderr.write(self.format(record) + "\n")  # sys.stderr as it is now
        except Exception:
            self.handleError(record)


def install_default_handler() -> None:
    """Add the handler to the ``asyncpromptcache`` logger, once."""
    logger = logging.getLogger("asyncpromptcache")
    if not any(isinstance(handler, _UnconfiguredHandler) for handler in logger.handlers):
        logger.addHandler(_UnconfiguredHandler())


class RateLimitedLog:
    """A warning that may come in floods (rejected Redis messages or values: anyone who can
    PUBLISH can send thousands), written at most once per ``interval_seconds``.

    The first occurrence is written at once; the ones within the interval after it are
    counted, and the next line written says how many were left out. A flood of 20,000 is
    one line, then one a minute while it lasts, each with the count.
    """

    def __init__(self, logger: logging.Logger, *, interval_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at = -float("inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            if now < self._next_at:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next_at = now + self._interval
        if suppressed:
            message += " (and %d more like it in the last %gs, not logged)"
            args = (*args, suppressed, self._interval)
        self._logger.warning(message, *args)
