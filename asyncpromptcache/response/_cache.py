"""``ResponseCache``: the LLM response cache. Stream first, cache after.

A request's key is looked up in the flights in flight, then in the store:

* an identical request in flight: join it (``source == "join"``): the chunks so far, then
  the live ones;
* a whole answer stored: replay its chunks with their boundaries (``"hit"``), no upstream;
* neither: start one upstream stream in the cache's task group (``"miss"``); every identical
  request meanwhile joins it; only an answer that completes normally is stored.

With the shared tier, a "miss" claims the answer in Redis or follows the process that holds
the claim (the flight's producer comes from ``AcrossProcesses``, ``_across.py``); the local
decisions, the counters and the lifecycle stay here.

The task group lives in a task of its own (``HostedTaskGroup``), so the cache may be closed
from any task of the loop that entered it.

Requests that are not deterministic, and calls with ``mode="bypass"``, go straight to the
producer (``"bypass"``): nothing is looked up, shared or stored.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import anyio
import anyio.lowlevel
import attrs
from anyio.abc import TaskGroup

from .._core.errors import (
    ClientStateError,
    ConfigurationError,
    InvalidArgumentError,
    NotCachedError,
    ResponseFailedError,
)
from .._core.runtime import HostedTaskGroup
from .._observe import response_telemetry
from .._tiers.redis.stats import SharedStats
from .._tiers.redis.tier import ENV_VAR
from ._fanout import AbandonPolicy, Consumer, Flight, LocalFlights, Produce
from ._keymemo import KeyMemo
from ._keys import (
    DEFAULT_IGNORED_FIELDS,
    Chunk,
    KeyKind,
    chunk_size,
    is_deterministic,
)
from ._store import MemoryStore, ResponseStore, StoredAnswer

if TYPE_CHECKING:
    from ._across import AcrossProcesses
    from ._redis import RedisResponses

__all__ = ["Mode", "Pace", "ResponseCache", "ResponseCacheStats", "ResponseStream", "Source"]

logger = logging.getLogger("asyncpromptcache")

Source: TypeAlias = Literal["hit", "miss", "join", "bypass"]
#: ``normal``: hit, else join, else go upstream. ``bypass``: straight to the producer, no
#: cache. ``refresh``: go upstream now (identical requests join it) and store the new answer.
#: ``cache_only``: a hit or a join (of a stream in this process or, with the shared tier, in
#: another), else ``NotCachedError``; never starts an upstream stream.
Mode: TypeAlias = Literal["normal", "bypass", "refresh", "cache_only"]
#: Replay pacing: ``None`` as fast as the consumer reads, seconds between chunks, or
#: ``"original"`` (the original stream's duration spread evenly over its chunks).
Pace: TypeAlias = float | Literal["original"] | None
ProduceWhole: TypeAlias = Callable[[], Awaitable[Chunk]]

_NEW, _OPEN, _CLOSED = "new", "open", "closed"
_NOT_OPEN = ("the response cache is not open: use `async with ResponseCache(...) as cache:` "
             "and call it inside that block")
_MODES = ("normal", "bypass", "refresh", "cache_only")
_UNSET: Any = object()


@attrs.frozen
class ResponseCacheStats:
    """Counters since the cache was opened, and what it holds now.

    ``hits`` replays, ``joins`` consumers that joined a stream in flight, ``misses`` upstream
    streams started for cacheable requests, ``bypasses`` calls that went straight upstream
    (``mode="bypass"`` or not deterministic), ``upstream_errors`` streams that failed,
    ``stored`` answers stored, ``too_large`` answers over ``max_answer_bytes`` (not stored),
    ``abandoned`` streams cancelled because every consumer left (``on_abandon="cancel"``),
    ``slow_consumers`` consumers dropped for falling behind. ``shared``: the shared tier's
    state and counters (``None`` without one): ``l2_hits`` answers read from Redis,
    ``upstream_fetches`` streams this process claimed, ``waits`` streams it followed from
    another process, ``takeovers`` followed streams whose owner vanished,
    ``rejected_values`` values or stream entries refused (corrupt, foreign, badly signed).
    """

    hits: int
    misses: int
    joins: int
    bypasses: int
    upstream_errors: int
    stored: int
    too_large: int
    abandoned: int
    slow_consumers: int
    cache_only_misses: int
    entries: int
    bytes: int
    evictions: int
    expirations: int
    in_flight: int
    shared: SharedStats | None = None


class ResponseCache:
    """Caches LLM answers, streamed or whole; use it with ``async with``.

    * ``max_bytes``: the in-process store's bound (least recently used answers go first).
    * ``ttl_seconds``: how long a stored answer is replayed (per call: ``ttl_seconds=``).
    * ``max_answer_bytes``: a larger answer is streamed to its consumers but never stored.
      From the chunk that passes it, the stream takes no new consumers (a later identical
      request starts its own), lets go of the chunks its consumers have all taken, and with
      the shared tier is no longer published to Redis (its followers there stream it
      themselves).
    * ``namespace``: the tenant; part of every key (per call: ``namespace=``). With the
      shared tier, it also separates the cache's answers in Redis and its channel: a cache
      shares answers, invalidations and clears with the caches of its namespace only.
    * ``consumer_buffer``: live chunks a consumer may leave untaken before it is dropped with
      ``SlowConsumerError`` (``None``: never dropped).
    * ``on_abandon``: when the last consumer of a stream in flight leaves, ``"finish"`` (the
      default) reads it to the end and stores it; ``"cancel"`` cancels it.
    * ``cache_nondeterministic``: cache requests sampled at a temperature above 0 without a
      seed, or with ``n`` above 1 (by default they pass through uncached).
    * ``default_temperature``: the temperature of a request that sets none (OpenAI's: 1).
    * ``ignored_fields``: request fields left out of the key (default: ``stream``).
    * ``replay_pace``: default pacing of hits (see ``Pace``).
    * ``store``: a ``ResponseStore`` to use instead of the in-process ``MemoryStore``
      (``max_bytes`` is then unused; the store is closed with the cache).
    * ``shared``: the shared tier: a Redis URL or a ``RedisTier`` (the prompt client's;
      its namespace, signing key and timeout apply). Completed answers are then stored in
      Redis too and replayed by every process, and an answer streaming in one process is
      joined by identical requests in the others (with ``mode="cache_only"`` too);
      ``invalidate`` and ``clear`` reach every process (see ``invalidate``). Redis trouble
      falls back to this process's cache; a follower whose Redis stops answering streams on
      its own after about three times the tier's timeout. When ``shared`` is absent,
      ``ASYNCPROMPTCACHE_REDIS_URL`` sets it (as for the prompt client); ``shared=False``
      turns the shared tier off.
    * ``clock``, ``sleep``: monotonic seconds and the pacing sleep, for tests.
    * ``meter_provider``, ``tracer_provider``: OpenTelemetry providers for the cache's metrics
      and spans (default: the global ones; needs ``asyncpromptcache[otel]``).
    """

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_seconds: float = 3600.0,
        max_answer_bytes: int = 1024 * 1024,
        namespace: str = "",
        consumer_buffer: int | None = 1024,
        on_abandon: AbandonPolicy = "finish",
        cache_nondeterministic: bool = False,
        default_temperature: float = 1.0,
        ignored_fields: Collection[str] = DEFAULT_IGNORED_FIELDS,
        replay_pace: Pace = None,
        store: ResponseStore | None = None,
        shared: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        meter_provider: Any = None,
        tracer_provider: Any = None,
    ) -> None:
        _check_ttl(ttl_seconds, "ttl_seconds")
        _check_options(max_bytes, max_answer_bytes, consumer_buffer, on_abandon, namespace)
        _check_pace(replay_pace)
        self._ttl = float(ttl_seconds)
        self._max_answer = max_answer_bytes
        self._namespace = namespace
        self._buffer = consumer_buffer
        self._on_abandon: AbandonPolicy = on_abandon
        self._nondeterministic = cache_nondeterministic
        self._default_temperature = default_temperature
        self._ignored = frozenset(ignored_fields)
        self._keys = KeyMemo(ignored_fields=self._ignored)
        self._pace = replay_pace
        self._front: ResponseStore = (
            store if store is not None else MemoryStore(max_bytes=max_bytes, clock=clock))
        self._store = self._front
        self._shared: RedisResponses | None = None
        self._across: AcrossProcesses | None = None  # with the shared tier
        if shared is None:  # as the prompt client: the environment's tier, unless False
            shared = (os.environ.get(ENV_VAR) or "").strip() or None
        if shared is not None and shared is not False:
            from ._across import AcrossProcesses
            from ._redis import TieredStore, shared_responses

            self._shared = shared_responses(shared, namespace=namespace)
            self._across = AcrossProcesses(self._shared, max_answer_bytes=max_answer_bytes)
            self._store = TieredStore(self._front, self._shared)
            self._shared.on_drop(self._dropped_elsewhere)
        self._clock = clock
        self._sleep = sleep
        self._flights = LocalFlights()
        self._running: set[Flight] = set()
        self._tg: TaskGroup | None = None  # open from entry to close, in a task of its own
        self._group = HostedTaskGroup("a ResponseCache", name="asyncpromptcache-response")
        self._state = _NEW
        self._hits = self._misses = self._joins = self._bypasses = 0
        self._upstream_errors = self._stored = self._too_large = self._abandoned = 0
        self._slow = self._cache_only_misses = 0
        self._telemetry = response_telemetry(meter_provider, tracer_provider, self.stats)

    def __repr__(self) -> str:
        return f"<ResponseCache {self._state} store={self._store!r}>"

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def state(self) -> Literal["new", "open", "closed"]:
        """``"new"`` until entered, ``"open"`` inside ``async with``, then ``"closed"``."""
        state: Literal["new", "open", "closed"] = self._state  # type: ignore[assignment]
        return state

    async def __aenter__(self) -> ResponseCache:
        """Open the cache: the task group its upstream streams run in lives in a task of its
        own, so the cache may be closed from any task of the loop that entered it."""
        if self._state != _NEW:
            raise ClientStateError(f"a ResponseCache can be entered once; it is {self._state}")
        self._state = _OPEN
        await self._group.start(self._opened, closed=self._closed)
        if self._state != _OPEN:
            raise ClientStateError("the response cache failed to start")
        return self

    async def _opened(self, tg: TaskGroup) -> None:
        self._tg = tg
        if self._shared is not None:
            self._shared.bind(tg)

    async def _closed(self) -> None:
        """The task group is over (closed, failed, or cancelled with the loop): the streams
        in flight were cancelled; the store closes."""
        self._state = _CLOSED
        self._tg = None
        if self._shared is not None:
            self._shared.detach()  # before the store's close may suspend
        await self._store.aclose()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the upstream streams in flight (their consumers get ``ClientStateError``
        after the chunks they received; replays and bypasses are the callers' own and go
        on) and close the store. Idempotent. Any task of the event loop that entered the
        cache may call it; from another event loop it raises ``ClientStateError``."""
        if not self._group.started:  # never entered
            if self._state == _CLOSED:
                return
            self._state = _CLOSED
            with anyio.CancelScope(shield=True):
                await self._store.aclose()
            return
        if self._group.stopped:
            return
        self._group.check_loop()
        self._state = _CLOSED  # no new stream from here on
        await self._group.stop()

    # -- keys ------------------------------------------------------------------------------

    def key_for(self, request: Mapping[str, Any], *, namespace: str | None = None,
                kind: KeyKind = "stream") -> str:
        """The key ``request`` is cached under (see ``response_key``)."""
        return self._keys.key(request, self._namespace if namespace is None else namespace, kind)

    def is_cacheable(self, request: Mapping[str, Any], *,
                     cache_nondeterministic: bool | None = None) -> bool:
        """Whether ``request`` is cached (deterministic, or the caller opted in)."""
        if cache_nondeterministic is None:
            cache_nondeterministic = self._nondeterministic
        return cache_nondeterministic or is_deterministic(
            request, default_temperature=self._default_temperature)

    # -- the API ---------------------------------------------------------------------------

    def stream(
        self,
        request: Mapping[str, Any],
        produce: Produce,
        *,
        mode: Mode = "normal",
        namespace: str | None = None,
        ttl_seconds: float | None = None,
        pace: Pace = _UNSET,
        cache_nondeterministic: bool | None = None,
    ) -> ResponseStream:
        """The answer to ``request`` as an async iterator of chunks.

        ``produce`` is a zero-argument callable returning an async iterable of chunks (str,
        bytes or JSON-able dicts) from the upstream; it is called only when this request
        goes upstream. The returned ``ResponseStream`` says where its chunks come from in
        ``source`` (``"hit"``, ``"miss"``, ``"join"`` or ``"bypass"``) once started (its
        first chunk, or ``await stream.start()``). A failed upstream raises
        ``ResponseFailedError`` after the chunks received. Leave early with ``aclose()`` or
        ``async with``; a stream dropped unfinished leaves when it is garbage collected.
        """
        return self._open(request, produce, "stream", mode, namespace, ttl_seconds,
                          self._pace if pace is _UNSET else pace, cache_nondeterministic)

    async def get(
        self,
        request: Mapping[str, Any],
        produce_whole: ProduceWhole,
        *,
        mode: Mode = "normal",
        namespace: str | None = None,
        ttl_seconds: float | None = None,
        cache_nondeterministic: bool | None = None,
    ) -> Chunk:
        """The whole answer to ``request`` (a non-streaming call): ``await produce_whole()``
        at most once for any number of identical concurrent calls, then stored."""
        async def one() -> AsyncIterator[Chunk]:
            yield await produce_whole()

        async with self._open(request, one, "whole", mode, namespace, ttl_seconds, None,
                              cache_nondeterministic) as answer:
            chunks = [chunk async for chunk in answer]
        if len(chunks) != 1:
            raise ResponseFailedError(
                f"a whole answer is one value, the store held {len(chunks)} chunks")
        return chunks[0]

    async def invalidate(self, request: Mapping[str, Any], *,
                         namespace: str | None = None) -> bool:
        """Drop the stored answers of ``request`` (streamed and whole); a stream in flight
        for it answers its consumers but is not stored. Whether anything was stored.

        With the shared tier, in every process of the namespace: the answers are deleted in
        Redis, then every other process drops them from its memory and forgets its streams
        in flight for them, in about a Redis round trip. While Redis is unreachable the
        change is applied here at once and sent when Redis answers again."""
        dropped = False
        for kind in ("stream", "whole"):
            key = self.key_for(request, namespace=namespace, kind=kind)
            self._flights.forget(key)
            dropped = await self._store.delete(key) or dropped
        return dropped

    async def clear(self) -> int:
        """Drop every stored answer; streams in flight are not stored. How many answers.
        With the shared tier, in every process, as ``invalidate`` does, and only the answers
        of this cache's namespace."""
        self._forget_flights(None)
        return await self._store.clear()

    def _forget_flights(self, keys: Collection[str] | None) -> None:
        """Streams in flight for ``keys`` (``None``: all) are not stored nor joined."""
        for key in [flight.key for flight in self._flights.values()] if keys is None else keys:
            self._flights.forget(key)

    async def _dropped_elsewhere(self, keys: tuple[str, ...] | None, in_flight: bool) -> None:
        """Another process dropped ``keys`` (``None``: every answer), or the shared tier's
        subscription was re-established (``in_flight`` false: drops may have been missed):
        this process's memory drops them too."""
        if in_flight:
            self._forget_flights(keys)
        if keys is None:
            await self._front.clear()
        else:
            for key in keys:
                await self._front.delete(key)

    async def drain(self) -> None:
        """Wait until every upstream stream running now is over (stored, failed or
        cancelled): for a graceful shutdown that keeps the answers in flight."""
        for flight in list(self._running):
            await flight.settled.wait()

    def stats(self) -> ResponseCacheStats:
        store = self._store.stats()
        return ResponseCacheStats(
            hits=self._hits, misses=self._misses, joins=self._joins, bypasses=self._bypasses,
            upstream_errors=self._upstream_errors, stored=self._stored,
            too_large=self._too_large, abandoned=self._abandoned, slow_consumers=self._slow,
            cache_only_misses=self._cache_only_misses, entries=store.entries,
            bytes=store.bytes, evictions=store.evictions, expirations=store.expirations,
            in_flight=len(self._running),
            shared=None if self._shared is None else self._shared.stats(),
        )

    # -- internals -------------------------------------------------------------------------

    def _open(
        self, request: Mapping[str, Any], produce: Produce, kind: KeyKind, mode: Mode,
        namespace: str | None, ttl_seconds: float | None, pace: Pace,
        cache_nondeterministic: bool | None,
    ) -> ResponseStream:
        if self._state != _OPEN:
            raise ClientStateError(_NOT_OPEN if self._state == _NEW else
                                   "the response cache is closed")
        if mode not in _MODES:
            raise InvalidArgumentError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if not callable(produce):
            raise InvalidArgumentError("produce must be a zero-argument callable")
        ttl = self._ttl if ttl_seconds is None else _check_ttl(ttl_seconds, "ttl_seconds")
        _check_pace(pace)
        if not isinstance(request, Mapping):
            raise InvalidArgumentError(
                f"a request is a mapping (model, messages, parameters), got "
                f"{type(request).__name__}")
        if self._telemetry is not None:  # each upstream stream it starts in a span
            produce = self._telemetry.upstream(request, produce)
        if mode == "bypass" or not self.is_cacheable(
                request, cache_nondeterministic=cache_nondeterministic):
            if mode == "cache_only":
                self._cache_only_misses += 1
                raise NotCachedError(
                    "mode='cache_only' on a request that is never cached (not deterministic; "
                    "pass cache_nondeterministic=True to cache it)")
            return ResponseStream(self, None, produce, "bypass", ttl, pace)
        key = self.key_for(request, namespace=namespace, kind=kind)
        return ResponseStream(self, key, produce, mode, ttl, pace)

    def _hit_now(self, stream: ResponseStream) -> tuple[Chunk, ...] | None:
        """``_resolve`` for an unpaced hit in a store that never waits: the chunks, with the
        stream set up as a hit; ``None`` when it takes the full path."""
        store, key = self._store, stream.key
        if (key is None or stream._pace is not None or stream._mode == "refresh"
                or type(store) is not MemoryStore or self._flights.get(key) is not None):
            return None
        answer = store.peek(key)
        if answer is None:
            return None
        self._hits += 1
        stream._started = True
        stream._source = "hit"
        stream._replay = answer
        return answer.chunks

    async def _resolve(self, stream: ResponseStream) -> None:
        """Find ``stream``'s source and set it up (see the module docstring)."""
        key, mode = stream.key, stream._mode
        if key is None:
            self._bypasses += 1
            stream._source = "bypass"
            stream._bypass = _checked(stream._produce)
            return
        claimed: list[Any] = []  # the shared tier's claim, made before the flight
        if mode != "refresh":
            if self._join(stream, key):
                return
            answer = await self._store.get(key)
            if answer is not None:
                self._hit(stream, answer)
                return
            if self._join(stream, key):  # started while the store was asked
                return
            if mode == "cache_only":  # another process's answer, stored or streaming
                found = None if self._across is None else await self._across.elsewhere(key)
                if found is None:
                    self._cache_only_misses += 1
                    raise NotCachedError("no answer is stored or in flight for this request "
                                         "(mode='cache_only')")
                if found != "streaming":
                    self._hit(stream, found)
                    return
                if self._join(stream, key):
                    return
                claimed.append(None)  # follow the process that streams it, never claim
        if self._shared is not None and not claimed:  # claimed before the flight: a follower
            claimed.append(await self._shared.claim(key))  # says "join"
            if self._join(stream, key):  # a flight of this process started meanwhile
                await self._shared.unclaim(claimed[0])
                return
        tg = self._tg
        if tg is None or self._state != _OPEN:  # closed, maybe while the claim was made
            if self._shared is not None and claimed:
                await self._shared.unclaim(claimed[0])
            raise ClientStateError("the response cache is closed")
        flight = Flight(key, buffer_chunks=self._buffer, max_store_bytes=self._max_answer,
                        on_abandon=self._on_abandon, clock=self._clock)
        flight.follow_only = mode == "cache_only"
        self._flights.add(flight)
        self._running.add(flight)
        following = bool(claimed) and claimed[0] is None  # another process streams it
        if following:
            self._joins += 1
        else:
            self._misses += 1
        stream._source = "join" if following else "miss"
        stream._attach(flight)
        produce = stream._produce
        if self._across is not None:
            produce = self._across.produce(flight, produce, stream._ttl,
                                           refresh=mode == "refresh", claimed=claimed,
                                           may_claim=mode != "cache_only")
        tg.start_soon(self._fly, flight, produce, stream._ttl,
                      name=f"asyncpromptcache.response:{key[:12]}")

    def _hit(self, stream: ResponseStream, answer: StoredAnswer) -> None:
        self._hits += 1
        stream._source = "hit"
        stream._replay = answer

    def _join(self, stream: ResponseStream, key: str) -> bool:
        flight = self._flights.get(key)
        if flight is None or (flight.follow_only and stream._mode != "cache_only"):
            return False
        self._joins += 1
        stream._source = "join"
        stream._attach(flight)
        return True

    async def _fly(self, flight: Flight, produce: Produce, ttl: float) -> None:
        # Never raises but cancellation: an error here would cancel the cache's task group.
        try:
            await flight.run(produce)
            if flight.done:
                if not flight.storable:
                    self._too_large += 1
                elif flight.writes_back:
                    answer = StoredAnswer(flight.chunks, flight.size, flight.duration)
                    # With the shared tier, Redis has the answer already (its owner
                    # wrote it before completing the stream): this process's store here.
                    store = self._front
                    try:
                        if await store.put(flight.key, answer, ttl):
                            self._stored += 1
                    except Exception:
                        logger.exception("storing an answer failed; it was not cached")
            elif flight.abandoned:
                self._abandoned += 1
            else:
                self._upstream_errors += 1
                logger.warning("an upstream stream failed after %d chunks: %s: %s",
                               flight.total, type(flight.error).__name__, flight.error)
        finally:
            self._slow += flight.slow_dropped
            flight.end()
            self._running.discard(flight)
            flight.settled.set()


class ResponseStream:
    """The chunks of one answer; an async iterator. ``source`` says where they come from
    (``None`` until started: the first ``__anext__``, ``await start()``, or an ``async for``
    beginning on a hit it finds at once, which it then reads through an async generator);
    ``key`` is the cache key (``None`` for a bypass)."""

    def __init__(self, cache: ResponseCache, key: str | None, produce: Produce, mode: str,
                 ttl: float, pace: Pace) -> None:
        self._cache = cache
        self.key = key
        self._produce = produce
        self._mode = mode
        self._ttl = ttl
        self._pace = pace
        self._source: Source | None = None
        self._consumer: Consumer | None = None
        self._replay: StoredAnswer | None = None
        self._bypass: AsyncIterator[Chunk] | None = None
        #: An unpaced replay's chunks, for ``__anext__``'s fast path (``None`` otherwise),
        #: and the position at which it next looks at the clock or ends.
        self._fast: tuple[Chunk, ...] | None = None
        self._mark = 0
        self._since = 0.0
        self._position = 0
        self._started = False
        self._started_at: float | None = None  # with telemetry: when start() began
        self._closed = False
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"<ResponseStream {self._source or 'unstarted'} key={(self.key or '')[:12]}>"

    @property
    def source(self) -> Source | None:
        """``"hit"``, ``"miss"``, ``"join"`` or ``"bypass"``; ``None`` until started."""
        return self._source

    @property
    def chunks_received(self) -> int:
        return self._position

    async def start(self) -> Source:
        """Look the request up (joining or starting its stream); returns ``source``."""
        if not self._started:
            if self._closed:
                raise ClientStateError("this response stream is closed")
            self._started = True
            if self._cache._telemetry is not None:
                self._started_at = self._cache._telemetry.now()
            await self._cache._resolve(self)
            if self._replay is not None and self._pace is None:
                self._fast = self._replay.chunks
                self._mark = min(_FAIR_CHUNKS, len(self._fast))
                self._since = _now()
                if self._started_at is not None and self._fast:
                    self._first_chunk()  # a hit's first chunk is there now
                    self._started_at = None  # recorded once
        assert self._source is not None
        return self._source

    def _attach(self, flight: Flight) -> None:
        consumer = self._consumer = flight.attach()
        # A stream dropped unfinished (a ``break``, a cancelled task) leaves its flight when
        # it is collected: the others go on, and ``on_abandon`` applies if it was the last.
        self._finalizer = weakref.finalize(self, consumer.close)
        self._finalizer.atexit = False

    def __aiter__(self) -> AsyncIterator[Chunk]:
        if not self._started and not self._closed:
            chunks = self._cache._hit_now(self)
            if chunks is not None:
                # A hit found without waiting: an async generator over its chunks, which
                # costs per chunk what any async generator does. Its first chunk is there
                # now, which is what telemetry's first-chunk time then records.
                telemetry = self._cache._telemetry
                if telemetry is not None and chunks:
                    telemetry.first_chunk(telemetry.now(), "hit")
                return _replayed(self, chunks)
        return self

    async def __anext__(self) -> Chunk:
        chunks = self._fast
        if chunks is not None:  # an unpaced replay, after its first chunk
            position = self._position
            if position >= self._mark:
                if position >= len(chunks):
                    self._leave()
                    raise StopAsyncIteration
                self._mark = min(position + _FAIR_CHUNKS, len(chunks))
                if _now() - self._since >= _FAIR_SECONDS:
                    await self._let_others_run()
            self._position = position + 1
            return chunks[position]
        if not self._started:
            await self.start()
        if self._closed:
            raise StopAsyncIteration
        try:
            chunk = await self._next()
        except BaseException:  # the end, an error or a cancellation: this reader is done
            self._leave()
            raise
        self._position += 1
        if self._position == 1 and self._started_at is not None:
            self._first_chunk()
        return chunk

    def _first_chunk(self) -> None:
        telemetry = self._cache._telemetry
        assert telemetry is not None and self._started_at is not None
        telemetry.first_chunk(self._started_at, self._source or "miss")

    async def _next(self) -> Chunk:
        if self._consumer is not None:
            return await self._consumer.next()
        if self._replay is not None:
            chunks = self._replay.chunks
            if self._position >= len(chunks):
                raise StopAsyncIteration
            if self._position and self._pace is not None:
                await self._cache._sleep(_pace_seconds(self._pace, self._replay))
            return chunks[self._position]
        assert self._bypass is not None
        try:
            return await anext(self._bypass)
        except (StopAsyncIteration, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:
            raise _bypass_failed(exc, self._position) from exc

    async def _let_others_run(self) -> None:
        try:
            await anyio.lowlevel.checkpoint()
        except BaseException:  # a cancellation: this reader is done
            self._leave()
            raise
        self._since = _now()

    def _leave(self) -> AsyncIterator[Chunk] | None:
        self._closed = True
        self._fast = None
        if self._finalizer is not None:
            self._finalizer()  # Consumer.close, once
        bypass, self._bypass = self._bypass, None
        return bypass

    async def aclose(self) -> None:
        """Stop reading. A stream in flight goes on for its other consumers."""
        bypass = self._leave()
        if bypass is not None and hasattr(bypass, "aclose"):
            await bypass.aclose()

    async def __aenter__(self) -> ResponseStream:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


_now = time.monotonic
#: The longest an unpaced replay runs without letting other tasks run, and how many chunks
#: it replays between two looks at the clock.
_FAIR_SECONDS = 0.001
_FAIR_CHUNKS = 4


async def _replayed(stream: ResponseStream, chunks: tuple[Chunk, ...]) -> AsyncIterator[Chunk]:
    """A hit's chunks, unpaced, for ``async for``. Fair without a checkpoint per chunk (one
    costs as much as replaying dozens of chunks): every ``_FAIR_CHUNKS`` chunks it looks at
    the clock, and lets the loop run once ``_FAIR_SECONDS`` have passed since it last did."""
    since = _now()
    position = 0
    try:
        for chunk in chunks:
            if stream._closed:  # ``aclose()`` from the loop's body
                return
            position += 1
            stream._position = position
            yield chunk
            if not position % _FAIR_CHUNKS and _now() - since >= _FAIR_SECONDS:
                await anyio.lowlevel.checkpoint()
                since = _now()
    finally:  # the end, a cancellation, or the generator closed: this reader is done
        stream._leave()


async def _checked(produce: Produce) -> AsyncIterator[Chunk]:
    """A bypass: the producer's chunks, checked as a cached stream's are."""
    async for chunk in produce():
        chunk_size(chunk)
        yield chunk


def _bypass_failed(exc: Exception, received: int) -> ResponseFailedError:
    error = ResponseFailedError(
        f"the upstream failed: {type(exc).__name__}: {exc} (after {received} chunks)",
        upstream=exc, chunks_received=received,
    )
    return error


def _pace_seconds(pace: float | str, answer: StoredAnswer) -> float:
    if pace == "original":
        return answer.duration_seconds / max(1, len(answer.chunks))
    return float(pace)


def _check_pace(pace: Pace) -> None:
    if pace is None or pace == "original":
        return
    if isinstance(pace, bool) or not isinstance(pace, int | float) or not (
            math.isfinite(pace) and pace >= 0):
        raise InvalidArgumentError(
            f"pace must be None, 'original' or seconds (0 or more), got {pace!r}")


def _check_options(max_bytes: int, max_answer_bytes: int, consumer_buffer: int | None,
                   on_abandon: str, namespace: str) -> None:
    """``ConfigurationError`` for a ``ResponseCache`` option out of its range."""
    for name, value in (("max_bytes", max_bytes), ("max_answer_bytes", max_answer_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    if consumer_buffer is not None and (
            isinstance(consumer_buffer, bool) or not isinstance(consumer_buffer, int)
            or consumer_buffer < 1):
        raise ConfigurationError(
            f"consumer_buffer must be a positive integer or None, got {consumer_buffer!r}")
    if on_abandon not in ("finish", "cancel"):
        raise ConfigurationError(
            f"on_abandon must be 'finish' or 'cancel', got {on_abandon!r}")
    if not isinstance(namespace, str):
        raise ConfigurationError(f"namespace must be a string, got {namespace!r}")


def _check_ttl(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ConfigurationError(f"{name} must be a number of seconds, 0 or more, got {value!r}")
    return float(value)
