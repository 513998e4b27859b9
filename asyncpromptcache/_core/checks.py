"""Checks of numeric options where they enter: type, finiteness, range. Pure.

One place for every number a user hands us (constructor options, per-call arguments, env
vars, ``RetryPolicy`` fields), so that a ``nan`` backoff, an ``inf`` retry count or a string
timeout is refused at the door with an error naming it, never met later inside the engine.
Options given when something is built raise ``ConfigurationError``; per-call arguments raise
``InvalidArgumentError`` (pass ``error=``). Both are ``ValueError``s.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigurationError, PromptCacheError

__all__ = ["check_count", "check_seconds", "parse_seconds"]


def check_seconds(
    value: Any,
    what: str,
    *,
    positive: bool = False,
    allow_inf: bool = False,
    error: type[PromptCacheError] = ConfigurationError,
) -> float:
    """``value`` as a float of seconds: a real number (not a ``bool`` or a string), not NaN,
    finite unless ``allow_inf``, 0 or more (more than 0 when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{what} must be a number of seconds, got {value!r}")
    number = float(value)
    bound = "greater than 0" if positive else "0 or more"
    if math.isnan(number) or (math.isinf(number) and not allow_inf) or number < 0 \
            or (positive and number == 0):
        kind = "a number" if allow_inf else "a finite number"
        raise error(f"{what} must be {kind} {bound}, got {value!r}")
    return number


def parse_seconds(text: str, what: str, *, positive: bool = False) -> float:
    """An environment variable's text as seconds, checked as ``check_seconds`` does."""
    try:
        number = float(text)
    except ValueError:
        raise ConfigurationError(f"{what} must be a number of seconds, got {text!r}") from None
    return check_seconds(number, what, positive=positive)


def check_count(
    value: Any,
    what: str,
    *,
    minimum: int = 0,
    error: type[PromptCacheError] = ConfigurationError,
) -> int:
    """``value`` as a count: an ``int`` (not a ``bool``, a float or a string), ``minimum`` or
    more."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise error(f"{what} must be {minimum} or more, got {value!r}")
    return value
