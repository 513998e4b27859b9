"""The response cache's shared tier in Redis: completed answers for every process
(``RedisResponses`` as a ``ResponseStore``, behind this process's ``MemoryStore`` in a
``TieredStore``) and answers in flight joined across processes (``RedisResponses`` as
``SharedFlights``).

An answer in flight: the process that takes the key's lock (``SET NX PX`` with a random
token, kept alive while it streams, released by a Lua compare-and-delete) streams upstream
and ``XADD``\\s each chunk to the answer's Redis stream, then an end entry (done or failed).
Other processes ``XREAD BLOCK`` that stream from its first entry: no polling. A follower
that sees neither a new entry nor the lock for a whole block gives up with
``SharedStreamLostError`` and claims the key itself; one whose Redis stops answering (a
blocking read bounded by its block plus the tier's timeout: about three timeouts) streams on
its own at once. The owner stores a completed answer before it writes the end entry and
releases the lock, so a request arriving meanwhile either joins the stream or finds the
answer; the ended stream lingers for slow followers, then expires. An answer that grows past
its owner's ``max_answer_bytes`` is never stored: the owner stops publishing it, cuts its
stream down to an end entry that sends the followers to claim it themselves, and releases
the lock.

Invalidations and clears reach every process of the namespace (the tier's namespace and the
cache's) through the kit's bus: the process that made the change deletes the answers in
Redis, then publishes the keys (or "everything", a ``clear()``) sealed with the tier's signing
key and its own id; every other process drops them from its in-memory store and forgets its
streams in flight for them (they answer their consumers but are not stored). A message that
is not one to apply (unsigned, wrongly signed, malformed) is counted in ``rejected_values``
and ignored. While the subscription is down messages may be missed, so each time it is
(re)established the in-memory store is emptied: answers are read again from Redis. (A stream
already in flight then may still be stored.) A change Redis does not take is applied here at
once and sent (deleted in Redis, published) once commands succeed again; past 1,000 keys
waiting, a clear is sent instead. A cache closed before that drops what waits.

Redis trouble makes a read a miss, a write skipped, a claim stream locally; sustained
trouble opens the connection's breaker (the Redis kit's one health policy, shared with the
prompt tier), and nothing here raises a Redis error to a caller.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._core.errors import (
    ConfigurationError,
    SharedStreamError,
    SharedStreamLostError,
)
from .._core.logs import RateLimitedLog
from .._tiers.redis import Connection, Down, RedisTier
from .._tiers.redis.bus import Bus
from .._tiers.redis.lock import extend, new_token, take
from .._tiers.redis.scan import scan
from .._tiers.redis.stats import SharedStats
from .._tiers.redis.text import member_text
from ._keys import Chunk
from ._store import ResponseStore, StoredAnswer, StoreStats
from ._wire import (
    MAX_MESSAGE_KEYS,
    Dropped,
    End,
    ResponseNames,
    decode_answer,
    decode_entry,
    decode_message,
    encode_answer,
    encode_chunk_entry,
    encode_end_entry,
    encode_message,
)

__all__ = ["RedisResponses", "TieredStore", "shared_responses"]

logger = logging.getLogger("asyncpromptcache")
# Rejected Redis content may come in floods: counted, and logged once a minute at most.
_rejected = RateLimitedLog(logger)
#: What a process does with answers dropped by another process: ``keys`` (``None``: every
#: answer) are dropped from its in-memory store; ``in_flight``: its streams in flight for them
#: are forgotten too (not stored).
DropHere = Callable[[tuple[str, ...] | None, bool], Awaitable[None]]

_FIELD = b"e"
# The end of an answer's stream: its last entry (ARGV[1]), the stream kept ARGV[2] ms for
# slow followers, and the lock (KEYS[2]) released if the token (ARGV[3]) still holds it.
# ARGV[4] == "1": the stream is cut down to that end entry (an answer no longer shared).
_END = Connection.script(
    "redis.call('xadd', KEYS[1], '*', 'e', ARGV[1]) "
    "if ARGV[4] == '1' then redis.call('xtrim', KEYS[1], 'MAXLEN', 1) end "
    "redis.call('pexpire', KEYS[1], ARGV[2]) "
    "if redis.call('get', KEYS[2]) == ARGV[3] then redis.call('del', KEYS[2]) end return 1"
)
#: The error of the end entry of an answer that grew past its owner's cap.
_TOO_LARGE = "too large"


class _Silent(SharedStreamLostError):
    """Following an answer ended because Redis stopped answering."""


def shared_responses(shared: Any, *, namespace: str = "", **options: Any) -> RedisResponses:
    """The Redis side of ``ResponseCache(shared=..., namespace=...)``: a Redis URL, a
    ``RedisTier`` or a ``RedisResponses`` (made for that ``namespace``). The prompt client's
    environment variable is not read."""
    if isinstance(shared, RedisResponses):
        if shared.namespace != namespace:
            raise ConfigurationError(
                f"the shared tier was made for namespace {shared.namespace!r}, not the "
                f"cache's {namespace!r}")
        return shared
    if isinstance(shared, str):
        shared = RedisTier(shared)
    if not isinstance(shared, RedisTier):
        raise ConfigurationError(
            f"shared must be a Redis URL or a RedisTier, got {type(shared).__name__}")
    return RedisResponses(shared, namespace=namespace, **options)


class RedisResponses:
    """Completed answers and answers in flight in the tier's Redis, for one cache in one
    event loop, and the channel that tells every process of its answers dropped.

    * ``namespace``: the cache's (the tenant's): its answers' names and channel are apart
      from every other tenant's.
    * ``lock_seconds``: how long a claim outlives its process (kept alive while streaming);
      a follower of a process that died gives up after about this long with no news.
    * ``linger_seconds``: how long an ended stream stays readable (for its slow followers).
    * ``block_seconds``: how long one ``XREAD BLOCK`` waits before the follower checks that
      the owner still holds its lock (default: twice the tier's timeout, so that a follower
      notices a dead Redis within about three times that timeout).
    """

    def __init__(self, tier: RedisTier, *, namespace: str = "", lock_seconds: float = 10.0,
                 linger_seconds: float = 30.0, block_seconds: float | None = None) -> None:
        if block_seconds is None:
            block_seconds = 2 * tier.timeout_seconds
        block = min(block_seconds, lock_seconds)
        self._tier = tier
        self._timeout = tier.timeout_seconds
        self._conn = Connection(tier, blocking_seconds=block + tier.timeout_seconds)
        self._n = self._conn.counts
        self.namespace = namespace
        self._names = ResponseNames.of(tier.namespace, namespace)
        self._sign = tier._signing_key
        self._wall = tier._wall
        self._lock_ms = max(1, int(lock_seconds * 1000))
        self._linger_ms = max(1, int(linger_seconds * 1000))
        self._block_ms = max(1, int(block * 1000))
        self._tg: TaskGroup | None = None
        self._bus = Bus(self._conn, self._names.channel)
        self.id = new_token()[:16]  # this process's messages name it: it ignores its own
        self._drop_here: DropHere | None = None
        #: Counts every drop applied here (made here, received, or on a resubscription): an
        #: answer read from Redis while one happened is not kept in memory (it may be older).
        self.drops = 0
        # Changes Redis did not take (keys, or a clear: ``None``), sent when it answers.
        self._unsent: set[str] | None = set()
        self._sending = False
        self._up = anyio.Event()
        self._conn.on_up(lambda: self._up.set())

    def __repr__(self) -> str:
        return f"<RedisResponses {self._tier!r} {self._conn.state}>"

    def stats(self) -> SharedStats:
        return SharedStats(state=self._conn.state, **self._n)

    def on_drop(self, drop_here: DropHere) -> None:
        """Apply the drops of other processes (and resubscriptions) with ``drop_here``."""
        self._drop_here = drop_here

    def bind(self, tg: TaskGroup) -> None:
        """Run the claims' keep-alives, the subscription to the channel, the sending of changes
        that waited for Redis and the probes of Redis while the tier is down (so it comes back
        without waiting for a request) in ``tg`` (the cache's task group)."""
        self._tg = tg
        self._conn.heal_in(tg)
        tg.start_soon(self._bus.run, self._received, self._resubscribed,
                      name="asyncpromptcache.response:bus")
        self._send_soon()

    def detach(self) -> None:
        """The cache's task group is over: nothing more starts in it (a claim's keep-alive,
        a resend, a probe), from now until ``aclose``."""
        self._tg = None
        self._conn.detach()

    async def aclose(self) -> None:
        self.detach()
        await self._conn.aclose()

    # -- commands --------------------------------------------------------------------------

    async def _cmd(self, command: Callable[[Any], Awaitable[Any]] | str, *args: Any,
                   blocking: bool = False, **kwargs: Any) -> Any:
        """Run ``command(client)`` (or ``client.<command>(*args, **kwargs)``) under the
        connection's health policy; ``Down`` when it is not run or fails."""
        def run(client: Any) -> Awaitable[Any]:
            if isinstance(command, str):
                result: Awaitable[Any] = getattr(client, command)(*args, **kwargs)
                return result
            return command(client)

        bound = self._block_ms / 1000 + self._timeout if blocking else None
        return await self._conn.call(run, bound=bound, blocking=blocking)

    # -- completed answers (a ResponseStore, but see TieredStore) --------------------------

    async def fetch(self, key: str, *, count: bool = True) -> tuple[StoredAnswer, float] | None:
        """The answer stored for ``key`` and the seconds it has left, else ``None`` (also
        when Redis is down or the value is not one to serve). ``count=False``: a re-check of
        a miss already counted, not counted again."""
        if self._unsent is None or key in self._unsent:
            # Dropped here while Redis did not take it: what Redis holds is not to be read.
            self._n["l2_misses"] += count
            return None
        try:
            raw = await self._cmd(lambda r: r.get(self._names.answer(key)))
        except Down:
            return None
        if raw is None:
            self._n["l2_misses"] += count
            return None
        try:
            answer, expires_at = decode_answer(raw, key, self._sign)
        except Exception as exc:  # Redis content is never a caller's error
            self._n["rejected_values"] += 1
            _rejected.warning("ignored the shared tier's answer %s: %s", key[:12], exc)
            return None
        left = expires_at - self._wall()
        if left <= 0:
            self._n["l2_misses"] += count
            return None
        self._n["l2_hits"] += 1
        return answer, left

    async def get(self, key: str, *, count: bool = True) -> StoredAnswer | None:
        found = await self.fetch(key, count=count)
        return None if found is None else found[0]

    async def put(self, key: str, answer: StoredAnswer, ttl_seconds: float) -> bool:
        if ttl_seconds <= 0:
            return False
        value = encode_answer(key, answer, self._wall() + ttl_seconds, self._sign)
        try:
            await self._cmd(lambda r: r.set(self._names.answer(key), value,
                                            px=max(1, int(ttl_seconds * 1000))))
        except Down:
            return False
        return True

    async def delete(self, key: str) -> bool:
        """Drop ``key``'s answer here and in every process (see ``_change``)."""
        return bool(await self._change((key,)))

    async def clear(self) -> int:
        """Drop every answer of the namespace here and in every process."""
        return await self._change(None)

    # -- changes: every process drops what one dropped -------------------------------------

    async def _change(self, keys: tuple[str, ...] | None) -> int:
        """Delete ``keys`` (``None``: every answer of the namespace) in Redis and tell the
        other processes; when Redis does not take it, keep it for later. How many answers
        Redis held."""
        self.drops += 1
        try:
            return await self._send(keys)
        except Down:
            self._keep(keys)
            return 0

    async def _send(self, keys: tuple[str, ...] | None) -> int:
        """Delete, then publish; ``Down`` when Redis did not take either."""
        count = 0
        if keys is None:  # SCAN, then UNLINK key by key (a Cluster: one slot per key)
            async for name in scan(self._conn, self._names.pattern):
                if (member_text(name) or "").endswith(":a"):
                    count += int(await self._cmd("unlink", name))
        else:
            for key in keys:
                count += int(await self._cmd("delete", self._names.answer(key)))
        await self._bus.publish(encode_message(Dropped(self.id, keys), self._sign))
        self._n["changes_sent"] += 1
        # Again once the deletes have landed: a read that began before them may have read
        # what they deleted, and must not keep it in this process's memory (``drops``).
        self.drops += 1
        return count

    def _keep(self, keys: Iterable[str] | None) -> None:
        if keys is None or self._unsent is None or len(self._unsent) >= MAX_MESSAGE_KEYS:
            self._unsent = None  # a clear supersedes every change before it
        else:
            self._unsent.update(keys)
        self._send_soon()

    def _send_soon(self) -> None:
        if (self._unsent is None or self._unsent) and not self._sending \
                and self._tg is not None:
            self._sending = True
            self._tg.start_soon(self._send_unsent, name="asyncpromptcache.response:unsent")

    async def _send_unsent(self) -> None:
        """Send what waited for Redis: at once when Redis answers again (the connection's
        ``on_up``, a resubscription), else tried after a backoff."""
        backoff = 0.05
        try:
            while self._unsent is None or self._unsent:
                with anyio.move_on_after(backoff):
                    await self._up.wait()
                self._up = anyio.Event()
                backoff = min(2 * backoff, self._tier.reconnect_max_seconds)
                unsent, self._unsent = self._unsent, set()
                try:
                    await self._send(None if unsent is None or len(unsent) > MAX_MESSAGE_KEYS
                                     else tuple(sorted(unsent)))
                except Down:
                    if unsent is None or self._unsent is None:
                        self._unsent = None
                    else:
                        self._unsent |= unsent
        finally:
            self._sending = False

    async def _received(self, raw: bytes) -> None:
        """A message on the channel: another process's drop, applied here. Anyone may
        ``PUBLISH``: a message that is not one to apply is counted and ignored."""
        try:
            message = decode_message(raw, self._sign)
        except Exception as exc:
            self._n["rejected_values"] += 1
            _rejected.warning("ignored a message on the response cache's channel: %s", exc)
            return
        if message.origin == self.id:
            return
        self._n["changes_received"] += 1
        await self._apply(message.keys, in_flight=True)

    async def _resubscribed(self) -> None:
        """The subscription is (again) in place: drops may have been missed meanwhile, so
        the in-memory store is emptied (its answers are read again from Redis); what waited
        for Redis is sent."""
        await self._apply(None, in_flight=False)
        self._up.set()

    async def _apply(self, keys: tuple[str, ...] | None, *, in_flight: bool) -> None:
        self.drops += 1
        if self._drop_here is None:
            return
        try:
            await self._drop_here(keys, in_flight)
        except Exception:  # never into the bus: it would take that for a Redis failure
            logger.exception("dropping answers another process dropped failed")

    # -- answers in flight (SharedFlights) -------------------------------------------------

    async def claim(
        self, key: str, *, after: BaseException | None = None,
    ) -> _Publisher | _Solo | None:
        """A publisher when this process now streams ``key``, ``None`` when another does;
        while Redis is down, a publisher that publishes nothing (stream locally). ``after``:
        the loss that ended following ``key``; when Redis itself fell silent, this process
        streams on its own at once (a claim would wait on the silent Redis first)."""
        if isinstance(after, _Silent):
            return _Solo()
        token = new_token()
        lock, stream = self._names.lock(key), self._names.stream(key)
        try:
            if not await take(self._conn, lock, token, self._lock_ms):
                self._n["waits"] += 1
                return None
            # The stream of an earlier answer that failed is not this one's.
            await self._cmd(lambda r: r.delete(stream))
        except Down:
            return _Solo()
        self._n["upstream_fetches"] += 1
        publisher = _Publisher(self, key, token)
        if self._tg is not None:
            self._tg.start_soon(self._keep_alive, publisher)
        return publisher

    async def streaming(self, key: str) -> bool:
        """Whether a process streams ``key`` now (holds its claim); a follower of it counts
        in ``waits``. ``False`` when Redis does not answer."""
        try:
            held = bool(await self._cmd(lambda r: r.exists(self._names.lock(key))))
        except Down:
            return False
        self._n["waits"] += held
        return held

    async def unclaim(self, claim: _Publisher | _Solo | None) -> None:
        """Give up a claim not used (``None``: nothing was claimed)."""
        if claim is not None:
            with anyio.CancelScope(shield=True):
                await claim.withdraw()

    async def _keep_alive(self, publisher: _Publisher) -> None:
        lock, stream = self._names.lock(publisher.key), self._names.stream(publisher.key)
        while not publisher.ended.is_set():
            with anyio.move_on_after(self._lock_ms / 3000):
                await publisher.ended.wait()
            if publisher.ended.is_set() or not publisher.sharing:
                return
            with contextlib.suppress(Down):
                await extend(self._conn, lock, publisher.token, self._lock_ms, also=[stream])

    async def follow(self, key: str) -> AsyncGenerator[Chunk, None]:
        """The chunks of the answer another process streams for ``key``, from the first.
        Ends when it completed; ``SharedStreamError`` when it failed there,
        ``SharedStreamLostError`` when its owner vanished, stopped, or stopped sharing it
        (too large), or when Redis stopped answering."""
        stream, lock = self._names.stream(key), self._names.lock(key)
        last: Any = "0"
        index = 0
        quiet = 0
        while True:
            try:
                reply = await self._cmd(
                    "xread", {stream: last}, count=512, block=self._block_ms, blocking=True)
                if not reply:
                    # Nothing for a whole block: is the owner still there? (It may also
                    # have ended just now: read once more before giving up.)
                    held = await self._cmd(lambda r: r.exists(lock))
                    quiet = 0 if held else quiet + 1
                    if quiet >= 2:
                        self._n["takeovers"] += 1
                        raise SharedStreamLostError(
                            "the process streaming this answer vanished (its claim expired "
                            f"after {index} chunks)")
                    continue
            except Down:
                raise _Silent(
                    f"the shared tier stopped answering after {index} chunks of an answer "
                    "streamed by another process") from None
            for _name, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        item = decode_entry(fields.get(_FIELD), key, index, self._sign)
                    except Exception as exc:  # Redis content is never a caller's error
                        self._n["rejected_values"] += 1
                        raise SharedStreamLostError(
                            f"the shared stream of this answer is not one to serve: {exc}"
                        ) from None
                    index += 1
                    if isinstance(item, End):
                        if item.ok:
                            return
                        if item.abandoned:
                            why = ("it grew past that process's max_answer_bytes"
                                   if item.error == _TOO_LARGE else "cancelled or closed")
                            raise SharedStreamLostError(
                                f"the process streaming this answer stopped sharing it "
                                f"({why}) after {index - 1} chunks")
                        raise SharedStreamError(
                            f"the upstream failed in the process streaming this answer: "
                            f"{item.error} (after {index - 1} chunks)")
                    yield item


class _Solo:
    """The publisher while Redis is down: this process streams on its own."""

    sharing = False

    async def publish(self, chunk: Chunk) -> None:
        return None

    async def complete(self) -> None:
        return None

    async def fail(self, error: BaseException) -> None:
        return None

    async def withdraw(self) -> None:
        return None

    async def stop_sharing(self) -> None:
        return None


class _Publisher:
    """Publishes this process's answer of ``key`` to the answer's Redis stream."""

    def __init__(self, owner: RedisResponses, key: str, token: str) -> None:
        self._owner = owner
        self.key = key
        self.token = token
        self.index = 0
        self.sharing = True  # False once Redis failed: the local stream goes on alone
        self.ended = anyio.Event()

    async def publish(self, chunk: Chunk) -> None:
        owner, index = self._owner, self.index
        self.index += 1
        if not self.sharing:
            return
        entry = encode_chunk_entry(self.key, index, chunk, owner._sign)
        await self._send(lambda pipe: pipe.xadd(owner._names.stream(self.key),
                                                {_FIELD: entry}), owner._lock_ms)

    async def complete(self) -> None:
        await self._end(End(True))

    async def fail(self, error: BaseException) -> None:
        stopped = isinstance(error, GeneratorExit | anyio.get_cancelled_exc_class())
        await self._end(End(False, type(error).__name__, abandoned=stopped))

    async def withdraw(self) -> None:
        """Give the claim up unstreamed (the answer was stored meanwhile): followers, if
        any, claim again and find it."""
        self._owner._n["upstream_fetches"] -= 1
        await self._end(End(False, "withdrawn", abandoned=True))

    async def stop_sharing(self) -> None:
        """The answer grew past the cap, so no store takes it: publish no more of it, cut
        its stream down to an end entry that sends the followers to claim it themselves,
        and let the claim go. Once; the local stream goes on."""
        await self._end(End(False, _TOO_LARGE, abandoned=True), cut=True)
        self.sharing = False

    async def _end(self, end: End, *, cut: bool = False) -> None:
        if self.ended.is_set():
            return
        self.ended.set()
        if not self.sharing:
            return
        owner = self._owner
        entry = encode_end_entry(self.key, self.index, end, owner._sign)
        keys = [owner._names.stream(self.key), owner._names.lock(self.key)]
        with anyio.CancelScope(shield=True):
            try:  # the end entry and the lock's release in one step: a follower that reads
                # the end and claims again finds the key free
                await owner._conn.run(_END, keys, [entry, owner._linger_ms, self.token,
                                                   "1" if cut else "0"])
            except Down:
                self.sharing = False

    async def _send(self, add: Callable[[Any], Any], expire_ms: int) -> None:
        owner = self._owner
        stream = owner._names.stream(self.key)

        def execute(client: Any) -> Awaitable[Any]:
            pipe = client.pipeline(transaction=False)  # one slot; Cluster-safe
            add(pipe)
            pipe.pexpire(stream, expire_ms)
            result: Awaitable[Any] = pipe.execute()
            return result

        try:
            await owner._cmd(execute)
        except Down:
            self.sharing = False  # followers will see the stream go quiet and take over


class TieredStore:
    """This process's store in front of the tier's Redis: a read tries the front first, then
    Redis (a Redis answer is kept in front for the time it has left); a write goes to both;
    a delete or a clear goes to both and to every other process's front. Redis trouble reads
    as a miss and is never raised."""

    def __init__(self, front: ResponseStore, shared: RedisResponses) -> None:
        self.front = front
        self.shared = shared

    def __repr__(self) -> str:
        return f"<TieredStore {self.front!r} + {self.shared!r}>"

    async def get(self, key: str) -> StoredAnswer | None:
        answer = await self.front.get(key)
        if answer is not None:
            return answer
        drops = self.shared.drops
        found = await self.shared.fetch(key)
        if found is None:
            return None
        answer, left = found
        if self.shared.drops == drops:  # else it may be an answer dropped while it was read
            await self.front.put(key, answer, left)
        return answer

    async def put(self, key: str, answer: StoredAnswer, ttl_seconds: float) -> bool:
        stored = await self.front.put(key, answer, ttl_seconds)
        return await self.shared.put(key, answer, ttl_seconds) or stored

    # Redis first, then the front: a read that fetched from Redis before the delete landed
    # put what it read in front before the front is emptied, or sees ``drops`` moved.
    async def delete(self, key: str) -> bool:
        there = await self.shared.delete(key)
        return await self.front.delete(key) or there

    async def clear(self) -> int:
        there = await self.shared.clear()
        return max(await self.front.clear(), there)

    def stats(self) -> StoreStats:
        return self.front.stats()

    async def aclose(self) -> None:
        try:
            await self.front.aclose()
        finally:
            await self.shared.aclose()

