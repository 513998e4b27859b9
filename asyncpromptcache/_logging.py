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

__all__ = ["install_default_handler"]

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
