"""Where the clients and caches get their telemetry: ``None`` when OpenTelemetry's API is not
installed (the package never needs it), else one object from ``otel``.

A provider given (``meter_provider=``, ``tracer_provider=``) without the API installed is a
configuration error; none given means the global providers, which do nothing until the
application configures an OpenTelemetry SDK.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.errors import ConfigurationError

if TYPE_CHECKING:
    from .._tiers.redis.stats import SharedStats
    from .otel import PromptTelemetry, ResponseTelemetry

__all__ = ["prompt_telemetry", "response_telemetry"]

_MISSING = ("meter_provider= and tracer_provider= need OpenTelemetry's API: "
            "pip install 'asyncpromptcache[otel]'")


def prompt_telemetry(
    meter_provider: Any, tracer_provider: Any,
    read: Callable[[], tuple[dict[str, int], int, SharedStats | None]],
) -> PromptTelemetry | None:
    """A prompt client's telemetry; ``read()`` gives its lookup counts by result, its entry
    count and its shared tier's stats, at collection time (from any thread)."""
    try:
        from .otel import PromptTelemetry
    except ImportError:
        if meter_provider is not None or tracer_provider is not None:
            raise ConfigurationError(_MISSING) from None
        return None
    return PromptTelemetry(meter_provider, tracer_provider, read)


def response_telemetry(meter_provider: Any, tracer_provider: Any,
                       read: Callable[[], Any]) -> ResponseTelemetry | None:
    """A response cache's telemetry; ``read()`` gives its ``ResponseCacheStats``."""
    try:
        from .otel import ResponseTelemetry
    except ImportError:
        if meter_provider is not None or tracer_provider is not None:
            raise ConfigurationError(_MISSING) from None
        return None
    return ResponseTelemetry(meter_provider, tracer_provider, read)
