"""The LLM response cache: stream first, cache after.

``ResponseCache`` shares one upstream stream among identical requests in flight, stores whole
answers with their chunk boundaries and replays them. ``OpenAIChatProducer`` streams from an
OpenAI-compatible ``/v1/chat/completions``. The seams a shared tier implements:
``ResponseStore`` (completed answers) and ``SharedFlights`` (answers in flight).
``AsyncCacheTransport`` and ``CacheTransport`` put the cache under an SDK's HTTP client
(imported on first use: they need ``httpx`` or ``httpx2``).
"""

from typing import TYPE_CHECKING, Any

from ._cache import (
    Mode as Mode,
    Pace as Pace,
    ResponseCache as ResponseCache,
    ResponseCacheStats as ResponseCacheStats,
    ResponseStream as ResponseStream,
    Source as Source,
)
from ._fanout import (
    AbandonPolicy as AbandonPolicy,
    FlightPublisher as FlightPublisher,
    Produce as Produce,
    SharedFlights as SharedFlights,
)
from ._keys import (
    DEFAULT_IGNORED_FIELDS as DEFAULT_IGNORED_FIELDS,
    Chunk as Chunk,
    canonical_json as canonical_json,
    chunk_size as chunk_size,
    is_deterministic as is_deterministic,
    response_key as response_key,
)
from ._openai import OpenAIChatProducer as OpenAIChatProducer
from ._sse import (
    SSEDecoder as SSEDecoder,
    SSEEvent as SSEEvent,
    chunk_text as chunk_text,
    openai_chunk as openai_chunk,
)
from ._store import (
    MemoryStore as MemoryStore,
    ResponseStore as ResponseStore,
    StoredAnswer as StoredAnswer,
    StoreStats as StoreStats,
)

if TYPE_CHECKING:
    from .transports import (
        AsyncCacheTransport as AsyncCacheTransport,
        CacheTransport as CacheTransport,
    )


def __getattr__(name: str) -> Any:
    if name in ("AsyncCacheTransport", "CacheTransport"):
        from . import transports

        return getattr(transports, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_IGNORED_FIELDS",
    "AbandonPolicy",
    "AsyncCacheTransport",
    "CacheTransport",
    "Chunk",
    "FlightPublisher",
    "MemoryStore",
    "Mode",
    "OpenAIChatProducer",
    "Pace",
    "Produce",
    "ResponseCache",
    "ResponseCacheStats",
    "ResponseStore",
    "ResponseStream",
    "SSEDecoder",
    "SSEEvent",
    "SharedFlights",
    "Source",
    "StoreStats",
    "StoredAnswer",
    "canonical_json",
    "chunk_size",
    "chunk_text",
    "is_deterministic",
    "openai_chunk",
    "response_key",
]
