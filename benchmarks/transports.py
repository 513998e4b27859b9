"""The cache transports under the official OpenAI SDK (``AsyncOpenAI`` on httpx2).

1. Fan-out: ``--callers`` identical concurrent streaming ``chat.completions.create`` calls
   against the local server (a thread of its own, with a first-token delay and a delay per
   token): the upstream streams made, the first-chunk time of the caller that went upstream
   and of the joiners; beside the same calls without a cache and through hishel's transport.
2. A hit through the SDK against its floor: the same streaming call (52 events) answered by
   ``httpx2.MockTransport`` from the same bytes, and a whole (non-streaming) answer likewise.
   Median per call of ``--calls`` calls of each, in turn, and the ratio (target: within
   1.5x).

Run: ``python -m benchmarks.transports [--callers 100] [--calls 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.request
from typing import Any

import httpx2
from openai import AsyncOpenAI

from asyncpromptcache.response import AsyncCacheTransport
from asyncpromptcache.server import ServerThread

MESSAGES: Any = [{"role": "user", "content": "What does the cache do?"}]
# 50 tokens: the role chunk, 50 token chunks and the finish chunk make 52 events.
CALL: dict[str, Any] = {"model": "m", "temperature": 0, "messages": MESSAGES, "max_tokens": 50}


def admin(base_url: str, route: str, body: dict[str, Any] | None = None,
          method: str = "POST") -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base_url}/_admin/chat/{route}", data=data,
                                     method=method,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


async def fan_out(base_url: str, callers: int, transport: Any) -> dict[str, Any]:
    admin(base_url, "requests", method="DELETE")
    client = AsyncOpenAI(base_url=base_url + "/v1", api_key="k", max_retries=0,
                         http_client=httpx2.AsyncClient(transport=transport,
                                                        timeout=60))
    firsts: list[tuple[str, float]] = []
    start = time.perf_counter()

    async def one() -> None:
        stream = await client.chat.completions.create(**CALL, stream=True)
        source = stream.response.headers.get("x-cache", "-")
        first: float | None = None
        async for _chunk in stream:
            if first is None:
                first = time.perf_counter() - start
        assert first is not None
        firsts.append((source, first))

    await asyncio.gather(*(one() for _ in range(callers)))
    await client.close()
    upstream = admin(base_url, "requests", method="GET")["streams"]
    miss = [t for s, t in firsts if s in ("miss", "-", "bypass")]
    joins = sorted(t for s, t in firsts if s == "join")
    return {
        "upstream_streams": upstream,
        "first_chunk_first_caller_ms": round(min(miss or [t for _, t in firsts]) * 1e3, 1),
        "first_chunk_joiners_p50_ms": round(statistics.median(joins) * 1e3, 1) if joins
        else None,
        "first_chunk_joiners_max_ms": round(joins[-1] * 1e3, 1) if joins else None,
        "first_chunk_all_p50_ms": round(statistics.median(t for _, t in firsts) * 1e3, 1),
    }


async def one_call(client: AsyncOpenAI, stream: bool) -> float:
    """Seconds of one call (the stream read to its end)."""
    began = time.perf_counter()
    if stream:
        async for _chunk in await client.chat.completions.create(**CALL, stream=True):
            pass
    else:
        await client.chat.completions.create(**CALL)
    return time.perf_counter() - began


async def interleaved(ours: AsyncOpenAI, floor: AsyncOpenAI, calls: int,
                      stream: bool) -> tuple[float, float]:
    """Median seconds of a call of each, called in turn (a loaded machine slows both)."""
    mine: list[float] = []
    base: list[float] = []
    for _ in range(calls):
        mine.append(await one_call(ours, stream))
        base.append(await one_call(floor, stream))
    return statistics.median(mine), statistics.median(base)


async def hit_against_floor(base_url: str, calls: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for stream in (True, False):
        transport = AsyncCacheTransport()
        client = AsyncOpenAI(base_url=base_url + "/v1", api_key="k", max_retries=0,
                             http_client=httpx2.AsyncClient(transport=transport))
        extra: dict[str, Any] = {"stream": True} if stream else {}  # as one_call() sends it
        raw = await client.chat.completions.with_raw_response.create(**CALL, **extra)
        body = await raw.http_response.aread()
        headers = {"content-type": raw.headers["content-type"]}
        await transport.cache.drain()

        def answer(request: httpx2.Request, body: bytes = body,
                   headers: dict[str, str] = headers) -> httpx2.Response:
            return httpx2.Response(200, headers=headers, content=body)

        floor = AsyncOpenAI(base_url=base_url + "/v1", api_key="k", max_retries=0,
                            http_client=httpx2.AsyncClient(
                                transport=httpx2.MockTransport(answer)))
        await interleaved(client, floor, 50, stream)  # warm both
        ours, base = await interleaved(client, floor, calls, stream)
        stats = transport.cache.stats()
        assert stats.misses == 1, stats
        name = "stream_52_events" if stream else "whole_answer"
        results[name] = {"hit_us": round(ours * 1e6, 1), "floor_us": round(base * 1e6, 1),
                         "ratio": round(ours / base, 2)}
        await client.close()
        await floor.close()
    return results


def hishel_transport() -> Any:
    try:
        import hishel
        from hishel.httpx2 import AsyncCacheTransport as HishelTransport
    except ImportError:
        return None
    return HishelTransport(httpx2.AsyncHTTPTransport(),
                           storage=hishel.AsyncSqliteStorage(database_path=":memory:"))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with ServerThread() as server:
        base_url = server.base_url
        admin(base_url, "controls", {"first_token_delay_seconds": 0.05,
                                     "token_delay_seconds": 0.002})
        report["fan_out_no_cache"] = await fan_out(base_url, args.callers,
                                                   httpx2.AsyncHTTPTransport())
        async with AsyncCacheTransport() as ours:
            report["fan_out_cache_transport"] = await fan_out(base_url, args.callers, ours)
        hishel = hishel_transport()
        if hishel is not None:
            report["fan_out_hishel"] = await fan_out(base_url, args.callers, hishel)
        admin(base_url, "controls", {"first_token_delay_seconds": 0,
                                     "token_delay_seconds": 0})
        report["hit_vs_mock_transport_floor"] = await hit_against_floor(base_url, args.calls)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--calls", type=int, default=2000)
    print(json.dumps(asyncio.run(main_async(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
