"""The contenders, each opened as its users open it and answering ``await get(name)``.

Every peer that fetches gets its prompts from the same upstream (the local server, through its
HTTP API) or, for the memory scenario, from the same in-memory lookup. What each one cannot do
is in ``Peer.lacks``, and goes into the results.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import cachetools

from asyncpromptcache import AsyncPromptClient, FunctionSource, Prompt, PromptKey, parse_prompt
from asyncpromptcache.server import basic_auth_header
from devkit.upstream import PUBLIC_KEY, SECRET_KEY

Get = Callable[[str], Awaitable[Any]]
#: Where a peer's fetches go: the upstream's base URL, or an in-memory ``async (name) -> Prompt``.
Source = str | Callable[[str], Awaitable[Prompt]]

#: The timeout given to the hand-written fetch functions (async_lru, TTLCache): Langfuse's
#: default, and ours. No retries: the usual hand-written fetch has none.
PEER_FETCH_TIMEOUT = 5.0


@dataclass
class Handle:
    """An open contender. ``expires_at(name)``: when the held copy of ``name`` goes stale
    (``time.monotonic()``), for peers whose TTL is not simply "fetched at + ttl"."""

    get: Get
    expires_at: Callable[[str], float | None] = field(default=lambda name: None)


Opener = Callable[[Source, float, int], AbstractAsyncContextManager[Handle]]


@dataclass(frozen=True)
class Peer:
    key: str
    label: str
    open: Opener
    #: What it has no way to do: shown beside its figures.
    lacks: tuple[str, ...] = ()
    how: str = ""
    #: The smallest TTL it supports (Langfuse counts whole seconds).
    min_ttl: float = 0.0
    needs: str | None = None  # the module it needs, when optional

    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


# -- a hand-written fetch, as async_lru and TTLCache users write it ---------------------------


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=PEER_FETCH_TIMEOUT),
        headers={"Authorization": basic_auth_header(PUBLIC_KEY, SECRET_KEY)},
    )


async def fetch_prompt(session: aiohttp.ClientSession, base_url: str, name: str) -> Prompt:
    """``GET /api/public/v2/prompts/{name}`` and the same strict parser our client uses."""
    url = f"{base_url}/api/public/v2/prompts/{quote(name, safe='')}"
    async with session.get(url) as response:
        response.raise_for_status()
        return parse_prompt(await response.json())


@asynccontextmanager
async def _fetcher(source: Source) -> AsyncIterator[Callable[[str], Awaitable[Prompt]]]:
    if not isinstance(source, str):
        yield source
        return
    async with _session() as session:
        yield functools.partial(fetch_prompt, session, source)


# -- ours --------------------------------------------------------------------------------------


@asynccontextmanager
async def open_ours(source: Source, ttl: float, max_size: int) -> AsyncIterator[Handle]:
    if isinstance(source, str):
        client = AsyncPromptClient(
            public_key=PUBLIC_KEY, secret_key=SECRET_KEY, base_url=source,
            cache_ttl_seconds=ttl, max_size=max_size, env={},
        )
    else:
        lookup = source

        async def fetch(key: PromptKey) -> Prompt:
            return await lookup(key.name)

        client = AsyncPromptClient(
            source=FunctionSource(fetch), cache_ttl_seconds=ttl, max_size=max_size, env={},
        )
    async with client:
        yield Handle(client.get_prompt)


# -- async_lru ---------------------------------------------------------------------------------


@asynccontextmanager
async def open_async_lru(source: Source, ttl: float, max_size: int) -> AsyncIterator[Handle]:
    from async_lru import alru_cache

    async with _fetcher(source) as fetch:

        @alru_cache(maxsize=max_size, ttl=ttl)
        async def get_prompt(name: str) -> Prompt:
            return await fetch(name)

        try:
            yield Handle(get_prompt)
        finally:
            await get_prompt.cache_close()


# -- cachetools TTLCache behind an asyncio.Lock -------------------------------------------------


@asynccontextmanager
async def open_ttlcache(source: Source, ttl: float, max_size: int) -> AsyncIterator[Handle]:
    cache: cachetools.TTLCache[str, Prompt] = cachetools.TTLCache(maxsize=max_size, ttl=ttl)
    lock = asyncio.Lock()
    async with _fetcher(source) as fetch:

        async def get_prompt(name: str) -> Prompt:
            async with lock:  # the common pattern: lock, check, fetch on a miss, store
                prompt = cache.get(name)
                if prompt is None:
                    prompt = await fetch(name)
                    cache[name] = prompt
                return prompt

        yield Handle(get_prompt)


# -- Langfuse's Python SDK ----------------------------------------------------------------------


def new_langfuse(base_url: str) -> Any:
    """A Langfuse client with a public key of its own: the SDK keeps one set of resources
    (prompt cache included) per public key per process."""
    from langfuse import Langfuse

    return Langfuse(
        public_key=f"pk-lf-bench-{uuid.uuid4().hex[:12]}", secret_key=SECRET_KEY,
        base_url=base_url, tracing_enabled=False,
    )


@asynccontextmanager
async def open_langfuse(source: Source, ttl: float, max_size: int) -> AsyncIterator[Handle]:
    """Its cached ``get_prompt`` is sync: async code calls it through ``asyncio.to_thread``."""
    from langfuse._utils.prompt_cache import PromptCache

    if not isinstance(source, str):
        raise TypeError("the Langfuse SDK fetches only over HTTP")
    langfuse = new_langfuse(source)
    try:
        get_prompt = functools.partial(langfuse.get_prompt, cache_ttl_seconds=max(1, round(ttl)))

        def expires_at(name: str) -> float | None:
            # Stale once int(time.time()) > item._expiry (whole epoch seconds).
            key = PromptCache.generate_cache_key(name, version=None, label=None)
            item = langfuse._resources.prompt_cache.get(key)
            if item is None:
                return None
            expiry: float = item._expiry
            return time.monotonic() + (expiry + 1 - time.time())

        yield Handle(functools.partial(asyncio.to_thread, get_prompt), expires_at)
    finally:
        await asyncio.to_thread(langfuse.shutdown)


# -- LangSmith's prompt cache --------------------------------------------------------------------


def _langsmith_client_class(fetch: Callable[[Any, str], Awaitable[Prompt]]) -> Any:
    """LangSmith's ``AsyncClient`` with the one method that requests a prompt replaced.

    Its own fetch GETs ``/commits/{owner}/{repo}/{hash}`` from LangSmith's API and parses a
    ``PromptCommit``: it cannot talk to a Langfuse-shaped server. Everything else is
    LangSmith's: ``pull_prompt_commit``, its prompt cache (``AsyncPromptCache``), and for HTTP
    its ``_arequest_with_retries`` (httpx, its timeout and retries).
    """
    langsmith = importlib.import_module("langsmith")
    utils = importlib.import_module("langsmith.utils")

    async def _afetch_prompt_from_api(
        self: Any, prompt_identifier: str, include_model: bool | None = False
    ) -> Prompt:
        _, name, _ = utils.parse_prompt_identifier(prompt_identifier)
        return await fetch(self, name)

    return type("LangSmithOnLangfuse", (langsmith.AsyncClient,), {
        "_afetch_prompt_from_api": _afetch_prompt_from_api,
    })


async def _langsmith_http_fetch(client: Any, name: str) -> Prompt:
    response = await client._arequest_with_retries("GET", f"/prompts/{quote(name, safe='')}")
    return parse_prompt(response.json())


@asynccontextmanager
async def open_langsmith(source: Source, ttl: float, max_size: int) -> AsyncIterator[Handle]:
    cache_module = importlib.import_module("langsmith.prompt_cache")
    # Its cache is a process-wide singleton, configured as its docs say.
    await cache_module.configure_global_async_prompt_cache(
        max_size=max_size, ttl_seconds=ttl, refresh_interval_seconds=min(ttl, 60.0),
    )
    singleton = cache_module.async_prompt_cache_singleton
    singleton.clear()
    if isinstance(source, str):
        cls = _langsmith_client_class(_langsmith_http_fetch)
        client = cls(api_url=source + "/api/public/v2", api_key="lsv2-bench")
    else:
        lookup = source

        async def fetch(_: Any, name: str) -> Prompt:
            return await lookup(name)

        client = _langsmith_client_class(fetch)(api_url="http://127.0.0.1:9", api_key="lsv2-bench")
    try:
        async with client:
            yield Handle(client.pull_prompt_commit)
    finally:
        singleton.clear()


# -- the floor ---------------------------------------------------------------------------------


def floor_handle(prompts: dict[str, Any]) -> Handle:
    """An ``async def`` doing one ``dict.get``: no cache answers an awaited call for less."""

    async def floor(name: str) -> Any:
        return prompts.get(name)

    return Handle(floor)


# -- the roster --------------------------------------------------------------------------------

OURS = Peer(
    "ours", "asyncpromptcache AsyncPromptClient", open_ours,
    how="`await client.get_prompt(name)`",
)
LANGFUSE = Peer(
    "langfuse", "Langfuse SDK get_prompt (to_thread)", open_langfuse,
    lacks=(
        "sync only: async callers go through asyncio.to_thread (the loop's default executor, "
        "min(32, cores + 4) threads)",
        "no single-flight for cold misses: every thread that misses fetches",
        "TTL in whole seconds, checked against int(epoch seconds): a 1 s TTL lasts 1-2 s",
        "retries every error, 404 included (3 tries, 1 s apart)",
    ),
    how="`await asyncio.to_thread(langfuse.get_prompt, name, cache_ttl_seconds=ttl)`, one "
        "`Langfuse(...)` per run with its own public key, `.shutdown()` after",
    min_ttl=1.0, needs="langfuse",
)
LANGSMITH = Peer(
    "langsmith", "LangSmith AsyncClient.pull_prompt_commit", open_langsmith,
    lacks=(
        "cannot fetch from a Langfuse-shaped server: its AsyncClient GETs "
        "/commits/{owner}/{repo}/{hash}; driven here with that one request method replaced",
        "no single-flight: every caller that misses fetches",
        "refreshes stale entries from a periodic loop (every refresh_interval_seconds), one "
        "after another",
        "one process-wide cache (configure_global_async_prompt_cache)",
    ),
    how="`await client.pull_prompt_commit(name)` on LangSmith's AsyncClient (its global "
        "AsyncPromptCache, ttl_seconds=ttl, refresh_interval_seconds=min(ttl, 60)), its "
        "private `_afetch_prompt_from_api` replaced by a GET of the Langfuse route through its "
        "own `_arequest_with_retries`",
    needs="langsmith",
)
ASYNC_LRU = Peer(
    "async_lru", "async_lru @alru_cache(ttl=)", open_async_lru,
    lacks=(
        "no stale-while-revalidate: an entry is dropped at its TTL and the next caller waits "
        "for the fetch",
        "no stale-if-error: a failed fetch raises to every caller waiting on it",
    ),
    how="`@alru_cache(maxsize=..., ttl=ttl)` over an aiohttp fetch (5 s timeout, no retries)",
    needs="async_lru",
)
TTLCACHE = Peer(
    "ttlcache", "cachetools TTLCache + asyncio.Lock", open_ttlcache,
    lacks=(
        "no stale-while-revalidate: an expired entry is gone and the caller waits for the fetch",
        "no stale-if-error",
        "one lock for every key: fetches of different keys run one after another",
    ),
    how="`async with lock: cache.get(name)`, on a miss fetch (aiohttp, 5 s timeout, no "
        "retries) and store",
)

FETCHING_PEERS: tuple[Peer, ...] = (OURS, LANGFUSE, LANGSMITH, ASYNC_LRU, TTLCACHE)


def available(peers: tuple[Peer, ...]) -> tuple[Peer, ...]:
    return tuple(peer for peer in peers if peer.available())
