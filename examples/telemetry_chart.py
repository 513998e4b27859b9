"""Draw the caches' telemetry from a real run against the local server, as a PNG.

    pip install 'asyncpromptcache[dev]' matplotlib
    python examples/telemetry_chart.py examples/telemetry.png

Starts the local Langfuse-/OpenAI-compatible server (``examples/prompts``, tokens 5 ms apart),
then for 60 ticks sends a burst of 10 concurrent questions (drawn from 12, the popular ones
most often) through ``AsyncPromptClient`` and ``ResponseCache``, as the FastAPI example
does. Halfway, the ``support`` prompt changes: its cached copy and the cached answers are
dropped, as a template change does. Every figure drawn is read from the OpenTelemetry
metrics the caches export (an SDK ``MeterProvider`` with an in-memory reader), once per tick:
the hit ratio of prompts and answers, the upstream streams started (misses), and the mean
time to first chunk of hits, joins and misses.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import urllib.request
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from asyncpromptcache import AsyncPromptClient, ResponseCache
from asyncpromptcache.response import OpenAIChatProducer
from asyncpromptcache.server import ServerThread

EXAMPLES = Path(__file__).resolve().parent
TICKS, BURST, CHANGE_AT = 60, 10, 30
QUESTIONS = [f"Question {i}: how do I set up feature {i}?" for i in range(12)]
WEIGHTS = [1 / (i + 1) for i in range(len(QUESTIONS))]  # a few popular questions


def read(reader: InMemoryMetricReader) -> dict[tuple[str, str], tuple[float, float]]:
    """``(metric, result) -> (value or sum, count)`` of every point now."""
    points: dict[tuple[str, str], tuple[float, float]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    result = str((point.attributes or {}).get("asyncpromptcache.result", ""))
                    if isinstance(point, HistogramDataPoint):
                        points[metric.name, result] = (point.sum, point.count)
                    elif isinstance(point, NumberDataPoint):
                        points[metric.name, result] = (point.value, 0)
    return points


async def run(base_url: str) -> list[dict[str, Any]]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    rng = random.Random(7)
    ticks = []
    async with AsyncPromptClient(base_url=base_url, env={}, cache_ttl_seconds=60,
                                 meter_provider=meters) as prompts, \
            ResponseCache(meter_provider=meters) as cache, \
            OpenAIChatProducer(base_url=base_url + "/v1", api_key="local") as llm:

        async def ask(question: str) -> None:
            prompt = await prompts.get_prompt("support", type="chat")
            messages = prompt.compile(product="asyncpromptcache", user="a visitor",
                                      history=[], question=question)
            body = {"model": "gpt-4o-mini", "messages": messages, "temperature": 0,
                    "seed": 0, "max_tokens": 60}
            async with cache.stream(body, llm.producer(body)) as answer:
                async for _ in answer:
                    pass

        before = read(reader)
        for tick in range(TICKS):
            if tick == CHANGE_AT:  # a new template: cached prompt and answers are stale
                prompts.invalidate("support")
                await cache.clear()
            burst = rng.choices(QUESTIONS, WEIGHTS, k=BURST)
            await asyncio.gather(*(ask(question) for question in burst))
            now = read(reader)
            ticks.append(_deltas(before, now))
            before = now
        meters.shutdown()
    return ticks


def _deltas(before: dict[tuple[str, str], tuple[float, float]],
            now: dict[tuple[str, str], tuple[float, float]]) -> dict[str, Any]:
    def delta(metric: str, result: str) -> tuple[float, float]:
        value, count = now.get((metric, result), (0.0, 0.0))
        old_value, old_count = before.get((metric, result), (0.0, 0.0))
        return value - old_value, count - old_count

    prompt = {r: delta("asyncpromptcache.prompt.lookups", r)[0]
              for r in ("hit", "stale", "miss")}
    response = {r: delta("asyncpromptcache.response.lookups", r)[0]
                for r in ("hit", "join", "miss")}
    first = {}
    for result in ("hit", "join", "miss"):
        total, count = delta("asyncpromptcache.response.first_chunk.duration", result)
        first[result] = total / count if count else None
    return {"prompt": prompt, "response": response, "first_chunk": first}


def draw(ticks: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(len(ticks)))
    fig, (ratio, misses, first) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for name, served in (("prompt", ("hit", "stale")), ("response", ("hit", "join"))):
        values = []
        for tick in ticks:
            counts = tick[name]
            total = sum(counts.values())
            values.append(sum(counts[r] for r in served) / total if total else None)
        ratio.plot(xs, values, marker=".", label=f"{name} lookups served from cache")
    ratio.set_ylabel("hit ratio")
    ratio.set_ylim(0, 1.05)
    ratio.legend(loc="lower right")
    misses.bar(xs, [tick["response"]["miss"] for tick in ticks], label="response misses "
               "(upstream streams)")
    misses.bar(xs, [tick["prompt"]["miss"] for tick in ticks],
               bottom=[tick["response"]["miss"] for tick in ticks],
               label="prompt misses (calls that waited for a fetch)")
    misses.set_ylabel(f"misses per burst of {BURST}")
    misses.legend(loc="upper right")
    for result in ("miss", "join", "hit"):
        ys = [tick["first_chunk"][result] for tick in ticks]
        first.plot([x for x, y in zip(xs, ys, strict=True) if y is not None],
                   [y * 1000 for y in ys if y is not None], marker=".", linestyle="none",
                   label=result)
    first.set_yscale("log")
    first.set_ylabel("mean time to first chunk (ms)")
    first.set_xlabel(f"burst (10 concurrent questions each); prompt changed at {CHANGE_AT}")
    first.legend(loc="upper right")
    for axis in (ratio, misses, first):
        axis.axvline(CHANGE_AT - 0.5, color="grey", linestyle=":")
    fig.suptitle("asyncpromptcache telemetry, read from its OpenTelemetry metrics")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "telemetry.png")
    with ServerThread(seed_dir=EXAMPLES / "prompts") as server:
        request = urllib.request.Request(
            server.base_url + "/_admin/chat/controls", method="POST",
            data=json.dumps({"token_delay_seconds": 0.005,
                             "first_token_delay_seconds": 0.05}).encode())
        urllib.request.urlopen(request, timeout=5).close()  # loopback only
        ticks = asyncio.run(run(server.base_url))
    draw(ticks, out)
    total = {r: sum(t["response"][r] for t in ticks) for r in ("hit", "join", "miss")}
    print(f"{out}: {len(ticks)} bursts; response lookups {total}")


if __name__ == "__main__":
    main()
