"""A model-based test of the cache: random interleavings of gets, clock moves, fetch outcomes,
slow fetches, cancellations, invalidations and evictions, against a small reference model.

Every upstream fetch is held until a rule resolves it (success, failure or 404), so a "slow
fetch" is simply one that is resolved steps later. Each example runs its own asyncio loop,
stepped by hand: after every rule the loop turns a fixed number of times (far more than any
chain of wake-ups here needs, so every task is blocked again), and the invariant compares
what each caller got, the counters, the held entries, the in-flight fetches and the running
tasks with the model.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from asyncpromptcache import (
    AsyncPromptClient,
    FetchOptions,
    PromptCacheError,
    PromptKey,
    PromptNotFoundError,
    ServerError,
    TextPrompt,
)
from asyncpromptcache.testing import FakeClock

TTL = 10.0
MAX_STALE = 30.0
BACKOFF = 5.0
BACKOFF_MAX = 20.0
NEGATIVE = 4.0
MAX_SIZE = 2
# "a" and "ab": invalidating one name must not touch the other (no prefix matching).
KEYS = [
    PromptKey("a", "production", None),
    PromptKey("a", "staging", None),
    PromptKey("ab", "production", None),
]
NAMES = sorted({key.name for key in KEYS})
# (cache_ttl_seconds, fallback) of a caller.
KINDS: list[tuple[float | None, str | None]] = [(None, None), (None, "fb"), (0, None)]
Outcome = tuple[Any, ...]


class Upstream:
    """A source whose every fetch waits until the test resolves it."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[PromptKey, asyncio.Future[TextPrompt]]] = {}
        self.started = 0

    async def fetch(self, key: PromptKey, options: FetchOptions) -> TextPrompt:
        self.started += 1
        rid = self.started
        future: asyncio.Future[TextPrompt] = asyncio.get_running_loop().create_future()
        self.pending[rid] = (key, future)
        try:
            return await future
        finally:
            self.pending.pop(rid, None)

    async def aclose(self) -> None:
        return None


@dataclass
class MEntry:
    version: int
    expires: float
    stale_until: float
    failures: int = 0
    retry_not_before: float = -math.inf


@dataclass
class MFlight:
    rid: int
    key: PromptKey
    is_refresh: bool
    ttl: float
    writes_back: bool = True
    waiters: list[int] = field(default_factory=list)


@dataclass
class MCaller:
    key: PromptKey
    ttl: float | None
    fallback: str | None
    # Asks for the default label by the name alone (the hit path's by-name index).
    by_name: bool = False
    expected: Outcome | None = None  # None: still waiting
    task: asyncio.Task[None] | None = None


COUNTERS = ("hits", "stale_hits", "misses", "joined", "fetches", "fetch_errors", "refreshes",
            "refresh_errors", "evictions", "fallbacks", "negative_hits")


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Failures are logged with the error as an argument; records kept by pytest's log
        # capture would keep every example's tasks and frames alive, slowing the run.
        self.logger = logging.getLogger("asyncpromptcache")
        self.log_level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.upstream = Upstream()
        self.client = AsyncPromptClient(
            source=self.upstream, clock=self.clock, cache_ttl_seconds=TTL,
            max_stale_seconds=MAX_STALE, max_size=MAX_SIZE, refresh_backoff_seconds=BACKOFF,
            refresh_backoff_max_seconds=BACKOFF_MAX, env={}, negative_cache_seconds=NEGATIVE,
        )
        self.stop: asyncio.Event | None = None
        self.host = self.loop.create_task(self._host())
        self.outcomes: dict[int, Outcome] = {}
        # The model.
        self.entries: OrderedDict[PromptKey, MEntry] = OrderedDict()  # LRU first
        self.touched: dict[PromptKey, float] = {}  # uses not yet applied to the LRU order
        self.inflight: dict[PromptKey, MFlight] = {}
        # Recent failures of keys with nothing servable, least recently used first (bounded
        # by MAX_SIZE like the store): key -> (until, error name).
        self.negative: OrderedDict[PromptKey, tuple[float, str]] = OrderedDict()
        self.flights: dict[int, MFlight] = {}  # every unresolved fetch, orphans included
        self.rids = 0
        self.callers: dict[int, MCaller] = {}
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.serial = 0
        self.settle()

    async def _host(self) -> None:
        self.stop = asyncio.Event()
        async with self.client:
            await self.stop.wait()

    def settle(self) -> None:
        async def spin() -> None:
            for _ in range(40):
                await asyncio.sleep(0)

        self.loop.run_until_complete(spin())

    async def _call(self, cid: int, caller: MCaller) -> None:
        try:
            prompt = await self.client.get_prompt(
                caller.key.name, label=None if caller.by_name else caller.key.label,
                cache_ttl_seconds=caller.ttl,
                fallback=caller.fallback,
            )
        except asyncio.CancelledError:
            self.outcomes[cid] = ("cancelled",)
            raise
        except PromptCacheError as exc:
            self.outcomes[cid] = ("error", type(exc).__name__)
        else:
            assert prompt.name == caller.key.name
            if prompt.is_fallback:
                assert prompt.prompt == caller.fallback
                self.outcomes[cid] = ("fallback",)
            else:
                assert prompt.labels == (caller.key.label,)
                self.outcomes[cid] = ("ok", prompt.version)

    # -- model helpers ---------------------------------------------------------------------

    def _start(self, key: PromptKey, ttl: float, *, is_refresh: bool) -> MFlight:
        self.rids += 1
        flight = MFlight(self.rids, key, is_refresh, ttl)
        self.inflight[key] = self.flights[flight.rid] = flight
        self.counts["refreshes" if is_refresh else "fetches"] += 1
        return flight

    def _touch(self, key: PromptKey) -> None:
        # The engine notes a use with the clock reading of that call (the hit path stays one
        # dict store) and applies the notes, oldest reading first, before an insertion: LRU
        # order, with equal readings (a fake clock that did not move) in first-use order.
        self.touched[key] = self.clock()

    def _forget(self, key: PromptKey) -> bool:
        self.touched.pop(key, None)
        return self.entries.pop(key, None) is not None

    def _drop(self, key: PromptKey) -> bool:
        """Invalidation or a 404: the entry and any negative entry go."""
        self.negative.pop(key, None)
        return self._forget(key)

    def _negative_hit(self, key: PromptKey) -> str | None:
        if key not in self.negative:
            return None
        self.negative.move_to_end(key)  # a lookup counts as a use, expired or not
        until, error = self.negative[key]
        return error if self.clock() < until else None

    def _remember(self, key: PromptKey, error: str) -> None:
        now = self.clock()
        for old in [k for k, (until, _) in self.negative.items() if until <= now]:
            del self.negative[old]
        if key in self.negative:
            self.negative.move_to_end(key)
        elif len(self.negative) >= MAX_SIZE:
            self.negative.popitem(last=False)
        self.negative[key] = (now + NEGATIVE, error)

    def _put(self, key: PromptKey, version: int, ttl: float) -> None:
        now = self.clock()
        for touched in sorted(self.touched, key=self.touched.__getitem__):
            self.entries.move_to_end(touched)
        self.touched.clear()
        if key not in self.entries and len(self.entries) >= MAX_SIZE:
            self._forget(next(iter(self.entries)))
            self.counts["evictions"] += 1
        self.entries[key] = MEntry(version, now + ttl, now + ttl + MAX_STALE)
        self.entries.move_to_end(key)
        self.negative.pop(key, None)

    def _orphan(self, key: PromptKey) -> None:
        flight = self.inflight.pop(key, None)
        if flight is not None:
            flight.writes_back = False

    def _fail_waiter(self, caller: MCaller, error: str) -> Outcome:
        if caller.fallback is not None:
            self.counts["fallbacks"] += 1
            return ("fallback",)
        return ("error", error)

    # -- rules -----------------------------------------------------------------------------

    @initialize(keys=st.lists(st.sampled_from(KEYS), unique=True, max_size=MAX_SIZE))
    def warm(self, keys: list[PromptKey]) -> None:
        for key in keys:
            self.get(key, KINDS[0], "ok")

    @rule(key=st.sampled_from(KEYS), kind=st.sampled_from(KINDS),
          then=st.sampled_from([None, None, "ok", "fail"]), by_name=st.booleans())
    def get(self, key: PromptKey, kind: tuple[float | None, str | None],
            then: str | None, by_name: bool = False) -> None:
        """A call; ``then``: resolve at once the fetch it started (a fast upstream), if any;
        ``by_name``: a default-label key asked for without its label."""
        started = self.rids
        cid = len(self.callers)
        caller = self.callers[cid] = MCaller(
            key, kind[0], kind[1], by_name=by_name and key.label == "production")
        now = self.clock()
        ttl = TTL if caller.ttl is None else caller.ttl
        entry = self.entries.get(key)
        if entry is not None and ttl > 0 and now < entry.expires:
            self.counts["hits"] += 1
            self._touch(key)
            caller.expected = ("ok", entry.version)
        elif entry is not None and ttl > 0 and now < entry.stale_until:
            self.counts["stale_hits"] += 1
            self._touch(key)
            caller.expected = ("ok", entry.version)
            if key not in self.inflight and now >= entry.retry_not_before:
                self._start(key, ttl, is_refresh=True)
        else:
            self.counts["misses"] += 1
            flight = self.inflight.get(key)
            failed = self._negative_hit(key) if flight is None and ttl > 0 else None
            if failed is not None:
                self.counts["negative_hits"] += 1
                caller.expected = self._fail_waiter(caller, failed)
            elif flight is None:
                flight = self._start(key, ttl, is_refresh=False)
            else:
                self.counts["joined"] += 1
            if flight is not None:
                flight.waiters.append(cid)
        caller.task = self.loop.create_task(self._call(cid, caller))
        self.settle()
        if then is not None and self.rids > started:
            self._resolve(self.flights[self.rids], then)

    @rule(seconds=st.sampled_from([0.5, 4.0, 9.9, 10.0, 15.0, 25.0, 31.0, 45.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: bool(self.flights))
    @rule(pick=st.integers(min_value=0, max_value=50),
          outcome=st.sampled_from(["ok", "ok", "fail", "404"]))
    def resolve(self, pick: int, outcome: str) -> None:
        rids = sorted(self.flights)
        self._resolve(self.flights[rids[pick % len(rids)]], outcome)

    @precondition(lambda self: bool(self.flights))
    @rule(outcome=st.sampled_from(["ok", "fail", "404"]))
    def resolve_all(self, outcome: str) -> None:
        for rid in sorted(self.flights):
            self._resolve(self.flights[rid], outcome)

    def _resolve(self, flight: MFlight, outcome: str) -> None:
        del self.flights[flight.rid]
        key, future = self.upstream.pending[flight.rid]
        assert key == flight.key
        if self.inflight.get(key) is flight:
            del self.inflight[key]
        now = self.clock()
        waiters = [self.callers[cid] for cid in flight.waiters]
        if outcome == "ok":
            self.serial += 1
            future.set_result(TextPrompt(name=key.name, version=self.serial,
                                         prompt=f"{key}@{self.serial}", labels=[str(key.label)]))
            if flight.writes_back:
                self._put(key, self.serial, flight.ttl)
            for caller in waiters:
                caller.expected = ("ok", self.serial)
        else:
            self.counts["refresh_errors" if flight.is_refresh else "fetch_errors"] += 1
            if outcome == "404":
                future.set_exception(PromptNotFoundError("gone", name=key.name, key=key))
                if flight.writes_back:
                    self._drop(key)
                    self._remember(key, "PromptNotFoundError")
                for caller in waiters:
                    caller.expected = self._fail_waiter(caller, "PromptNotFoundError")
            else:
                future.set_exception(ServerError("down", status=503, name=key.name, key=key))
                entry = self.entries.get(key)
                # A fetch orphaned by an invalidation says nothing about the entry held now.
                if entry is not None and flight.writes_back:
                    entry.failures += 1
                    delay = min(BACKOFF * 2.0 ** (entry.failures - 1), BACKOFF_MAX)
                    entry.retry_not_before = now + delay
                held = self.entries.get(key)
                if flight.writes_back and (held is None or now >= held.stale_until):
                    self._remember(key, "ServerError")
                for caller in waiters:
                    if held is not None and now < held.stale_until:
                        caller.expected = ("ok", held.version)  # stale-if-error
                    else:
                        caller.expected = self._fail_waiter(caller, "ServerError")
        self.settle()

    @precondition(lambda self: any(c.expected is None for c in self.callers.values()))
    @rule(pick=st.integers(min_value=0, max_value=50))
    def cancel(self, pick: int) -> None:
        waiting = [cid for cid, c in self.callers.items() if c.expected is None]
        cid = waiting[pick % len(waiting)]
        caller = self.callers[cid]
        for flight in self.flights.values():
            if cid in flight.waiters:
                flight.waiters.remove(cid)
        caller.expected = ("cancelled",)
        assert caller.task is not None
        caller.task.cancel()
        self.settle()

    @rule(what=st.sampled_from([*KEYS, *NAMES, "clear"]))
    def invalidate(self, what: PromptKey | str) -> None:
        """Drop one key, every key of one name, or everything."""
        if isinstance(what, PromptKey):
            expected = 1 if self._drop(what) else 0
            self._orphan(what)
            assert self.client.invalidate(what.name, label=what.label) == expected
        elif what != "clear":
            keys = [k for k in {*self.entries, *self.inflight, *self.negative} if k.name == what]
            expected = sum(1 for k in keys if self._drop(k))
            for key in keys:
                self._orphan(key)
            assert self.client.invalidate(what) == expected
        else:
            expected = len(self.entries)
            self.entries.clear()
            self.touched.clear()
            self.negative.clear()
            for key in list(self.inflight):
                self._orphan(key)
            assert self.client.clear() == expected

    # -- checks ----------------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        for cid, caller in self.callers.items():
            assert self.outcomes.get(cid) == caller.expected, (cid, caller)
        stats = self.client.stats()
        assert {name: getattr(stats, name) for name in COUNTERS} == self.counts
        now = self.clock()
        held = {s.key: (s.version, s.fresh, s.consecutive_failures) for s in stats.keys}
        assert held == {
            key: (e.version, now < e.expires, e.failures) for key, e in self.entries.items()
        }
        assert stats.entries == len(self.entries)
        assert stats.negative_entries == sum(1 for until, _ in self.negative.values()
                                             if now < until)
        assert self.client.cache.in_flight == stats.in_flight == len(self.inflight)
        # Upstream: one request per flight started, each still pending until resolved.
        assert self.upstream.started == self.rids
        assert {rid: key for rid, (key, _) in self.upstream.pending.items()} == {
            rid: f.key for rid, f in self.flights.items()
        }
        # One task per unresolved fetch, nothing else of ours running.
        ours = [t for t in asyncio.all_tasks(self.loop)
                if t.get_name().startswith("asyncpromptcache:")]
        assert len(ours) == len(self.flights)
        waiting = {cid for cid, c in self.callers.items() if c.expected is None}
        assert {cid for cid, c in self.callers.items()
                if c.task is not None and not c.task.done()} == waiting

    def teardown(self) -> None:
        try:
            now = self.clock()
            servable = {k: ("ok", e.version) for k, e in self.entries.items()
                        if now < e.stale_until}
            if self.stop is not None:
                self.stop.set()
            self.loop.run_until_complete(asyncio.wait_for(self.host, 5))
            self.settle()
            # Closing cancels every fetch; whoever still waited is told the client closed,
            # or (stale-if-error) served the copy still held as the fetch ended.
            for cid, caller in self.callers.items():
                closed = ("error", "ClientStateError")
                allowed = [caller.expected] if caller.expected else [
                    closed, servable.get(caller.key, closed)]
                assert self.outcomes.get(cid) in allowed, (cid, caller)
            assert self.client.cache.in_flight == 0
            assert not self.upstream.pending
            assert not asyncio.all_tasks(self.loop)
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()
            self.logger.setLevel(self.log_level)


CacheMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCacheModel = CacheMachine.TestCase


# -- regressions found by the model --------------------------------------------------------


@pytest.mark.anyio
async def test_an_orphaned_fetch_failing_does_not_back_off_the_new_entry() -> None:
    """A refresh orphaned by invalidate() that fails late must not mark the entry stored since
    by a newer fetch as failing, nor delay its next refresh (found by the model above)."""
    clock = FakeClock()
    upstream = Upstream()

    async def pending(count: int) -> None:
        with anyio.fail_after(5):
            while len(upstream.pending) < count:
                await anyio.lowlevel.checkpoint()

    def resolve(rid: int, result: TextPrompt | Exception) -> None:
        _, future = upstream.pending[rid]
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)

    def prompt(version: int) -> TextPrompt:
        return TextPrompt(name="a", version=version, prompt="x", labels=["production"])

    async with AsyncPromptClient(source=upstream, clock=clock, cache_ttl_seconds=10,
                                 refresh_backoff_seconds=100, env={}) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get_prompt, "a")
            await pending(1)
            resolve(1, prompt(1))
        clock.advance(11)
        assert (await client.get_prompt("a")).version == 1  # stale: refresh 2 starts
        await pending(1)
        assert client.invalidate("a") == 1  # refresh 2 is now an orphan
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get_prompt, "a")
            await pending(2)
            resolve(3, prompt(3))
        resolve(2, ServerError("late failure", status=503, name="a"))
        with anyio.fail_after(5):
            while upstream.pending:
                await anyio.lowlevel.checkpoint()
        (key_stats,) = client.stats().keys
        assert (key_stats.version, key_stats.consecutive_failures) == (3, 0)
        assert key_stats.last_error is None
        clock.advance(11)
        assert (await client.get_prompt("a")).version == 3
        await pending(1)  # refreshed at once: no backoff inherited from the orphan
        assert upstream.started == 4
        resolve(4, prompt(4))
