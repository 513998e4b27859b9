"""OpenTelemetry: the metrics and spans of the prompt client and the response cache, read
through the SDK's in-memory reader and span exporter; the package without the API; the
rate-limited warning of rejected Redis content."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from asyncpromptcache import (
    AsyncPromptClient,
    FetchError,
    PromptClient,
    ResponseCache,
    ResponseFailedError,
    TextPrompt,
)
from asyncpromptcache._core.logs import RateLimitedLog
from asyncpromptcache.response import Chunk
from asyncpromptcache.testing import FakeClock, StaticSource

from .helpers import fleet, until as wait_until


class Telemetry:
    """An SDK meter provider with an in-memory reader, and a tracer provider whose spans
    are kept in memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))

    @property
    def providers(self) -> dict[str, Any]:
        return {"meter_provider": self.meter_provider, "tracer_provider": self.tracer_provider}

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        found: list[Any] = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "asyncpromptcache"
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def by(self, name: str, key: str) -> dict[str, Any]:
        return {point.attributes[key]: point.value for point in self.points(name)}

    def finished(self, name: str) -> list[Any]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]


def prompt(name: str, version: int = 1) -> TextPrompt:
    return TextPrompt(name=name, version=version, prompt="hi {{x}}", labels=["production"])


@pytest.mark.anyio
async def test_prompt_lookups_equal_stats_and_every_fetch_has_a_span() -> None:
    otel = Telemetry()
    clock = FakeClock()
    names = [f"p{i}" for i in range(5)]
    source = StaticSource([prompt(name) for name in names])
    tracer = otel.tracer_provider.get_tracer("app")
    async with AsyncPromptClient(source=source, cache_ttl_seconds=60, clock=clock, env={},
                                 **otel.providers) as client:
        with tracer.start_as_current_span("request") as request:
            for name in names:  # 5 cold fetches
                await client.get_prompt(name)
        for i in range(1000):
            await client.get_prompt(names[i % 5])
        clock.advance(61)
        await client.get_prompt("p0")  # stale: served at once, refreshed behind
        await wait_until(lambda: client.stats().in_flight == 0)
        source.fail_with = FetchError("the upstream is down", name="gone")
        with pytest.raises(FetchError):
            await client.get_prompt("gone")  # a failed fetch
        stats = client.stats()
        lookups = otel.by("asyncpromptcache.prompt.lookups", "asyncpromptcache.result")
        assert lookups == {"hit": stats.hits, "stale": stats.stale_hits, "miss": stats.misses,
                           "negative": stats.negative_hits, "fallback": stats.fallbacks}
        assert (stats.hits, stats.stale_hits, stats.misses) == (1000, 1, 6)
        # Equal at every collection, not only the first.
        await client.get_prompt("p0")  # refreshed: fresh again
        assert otel.by("asyncpromptcache.prompt.lookups",
                       "asyncpromptcache.result")["hit"] == client.stats().hits == 1001
        assert [p.value for p in otel.points("asyncpromptcache.prompt.entries")] == [5]

    spans = otel.finished("asyncpromptcache.prompt.fetch")
    assert len(spans) == stats.fetches + stats.refreshes == 7
    kinds = sorted(span.attributes["asyncpromptcache.kind"] for span in spans)
    assert kinds == ["fetch"] * 6 + ["refresh"]
    failed = [span for span in spans if span.status.status_code is StatusCode.ERROR]
    assert [span.attributes["asyncpromptcache.prompt.name"] for span in failed] == ["gone"]
    assert failed[0].attributes["asyncpromptcache.outcome"] == "error"
    assert "the upstream is down" not in (failed[0].status.description or "")
    assert all(span.attributes["asyncpromptcache.prompt.label"] == "production"
               for span in spans)
    # The cold fetches are children of the caller's span.
    cold = [span for span in spans if span.attributes["asyncpromptcache.prompt.name"]
            in names and span.attributes["asyncpromptcache.kind"] == "fetch"]
    assert len(cold) == 5
    assert {span.parent.span_id for span in cold} == {request.get_span_context().span_id}
    durations = {(tuple(sorted(point.attributes.items())), point.count)
                 for point in otel.points("asyncpromptcache.prompt.fetch.duration")}
    assert durations == {
        ((("asyncpromptcache.kind", "fetch"), ("asyncpromptcache.outcome", "ok")), 5),
        ((("asyncpromptcache.kind", "refresh"), ("asyncpromptcache.outcome", "ok")), 1),
        ((("asyncpromptcache.kind", "fetch"), ("asyncpromptcache.outcome", "error")), 1),
    }


@pytest.mark.anyio
async def test_a_version_and_a_missing_prompt_and_a_fallback() -> None:
    otel = Telemetry()
    async with AsyncPromptClient(source=StaticSource([prompt("a", 3)]), cache_ttl_seconds=60,
                                 env={}, **otel.providers) as client:
        await client.get_prompt("a", version=3)
        with pytest.raises(FetchError):
            await client.get_prompt("nope")
        with pytest.raises(FetchError):
            await client.get_prompt("nope")  # answered from the negative cache
        await client.get_prompt("other", type="text", fallback="hello")
        stats = client.stats()
        lookups = otel.by("asyncpromptcache.prompt.lookups", "asyncpromptcache.result")
        assert lookups["negative"] == stats.negative_hits == 1
        assert lookups["fallback"] == stats.fallbacks == 1
        assert lookups["miss"] == stats.misses
    spans = {span.attributes["asyncpromptcache.prompt.name"]: span
             for span in otel.finished("asyncpromptcache.prompt.fetch")}
    assert spans["a"].attributes["asyncpromptcache.prompt.version"] == 3
    assert "asyncpromptcache.prompt.label" not in spans["a"].attributes
    assert spans["nope"].attributes["asyncpromptcache.outcome"] == "not_found"
    assert spans["nope"].status.status_code is StatusCode.ERROR


def test_the_sync_client_counts_its_own_hits() -> None:
    otel = Telemetry()
    with PromptClient(source=StaticSource([prompt("a")]), cache_ttl_seconds=60, env={},
                      **otel.providers) as client:
        for _ in range(10):
            client.get_prompt("a")
        lookups = otel.by("asyncpromptcache.prompt.lookups", "asyncpromptcache.result")
        assert lookups["hit"] == client.stats().hits == 9
        assert lookups["miss"] == 1


REQUEST: dict[str, Any] = {"model": "gpt-4o-mini", "temperature": 0,
                           "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.anyio
async def test_one_stream_span_for_ten_identical_streams_and_their_joins() -> None:
    otel = Telemetry()
    gate = anyio.Event()
    calls = 0

    async def produce() -> AsyncIterator[Chunk]:
        nonlocal calls
        calls += 1
        await gate.wait()
        for word in ("a", "b", "c"):
            yield word

    started = 0

    async def consume(cache: ResponseCache) -> None:
        nonlocal started
        async with cache.stream(REQUEST, produce) as answer:
            started += 1
            assert [chunk async for chunk in answer] == ["a", "b", "c"]

    tracer = otel.tracer_provider.get_tracer("app")
    async with ResponseCache(clock=FakeClock(), **otel.providers) as cache:
        with tracer.start_as_current_span("request") as request:
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(consume, cache)
                await wait_until(lambda: started == 10)
                gate.set()
        for _ in range(3):
            answer = cache.stream(REQUEST, produce)
            assert [chunk async for chunk in answer] == ["a", "b", "c"]
            assert answer.source == "hit"
        stats = cache.stats()
        lookups = otel.by("asyncpromptcache.response.lookups", "asyncpromptcache.result")
        assert lookups == {"miss": 1, "join": 9, "hit": 3, "bypass": 0}
        assert (stats.misses, stats.joins, stats.hits) == (1, 9, 3)
        first = {point.attributes["asyncpromptcache.result"]: point.count
                 for point in otel.points("asyncpromptcache.response.first_chunk.duration")}
        assert first == {"miss": 1, "join": 9, "hit": 3}  # 13 points, one per consumer
        stored = otel.points("asyncpromptcache.response.stored.bytes")
        assert [point.value for point in stored] == [stats.bytes] and stats.bytes > 0
    assert calls == 1
    spans = otel.finished("asyncpromptcache.response.stream")
    assert len(spans) == 1
    span = spans[0]
    assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["asyncpromptcache.response.chunks"] == 3
    assert span.attributes["asyncpromptcache.outcome"] == "ok"
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id


@pytest.mark.anyio
async def test_a_failed_stream_span_is_an_error() -> None:
    otel = Telemetry()

    async def produce() -> AsyncIterator[Chunk]:
        yield "a"
        raise RuntimeError("secret upstream echo")

    async with ResponseCache(**otel.providers) as cache:
        with pytest.raises(ResponseFailedError):
            async for _ in cache.stream(REQUEST, produce):
                pass
    (span,) = otel.finished("asyncpromptcache.response.stream")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["asyncpromptcache.outcome"] == "error"
    assert span.attributes["asyncpromptcache.response.chunks"] == 1
    assert "secret upstream echo" not in (span.status.description or "")


def test_the_package_needs_no_opentelemetry() -> None:
    code = """
import sys
sys.modules["opentelemetry"] = None  # as if it were not installed
import asyncpromptcache
from asyncpromptcache import AsyncPromptClient, ConfigurationError, ResponseCache
from asyncpromptcache.testing import StaticSource
client = AsyncPromptClient(source=StaticSource(), env={})
assert client._telemetry is None
assert ResponseCache()._telemetry is None
try:
    AsyncPromptClient(source=StaticSource(), env={}, meter_provider=object())
except ConfigurationError as exc:
    assert "asyncpromptcache[otel]" in str(exc)
else:
    raise AssertionError("no error")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_flood_of_rejections_is_logged_once_per_interval_with_the_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = RateLimitedLog(logging.getLogger("asyncpromptcache"), interval_seconds=60,
                         clock=clock)
    with caplog.at_level(logging.WARNING, logger="asyncpromptcache"):
        for i in range(20_000):
            log.warning("ignored a change message: %s", f"bad signature {i}")
        assert len(caplog.records) == 1
        assert caplog.records[0].getMessage() == "ignored a change message: bad signature 0"
        clock.advance(60)
        log.warning("ignored a change message: %s", "again")
        assert len(caplog.records) == 2
        assert caplog.records[1].getMessage() == (
            "ignored a change message: again (and 19999 more like it in the last 60s, "
            "not logged)")
        clock.advance(61)
        log.warning("ignored a change message: %s", "later")
        assert caplog.records[2].getMessage() == "ignored a change message: later"


def test_the_example_app_serves_its_metrics_at_slash_metrics() -> None:
    """The FastAPI example under uvicorn, against the local server, read as curl would."""
    import uvicorn

    from asyncpromptcache.server import ServerThread

    examples = Path(__file__).resolve().parent.parent / "examples"
    spec = importlib.util.spec_from_file_location("examples_fastapi_metrics",
                                                  examples / "fastapi_app.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ServerThread(seed_dir=examples / "prompts") as upstream:
        app = example.create_app(prompt_base_url=upstream.base_url,
                                 llm_base_url=upstream.base_url + "/v1", env={})
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ws="none",
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            for _ in range(500):  # a safety bound only
                if server.started:
                    break
                time.sleep(0.01)
            assert server.started
            base = f"http://127.0.0.1:{port}"
            caches = []
            for _ in range(3):
                with urllib.request.urlopen(base + "/ask/stream?q=hi", timeout=10) as answer:
                    caches.append(answer.headers["X-Cache"])
                    answer.read()
            with urllib.request.urlopen(base + "/metrics", timeout=10) as page:
                content_type = page.headers["Content-Type"]
                text = page.read().decode()
        finally:
            server.should_exit = True
            thread.join(10)
    assert caches == ["miss", "hit", "hit"]
    assert content_type.startswith("text/plain")
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            # The exporter labels every sample with the instrument scope too.
            name = re.sub(r',?otel_scope_\w+="[^"]*"', "", name).replace("{,", "{")
            samples[name.removesuffix("{}")] = float(value)
    assert 'otel_scope_name="asyncpromptcache"' in text
    assert samples['asyncpromptcache_prompt_lookups_total{asyncpromptcache_result="hit"}'] == 2
    assert samples['asyncpromptcache_prompt_lookups_total{asyncpromptcache_result="miss"}'] == 1
    assert samples['asyncpromptcache_response_lookups_total{asyncpromptcache_result="miss"}'] == 1
    assert samples['asyncpromptcache_response_lookups_total{asyncpromptcache_result="hit"}'] == 2
    assert samples["asyncpromptcache_prompt_entries"] == 1
    assert samples["asyncpromptcache_response_stored_bytes"] > 0
    assert samples["asyncpromptcache_prompt_fetch_duration_seconds_count{"
                   'asyncpromptcache_kind="fetch",asyncpromptcache_outcome="ok"}'] == 1
    # Every series the Grafana dashboard queries is one the app exports (the shared tier's
    # appear with a shared tier only).
    dashboard = json.loads((examples / "grafana_dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"asyncpromptcache_\w+", target["expr"])} - {
                   f"asyncpromptcache_{label}" for label in ("result", "outcome", "kind", "tier")}
    exported = {name.split("{")[0] for name in samples}
    assert queried - exported == {"asyncpromptcache_shared_up",
                                  "asyncpromptcache_shared_errors_total"}
    first = {name: value for name, value in samples.items()
             if name.startswith("asyncpromptcache_response_first_chunk_duration_seconds_count")}
    assert sum(first.values()) == 3


# -- with a shared tier on a real redis-server ----------------------------------------------


@pytest.mark.anyio
async def test_a_flood_of_forged_change_messages_is_one_warning_line(
        redis_url: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.asyncio import Redis

    from asyncpromptcache._prompts import shared as redis_module
    from asyncpromptcache._prompts.shared_format import Names, namespace_id

    # A fresh limiter: another test's rejection in the last minute must not hide this one.
    monkeypatch.setattr(redis_module, "_rejected", RateLimitedLog(redis_module.logger))
    otel = Telemetry()
    forged = json.dumps({"v": 1, "kind": "clear", "origin": "x", "keys": [], "names": []})
    channel = Names(namespace_id("test", "https://cloud.langfuse.com", None)).channel
    async with fleet(redis_url, prompt("a")) as f:
        client = await f.client(signing_key="k", **otel.providers)
        await client.get_prompt("a")
        with caplog.at_level(logging.WARNING, logger="asyncpromptcache"):
            raw = Redis.from_url(redis_url)
            try:
                async with raw.pipeline(transaction=False) as pipe:
                    for _ in range(20_000):
                        pipe.publish(channel, forged)
                    await pipe.execute()
            finally:
                await raw.aclose()
            await wait_until(lambda: shared(client).rejected_values == 20_000, limit=60)
        lines = [r for r in caplog.records if "ignored a change message" in r.getMessage()]
        assert len(lines) == 1
        assert otel.by("asyncpromptcache.shared.up", "asyncpromptcache.tier") == {"prompt": 1}
        errors = otel.by("asyncpromptcache.shared.errors", "asyncpromptcache.tier")
        assert errors == {"prompt": shared(client).redis_errors} == {"prompt": 0}


def shared(client: AsyncPromptClient) -> Any:
    stats = client.stats().shared
    assert stats is not None
    return stats


def test_the_global_providers_count_clients_made_before_and_after_the_sdk_is_set() -> None:
    # In a child process: the global providers can be set once per process.
    code = """
import asyncio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from asyncpromptcache import AsyncPromptClient, TextPrompt
from asyncpromptcache.testing import StaticSource

source = StaticSource([TextPrompt(name="a", version=1, prompt="x", labels=["production"])])

async def main():
    before = AsyncPromptClient(source=source, cache_ttl_seconds=60, env={})
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracing)
    after = AsyncPromptClient(source=source, cache_ttl_seconds=60, env={})
    async with before, after:
        for client in (before, after, after):
            await client.get_prompt("a")
            await client.get_prompt("a")
        hits = before.stats().hits + after.stats().hits
    (metric,) = [m for r in reader.get_metrics_data().resource_metrics
                 for s in r.scope_metrics for m in s.metrics
                 if m.name == "asyncpromptcache.prompt.lookups"]
    counted = {p.attributes["asyncpromptcache.result"]: p.value
               for p in metric.data.data_points}
    print(counted["hit"], hits, counted["miss"], len(spans.get_finished_spans()))

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "created already" not in done.stderr  # one set of instruments
    assert done.stdout.split() == ["4", "4", "2", "2"]
