"""Cache transports: a ``ResponseCache`` under the official OpenAI and Anthropic SDKs.

``AsyncCacheTransport`` and ``CacheTransport`` are HTTP transports for ``httpx`` and
``httpx2`` clients (one class each, adapting to the request's library). Hand one to an SDK
(``http_client=httpx2.AsyncClient(transport=AsyncCacheTransport())``) and its Chat
Completions, Responses, Anthropic Messages and embeddings calls go through the cache with no
other change: streams replayed byte for byte, identical requests in flight sharing one
upstream stream, errors passed through and never stored. ``_policy`` says what is cached,
under which key, and which request headers steer it.
"""

from ._async import AsyncCacheTransport as AsyncCacheTransport
from ._sync import CacheTransport as CacheTransport

__all__ = ["AsyncCacheTransport", "CacheTransport"]
