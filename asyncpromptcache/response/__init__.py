"""The LLM response cache: stream first, cache after.

``ResponseCache`` shares one upstream stream among identical requests in flight, stores whole
answers with their chunk boundaries and replays them. Producers stream from the upstream:
``OpenAIChatProducer`` (an OpenAI-compatible ``/v1/chat/completions``),
``OpenAIResponsesProducer`` (the Responses API, ``/v1/responses``) and
``AnthropicMessagesProducer`` (Anthropic's ``/v1/messages``).
``ResponseStore`` is the seam for another store of completed answers
(``ResponseCache(store=...)``); the shared tier is ``shared=``.
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
    Produce as Produce,
)
from ._keys import (
    DEFAULT_IGNORED_FIELDS as DEFAULT_IGNORED_FIELDS,
    Chunk as Chunk,
    canonical_json as canonical_json,
    chunk_size as chunk_size,
    is_deterministic as is_deterministic,
    response_key as response_key,
)
from ._store import (
    MemoryStore as MemoryStore,
    ResponseStore as ResponseStore,
    StoredAnswer as StoredAnswer,
    StoreStats as StoreStats,
)
from .providers._anthropic import (
    ANTHROPIC_VERSION as ANTHROPIC_VERSION,
    AnthropicMessagesProducer as AnthropicMessagesProducer,
)
from .providers._base import SSEProducer as SSEProducer
from .providers._openai import OpenAIChatProducer as OpenAIChatProducer
from .providers._responses import OpenAIResponsesProducer as OpenAIResponsesProducer
from .providers._sse import (
    SSEDecoder as SSEDecoder,
    SSEEvent as SSEEvent,
    chunk_text as chunk_text,
    openai_chunk as openai_chunk,
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
    "ANTHROPIC_VERSION",
    "DEFAULT_IGNORED_FIELDS",
    "AbandonPolicy",
    "AnthropicMessagesProducer",
    "AsyncCacheTransport",
    "CacheTransport",
    "Chunk",
    "MemoryStore",
    "Mode",
    "OpenAIChatProducer",
    "OpenAIResponsesProducer",
    "Pace",
    "Produce",
    "ResponseCache",
    "ResponseCacheStats",
    "ResponseStore",
    "ResponseStream",
    "SSEDecoder",
    "SSEEvent",
    "SSEProducer",
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
