"""Retry policy for fetches: which failures are retried and how long to wait. Pure logic."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import attrs

from .._core.checks import check_count, check_seconds
from .._core.errors import (
    ConfigurationError,
    FetchError,
    RateLimitError,
    ServerError,
    TransportError,
)

__all__ = ["RetryPolicy", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return max(0.0, seconds)


def _count(_: object, field: attrs.Attribute[int], value: int) -> None:
    check_count(value, f"RetryPolicy.{field.name}")


def _seconds(_: object, field: attrs.Attribute[float], value: float) -> None:
    check_seconds(value, f"RetryPolicy.{field.name}")


def _callable(_: object, field: attrs.Attribute[Any], value: object) -> None:
    if not callable(value):
        raise ConfigurationError(f"RetryPolicy.{field.name} must be callable, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After``.

    Retried: transport errors and timeouts, 408, 429 and 5xx. Never: 400/401/403/404 or an
    invalid response. A ``Retry-After`` longer than ``max_retry_after`` is not waited for: the
    error is raised at once so that callers fall back instead of hanging.

    One call has one deadline, ``budget_seconds(timeout)`` after it starts (its timeout times
    its attempts): every attempt, slow body and wait counts against it, and a wait that would
    end past it ends the retries.
    """

    # Checked as they enter: a NaN or infinite delay or a float retry count would make a
    # fetch wait or retry for ever.
    max_retries: int = attrs.field(default=2, validator=_count)
    base_delay: float = attrs.field(default=0.1, validator=_seconds)
    max_delay: float = attrs.field(default=2.0, validator=_seconds)
    max_retry_after: float = attrs.field(default=10.0, validator=_seconds)
    rng: Callable[[], float] = attrs.field(
        default=random.random, eq=False, repr=False, validator=_callable)

    def for_call(self, max_retries: int | None) -> RetryPolicy:
        """This policy with a call's own ``max_retries`` (``None``: keep this one's)."""
        if max_retries is None or max_retries == self.max_retries:
            return self
        return attrs.evolve(self, max_retries=max_retries)

    def is_retryable(self, error: FetchError) -> bool:
        return isinstance(error, TransportError | RateLimitError | ServerError)

    def delay(
        self, attempt: int, error: FetchError, *, remaining: float = math.inf
    ) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), or ``None``: give up.

        ``remaining`` is the time left before the call's deadline: a wait that would reach it
        leaves no time for the retry, so the call gives up instead.
        """
        if attempt > self.max_retries or not self.is_retryable(error):
            return None
        retry_after = error.retry_after if isinstance(error, RateLimitError) else None
        if retry_after is not None:
            wait = retry_after if retry_after <= self.max_retry_after else None
        else:
            jitter: float = self.rng()
            wait = jitter * min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return wait if wait is not None and wait < remaining else None

    def budget_seconds(self, timeout: float) -> float:
        """The deadline of one call, from its start: its timeout times its attempts."""
        return timeout * (self.max_retries + 1)
