"""Producers for ``ResponseCache.stream``: one module per LLM protocol, over aiohttp, and the
event-stream grammar they share. Their public names are exported from
``asyncpromptcache.response``."""
