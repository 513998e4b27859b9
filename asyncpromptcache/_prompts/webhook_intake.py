"""Webhooks: ``WebhookIntake``, behind ``AsyncPromptClient.handle_webhook``.

An event is verified (signature, then body), checked against the events already applied and
the newest state applied of its version (in this process, and with a shared tier in the whole
fleet), then applied to the cache as one change (``ChangeApplier``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .._core.errors import WebhookError, WebhookReplayError
from .._core.secret import Secret
from .apply import ChangeApplier
from .changes import version_change
from .events import PromptVersionEvent, SeenIds, VersionStates, parse_event
from .shared import SharedPrompts
from .signatures import verify_signature

__all__ = ["WebhookIntake"]

logger = logging.getLogger("asyncpromptcache")


class WebhookIntake:
    """The webhooks of one client, signed with ``webhook_secret``; ``opened`` raises unless the
    client is open, ``link`` gives its shared tier's link while it has one open."""

    def __init__(
        self, webhook_secret: Secret | None, changes: ChangeApplier, *,
        opened: Callable[[], None], link: Callable[[], SharedPrompts | None],
    ) -> None:
        self.__webhook_secret = webhook_secret
        self._opened = opened
        self._link = link
        self._change = changes.change
        self._held = changes.held
        self._with_known_parts = changes.with_known_parts
        # The event ids applied, and the newest state applied per version.
        self._seen_events = SeenIds()
        self._version_states = VersionStates()

    async def handle_webhook(self, body: bytes, signature: str | None) -> PromptVersionEvent:
        """As ``AsyncPromptClient.handle_webhook``."""
        if self.__webhook_secret is None:
            raise WebhookError(
                "no webhook secret: pass webhook_secret= or set LANGFUSE_WEBHOOK_SECRET"
            )
        verify_signature(self.__webhook_secret.reveal(), body, signature, now=time.time())
        event = parse_event(body)
        if event.id in self._seen_events:
            raise WebhookReplayError(f"webhook event {event.id!r} was already applied")
        self._opened()
        link = self._link()  # with a shared tier, an event is applied once in the whole fleet
        if link is not None and not await link.claim_event(event.id):
            self._seen_events.add(event.id)
            raise WebhookReplayError(
                f"webhook event {event.id!r} was already applied (by another process)")
        prompt, known, at = event.prompt, event.composition_known, event.updated_at
        outdated = at is not None and (
            self._version_states.is_outdated(prompt.name, prompt.version, at)
            or (link is not None and not await link.newest_state(
                prompt.name, prompt.version, at.timestamp(), claimed=event.id)))
        if outdated:
            logger.info(
                "webhook %s: prompt %r version %d has changed since; not applied",
                event.id, prompt.name, prompt.version,
            )
        else:
            if not known:
                prompt, known = self._with_known_parts(prompt)
            self._change(version_change(event.action, prompt, self._held(prompt.name),
                                              composition_known=known))
            if at is not None:
                self._version_states.record(prompt.name, prompt.version, at)
        self._seen_events.add(event.id)
        return event
