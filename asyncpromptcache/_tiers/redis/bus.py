"""A namespace's pub/sub channel: subscribe with reconnect and backoff, publish.

``run`` keeps the subscription: each message's body goes to ``on_message``; each (re)subscribe
calls ``on_reconnect`` first (messages may have been missed while unsubscribed: a tier then
revalidates what it holds). Whether Redis is back after an outage is the connection's to find
out (``Connection.heal_in``), not the subscription's. Bodies are the tier's own encoding,
signed by it (``seal``); anyone may ``PUBLISH``, so ``on_message`` must verify.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from .connection import Connection, Down

__all__ = ["Bus"]

logger = logging.getLogger("asyncpromptcache")

_CONNECT_GRACE = 1.0  # how long a first subscription is waited for before running without
_LISTEN_SECONDS = 0.25  # how long one read of the socket waits for a message


class Bus:
    def __init__(self, conn: Connection, channel: str) -> None:
        self._conn = conn
        self.channel = channel

    async def publish(self, body: bytes, *, bound: float | None = None) -> None:
        """Publish ``body`` on the channel; ``Down`` when Redis does not take it."""
        await self._conn.call(lambda r: r.publish(self.channel, body), bound=bound)

    async def run(
        self, on_message: Callable[[bytes], Awaitable[None]],
        on_reconnect: Callable[[], Awaitable[None]],
        *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe and deliver until cancelled; ``task_status.started()`` once subscribed,
        or after a short grace. Never raises but cancellation."""
        conn = self._conn
        backoff = 0.05
        started = False
        while True:
            pubsub = None
            try:
                client = conn.client()
                with anyio.fail_after(max(conn.timeout, _CONNECT_GRACE)):
                    # An asyncio RedisCluster maps its slots on its first command, and its
                    # pubsub() needs that map: initialize first (a no-op on other clients).
                    initialize = getattr(client, "initialize", None)
                    if initialize is not None:
                        await initialize()
                    pubsub = client.pubsub()
                    await pubsub.subscribe(self.channel)
                await on_reconnect()
                logger.debug("subscribed to the shared tier's channel")
                backoff = 0.05
                if not started:
                    started = True
                    task_status.started()
                await self._listen(pubsub, on_message)
            except anyio.get_cancelled_exc_class():
                raise
            except Down:
                logger.debug("the shared tier's subscription waits for Redis")
            except Exception as exc:
                logger.debug("the shared tier's subscription failed: %r", exc)
                conn._failed(exc)
            finally:
                if pubsub is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(conn.timeout):
                        try:
                            await pubsub.aclose()
                        except Exception:
                            logger.debug("closing a pub/sub connection failed", exc_info=True)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, conn.tier.reconnect_max_seconds)

    async def _listen(self, pubsub: Any,
                      on_message: Callable[[bytes], Awaitable[None]]) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True,
                                               timeout=_LISTEN_SECONDS)
            if message is not None and message.get("type") == "message":
                await on_message(message["data"])
