"""The shared tier: ``RedisTier`` (what the user configures) and ``_Link`` (one client's live
connection to it). Everything that speaks Redis is here; the naming, value format and
messages are in ``_shared.py``; the L1 engine knows nothing of either.

How a client uses its link (SPEC section 8):

* ``fetch_through`` wraps the engine's fetch of one key: a fresh L2 value is returned with its
  age (L1 keeps it for the rest of its TTL only); a stale L2 value is served at once when L1
  has nothing for the key; otherwise one process takes the key's lock (``SET NX PX`` with a
  random token, released by a Lua compare-and-delete, expiring with the fetch budget),
  fetches upstream, writes L2 and publishes ``filled``; the others wait for that message
  (bounded by the lock's expiry), then read L2 or take the lock over.
* ``propagate`` sends a change (invalidate, clear) to L2 and to every process's L1.
* ``run`` keeps the pub/sub subscription, applies the changes other processes publish, and
  reconnects with backoff. Any Redis trouble marks the tier down: fetches then go upstream
  as a single-process cache's would, until Redis answers again. L1 entries are marked stale
  when the subscription comes back, since invalidations may have been missed meanwhile.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from ._cache import Fetched
from ._errors import ConfigurationError
from ._keys import PromptKey
from ._logging import RateLimitedLog
from ._models import Prompt
from ._shared import (
    Change,
    Names,
    SharedStats,
    decode_change,
    decode_stored,
    dependent_member,
    encode_change,
    encode_value,
    member_text,
    namespace_id,
    parse_dependent_member,
    parse_suspect_member,
    parts_of,
    suspect_member,
)

__all__ = ["RedisTier", "resolve_shared"]

logger = logging.getLogger("asyncpromptcache")
# Rejected Redis content may come in floods: counted, and logged once a minute at most.
_rejected = RateLimitedLog(logger)

ENV_VAR = "ASYNCPROMPTCACHE_REDIS_URL"
_SCHEMES = ("redis", "rediss", "unix")
#: The token of the lock that holds readers of a label that moved until its new version is
#: written through (no process holds it: it only expires or is released by that write).
_MOVED = "moved"
# Compare-and-delete: only the holder of the token releases the lock.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end"
)
# The write of a fetch's result: only while its lock still holds the fetch's token (an
# invalidation deletes the locks of the keys it drops: a fetch that may have read the old
# version upstream must not write it after that), then the lock is released. KEYS: lock,
# value, index, suspects set (one hash tag: one slot of a Cluster). ARGV: token, value, px,
# key id, suspects member.
_WRITE_HELD = (
    "if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end "
    "redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3]) "
    "redis.call('sadd', KEYS[3], ARGV[4]) redis.call('pexpire', KEYS[3], ARGV[3]) "
    "redis.call('srem', KEYS[4], ARGV[5]) redis.call('del', KEYS[1]) return 1"
)
# Take a fetch's lock (KEYS[1]) and list its key in the name's index (KEYS[2]): an
# invalidation of the name finds (and deletes) the lock even before a value is written.
_TAKE = (
    "if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end "
    "redis.call('sadd', KEYS[2], ARGV[3]) "
    "if redis.call('pttl', KEYS[2]) < tonumber(ARGV[2]) then "
    "redis.call('pexpire', KEYS[2], ARGV[2]) end return 1"
)
# Record a webhook state's updatedAt unless a newer one of the version was applied already.
_NEWEST = (
    "local applied = tonumber(redis.call('get', KEYS[1])) "
    "if applied and applied > tonumber(ARGV[1]) then return 0 end "
    "redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1"
)
#: How long a webhook event id stays claimed: past the signature's 5-minute window.
_EVENT_CLAIM_SECONDS = 600.0
_CONNECT_GRACE = 1.0  # how long opening a client waits for Redis before starting L1-only
_MAX_UNSENT = 1000  # past this many changes kept while Redis is down, send one clear()


class _Down(Exception):
    """A Redis call failed; the tier is now down. Never leaves this module."""


class _Superseded(Exception):
    """The key was invalidated while its fetch ran. Never leaves this module."""


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisTier:
    """A shared L2 cache in Redis for every process of a fleet: pass it (or just a URL) as
    ``shared=`` to ``AsyncPromptClient`` or ``PromptClient``.

    * ``url_or_client``: ``redis://``, ``rediss://`` or ``unix://`` URL, or your own
      ``redis.asyncio`` client (``Redis``, ``RedisCluster`` from redis-py 8 on, one from
      ``Sentinel``), which is never closed by the tier. Needs
      ``pip install 'asyncpromptcache[redis]'``.
    * ``namespace``: separates applications sharing one Redis; entries are namespaced by it,
      the Langfuse host and the public key as well.
    * ``signing_key``: values and change messages are HMAC-signed with it, and unsigned or
      wrongly signed ones are ignored (for a Redis that other services can write; every
      process of the namespace needs the same key).
    * ``timeout_seconds``: the bound on every Redis call; past it the call counts as a failure
      and the client goes on without Redis.
    * ``stale_retention_seconds``: how long past its TTL a value stays in Redis when the
      client's ``max_stale_seconds`` is unbounded (a last-known-good for processes that start
      during an outage).
    * ``moved_grace_seconds``: when a webhook says a label left a version, how long readers
      of that label wait for the webhook of the version it moved to (Langfuse sends it next)
      before fetching it themselves (a label removed, not moved, costs them that wait once).
    """

    def __init__(
        self,
        url_or_client: str | Any,
        *,
        namespace: str = "default",
        signing_key: str | bytes | None = None,
        timeout_seconds: float = 0.25,
        stale_retention_seconds: float = 7 * 24 * 3600.0,
        reconnect_max_seconds: float = 5.0,
        moved_grace_seconds: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if importlib.util.find_spec("redis") is None:
            raise ConfigurationError(
                "the shared tier needs redis-py: pip install 'asyncpromptcache[redis]'"
            )
        if isinstance(url_or_client, str):
            if urlsplit(url_or_client).scheme not in _SCHEMES:
                raise ConfigurationError(
                    f"the shared tier's URL must start with redis://, rediss:// or unix://, "
                    f"got {_redacted(url_or_client)!r}"
                )
            _check_url(url_or_client)
        elif not callable(getattr(url_or_client, "pubsub", None)):
            kind = type(url_or_client).__name__
            raise ConfigurationError(
                f"shared: expected a Redis URL or a redis.asyncio client, got {kind}"
                + (" without pubsub(): redis-py's asyncio RedisCluster has it from "
                   "redis-py 8.0" if "Cluster" in kind else "")
            )
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace must be a non-empty string, got {namespace!r}")
        for value, what in ((timeout_seconds, "timeout_seconds"),
                            (stale_retention_seconds, "stale_retention_seconds"),
                            (reconnect_max_seconds, "reconnect_max_seconds"),
                            (moved_grace_seconds, "moved_grace_seconds")):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"{what} must be a positive number, got {value!r}")
        self._target = url_or_client
        self.namespace = namespace
        self._signing_key = (
            signing_key.encode() if isinstance(signing_key, str) else signing_key
        )
        self.timeout_seconds = float(timeout_seconds)
        self.stale_retention_seconds = float(stale_retention_seconds)
        self.reconnect_max_seconds = float(reconnect_max_seconds)
        self.moved_grace_seconds = float(moved_grace_seconds)
        self._wall = wall_clock

    def __repr__(self) -> str:
        target = (_redacted(self._target) if isinstance(self._target, str)
                  else type(self._target).__name__)
        signed = ", signed" if self._signing_key is not None else ""
        return f"RedisTier({target!r}, namespace={self.namespace!r}{signed})"

    def _connect(self, read_timeout: float | None = None) -> tuple[Any, bool]:
        """A redis.asyncio client for the running loop, and whether the link owns it
        (``read_timeout``: a longer socket timeout, for blocking reads)."""
        if not isinstance(self._target, str):
            return self._target, False
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No silent retries: a lost connection must be seen (a re-subscription may have
        # missed messages), and the link has its own backoff.
        client = Redis.from_url(
            self._target, socket_timeout=read_timeout or self.timeout_seconds,
            socket_connect_timeout=self.timeout_seconds, retry=Retry(NoBackoff(), 0),
            health_check_interval=10,
        )
        return client, True

    def _open(
        self, *, host: str, public_key: str | None, max_stale: float | None,
        apply: Callable[[Change], int], put_ttl: float = 60.0,
        suspect: Callable[[PromptKey, Prompt], None] | None = None,
    ) -> _Link:
        return _Link(self, Names(namespace_id(self.namespace, host, public_key)),
                     max_stale, apply, put_ttl, suspect)


def _check_url(url: str) -> None:
    """``ConfigurationError`` for a URL redis-py cannot connect with (a bad port, database or
    option), parsed as ``Redis.from_url`` parses it, without connecting."""
    from redis.asyncio.connection import parse_url

    try:
        parse_url(url)
    except Exception as exc:  # ValueError, or whatever a malformed URL makes urllib raise
        message = str(exc)
        password = urlsplit(url).password
        if password and password in message:  # the password never appears in a message
            message = type(exc).__name__
        raise ConfigurationError(
            f"the shared tier's URL {_redacted(url)!r} is not one redis-py can use: {message}"
        ) from None


def _generation(raw: Any) -> int:
    try:
        return max(0, int(raw or 0))
    except (TypeError, ValueError):  # a Redis others write to: never trust its contents
        return 0


def resolve_shared(
    shared: str | RedisTier | None, env: Any
) -> RedisTier | None:
    """The tier a client was given: ``shared=``, else ``ASYNCPROMPTCACHE_REDIS_URL``."""
    if shared is None:
        shared = (env.get(ENV_VAR) or "").strip() or None
        if shared is None:
            return None
    if isinstance(shared, RedisTier):
        return shared
    if isinstance(shared, str):
        return RedisTier(shared)
    raise ConfigurationError(
        f"shared must be a Redis URL or a RedisTier, got {type(shared).__name__}"
    )


class _Connection:
    """A tier's redis.asyncio client in one event loop: every command under the tier's
    timeout, and the health state (``up``, ``down``) with its counters. Shared by the prompt
    tier's ``_Link`` and the response cache's Redis side (``response/_redis.py``)."""

    def __init__(self, tier: RedisTier) -> None:
        self._tier = tier
        self._timeout = tier.timeout_seconds
        self._redis: Any = None
        self._owns = False
        self._up = False
        self._state = "starting"
        self._n: Counter[str] = Counter()  # SharedStats' counters, by field name

    def stats(self) -> SharedStats:
        return SharedStats(state=self._state, **self._n)

    async def aclose(self) -> None:
        self._up = False
        if self._owns and self._redis is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2 * self._timeout):
                try:
                    await self._redis.aclose()
                except Exception:  # closing a broken connection may fail; nothing to do
                    logger.debug("closing the shared tier's connection failed", exc_info=True)

    def _trouble(self, exc: BaseException) -> None:
        self._n["redis_errors"] += 1
        if self._up or self._state == "starting":
            self._n["outages"] += 1
            logger.warning(
                "the shared tier (Redis) is unavailable, serving from this process's cache "
                "alone until it answers again: %s: %s", type(exc).__name__, exc,
            )
        self._up = False
        self._state = "down"

    def _recovered(self) -> None:
        if not self._up:
            if self._state == "down":
                logger.warning("the shared tier (Redis) answers again; sharing resumed")
            self._up = True
            self._state = "up"

    async def _call(self, awaitable: Awaitable[Any], bound: float | None = None) -> Any:
        """One Redis command under the tier's timeout (or ``bound`` seconds, for a blocking
        read); trouble marks the tier down."""
        try:
            with anyio.fail_after(bound or self._timeout):
                return await awaitable
        except Exception as exc:
            self._trouble(exc)
            raise _Down from exc


class _Link(_Connection):
    """One client's connection to the tier, living in that client's event loop."""

    def __init__(
        self, tier: RedisTier, names: Names, max_stale: float | None,
        apply: Callable[[Change], int], put_ttl: float = 60.0,
        suspect: Callable[[PromptKey, Prompt], None] | None = None,
    ) -> None:
        super().__init__(tier)
        # Told of each value read whose composition is unknown (see Change.suspect).
        self._suspect = suspect
        self._put_ttl = put_ttl  # how long a prompt written through (not fetched) stays fresh
        self._names = names
        self._apply = apply
        self._retain = tier.stale_retention_seconds if max_stale is None else max_stale
        self._wall = tier._wall
        self._sign = tier._signing_key
        self.id = secrets.token_hex(8)
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
        self._settled = anyio.Event()
        self._settled.set()
        self._propagating = anyio.Lock()  # changes reach L2 in the order they were made
        self._tg: TaskGroup | None = None
        self._pid = os.getpid()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        """Connect in ``tg``; returns once subscribed, or after a short grace (then L1-only).
        Never raises: a tier that cannot even make its client runs the client without Redis."""
        try:
            self._redis, self._owns = self._tier._connect()
        except Exception as exc:
            self._trouble(exc)
            return
        self._tg = tg
        await tg.start(self._run)

    async def drain(self) -> None:
        """Wait (shielded, bounded by a few times the tier's timeout per change) for the
        changes of this process still on their way to L2 and the other processes: a client
        closed right after a change must not leave the fleet on the old version."""
        bound = min(30.0, max(1.0, 8 * self._timeout) * max(1, self._pending))
        with anyio.CancelScope(shield=True), anyio.move_on_after(bound):
            while self._pending:
                await self._settled.wait()

    # -- health ----------------------------------------------------------------------------

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, apply what others publish, reconnect with backoff. Never raises."""
        backoff = 0.05
        started = False
        while True:
            pubsub = None
            try:
                with anyio.fail_after(max(self._timeout, _CONNECT_GRACE)):
                    # An asyncio RedisCluster maps its slots on its first command, and its
                    # pubsub() needs that map: initialize first (a no-op on other clients).
                    initialize = getattr(self._redis, "initialize", None)
                    if initialize is not None:
                        await initialize()
                    pubsub = self._redis.pubsub()
                    await pubsub.subscribe(self._names.channel)
                    generation = await self._redis.get(self._names.generation_key)
                self._names = attrs.evolve(self._names, generation=_generation(generation))
                # Invalidations may have been missed while unsubscribed (or, on a first
                # connection after an outage at start, while entries were cached): revalidate.
                # On the first connection of a start nothing is cached yet: a no-op.
                self._apply(Change("expire"))
                self._recovered()
                unsent, self._unsent = self._unsent, []
                for change in unsent:
                    self.propagate_soon(change)
                backoff = 0.05
                if not started:
                    started = True
                    task_status.started()
                await self._listen(pubsub)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                self._trouble(exc)
            finally:
                if pubsub is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                        try:
                            await pubsub.aclose()
                        except Exception:
                            logger.debug("closing a pub/sub connection failed", exc_info=True)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self._tier.reconnect_max_seconds)

    async def _listen(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message.get("type") == "message":
                await self._received(message["data"])
            if not self._up:
                # A command failed while the subscription held: is Redis back?
                with anyio.fail_after(self._timeout):
                    await self._redis.ping()
                self._recovered()

    async def _received(self, raw: bytes) -> None:
        try:
            change = decode_change(raw, self._sign)
        except Exception as exc:  # unsigned or wrongly signed: anyone may PUBLISH
            self._n["rejected_values"] += 1
            _rejected.warning("ignored a change message on the shared tier's channel: %s", exc)
            return
        if change is None or change.origin == self.id:
            return
        if change.kind == "filled" or change.kind == "released":
            self._wake(change.keys)
            return
        self._n["changes_received"] += 1
        self._note_dropped(change)
        if change.kind == "invalidate":
            self._wake(change.keys)  # a label's new version may have landed in L2
        if change.kind == "clear":
            # The message's generation is not trusted (a forged one would split the fleet):
            # the namespace's generation is read again from Redis.
            with contextlib.suppress(_Down):
                raw_generation = await self._call(self._redis.get(self._names.generation_key))
                self._names = attrs.evolve(self._names, generation=_generation(raw_generation))
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

    async def _read(self, names: Names, key: PromptKey) -> tuple[Prompt, float] | None:
        raw = await self._call(self._redis.get(names.value(key)))
        if raw is None:
            return None
        try:
            prompt, fetched_at, suspect = decode_stored(raw, key, self._sign)
        except Exception as exc:  # Redis content is never a caller's error
            self._n["rejected_values"] += 1
            _rejected.warning("ignored the shared tier's value of prompt %s: %s",
                              key.describe(), exc)
            return None
        if suspect and self._suspect is not None:
            self._suspect(key, prompt)
        return prompt, fetched_at

    async def fetch_through(
        self, key: PromptKey, ttl: float, upstream: Callable[[], Awaitable[Prompt]],
        budget: float, have_stale: Callable[[], bool],
    ) -> Prompt | Fetched:
        """The engine's fetch of ``key`` through L2 (see the module docstring)."""
        if not self._up or os.getpid() != self._pid:
            return await upstream()
        if self._pending:
            with anyio.move_on_after(4 * self._timeout):
                await self._settled.wait()  # this process's own invalidations reach L2 first
        deadline = anyio.current_time() + 2 * budget + 1.0
        counted_miss = False
        while True:
            names = self._names
            event = anyio.Event()
            waiters = self._waiters.setdefault(key, [])
            waiters.append(event)  # before reading: a fill published meanwhile is not missed
            try:
                found = await self._read(names, key)
                if found is not None and self._wall() - found[1] >= ttl + self._retain:
                    found = None  # written with a longer TTL: past what this client serves
                if found is not None:
                    prompt, fetched_at = found
                    age = max(0.0, self._wall() - fetched_at)
                    if age < ttl:
                        self._n["l2_hits"] += 1
                        return Fetched(prompt, age)
                    if not have_stale():
                        # Served at once, held stale in L1: its next use refreshes it.
                        self._n["l2_stale_served"] += 1
                        return Fetched(prompt, age)
                elif not counted_miss:
                    counted_miss = True
                    self._n["l2_misses"] += 1
                lock, token = names.lock(key), secrets.token_hex(16)
                if await self._call(self._redis.eval(
                        _TAKE, 2, lock, names.index(key.name), token,
                        str(max(1, int(budget * 1000))), names.key_id(key))):
                    # The previous holder may have written it between our read and our lock.
                    again = await self._read(names, key)
                    if again is not None and self._wall() - again[1] < ttl:
                        await self._call(self._redis.eval(_RELEASE, 1, lock, token))
                        self._n["l2_hits"] += 1
                        return Fetched(again[0], max(0.0, self._wall() - again[1]))
                    return await self._fetch_locked(names, key, ttl, upstream, lock, token)
                if anyio.current_time() >= deadline:
                    return await upstream()
                self._n["waits"] += 1
                pttl = await self._call(self._redis.pttl(lock))
                bound = (pttl / 1000 if isinstance(pttl, int) and pttl > 0 else 0) + 0.05
                with anyio.move_on_after(min(bound, budget)):
                    await event.wait()
                if not event.is_set():
                    self._n["takeovers"] += 1  # the holder died or overran: try the lock again
            except _Down:
                return await upstream()
            finally:
                waiters.remove(event)
                if not waiters and self._waiters.get(key) is waiters:
                    del self._waiters[key]

    async def _fetch_locked(
        self, names: Names, key: PromptKey, ttl: float,
        upstream: Callable[[], Awaitable[Prompt]], lock: str, token: str,
    ) -> Prompt | Fetched:
        self._n["upstream_fetches"] += 1
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
            if await self._write(names, key, prompt, ttl, held=(lock, token)):
                await self._publish(Change("filled", (key,)))
            else:  # invalidated meanwhile (its lock deleted) or overran: not for L2
                await self._publish(Change("released", (key,)))
        except _Down:
            pass
        except Exception:  # not writable to L2 (never expected): the caller still gets it
            self._n["redis_errors"] += 1
            logger.exception("writing prompt %s to the shared tier failed", key.describe())
            await self._release(key, lock, token)
        return Fetched(prompt, 0.0)

    async def _write(
        self, names: Names, key: PromptKey, prompt: Prompt, ttl: float,
        suspect: bool = False, held: tuple[str, str] | None = None,
    ) -> bool:
        """Write ``prompt`` to L2 for ``key``, fresh for ``ttl`` from now; ``suspect``: its
        composition is unknown (registered for any later change to drop, see ``_suspects``).
        With ``held`` (a fetch's lock and token), only while that lock holds, then released:
        false if it did not hold. Without, the key's lock is deleted with the write."""
        value = encode_value(key, prompt, self._wall(), self._sign, suspect=suspect)
        px = max(1, int((ttl + self._retain) * 1000))
        if held is not None:
            lock, token = held
            if not await self._call(self._redis.eval(
                    _WRITE_HELD, 4, lock, names.value(key), names.index(key.name),
                    names.suspects(key.name), token, value, str(px), names.key_id(key),
                    suspect_member(key))):
                return False
        else:
            await self._write_through(names, key, value, px, suspect)
        member = dependent_member(names, key)
        for part in sorted(parts_of(prompt)):  # what it includes: dropped when a part changes
            pipe = self._redis.pipeline(transaction=False)  # the part's slot
            pipe.sadd(names.dependents(part), member)
            pipe.pexpire(names.dependents(part), px)
            await self._call(pipe.execute())
        return True

    async def _write_through(
        self, names: Names, key: PromptKey, value: bytes, px: int,
        suspect: bool,
    ) -> None:
        """The write of a version written through (a write, a webhook): the key's lock goes
        in the same round trip, whoever holds it (the label-moved wait, or a fetch in flight
        that may have read an older version: its own write then fails)."""
        pipe = self._redis.pipeline(transaction=False)  # one slot; Cluster-safe
        pipe.set(names.value(key), value, px=px)
        pipe.sadd(names.index(key.name), names.key_id(key))
        pipe.pexpire(names.index(key.name), px)
        if suspect:
            pipe.sadd(names.suspects(key.name), suspect_member(key))
            pipe.pexpire(names.suspects(key.name), px)
        else:
            pipe.srem(names.suspects(key.name), suspect_member(key))
        pipe.delete(names.lock(key))
        await self._call(pipe.execute())
        if suspect:
            pipe = self._redis.pipeline(transaction=False)  # the namespace's slot
            pipe.sadd(names.suspect_names, key.name)
            pipe.pexpire(names.suspect_names, px)
            await self._call(pipe.execute())

    async def _dependents(self, names: Names, changed: tuple[str, ...]) -> dict[str, list[str]]:
        """The L2 values composed of ``changed`` names at any depth, by name, and the
        dependents sets read (the values are about to be dropped, so are their entries)."""
        found: dict[str, list[str]] = {}
        queue, seen = list(changed), set(changed)
        while queue:
            name = queue.pop()
            members = await self._call(self._redis.smembers(names.dependents(name)))
            found.setdefault(name, []).append(names.dependents(name))
            for raw in members or ():
                parsed = parse_dependent_member(raw)
                if parsed is None:
                    continue
                parent, key_id = parsed
                found.setdefault(parent, []).append(names.value_of_id(parent, key_id))
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
        return found

    async def _suspects(
        self, names: Names, spared: set[str]
    ) -> dict[str, tuple[list[PromptKey], str]]:
        """The L2 values of unknown composition (a webhook's prompts) of names other than
        ``spared``, by name, with their suspects set: a change to any other name may have
        changed what they include, so it drops them."""
        found: dict[str, tuple[list[PromptKey], str]] = {}
        for raw in await self._call(self._redis.smembers(names.suspect_names)) or ():
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if name in spared:
                continue
            members = await self._call(self._redis.smembers(names.suspects(name)))
            keys = [key for key in map(parse_suspect_member, members or ())
                    if key is not None and key.name == name]
            found[name] = (keys, names.suspects(name))
        if found:
            await self._call(self._redis.srem(names.suspect_names, *found))
        return found

    # -- webhooks --------------------------------------------------------------------------

    async def claim_event(self, event_id: str) -> bool:
        """Claim webhook event ``event_id`` for this process, fleet-wide: false when another
        process (or this one) claimed it already (a replay or a retry that landed elsewhere).
        True when Redis is unreachable: then each process's own memory protects it alone."""
        if not self._up or os.getpid() != self._pid:
            return True
        try:
            return bool(await self._call(self._redis.set(
                self._names.event(event_id), self.id, nx=True,
                px=int(_EVENT_CLAIM_SECONDS * 1000))))
        except _Down:
            return True

    async def newest_state(self, name: str, version: int, updated_at: float) -> bool:
        """Record that the state of ``name`` version ``version`` last updated at
        ``updated_at`` (epoch seconds) is applied, unless a newer state of it was, fleet-wide
        (then false: Langfuse retried an older delivery). True when Redis is unreachable."""
        if not self._up or os.getpid() != self._pid:
            return True
        retain = max(1, int(self._tier.stale_retention_seconds * 1000))
        try:
            return bool(await self._call(self._redis.eval(
                _NEWEST, 1, self._names.version_state(name, version),
                str(int(updated_at * 1000)), str(retain))))
        except _Down:
            return True

    async def _release(self, key: PromptKey, lock: str, token: str) -> None:
        try:
            await self._call(self._redis.eval(_RELEASE, 1, lock, token))
            await self._publish(Change("released", (key,)))
        except _Down:
            pass

    async def _publish(self, change: Change) -> None:
        change = attrs.evolve(change, origin=self.id)
        await self._call(self._redis.publish(self._names.channel,
                                             encode_change(change, self._sign)))

    # -- changes ---------------------------------------------------------------------------

    def propagate_soon(self, change: Change) -> None:
        """Send ``change`` (already applied here) to L2 and every other process, in the
        background; this process's fetches wait for it to land in L2 first."""
        if self._tg is None or os.getpid() != self._pid:
            return
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
                self._n["redis_errors"] += 1
                logger.exception("sending a change to the shared tier failed; change dropped")

    async def _propagate_now(self, change: Change) -> None:
        queued = _without_puts(change)  # what is sent once Redis answers again, if it fails
        try:
            if not self._up:
                raise _Down
            names = self._names
            if change.kind == "invalidate":
                by_name: dict[str, list[str]] = {}
                for key in change.keys:
                    by_name.setdefault(key.name, []).append(names.value(key))
                for name in change.names:
                    ids = await self._call(self._redis.smembers(names.index(name)))
                    found = by_name.setdefault(name, [])
                    found.extend(names.value_of_id(name, key_id) for key_id in
                                 map(member_text, ids) if key_id is not None)
                    found.append(names.index(name))
                suspects: list[PromptKey] = []
                if change.changed:
                    spared = {*change.changed, *change.names, *(k.name for k in change.keys)}
                    for name, (its, held_in) in (await self._suspects(names, spared)).items():
                        suspects.extend(its)
                        by_name.setdefault(name, []).extend([
                            *(names.value(key) for key in its), held_in])
                changed = (*change.changed, *dict.fromkeys(k.name for k in suspects))
                for name, keys in (await self._dependents(names, changed)).items():
                    by_name.setdefault(name, []).extend(keys)
                written = {names.value(key) for key, _ in change.puts}
                for key in change.moved:
                    # A label left this version; the version it moved to comes next: readers
                    # wait for that (as for a fetch in flight) rather than fetch it.
                    # (Taken from a fetch in flight too: it may have read the old version.)
                    if names.value(key) not in written:
                        await self._call(self._redis.set(
                            names.lock(key), _MOVED,
                            px=max(1, int(self._tier.moved_grace_seconds * 1000))))
                waiting = {names.value(key) for key in change.moved}  # keep their _MOVED lock
                for keys in by_name.values():  # one hash-tagged group per command
                    gone = [k for k in keys if k not in written]
                    # And the locks of fetches in flight: one may have read the old version
                    # (those of the keys written through go with that write).
                    gone += [names.lock_of_value(k) for k in gone
                             if k not in waiting and names.is_value(k)]
                    if gone:
                        await self._call(self._redis.delete(*gone))
                for key, prompt in change.puts:  # then the versions written through
                    await self._write(names, key, prompt, self._put_ttl, suspect=change.suspect)
                self._wake(tuple(key for key, _ in change.puts))
                if suspects:  # every process drops them, this one too (read from L2)
                    self._apply(Change.invalidate(keys=suspects))
                change = attrs.evolve(change, keys=(*change.keys, *suspects), puts=(), moved=())
            elif change.kind == "clear":
                generation = await self._call(self._redis.incr(names.generation_key))
                self._names = attrs.evolve(self._names, generation=int(generation))
                change = attrs.evolve(change, generation=int(generation))
            await self._publish(change)
            self._n["changes_sent"] += 1
        except _Down:
            if change.kind == "clear" or len(self._unsent) >= _MAX_UNSENT:
                self._unsent = [Change("clear")]  # clear() supersedes everything before it
            else:
                self._unsent.append(queued)
        finally:
            self._pending -= 1
            if not self._pending:
                self._settled.set()


def _without_puts(change: Change) -> Change:
    """``change`` as sent after an outage: its puts are not written then (another process
    may have written a newer version meanwhile) but dropped from L2 and every L1, so the
    fleet fetches them again."""
    if not change.puts and not change.moved:
        return change
    keys = tuple(dict.fromkeys((*change.keys, *(key for key, _ in change.puts))))
    return attrs.evolve(change, keys=keys, puts=(), moved=())
