"""A tier's redis.asyncio client in one event loop, under the one health policy.

``Connection.call(command, bound=)`` runs ``command(client)`` within ``bound`` seconds (the
tier's ``timeout_seconds`` unless the caller has a larger budget to spend) and raises
``Down`` on any trouble: a timeout, a refused or lost connection, an error reply. Whether the
next command is even tried is the breaker's decision (``health.Breaker``): one slow reply
costs its caller that command, it does not take the process off the tier.

Dead pooled connections (after Redis restarted) are dropped at once, on the first command
that finds one and again when the breaker closes, instead of failing one by one.

Healing needs no traffic: given a task group (``heal_in``), the connection probes Redis there
while its breaker is open, as soon as the breaker lets a probe through, so that a process
that asks nothing meanwhile still learns that Redis is back (its state says so, its
``on_up`` callbacks run) and its first command after that is shared again. Its probe waits
for a reply as long as the breaker may stay open (``reconnect_max_seconds``): a stalled
Redis (a pause, connections held open) answers it the moment it resumes, so a change queued
meanwhile goes out then, not a backoff later; a Redis that refuses connections fails it at
once, and the breaker's backoff spaces the next one.

The fork guard lives here and only here: a forked child never uses its parent's sockets
(``Down`` at once; the child's own client opens its own connection).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .health import Breaker, State
from .tier import RedisTier

__all__ = ["Connection", "Down", "Script"]

logger = logging.getLogger("asyncpromptcache")


class Down(Exception):
    """A Redis command was not run or failed. Never leaves the tiers: their callers see a
    miss, a skipped write, or a fetch of their own."""


class Script:
    """A Lua script, sent by SHA (``EVALSHA``) and in full only when Redis does not know
    it yet (``NOSCRIPT``: a first use, a restarted or flushed Redis)."""

    def __init__(self, lua: str) -> None:
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode()).hexdigest()

    async def run(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.lua, len(keys), *keys, *args)


_scripts: dict[str, Script] = {}
_HEAL_FLOOR = 0.05  # seconds between two looks of the healer (another probe may be out)


def _refused(exc: BaseException) -> bool:
    """Whether Redis (or the host) refused us outright: no connection, or a Redis that
    refuses our password or user. Either lasts: the tier is down at once, and said so."""
    from redis.exceptions import AuthenticationError, NoPermissionError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError | FileNotFoundError | AuthenticationError
                      | NoPermissionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Connection:
    """One tier's client(s) in the running event loop and their health, with the counters
    both tiers report in their ``SharedStats`` (``counts``, by field name)."""

    def __init__(self, tier: RedisTier, *, blocking_seconds: float | None = None) -> None:
        self.tier = tier
        self.timeout = tier.timeout_seconds
        self.counts: Counter[str] = Counter()
        self._breaker = Breaker(max_seconds=tier.reconnect_max_seconds)
        self._blocking_seconds = blocking_seconds
        self._clients: dict[bool, tuple[Any, bool]] = {}  # blocking? -> (client, owned)
        self._pid = os.getpid()
        self._on_up: list[Callable[[], None]] = []
        self._on_down: list[Callable[[], None]] = []
        self._closed = False
        self._heal_tg: TaskGroup | None = None
        self._healing = False

    @property
    def state(self) -> State:
        return self._breaker.state

    @property
    def up(self) -> bool:
        """Whether commands are being tried (``starting`` counts: nothing failed yet)."""
        return self._breaker.state != "down" and not self.forked

    @property
    def forked(self) -> bool:
        return os.getpid() != self._pid

    def on_up(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time Redis answers again after an outage."""
        self._on_up.append(callback)

    def on_down(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time the breaker opens (waiters then stop waiting)."""
        self._on_down.append(callback)

    def heal_in(self, tg: TaskGroup) -> None:
        """Probe Redis in ``tg`` whenever the breaker is open (see the module docstring)."""
        self._heal_tg = tg
        if self.state == "down":
            self._start_healing()

    def detach(self) -> None:
        """The task group given to ``heal_in`` is over: nothing more is started in it."""
        self._heal_tg = None

    def _start_healing(self) -> None:
        if self._heal_tg is not None and not self._healing and not self._closed:
            self._healing = True
            self._heal_tg.start_soon(self._heal)

    async def _heal(self) -> None:
        try:
            while self.state == "down" and not self._closed and not self.forked:
                wait = self._breaker.retry_at - anyio.current_time()
                await anyio.sleep(max(_HEAL_FLOOR, wait))
                await self.probe(bound=max(self.timeout, self.tier.reconnect_max_seconds))
        finally:
            self._healing = False

    def client(self, *, blocking: bool = False) -> Any:
        """The redis.asyncio client (``blocking``: a second one for blocking reads, with a
        socket timeout past their block). ``Down`` in a forked child or after ``aclose``."""
        if self.forked or self._closed:
            raise Down
        made = self._clients.get(blocking)
        if made is None:
            try:
                made = self.tier._connect(
                    read_timeout=self._blocking_seconds if blocking else None)
            except Exception as exc:
                self._failed(exc, certain=True)
                raise Down from exc
            self._clients[blocking] = made
        return made[0]

    @staticmethod
    def script(lua: str) -> Script:
        """The script of ``lua``, registered once for the whole process."""
        found = _scripts.get(lua)
        if found is None:
            found = _scripts[lua] = Script(lua)
        return found

    def bound_for(self, budget: float) -> float:
        """The bound of one command on a cold path whose caller has ``budget`` seconds: the
        tier's timeout, or a quarter of the budget when that is more (at most 2 s), so a
        reply slowed by a busy machine is still waited for."""
        return max(self.timeout, min(budget / 4, 2.0))

    async def call(
        self, command: Callable[[Any], Awaitable[Any]], *, bound: float | None = None,
        blocking: bool = False,
    ) -> Any:
        """``await command(client)`` within ``bound`` seconds (default: the tier's timeout);
        ``Down`` if the breaker holds it back or it fails."""
        if not self._breaker.allow(anyio.current_time()) or self.forked:
            raise Down
        try:
            client = self.client(blocking=blocking)
            with anyio.fail_after(bound or self.timeout):
                result = await command(client)
        except anyio.get_cancelled_exc_class():
            self._breaker.release_probe()
            raise
        except Down:
            self._breaker.release_probe()
            raise
        except Exception as exc:
            self._failed(exc, certain=_refused(exc))
            await self._drop_dead(exc)
            raise Down from exc
        if self._breaker.success():
            logger.warning("the shared tier (Redis) answers again; sharing resumed")
            await self._drop_idle()
            for callback in self._on_up:
                callback()
        return result

    async def do(self, name: str, *args: Any, bound: float | None = None,
                 blocking: bool = False, **kwargs: Any) -> Any:
        """``client.<name>(*args, **kwargs)`` (see ``call``)."""
        return await self.call(lambda r: getattr(r, name)(*args, **kwargs), bound=bound,
                               blocking=blocking)

    async def execute(self, pipe: Any, *, bound: float | None = None) -> Any:
        """Send the pipeline ``pipe`` (made from ``client()``; see ``call``)."""
        return await self.call(lambda _: pipe.execute(), bound=bound)

    async def run(self, script: Script, keys: Sequence[Any], args: Sequence[Any], *,
                  bound: float | None = None) -> Any:
        """Run ``script`` with ``keys`` and ``args`` (see ``call``)."""
        return await self.call(lambda r: script.run(r, keys, args), bound=bound)

    async def probe(self, *, bound: float | None = None) -> None:
        """Ping Redis (within ``bound``) if the breaker lets a probe through now (closes it
        when Redis answers)."""
        if self.state == "down":
            with contextlib.suppress(Down):
                await self.do("ping", bound=bound)

    def _failed(self, exc: BaseException, *, certain: bool = False) -> None:
        self.counts["redis_errors"] += 1
        # Only a refusal is certain: a slow first reply (a loaded machine) is not an outage,
        # at start any more than later.
        if self._breaker.failure(anyio.current_time(), certain=certain):
            self.counts["outages"] += 1
            logger.warning(
                "the shared tier (Redis) is unavailable, serving from this process's cache "
                "alone until it answers again: %s: %s", type(exc).__name__, exc,
            )
            for callback in self._on_down:
                callback()
            self._start_healing()

    async def _drop_dead(self, exc: BaseException) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        if isinstance(exc, RedisConnectionError | OSError):
            await self._drop_idle()

    async def _drop_idle(self) -> None:
        """Close the pooled connections not in use: after a restart they are all dead."""
        for client, owned in self._clients.values():
            pool = getattr(client, "connection_pool", None)
            if not owned or pool is None:
                continue
            try:
                await pool.disconnect(inuse_connections=False)
            except Exception:  # a broken socket may fail to close; it is dropped anyway
                logger.debug("dropping pooled Redis connections failed", exc_info=True)

    async def aclose(self) -> None:
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client, owned in clients:
            if not owned:
                continue
            with anyio.CancelScope(shield=True), anyio.move_on_after(2 * self.timeout):
                try:
                    await client.aclose()
                except Exception:  # closing a broken connection may fail; nothing to do
                    logger.debug("closing the shared tier's connection failed", exc_info=True)
