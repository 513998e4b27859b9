"""The LLM response cache: stream first, cache after.

``ResponseCache`` shares one upstream stream among identical requests in flight, stores whole
answers with their chunk boundaries and replays them. ``OpenAIChatProducer`` streams from an
OpenAI-compatible ``/v1/chat/completions``. ``ResponseStore`` is the seam for another store
of completed answers (``ResponseCache(store=...)``); the shared tier is ``shared=``.
"""

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

__all__ = [
    "DEFAULT_IGNORED_FIELDS",
    "AbandonPolicy",
    "Chunk",
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
