"""Langfuse's prompt-version webhooks, sent by the local server.

As Langfuse builds and sends them (web/src/features/prompts/server/promptChangeEventSourcing.ts,
worker/src/queues/webhooks.ts, packages/shared/src/domain/webhooks.ts in langfuse/langfuse):

- the body is ``{"id", "timestamp", "type": "prompt-version", "apiVersion": "v1", "action",
  "prompt"}`` in that order (Langfuse keeps ``prompt`` last), compact JSON, where ``prompt`` is
  the version as its schema shapes it (``id, name, version, projectId, createdBy, labels,
  prompt, type, config, commitMessage, tags, createdAt, updatedAt``), its content resolved
  and without ``resolutionGraph``;
- headers ``content-type: application/json``, ``user-agent: Langfuse/1.0`` and
  ``x-langfuse-signature: t=<unix seconds>,v1=<hex>``, signed once per event;
- four attempts per event (Langfuse's ``backOff(..., {numOfAttempts: 4})`` from
  exponential-backoff: 100 ms, then 200 ms, then 400 ms between them, no jitter), each
  bounded by a 10 s timeout; anything but a 2xx answer is a failed attempt; after the last
  one the event is dropped and logged.

Events leave in the order the writes made them, one at a time, from a task of their own: a
write never waits for a webhook.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
from aiohttp import web

from .._core.errors import ConfigurationError
from .._prompts.signatures import SIGNATURE_HEADER, sign
from .._store._sqlite import PromptChange, PromptStore

__all__ = ["WEBHOOK_ATTEMPTS", "WebhookSender", "check_webhook", "webhook_body"]

logger = logging.getLogger("asyncpromptcache.server")

WEBHOOK_ATTEMPTS = 4
_STARTING_DELAY = 0.1
_TIME_MULTIPLE = 2.0
_ATTEMPT_TIMEOUT = 10.0
_DRAIN_SECONDS = 2.0  # on shutdown, queued events get this long to go out
_CREATED_BY = "API"  # what Langfuse records for a version made with API keys


def check_webhook(url: str | None, secret: str | None) -> bool:
    """Whether webhooks are on; ``ConfigurationError`` unless URL and secret make a pair."""
    if (url is None) != (secret is None):
        raise ConfigurationError("give both a webhook URL and a webhook secret, or neither")
    if url is None or secret is None:
        return False
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"the webhook URL must be http:// or https://, got {url!r}")
    if not secret.strip():
        raise ConfigurationError("the webhook secret must not be empty or whitespace")
    return True


def _js_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_body(
    change: PromptChange, *, event_id: str, timestamp: datetime, project_id: str
) -> bytes:
    """The webhook's raw body for one changed version, exactly as Langfuse serialises it."""
    stored = change.prompt
    wire = stored.prompt.to_dict()
    body = {
        "id": event_id,
        "timestamp": _js_time(timestamp),
        "type": "prompt-version",
        "apiVersion": "v1",
        "action": change.action,
        "prompt": {
            "id": stored.id,
            "name": wire["name"],
            "version": wire["version"],
            "projectId": project_id,
            "createdBy": _CREATED_BY,
            "labels": wire["labels"],
            "prompt": wire["prompt"],
            "type": wire["type"],
            "config": wire["config"],
            "commitMessage": wire["commitMessage"],
            "tags": wire["tags"],
            "createdAt": stored.created_at,
            "updatedAt": stored.updated_at,
        },
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class WebhookSender:
    """Sends a signed webhook for every change a ``PromptStore`` reports, in order.

    ``attach(app, store)`` runs it for the life of an aiohttp application. ``sleep`` and
    ``clock`` are for tests.
    """

    def __init__(
        self, url: str, secret: str, *, project_id: str,
        attempts: int = WEBHOOK_ATTEMPTS, starting_delay: float = _STARTING_DELAY,
        attempt_timeout: float = _ATTEMPT_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_webhook(url, secret)
        self.url = url
        self._secret = secret
        self._project_id = project_id
        self._attempts = attempts
        self._starting_delay = starting_delay
        self._attempt_timeout = attempt_timeout
        self._sleep = sleep
        self._clock = clock
        self._queue: asyncio.Queue[PromptChange] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Events delivered, and events given up on after every attempt failed.
        self.delivered = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"WebhookSender({self.url!r}, delivered={self.delivered}, failed={self.failed})"

    def attach(self, app: web.Application, store: PromptStore) -> None:
        """Send the store's changes while ``app`` runs (its startup and cleanup hooks)."""

        async def context(_: web.Application) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            store.add_listener(self._listen)
            async with aiohttp.ClientSession() as session:
                worker = asyncio.create_task(self._work(session))
                try:
                    yield
                finally:
                    store.remove_listener(self._listen)
                    await self._drain(worker)

        app.cleanup_ctx.append(context)

    def _listen(self, changes: list[PromptChange]) -> None:
        # The store's worker thread: hand over to the loop and return at once.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._enqueue, changes)

    def _enqueue(self, changes: list[PromptChange]) -> None:
        for change in changes:
            self._queue.put_nowait(change)

    async def _drain(self, worker: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait_for(self._queue.join(), _DRAIN_SECONDS)
        except TimeoutError:
            logger.warning("stopping with %d prompt webhooks unsent", self._queue.qsize())
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

    async def _work(self, session: aiohttp.ClientSession) -> None:
        while True:
            change = await self._queue.get()
            try:
                await self._deliver(session, change)
            except Exception:  # never let one event stop the ones after it
                logger.exception("prompt webhook failed")
            finally:
                self._queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, change: PromptChange) -> None:
        body = webhook_body(
            change, event_id=str(uuid.uuid4()),
            timestamp=datetime.fromtimestamp(self._clock(), UTC), project_id=self._project_id,
        )
        headers = {
            "content-type": "application/json",
            "user-agent": "Langfuse/1.0",
            SIGNATURE_HEADER: sign(self._secret, body, int(self._clock())),
        }
        delay = self._starting_delay
        for attempt in range(1, self._attempts + 1):
            try:
                await self._post(session, body, headers)
            except (aiohttp.ClientError, TimeoutError, _NotOk) as exc:
                logger.warning(
                    "prompt webhook %s %s v%s to %s: attempt %d of %d failed: %s",
                    change.action, change.prompt.prompt.name, change.prompt.prompt.version,
                    self.url, attempt, self._attempts, exc or type(exc).__name__,
                )
                if attempt < self._attempts:
                    await self._sleep(delay)
                    delay *= _TIME_MULTIPLE
                continue
            self.delivered += 1
            return
        self.failed += 1
        logger.error("prompt webhook to %s dropped after %d attempts", self.url, self._attempts)

    async def _post(
        self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
    ) -> None:
        timeout = aiohttp.ClientTimeout(total=self._attempt_timeout)
        async with session.post(
            self.url, data=body, headers=headers, timeout=timeout, max_redirects=10,
        ) as response:
            await response.read()
            if not 200 <= response.status < 300:
                raise _NotOk(f"status {response.status}")


class _NotOk(Exception):
    """A webhook answer outside 2xx."""

