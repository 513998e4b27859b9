"""``AsyncPromptCache``: the cache engine. Storage, freshness, single-flight and background
refresh; it calls a fetch function and knows nothing of HTTP. What it holds, and the indexes
over that, are kept by ``HeldEntries`` (``entries``); what failed fetches leave, by
``Failures`` (``failures``).

States of a key and what ``get`` does:

* fresh: returns the prompt without I/O, lock, task or suspension;
* stale (past its TTL, within ``max_stale_seconds``): returns the stale prompt at once and
  starts one refresh for the key in the task group, unless one is running or the key is
  backing off after failed refreshes;
* missing, past max staleness, or asked with ``ttl=0``: waits for the key's one in-flight
  fetch, starting it if none runs. A waiter that is cancelled, or whose own ``wait`` runs
  out, stops waiting; the fetch goes on for the others. On failure a waiter gets the stale
  copy when one may still be served, else the error;
* missing after a failed fetch (an error or a 404, nothing servable held): for
  ``negative_ttl_seconds`` the key's callers get that error again at once, without a fetch
  (``ttl=0`` callers excepted: they always fetch).

Whatever a fetch does (returns something that is not a prompt, raises anything, or the
engine's own bookkeeping fails), the task that ran it ends quietly: its waiters get a
``PromptCacheError`` and the client's task group is never cancelled by it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from .._core.checks import check_count, check_seconds
from .._core.errors import (
    ClientStateError,
    FetchError,
    FetchTimeoutError,
    InvalidResponseError,
    PromptCacheError,
    PromptNotFoundError,
)
from .._tiers.redis.stats import SharedStats
from .entries import Entry, HeldEntries
from .failures import Failures
from .keys import PromptKey, make_key
from .models import ChatPrompt, Prompt, TextPrompt

__all__ = ["AsyncPromptCache", "CacheStats", "Fetched", "KeyStats"]

logger = logging.getLogger("asyncpromptcache")

Clock = Callable[[], float]


@attrs.frozen(slots=True)
class Fetched:
    """What a fetch function may return instead of a bare prompt: the prompt with its age.

    A prompt another process fetched ``age`` seconds ago (a shared tier's copy) is fresh for
    the rest of its TTL only, not for a whole TTL from now; past its TTL it is held as stale.
    """

    prompt: Prompt
    age: float = 0.0


FetchFunc = Callable[[], Awaitable[Prompt | Fetched]]


@attrs.define(slots=True)
class _Flight:
    """One in-flight fetch of a key, shared by every caller that waits on it."""

    event: anyio.Event = attrs.field(factory=anyio.Event)
    result: Prompt | None = None
    error: BaseException | None = None
    # False once the key was invalidated or the cache cleared: the result must not be stored.
    writes_back: bool = True
    is_refresh: bool = False


@attrs.frozen
class KeyStats:
    """What the cache knows of one key. Times are on the cache's monotonic clock."""

    key: PromptKey
    version: int | None
    fetched_at: float | None
    age_seconds: float | None
    fresh: bool
    consecutive_failures: int
    last_error: str | None
    last_error_at: float | None


_KeySnapshot = tuple[float, dict[Hashable, Entry],
                     dict[Hashable, tuple[int, str | None, float | None]]]


@attrs.frozen
class CacheStats:
    """Counters since the cache was made, and the state of every key it holds.

    Taking the stats costs about a copy of the index; ``keys``, the per-key detail as it was
    then, is built when first read (on a cache of 100,000 keys that takes a while: read it
    off the event loop's hot path).

    ``negative_hits`` counts calls answered from the negative cache (a recent failure,
    raised again without a fetch), ``negative_entries`` the keys held there now;
    ``wait_timeouts`` counts callers that stopped waiting for a shared fetch when their own
    budget ran out.
    """

    hits: int
    stale_hits: int
    misses: int
    joined: int
    fetches: int
    fetch_errors: int
    refreshes: int
    refresh_errors: int
    evictions: int
    fallbacks: int
    entries: int
    in_flight: int
    negative_hits: int = 0
    negative_entries: int = 0
    wait_timeouts: int = 0
    #: The shared tier's state and counters, when the client has one.
    shared: SharedStats | None = None
    _snapshot: _KeySnapshot | None = attrs.field(
        default=None, eq=False, repr=False, alias="snapshot")

    @functools.cached_property
    def keys(self) -> tuple[KeyStats, ...]:
        """Per-key state: version, age, freshness, failures, last error."""
        if self._snapshot is None:
            return ()
        now, entries, infos = self._snapshot
        none: tuple[int, str | None, float | None] = (0, None, None)
        keys = []
        for key, entry in entries.items():
            failures, last_error, last_error_at = infos.get(key, none)
            keys.append(KeyStats(
                key=PromptKey._make(key),  # type: ignore[arg-type]
                version=entry.prompt.version,
                fetched_at=entry.fetched_at,
                age_seconds=now - entry.fetched_at,
                fresh=now < entry.expires_at,
                consecutive_failures=failures,
                last_error=last_error,
                last_error_at=last_error_at,
            ))
        return tuple(keys)


class AsyncPromptCache:
    """A bounded prompt cache with single-flight fetches and stale-while-revalidate refresh.

    The engine alone, with no HTTP, settings or lifecycle: it caches whatever ``fetch`` you
    give each ``get``; ``AsyncPromptClient`` is the SDK built on it (Langfuse source, retries,
    fallbacks, writes, webhooks, the shared tier) and what an application normally uses.

    ``clock`` is any monotonic ``() -> float`` in seconds (tests pass a fake one).
    ``max_stale_seconds`` bounds how long past its TTL a prompt is still served (``None``:
    for ever, as Langfuse does). A key whose refreshes fail waits
    ``refresh_backoff_seconds * 2**(failures-1)`` (capped at ``refresh_backoff_max_seconds``)
    before the next one. A key whose fetch failed with nothing servable held answers with that
    failure for ``negative_ttl_seconds`` (0: never). ``inline_hits=False`` gives ``hit_path()``
    an index that stays empty (for a client whose every call must reach ``get``).
    """

    def __init__(
        self,
        *,
        max_size: int = 1024,
        max_stale_seconds: float | None = None,
        clock: Clock = time.monotonic,
        refresh_backoff_seconds: float = 1.0,
        refresh_backoff_max_seconds: float = 300.0,
        negative_ttl_seconds: float = 0.0,
        inline_hits: bool = True,
    ) -> None:
        check_count(max_size, "max_size", minimum=1)
        self._clock = clock
        self._max_stale = math.inf if max_stale_seconds is None else check_seconds(
            max_stale_seconds, "max_stale_seconds", allow_inf=True)
        # Backoff per key and the negative cache; both read here directly, on the hot paths.
        self._failures = Failures(max_size, clock, negative_ttl_seconds,
                                  refresh_backoff_seconds, refresh_backoff_max_seconds)
        self._info, self._negative = self._failures.info, self._failures.negative
        # The entries and their indexes; the index, the by-name index and the recency notes
        # are read here directly, on the hot paths (see HeldEntries).
        self._entries = entries = HeldEntries(max_size, self._evicted)
        self._hot, self._by_name, self._touched = entries.hot, entries.by_name, entries.touched
        self._composition = entries.composition
        # What hit_path() hands out: the indexes, or (inline_hits=False) dicts that stay empty.
        self._hit_index: dict[Hashable, Entry] = self._hot if inline_hits else {}
        self._hit_by_name: dict[str, Entry] = self._by_name if inline_hits else {}
        self._inflight: dict[Hashable, _Flight] = {}
        self._tg: TaskGroup | None = None
        self._closed_error: str = "the cache is not attached to a running client"
        self._hits = 0
        self._stale_hits = 0
        self._misses = 0
        self._joined = 0
        self._fetches = 0
        self._fetch_errors = 0
        self._refreshes = 0
        self._refresh_errors = 0
        self._evictions = 0
        self._fallbacks = 0
        self._negative_hits = 0
        self._wait_timeouts = 0
        #: ``(key, fetch, is_refresh) -> awaitable``: runs each fetch and refresh (telemetry
        #: wraps them in a span); ``None``: ``fetch()`` directly.
        self.run_fetch: Callable[[Hashable, FetchFunc, bool], Awaitable[Prompt | Fetched]] | \
            None = None

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self, task_group: TaskGroup) -> None:
        """Run fetches and refreshes in ``task_group`` (the client's) from now on."""
        self._tg = task_group

    def detach(self, reason: str = "the client is closed") -> None:
        """Stop starting work; later misses raise ``ClientStateError`` with ``reason``."""
        self._tg = None
        self._closed_error = reason

    # -- reads -----------------------------------------------------------------------------

    async def get(
        self, key: Hashable, fetch: FetchFunc, *, ttl: float, wait: float = math.inf
    ) -> Prompt:
        """The prompt for ``key``, fetching it with ``fetch`` as the state of the key requires.

        ``ttl`` is how long a prompt this call fetches stays fresh; ``ttl=0`` always waits
        for a fetch (single-flight and stale-if-error still hold). ``wait`` bounds, in
        seconds, how long this caller waits for a fetch (its own or one it joins): past it
        the caller gets the stale copy if one may be served, else ``FetchTimeoutError``,
        while the fetch goes on for the others.
        """
        entry = self._hot.get(key)
        if entry is not None:
            now = self._clock()
            if ttl > 0 and now < entry.expires_at:
                self._touched[entry] = now
                self._hits += 1
                return entry.prompt
            if ttl > 0 and now < entry.stale_until:
                self._touched[entry] = now
                self._stale_hits += 1
                self._maybe_refresh(key, fetch, ttl, now)
                return entry.prompt
        self._misses += 1
        flight = self._inflight.get(key)
        if flight is None:
            if ttl > 0 and self._negative is not None:
                failed = self._negative.get(key)
                if failed is not None:
                    self._negative_hits += 1
                    # A fresh traceback each time: the one error is raised again and again.
                    raise failed.with_traceback(None)
            flight = self._start(key, fetch, ttl, is_refresh=False)
        else:
            self._joined += 1
        with anyio.move_on_after(wait):
            await flight.event.wait()
        held = self._servable(key)
        if not flight.event.is_set():
            self._wait_timeouts += 1
            if held is not None:
                return held.prompt
            raise FetchTimeoutError(
                f"prompt {_describe(key)}: no answer within this call's budget of {wait:g}s",
                name=_name_of(key), key=key,
            )
        if flight.result is not None:
            return flight.result
        assert flight.error is not None
        if held is not None and not isinstance(flight.error, PromptNotFoundError):
            return held.prompt
        raise flight.error

    def _servable(self, key: Hashable) -> Entry | None:
        entry = self._hot.get(key)
        if entry is not None and self._clock() < entry.stale_until:
            return entry
        return None

    def holds(self, key: Hashable) -> bool:
        """Whether an entry for ``key`` may still be served (fresh or stale)."""
        return self._servable(key) is not None

    def stale_hit(self, entry: Any, now: float) -> Prompt | None:
        """Serve ``entry`` (from ``hit_path()``'s index, past its TTL at ``now``) at once when
        that needs nothing started: its refresh is already running or the key is backing off.

        ``None`` when the entry is past max staleness or a refresh must start (the caller then
        takes the full path, which has what starting a fetch needs). Never suspends.
        """
        if now >= entry.stale_until or self._tg is None:
            return None
        key = entry.key
        if key not in self._inflight:
            info = self._info.get(key)
            if info is None or now >= info.retry_not_before:
                return None
        self._touched[entry] = now
        self._stale_hits += 1
        prompt: Prompt = entry.prompt
        return prompt

    # -- fetching --------------------------------------------------------------------------

    def _maybe_refresh(self, key: Hashable, fetch: FetchFunc, ttl: float, now: float) -> None:
        if key in self._inflight or self._tg is None:
            return
        info = self._info.get(key)
        if info is not None and now < info.retry_not_before:
            return
        self._start(key, fetch, ttl, is_refresh=True)

    def _start(self, key: Hashable, fetch: FetchFunc, ttl: float, *, is_refresh: bool) -> _Flight:
        if self._tg is None:
            raise ClientStateError(self._closed_error)
        flight = _Flight(is_refresh=is_refresh)
        self._inflight[key] = flight
        if is_refresh:
            self._refreshes += 1
        else:
            self._fetches += 1
        self._tg.start_soon(self._run, key, flight, fetch, ttl, name=f"asyncpromptcache:{key!r}")
        return flight

    async def _run(self, key: Hashable, flight: _Flight, fetch: FetchFunc, ttl: float) -> None:
        # Never raises but cancellation: an exception here would cancel the client's whole
        # task group, and with it every fetch and refresh of every other caller.
        stale_on_arrival = False
        try:
            try:
                run = self.run_fetch
                result = await (fetch() if run is None else run(key, fetch, flight.is_refresh))
                if isinstance(result, Fetched):
                    prompt, age = _checked(key, result.prompt), max(0.0, result.age)
                else:
                    prompt, age = _checked(key, result), 0.0
            except anyio.get_cancelled_exc_class():
                flight.error = ClientStateError(
                    f"the fetch of {_describe(key)} was cancelled: {self._closed_error}"
                )
                raise
            except Exception as exc:
                error = exc if isinstance(exc, PromptCacheError) else FetchError(
                    f"fetching {_describe(key)} failed: {type(exc).__name__}: {exc}",
                    name=_name_of(key), key=key,
                )
                if error is not exc:
                    error.__cause__ = exc
                flight.error = error
                self._failed(key, flight, error)
            else:
                flight.result = prompt
                if flight.writes_back:
                    self._put(key, prompt, ttl, age)
                    stale_on_arrival = 0 < ttl <= age
        except Exception as exc:  # a fault of the engine's own (or an error that cannot print)
            _internal_error()
            if flight.result is None and flight.error is None:
                flight.error = FetchError(
                    f"fetching a prompt failed: internal error ({type(exc).__name__})",
                    name=_name_of(key), key=key,
                )
                flight.error.__cause__ = exc
        finally:
            if self._inflight.get(key) is flight:
                del self._inflight[key]
            flight.event.set()
        if stale_on_arrival:
            # Already past its TTL (another process's copy, served at once): refresh it now.
            try:
                self._maybe_refresh(key, fetch, ttl, self._clock())
            except Exception:
                _internal_error()

    def _failed(self, key: Hashable, flight: _Flight, error: PromptCacheError) -> None:
        now = self._clock()
        if flight.is_refresh:
            self._refresh_errors += 1
        else:
            self._fetch_errors += 1
        if isinstance(error, PromptNotFoundError):
            # A removed label must stop being served.
            if flight.writes_back:
                self._remove(key)
                self._failures.remember(key, error)
            logger.info("prompt %s not found; dropped from the cache", _describe(key))
            return
        if flight.writes_back and self._servable(key) is None:
            self._failures.remember(key, error)
        # A fetch orphaned by invalidate()/clear() says nothing of the entry held now (which a
        # later fetch may have stored): it must not count a failure or back that entry off.
        if not flight.writes_back or (key not in self._info and key not in self._hot):
            logger.warning("fetching prompt %s failed: %s", _describe(key), error)
            return
        failures, delay = self._failures.back_off(key, error, now)
        logger.warning(
            "fetching prompt %s failed (%d in a row), serving the cached version; "
            "next refresh in %.1fs: %s", _describe(key), failures, delay, error,
        )

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: Hashable, prompt: Prompt, *, ttl: float) -> None:
        """Hold ``prompt`` for ``key``, fresh for ``ttl`` seconds, without a fetch (write-through).

        A fetch in flight for the key still answers its waiters but does not write back: what
        it read was sent before this write and may be older.
        """
        flight = self._inflight.pop(key, None)
        if flight is not None:
            flight.writes_back = False
        self._put(key, prompt, ttl)

    def _put(self, key: Hashable, prompt: Prompt, ttl: float, age: float = 0.0) -> None:
        now = self._clock()
        fetched_at = now - age
        expires = fetched_at + ttl
        # May evict the least recently used key first.
        self._entries.hold(key, Entry(key, prompt, fetched_at, expires, expires + self._max_stale))
        self._failures.succeeded(key)

    def _evicted(self, key: Hashable) -> None:
        self._evictions += 1
        self._info.pop(key, None)

    def _remove(self, key: Hashable) -> None:
        self._entries.discard(key)
        self._info.pop(key, None)
        if self._negative is not None:
            self._negative.pop(key, None)

    # -- copying entries (a forked child keeps its parent's prompts) -------------------------

    def snapshot(self) -> list[tuple[Hashable, Entry]]:
        """The entries held, for ``restore`` into another cache. Entries are immutable."""
        return list(self._hot.items())

    def restore(self, entries: Iterable[tuple[Hashable, Entry]]) -> int:
        """Hold ``entries`` from ``snapshot()`` with their freshness as it was; returns how many.

        The times in them are on the snapshot's clock: use it between caches on one time base
        (``time.monotonic`` is the same in a forked child).
        """
        return self._entries.restore(entries)

    # -- invalidation ----------------------------------------------------------------------

    def held(self, name: str) -> list[tuple[Hashable, Prompt]]:
        """The entries held for prompt ``name``: ``(key, prompt)``."""
        return [(key, self._hot[key].prompt) for key in self._composition.named(name)]

    def peek(self, key: Hashable) -> Prompt | None:
        """The prompt held for ``key``, fresh or not; no stats, no LRU move."""
        entry = self._hot.get(key)
        return None if entry is None else entry.prompt

    def dependents(self, names: Collection[str],
                   suspects: Collection[Hashable] = ()) -> set[Hashable]:
        """Keys of held prompts composed of a prompt in ``names``, at any depth (see
        ``CompositionIndex.dependents``)."""
        return self._composition.dependents(names, suspects)

    def invalidate(self, name: str, *, label: str | None = None,
                   version: int | None = None) -> int:
        """Drop one key (with ``label`` or ``version``) or every key of ``name``.

        Exact: invalidating ``greet`` never touches ``greeting``. A fetch in flight for a
        dropped key still answers its waiters but does not write its result back.
        Returns how many entries were dropped.
        """
        if label is not None or version is not None:
            keys: list[Hashable] = [make_key(name, version, label)]
        else:
            negative = self._negative if self._negative is not None else {}
            keys = [*self._composition.named(name), *(
                k for k in {*self._inflight, *negative}
                if k[0] == name and k not in self._hot)]  # type: ignore[index]
        dropped = 0
        for key in keys:
            if key in self._hot:
                dropped += 1
            self._remove(key)
            flight = self._inflight.pop(key, None)
            if flight is not None:
                flight.writes_back = False
        return dropped

    def clear(self) -> int:
        """Drop every entry; fetches in flight do not write back. Returns how many."""
        dropped = len(self._hot)
        for flight in self._inflight.values():
            flight.writes_back = False
        self._inflight.clear()
        self._entries.clear()
        self._failures.clear()
        return dropped

    def expire_all(self) -> int:
        """Mark every entry stale (still servable until its max staleness), so that the next
        use of each revalidates: for when the cache may have missed an invalidation. Returns
        how many entries were marked."""
        return self._entries.expire_all(self._clock())

    # -- stats -----------------------------------------------------------------------------

    def record_fallback(self) -> None:
        self._fallbacks += 1

    def __len__(self) -> int:
        return len(self._hot)

    def lookup_counts(self, *, extra_hits: int = 0) -> dict[str, int]:
        """The counters of ``stats()`` by what answered a call (``hit``, ``stale``, ``miss``,
        ``negative``, ``fallback``), without copying the index: cheap, and safe to read from
        another thread (a metrics collector's)."""
        return {"hit": self._hits + extra_hits, "stale": self._stale_hits,
                "miss": self._misses, "negative": self._negative_hits,
                "fallback": self._fallbacks}

    @property
    def in_flight(self) -> int:
        """Fetches and refreshes running now."""
        return len(self._inflight)

    def hit_path(
        self,
    ) -> tuple[dict[Hashable, Any], dict[str, Any], dict[Any, float], Clock]:
        """``(index, by_name, recency_notes, clock)`` for a caller that inlines the fresh-hit
        check.

        A hit is ``entry = index.get(key)``, or ``entry = by_name.get(name)`` for the default
        label (``by_name`` holds those entries under the name string, which never equals a
        key tuple), fresh while ``now = clock()`` is below
        ``entry.expires_at``, serving ``entry.prompt``; the caller then sets
        ``recency_notes[entry] = now`` and
        reports its hit count through ``stats(extra_hits=...)``. The dicts live as long as
        the cache. The async client inlines this because a method call here measured as a
        quarter of the whole hit cost. With ``inline_hits=False`` (a client whose default TTL
        is 0, so that its calls fetch as ``ttl=0`` calls do) the index stays empty.
        """
        return self._hit_index, self._hit_by_name, self._touched, self._clock

    def stats(self, *, extra_hits: int = 0) -> CacheStats:
        """Counters and per-key state; ``extra_hits`` adds hits counted by an inlined hit path.

        Costs a copy of the index (entries are immutable); the per-key detail is built from
        it when ``keys`` is first read.
        """
        if self._negative is not None:
            self._negative.expire()
        snapshot: _KeySnapshot = (
            self._clock(),
            self._hot.copy(),  # one allocation: no tuple per entry for the collector to chase
            {key: (info.consecutive_failures, info.last_error, info.last_error_at)
             for key, info in self._info.items()},
        )
        return CacheStats(
            hits=self._hits + extra_hits, stale_hits=self._stale_hits, misses=self._misses,
            joined=self._joined, fetches=self._fetches, fetch_errors=self._fetch_errors,
            refreshes=self._refreshes, refresh_errors=self._refresh_errors,
            evictions=self._evictions, fallbacks=self._fallbacks, entries=len(self._hot),
            in_flight=len(self._inflight), negative_hits=self._negative_hits,
            negative_entries=0 if self._negative is None else len(self._negative),
            wait_timeouts=self._wait_timeouts, snapshot=snapshot,
        )


def _internal_error() -> None:
    logger.error("internal error in the fetch of a prompt", exc_info=True)


def _checked(key: Any, value: object) -> Prompt:
    """What a fetch returned, if it is a prompt that may be cached: a real version (1 or
    more), not a fallback. Anything else is an invalid response and replaces nothing."""
    if not isinstance(value, TextPrompt | ChatPrompt):
        raise InvalidResponseError(
            f"fetching {_describe(key)} returned a {type(value).__name__}, not a prompt",
            name=_name_of(key), key=key,
        )
    version = value.version
    if version.__class__ is not int or version < 1 or value.is_fallback:
        raise InvalidResponseError(
            f"fetching {_describe(key)} returned version {version!r}"
            + (" (a fallback)" if value.is_fallback else "") + "; versions count up from 1",
            field="version", name=_name_of(key), key=key,
        )
    return value


def _describe(key: Any) -> str:
    try:
        return PromptKey._make(key).describe()
    except TypeError:
        return repr(key)


def _name_of(key: Any) -> str | None:
    try:
        return str(key[0])
    except (TypeError, IndexError):
        return None
