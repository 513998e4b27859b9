"""OpenTelemetry metrics and spans, through the API only (the application configures an SDK).

Counters and gauges are observable instruments: at each collection they read the counts the
caches keep anyway, so a fresh hit does no more work with telemetry on than off. Durations
and spans are recorded on the fetch and upstream-stream paths only.

Instruments are made once per meter provider (an SDK keeps the first instrument of a name and
drops the callbacks of any later one) and sum the observations of every live client or cache
that uses the provider. A client or cache that is garbage collected stops counting: its
counters then drop, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from .._core.errors import PromptNotFoundError
from .._tiers.redis.stats import SharedStats

__all__ = ["PromptTelemetry", "ResponseTelemetry"]

SCOPE = "asyncpromptcache"
RESULT, OUTCOME, KIND, TIER = ("asyncpromptcache.result", "asyncpromptcache.outcome",
                               "asyncpromptcache.kind", "asyncpromptcache.tier")
PROMPT_RESULTS = ("hit", "stale", "miss", "negative", "fallback")
RESPONSE_RESULTS = ("hit", "miss", "join", "bypass")
# Seconds: a cached answer's first chunk comes in microseconds, an upstream's in seconds.
_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0)

PromptRead = Callable[[], tuple[dict[str, int], int, SharedStats | None]]


class _Instruments:
    """The instruments of one meter provider and the live telemetry objects they read."""

    def __init__(self, provider: Any) -> None:
        meter = metrics.get_meter(SCOPE, meter_provider=provider)
        self.lock = threading.Lock()
        self.prompts: weakref.WeakSet[PromptTelemetry] = weakref.WeakSet()
        self.responses: weakref.WeakSet[ResponseTelemetry] = weakref.WeakSet()
        meter.create_observable_counter(
            "asyncpromptcache.prompt.lookups", [self._prompt_lookups], unit="{lookup}",
            description="get_prompt calls by what answered them (stale: served past its TTL; "
                        "miss: waited for a fetch; negative: a recent failure raised again)")
        meter.create_observable_gauge(
            "asyncpromptcache.prompt.entries", [self._prompt_entries], unit="{prompt}",
            description="Prompts held in the in-process cache")
        meter.create_observable_counter(
            "asyncpromptcache.response.lookups", [self._response_lookups], unit="{lookup}",
            description="Response streams by source (join: shared a stream in flight)")
        meter.create_observable_gauge(
            "asyncpromptcache.response.stored.bytes", [self._response_bytes], unit="By",
            description="Bytes of answers held in the in-process response store")
        meter.create_observable_gauge(
            "asyncpromptcache.shared.up", [self._shared_up], unit="1",
            description="1 while the shared tier (Redis) answers, else 0")
        meter.create_observable_counter(
            "asyncpromptcache.shared.errors", [self._shared_errors], unit="{error}",
            description="Redis commands of the shared tier that failed")
        self.fetch_duration = meter.create_histogram(
            "asyncpromptcache.prompt.fetch.duration", unit="s",
            description="Upstream prompt fetches and refreshes",
            explicit_bucket_boundaries_advisory=_BUCKETS)
        self.first_chunk = meter.create_histogram(
            "asyncpromptcache.response.first_chunk.duration", unit="s",
            description="From a consumer's start to its first chunk, by source",
            explicit_bucket_boundaries_advisory=_BUCKETS)

    def live(self, group: weakref.WeakSet[Any]) -> list[Any]:
        with self.lock:
            return list(group)

    def _prompt_reads(self) -> list[tuple[dict[str, int], int, SharedStats | None]]:
        return [one.read() for one in self.live(self.prompts)]

    def _prompt_lookups(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = dict.fromkeys(PROMPT_RESULTS, 0)
        for counts, _, _ in self._prompt_reads():
            for result in PROMPT_RESULTS:
                totals[result] += counts[result]
        return [Observation(count, {RESULT: result}) for result, count in totals.items()]

    def _prompt_entries(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(entries for _, entries, _ in self._prompt_reads()))]

    def _response_stats(self) -> list[Any]:
        return [one.read() for one in self.live(self.responses)]

    def _response_lookups(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = dict.fromkeys(RESPONSE_RESULTS, 0)
        for stats in self._response_stats():
            totals["hit"] += stats.hits
            totals["miss"] += stats.misses
            totals["join"] += stats.joins
            totals["bypass"] += stats.bypasses
        return [Observation(count, {RESULT: result}) for result, count in totals.items()]

    def _response_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(stats.bytes for stats in self._response_stats()))]

    def _shared(self) -> dict[str, list[SharedStats]]:
        tiers: dict[str, list[SharedStats]] = {"prompt": [], "response": []}
        for _, _, shared in self._prompt_reads():
            if shared is not None:
                tiers["prompt"].append(shared)
        for stats in self._response_stats():
            if stats.shared is not None:
                tiers["response"].append(stats.shared)
        return tiers

    def _shared_up(self, options: CallbackOptions) -> Iterable[Observation]:
        # Up when every client's link of the tier is up: one down link is an outage to see.
        return [Observation(int(all(s.state == "up" for s in shared)), {TIER: tier})
                for tier, shared in self._shared().items() if shared]

    def _shared_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(s.redis_errors for s in shared), {TIER: tier})
                for tier, shared in self._shared().items() if shared]


_by_provider: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_global: _Instruments | None = None
_registry_lock = threading.Lock()


def _instruments(meter_provider: Any) -> _Instruments:
    """The instruments of ``meter_provider``; of the global provider when ``None``, made once
    whether the application sets its SDK before or after (the API's proxy forwards them)."""
    global _global
    with _registry_lock:
        if meter_provider is None or meter_provider is metrics.get_meter_provider():
            if _global is None:
                _global = _Instruments(None)
            return _global
        found = _by_provider.get(meter_provider)
        if found is None:
            found = _by_provider[meter_provider] = _Instruments(meter_provider)
        return found


def _outcome(exc: BaseException) -> str:
    return "not_found" if isinstance(exc, PromptNotFoundError) else "error"


def _failed(span: trace.Span, exc: BaseException) -> None:
    # The type only: an error's message may echo what the upstream sent.
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class PromptTelemetry:
    """A prompt client's spans and fetch durations, and what its counters read."""

    def __init__(self, meter_provider: Any, tracer_provider: Any, read: PromptRead) -> None:
        self._read = read
        #: Hits counted outside the client (the sync facade's own hit path).
        self.extra_hits: Callable[[], int] | None = None
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._instruments = _instruments(meter_provider)
        self._duration = self._instruments.fetch_duration
        with self._instruments.lock:
            self._instruments.prompts.add(self)

    def read(self) -> tuple[dict[str, int], int, SharedStats | None]:
        counts, entries, shared = self._read()
        if self.extra_hits is not None:
            counts = {**counts, "hit": counts["hit"] + self.extra_hits()}
        return counts, entries, shared

    async def fetch(self, key: Hashable, fetch: Callable[[], Awaitable[Any]],
                    is_refresh: bool) -> Any:
        """``await fetch()`` in an ``asyncpromptcache.prompt.fetch`` span, timed."""
        kind = "refresh" if is_refresh else "fetch"
        attributes: dict[str, Any] = {KIND: kind}
        if isinstance(key, tuple) and len(key) == 3:
            name, label, version = key
            attributes["asyncpromptcache.prompt.name"] = str(name)
            if version is not None:
                attributes["asyncpromptcache.prompt.version"] = int(version)
            elif label is not None:
                attributes["asyncpromptcache.prompt.label"] = str(label)
        outcome = "ok"
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
                "asyncpromptcache.prompt.fetch", kind=SpanKind.CLIENT, attributes=attributes,
                record_exception=False, set_status_on_exception=False) as span:
            try:
                return await fetch()
            except BaseException as exc:
                outcome = _outcome(exc) if isinstance(exc, Exception) else "cancelled"
                _failed(span, exc)
                raise
            finally:
                span.set_attribute(OUTCOME, outcome)
                if outcome != "cancelled":
                    self._duration.record(time.perf_counter() - started,
                                          {OUTCOME: outcome, KIND: kind})


class ResponseTelemetry:
    """A response cache's stream spans and first-chunk times, and what its counters read."""

    def __init__(self, meter_provider: Any, tracer_provider: Any,
                 read: Callable[[], Any]) -> None:
        self.read = read
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._instruments = _instruments(meter_provider)
        self._first_chunk = self._instruments.first_chunk
        with self._instruments.lock:
            self._instruments.responses.add(self)

    now = staticmethod(time.perf_counter)

    def first_chunk(self, started: float, source: str) -> None:
        self._first_chunk.record(time.perf_counter() - started, {RESULT: source})

    def upstream(self, request: Mapping[str, Any],
                 produce: Callable[[], Any]) -> Callable[[], AsyncIterator[Any]]:
        """``produce`` with each upstream stream it starts in an
        ``asyncpromptcache.response.stream`` span, a child of the caller's current span."""
        parent = trace.get_current_span()
        model = request.get("model")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "text_completion" if "prompt" in request else "chat"}
        if isinstance(model, str):
            attributes["gen_ai.request.model"] = model
        tracer = self._tracer

        async def traced() -> AsyncIterator[Any]:
            span = tracer.start_span(
                "asyncpromptcache.response.stream", kind=SpanKind.CLIENT,
                context=trace.set_span_in_context(parent), attributes=attributes)
            chunks, outcome = 0, "ok"
            try:
                iterator = aiter(produce())
                try:
                    async for chunk in iterator:
                        chunks += 1
                        yield chunk
                finally:
                    if hasattr(iterator, "aclose"):
                        await iterator.aclose()
            except GeneratorExit:
                outcome = "abandoned"
                raise
            except BaseException as exc:
                outcome = "error" if isinstance(exc, Exception) else "cancelled"
                _failed(span, exc)
                raise
            finally:
                span.set_attribute("asyncpromptcache.response.chunks", chunks)
                span.set_attribute(OUTCOME, outcome)
                span.end()

        return traced
