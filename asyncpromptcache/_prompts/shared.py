"""The prompt tier's use of the Redis kit (``_tiers/redis``): ``SharedPrompts``, one
client's side of the shared tier, living in that client's event loop. It holds the policy:
when to read L2, take a key's lock, write, publish, wake waiters and queue what Redis did not
take. The Redis I/O of the values (writes, and what a change drops: dependents and suspects
sets, the locks of fetches in flight) is ``shared_values``'s; the webhook claims are
``shared_webhooks``'s; the naming, value format and messages are ``shared_format``'s; the
connection, health policy, lock, bus and scripts are the kit's; the L1 engine knows nothing of
any of them.

How a client uses it (the shared tier's promises, see the README's "Many processes"):

* ``fetch_through`` wraps the engine's fetch of one key: a fresh L2 value is returned with its
  age (L1 keeps it for the rest of its TTL only); a stale L2 value is served at once when L1
  has nothing for the key; otherwise one process takes the key's lock (``SET NX PX`` with a
  random token, released by a Lua compare-and-delete, expiring with the fetch budget),
  fetches upstream, writes L2 and publishes ``filled``; the others wait for that message, for
  the lock's end, for their own tier going down or for a bounded re-check (never past their
  budget), then read L2 or take the lock over. Commands on this cold path are bounded by
  what fits the caller's budget, not the tier's short timeout.
* Time across machines: L2 records the writer's wall clock; a ``fetched_at`` in the reader's
  future (a writer whose clock runs ahead) is taken as now, so no value is fresh here for
  longer than its TTL.
* ``propagate_soon`` sends a change (invalidate, clear) to L2 and to every process's L1; a
  change Redis did not take is queued and sent as soon as a command succeeds again (whether
  or not the subscription dropped). ``clear()`` moves the namespace to a new generation,
  never a lower one than any process is on (a generation key lost in Redis is written back).
* The bus keeps the subscription and applies the changes other processes publish; L1
  entries are marked stale when it comes back, since invalidations may have been missed.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from .._core.logs import RateLimitedLog
from .._tiers.redis import Connection, Down, RedisTier, resolve_shared
from .._tiers.redis.bus import Bus
from .._tiers.redis.lock import new_token, release
from .._tiers.redis.stats import SharedStats
from .engine import Fetched
from .keys import PromptKey
from .models import Prompt
from .shared_format import (
    Change,
    Names,
    decode_change,
    decode_stored,
    encode_change,
    namespace_id,
    parts_of,
)
from .shared_values import SharedValues
from .shared_webhooks import SharedWebhooks

__all__ = ["RedisTier", "SharedPrompts", "resolve_shared"]

logger = logging.getLogger("asyncpromptcache")
# Rejected Redis content may come in floods: counted, and logged once a minute at most.
_rejected = RateLimitedLog(logger)

# Take a fetch's lock (KEYS[1]) and list its key in the name's index (KEYS[2]): an
# invalidation of the name finds (and deletes) the lock even before a value is written.
_TAKE = Connection.script(
    "if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end "
    "redis.call('sadd', KEYS[2], ARGV[3]) "
    "if redis.call('pttl', KEYS[2]) < tonumber(ARGV[2]) then "
    "redis.call('pexpire', KEYS[2], ARGV[2]) end return 1"
)
# The namespace's generation, at least ARGV[1] (written back when lost or foreign).
_GENERATION_AT_LEAST = Connection.script(
    "local g = tonumber(redis.call('get', KEYS[1])) or 0 "
    "local floor = tonumber(ARGV[1]) "
    "if g < floor then redis.call('set', KEYS[1], floor) return floor end return g"
)
# The namespace's next generation: above both Redis's and ARGV[1] (``clear()``).
_NEXT_GENERATION = Connection.script(
    "local g = math.max(tonumber(redis.call('get', KEYS[1])) or 0, tonumber(ARGV[1])) + 1 "
    "redis.call('set', KEYS[1], g) return g"
)
_GENERATION_CHECK_SECONDS = 1.0
_MAX_UNSENT = 1000  # past this many changes kept while Redis is down, send one clear()


class _Superseded(Exception):
    """The key was invalidated while its fetch ran. Never leaves this module."""


def _generation(raw: Any) -> int:
    try:
        return max(0, int(raw or 0))
    except (TypeError, ValueError):  # a Redis others write to: never trust its contents
        return 0


class SharedPrompts:
    """One prompt client's side of the shared tier, in that client's event loop."""

    @classmethod
    def open(
        cls, tier: RedisTier, *, host: str, public_key: str | None, max_stale: float | None,
        apply: Callable[[Change], int], put_ttl: float = 60.0,
        suspect: Callable[[PromptKey, Prompt], None] | None = None,
    ) -> SharedPrompts:
        return cls(tier, Names(namespace_id(tier.namespace, host, public_key)),
                   max_stale, apply, put_ttl, suspect)

    def __init__(
        self, tier: RedisTier, names: Names, max_stale: float | None,
        apply: Callable[[Change], int], put_ttl: float = 60.0,
        suspect: Callable[[PromptKey, Prompt], None] | None = None,
    ) -> None:
        self._tier = tier
        self._conn = Connection(tier)
        self._timeout = tier.timeout_seconds
        self._bus = Bus(self._conn, names.channel)
        self._conn.on_up(self._send_unsent)
        self._conn.on_down(self._tier_down)
        # Told of each value read whose composition is unknown (see Change.suspect).
        self._suspect = suspect
        self._put_ttl = put_ttl  # how long a prompt written through (not fetched) stays fresh
        self._names = names
        self._apply = apply
        self._retain = tier.stale_retention_seconds if max_stale is None else max_stale
        self._values = SharedValues(self._conn, self._retain)
        self._wall = tier._wall
        self._sign = tier._signing_key
        self.id = new_token()[:16]
        self._webhooks = SharedWebhooks(self._conn, names, self.id)
        self._waiters: dict[PromptKey, list[anyio.Event]] = {}
        self._pending = 0
        # How often each name was invalidated (and the cache cleared), here or elsewhere: a
        # fetch that saw its name dropped meanwhile may hold the old version, not for L2.
        self._dropped: Counter[str] = Counter()
        self._clears = 0
        # The last change (a number counting up) to each name's content, here or elsewhere: a
        # composed prompt resolved from a part that changed meanwhile is not for L2 either.
        self._changes = 0
        self._changed_at: dict[str, int] = {}
        # Changes made while Redis was unreachable, sent once it answers again.
        self._unsent: list[Change] = []
        self._resending = False
        self._settled = anyio.Event()
        self._settled.set()
        self._propagating = anyio.Lock()  # changes reach L2 in the order they were made
        self._tg: TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        """Subscribe in ``tg``; returns once subscribed, or after a short grace (then L1-only
        until Redis answers). Never raises."""
        self._tg = tg
        self._conn.heal_in(tg)
        await tg.start(self._bus.run, self._received, self._reconnected)
        tg.start_soon(self._watch_generation)

    async def drain(self) -> None:
        """Wait (shielded, bounded by a few times the tier's timeout per change) for the
        changes of this process still on their way to L2 and the other processes: a client
        closed right after a change must not leave the fleet on the old version."""
        bound = min(30.0, max(1.0, 8 * self._timeout) * max(1, self._pending))
        with anyio.CancelScope(shield=True), anyio.move_on_after(bound):
            while self._pending:
                await self._settled.wait()
            if self._unsent and self._conn.up:  # queued before a start that had no Redis
                self._send_unsent()
                while self._pending:
                    await self._settled.wait()

    def stats(self) -> SharedStats:
        return SharedStats(state=self._conn.state, **self._conn.counts)

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def _call(self, command: Callable[[Any], Awaitable[Any]],
                    bound: float | None = None) -> Any:
        return await self._conn.call(command, bound=bound)

    # -- health ----------------------------------------------------------------------------

    async def _reconnected(self) -> None:
        """The subscription is (again) in place: invalidations may have been missed while
        unsubscribed (or, on a first connection after an outage at start, while entries
        were cached): revalidate. On the first connection of a start nothing is cached yet:
        a no-op."""
        self._apply(Change("expire"))  # first: nothing is served as fresh once Redis is back
        await self._sync_generation()
        self._send_unsent()

    def _send_unsent(self) -> None:
        """Send the changes queued while Redis did not take them (Redis answers again)."""
        unsent, self._unsent = self._unsent, []
        for change in unsent:
            self.propagate_soon(change, again=True)

    async def _resend(self) -> None:
        """Try Redis (with backoff) until a command succeeds, then send what is queued: a
        change made during a stall goes out as soon as Redis answers, whether or not the
        subscription dropped or the breaker opened, and with no other traffic. (Once the
        breaker is open, the connection's own probe finds Redis back: ``on_up`` sends them.)"""
        backoff = 0.05
        try:
            while self._unsent:
                await anyio.sleep(backoff)
                backoff = min(2 * backoff, self._tier.reconnect_max_seconds)
                if self._conn.state != "down":
                    with contextlib.suppress(Down):
                        await self._conn.do("ping")
                        self._send_unsent()
        finally:
            self._resending = False

    def _tier_down(self) -> None:
        """The breaker opened: every waiter goes upstream at once."""
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _watch_generation(self) -> None:
        """Re-read the namespace's generation now and then: a generation key lost in Redis
        is written back by the processes that know it, and a process started meanwhile
        (reading none) joins them within this interval instead of splitting the fleet."""
        while True:
            await anyio.sleep(_GENERATION_CHECK_SECONDS)
            if self._conn.state == "up":
                with contextlib.suppress(Down):
                    await self._sync_generation()

    async def _sync_generation(self) -> None:
        """Adopt the namespace's generation from Redis, never going back: a generation key
        lost (``FLUSHALL``, eviction) is written back, so the fleet stays on one generation."""
        generation = await self._conn.run(
            _GENERATION_AT_LEAST, [self._names.generation_key],
            [self._names.generation])
        self._names = attrs.evolve(self._names,
                                   generation=max(self._names.generation, _generation(generation)))

    async def _received(self, raw: bytes) -> None:
        try:
            change = decode_change(raw, self._sign)
        except Exception as exc:  # unsigned or wrongly signed: anyone may PUBLISH
            self._conn.counts["rejected_values"] += 1
            _rejected.warning("ignored a change message on the shared tier's channel: %s", exc)
            return
        if change is None or change.origin == self.id:
            return
        if change.kind == "filled" or change.kind == "released":
            self._wake(change.keys)
            return
        self._conn.counts["changes_received"] += 1
        self._note_dropped(change)
        if change.kind == "invalidate":
            self._wake(change.keys)  # a label's new version may have landed in L2
        if change.kind == "clear":
            # The message's generation is not trusted (a forged one would split the fleet):
            # the namespace's generation is read again from Redis.
            with contextlib.suppress(Down):
                await self._sync_generation()
        try:
            self._apply(change)
        except Exception:
            logger.exception("applying a change from the shared tier failed")

    def _wake(self, keys: tuple[PromptKey, ...]) -> None:
        """Wake this process's readers waiting on ``keys``: they read L2 again."""
        for key in keys:
            for event in self._waiters.get(key, ()):
                event.set()

    # -- reads and fetches -----------------------------------------------------------------

    async def _read(self, names: Names, key: PromptKey,
                    bound: float | None = None) -> tuple[Prompt, float] | None:
        """The value of ``key`` in L2 and when it was fetched, clamped to now: a writer whose
        clock runs ahead never makes a value fresh here for longer than its TTL."""
        raw = await self._conn.do("get", names.value(key), bound=bound)
        if raw is None:
            return None
        try:
            prompt, fetched_at, suspect = decode_stored(raw, key, self._sign)
        except Exception as exc:  # Redis content is never a caller's error
            self._conn.counts["rejected_values"] += 1
            _rejected.warning("ignored the shared tier's value of prompt %s: %s",
                              key.describe(), exc)
            return None
        if suspect and self._suspect is not None:
            self._suspect(key, prompt)
        return prompt, min(fetched_at, self._wall())

    async def fetch_through(
        self, key: PromptKey, ttl: float, upstream: Callable[[], Awaitable[Prompt]],
        budget: float, have_stale: Callable[[], bool],
    ) -> Prompt | Fetched:
        """The engine's fetch of ``key`` through L2 (see the module docstring)."""
        if not self._conn.up:
            return await upstream()
        if self._pending:
            # This process's own changes reach L2 first: every one of them, also one made
            # while the first settled (a label move's second webhook right after its first).
            with anyio.move_on_after(4 * self._timeout):
                while self._pending:
                    await self._settled.wait()
            if self._pending:
                return await upstream()  # L2 may still hold what this process dropped
        if self._unsent and any(_touches(change, key) for change in self._unsent):
            return await upstream()  # a change of this process that L2 has not seen yet
        cold = self._conn.bound_for(budget)  # a busy machine's slow reply is not an outage
        deadline = anyio.current_time() + budget  # no waiting past the caller's budget
        recheck = min(max(0.05, budget / 10), 1.0)
        counted_miss = False
        while True:
            names = self._names
            event = anyio.Event()
            waiters = self._waiters.setdefault(key, [])
            waiters.append(event)  # before reading: a fill published meanwhile is not missed
            try:
                found = await self._read(names, key, cold)
                if found is not None and self._wall() - found[1] >= ttl + self._retain:
                    found = None  # written with a longer TTL: past what this client serves
                if found is not None:
                    prompt, fetched_at = found
                    age = self._wall() - fetched_at
                    if age < ttl:
                        self._conn.counts["l2_hits"] += 1
                        return Fetched(prompt, age)
                    if not have_stale():
                        # Served at once, held stale in L1: its next use refreshes it.
                        self._conn.counts["l2_stale_served"] += 1
                        return Fetched(prompt, age)
                elif not counted_miss:
                    counted_miss = True
                    self._conn.counts["l2_misses"] += 1
                lock, token = names.lock(key), new_token()
                if await self._conn.run(
                        _TAKE, [lock, names.index(key.name)],
                        [token, str(max(1, int(budget * 1000))), names.key_id(key)],
                        bound=cold):
                    # The previous holder may have written it between our read and our lock.
                    again = await self._read(names, key, cold)
                    if again is not None and self._wall() - again[1] < ttl:
                        await release(self._conn, lock, token)
                        self._conn.counts["l2_hits"] += 1
                        return Fetched(again[0], self._wall() - again[1])
                    return await self._fetch_locked(names, key, ttl, upstream, lock, token)
                left = deadline - anyio.current_time()
                if left <= 0:
                    return await upstream()
                self._conn.counts["waits"] += 1
                pttl = await self._conn.do("pttl", lock, bound=cold)
                if not isinstance(pttl, int) or pttl == -1:
                    # A lock that never expires (not one this SDK takes): one bounded wait,
                    # then the caller fetches for itself.
                    with anyio.move_on_after(min(recheck, left)):
                        await event.wait()
                    if self._conn.up and not event.is_set():
                        self._conn.counts["takeovers"] += 1
                        return await upstream()
                elif pttl > 0:
                    # Woken by the fill (or release) message, by the tier going down, or at
                    # a bounded re-check: never by one message alone.
                    with anyio.move_on_after(min(pttl / 1000 + 0.01, recheck, left)):
                        await event.wait()
                    if pttl / 1000 <= recheck and not event.is_set():
                        self._conn.counts["takeovers"] += 1  # its holder died or overran
                if not self._conn.up:
                    return await upstream()
            except Down:
                return await upstream()
            finally:
                waiters.remove(event)
                if not waiters and self._waiters.get(key) is waiters:
                    del self._waiters[key]

    async def _fetch_locked(
        self, names: Names, key: PromptKey, ttl: float,
        upstream: Callable[[], Awaitable[Prompt]], lock: str, token: str,
    ) -> Prompt | Fetched:
        self._conn.counts["upstream_fetches"] += 1
        seen, since = (self._clears, self._dropped[key.name]), self._changes
        try:
            prompt = await upstream()
            if (self._clears, self._dropped[key.name]) != seen or any(
                self._changed_at.get(part, 0) > since for part in parts_of(prompt)
            ):
                raise _Superseded
        except _Superseded:
            # Invalidated while fetching: the caller gets what was fetched, L2 does not.
            await self._release(key, lock, token)
            return Fetched(prompt, 0.0)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release(key, lock, token)
            raise
        try:
            if await self._values.write(names, key, prompt, ttl, held=(lock, token)):
                await self._publish(Change("filled", (key,)))
            else:  # invalidated meanwhile (its lock deleted) or overran: not for L2
                await self._publish(Change("released", (key,)))
        except Down:
            pass
        except Exception:  # not writable to L2 (never expected): the caller still gets it
            self._conn.counts["redis_errors"] += 1
            logger.exception("writing prompt %s to the shared tier failed", key.describe())
            await self._release(key, lock, token)
        return Fetched(prompt, 0.0)

    # -- webhooks: the fleet-wide claims, kept by ``SharedWebhooks`` ----------------------

    async def claim_event(self, event_id: str) -> bool:
        """As ``SharedWebhooks.claim_event``."""
        return await self._webhooks.claim_event(event_id)

    async def release_event(self, event_id: str) -> None:
        """As ``SharedWebhooks.release_event``."""
        await self._webhooks.release_event(event_id)

    async def newest_state(self, name: str, version: int, updated_at: float, *,
                           claimed: str | None = None) -> bool:
        """As ``SharedWebhooks.newest_state``."""
        return await self._webhooks.newest_state(name, version, updated_at, claimed=claimed)

    async def _release(self, key: PromptKey, lock: str, token: str) -> None:
        try:
            await release(self._conn, lock, token)
            await self._publish(Change("released", (key,)))
        except Down:
            pass

    async def _publish(self, change: Change) -> None:
        change = attrs.evolve(change, origin=self.id)
        await self._bus.publish(encode_change(change, self._sign))

    # -- changes ---------------------------------------------------------------------------

    def propagate_soon(self, change: Change, *, again: bool = False) -> None:
        """Send ``change`` (already applied here) to L2 and every other process, in the
        background; this process's fetches wait for it to land in L2 first (``again``: a
        change queued while Redis did not take it, noted already)."""
        if self._tg is None or self._conn.forked:
            return
        if not again:
            self._note_dropped(change)
        self._pending += 1
        if self._settled.is_set():
            self._settled = anyio.Event()
        self._tg.start_soon(self._propagate, change)

    def _note_dropped(self, change: Change) -> None:
        if change.kind == "clear":
            self._clears += 1
        elif change.kind == "invalidate":
            self._dropped.update({*change.names, *(key.name for key in change.keys)})
            for name in change.changed:
                self._changes += 1
                self._changed_at[name] = self._changes

    async def _propagate(self, change: Change) -> None:
        async with self._propagating:
            try:
                await self._propagate_now(change)
            except Exception:  # never into the client's task group: that would close it
                self._conn.counts["redis_errors"] += 1
                logger.exception("sending a change to the shared tier failed; change dropped")

    async def _propagate_now(self, change: Change) -> None:
        queued = _without_puts(change)  # what is sent once Redis answers again, if it fails
        try:
            if not self._conn.up:
                raise Down
            names = self._names
            if change.kind == "invalidate":
                suspects = await self._values.drop(names, change)
                for key, prompt in change.puts:  # then the versions written through
                    await self._values.write(names, key, prompt, self._put_ttl,
                                             suspect=change.suspect)
                self._wake(tuple(key for key, _ in change.puts))
                if suspects:  # every process drops them, this one too (read from L2)
                    self._apply(Change.invalidate(keys=suspects))
                change = attrs.evolve(change, keys=(*change.keys, *suspects), puts=(), moved=())
            elif change.kind == "clear":
                # Never below the generation this process is on: a generation key lost in
                # Redis (FLUSHALL, eviction) must not bring the fleet back to an old one.
                generation = _generation(await self._conn.run(
                    _NEXT_GENERATION, [names.generation_key], [names.generation]))
                self._names = attrs.evolve(self._names, generation=generation)
                change = attrs.evolve(change, generation=generation)
            await self._publish(change)
            self._conn.counts["changes_sent"] += 1
        except Down:
            if change.kind == "clear" or len(self._unsent) >= _MAX_UNSENT:
                self._unsent = [Change("clear")]  # clear() supersedes everything before it
            else:
                self._unsent.append(queued)
            if not self._resending and self._tg is not None:
                self._resending = True
                self._tg.start_soon(self._resend)
        finally:
            self._pending -= 1
            if not self._pending:
                self._settled.set()


def _touches(change: Change, key: PromptKey) -> bool:
    """Whether L2's value of ``key`` may be one that ``change`` drops."""
    if change.kind == "clear":
        return True
    names = {*change.names, *change.changed, *(k.name for k in change.keys),
             *(k.name for k, _ in change.puts), *(k.name for k in change.moved)}
    return key.name in names or bool(change.changed)  # composed prompts: any of them


def _without_puts(change: Change) -> Change:
    """``change`` as sent after an outage: its puts are not written then (another process
    may have written a newer version meanwhile) but dropped from L2 and every L1, so the
    fleet fetches them again."""
    if not change.puts and not change.moved:
        return change
    keys = tuple(dict.fromkeys((*change.keys, *(key for key, _ in change.puts))))
    return attrs.evolve(change, keys=keys, puts=(), moved=())
