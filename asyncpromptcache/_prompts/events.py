"""Langfuse prompt-version webhook events: the strict parser and the memory of ids seen. Pure.

The body Langfuse sends (``PromptWebhookOutboundSchema`` in its
``packages/shared/src/domain/webhooks.ts``, serialised by ``worker/src/queues/webhooks.ts``)::

    {"id": <execution id>, "timestamp": <ISO date>, "type": "prompt-version", "apiVersion": "v1",
     "action": "created" | "updated" | "deleted", "user"?: {"name", "email"},
     "prompt": {"id", "name", "version", "projectId", "createdBy", "labels", "prompt", "type",
                "config", "commitMessage", "tags", "createdAt", "updatedAt"}}

The prompt is the resolved one (references replaced), but without ``resolutionGraph``: the
schema strips it. Langfuse sends ``updated`` for every version whose labels a change touched
(the one that gained a label and those that lost it) and ``created`` for a new version.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeAlias, TypeVar

import attrs

from .._core.errors import InvalidResponseError, WebhookError
from .._core.json_values import NotJSON, read_json
from .models import Prompt, parse_prompt

__all__ = ["EventAction", "PromptVersionEvent", "SeenIds", "VersionStates", "parse_event"]

_K = TypeVar("_K")
_V = TypeVar("_V")

EventAction: TypeAlias = Literal["created", "updated", "deleted"]
_ACTIONS: tuple[EventAction, ...] = ("created", "updated", "deleted")


@attrs.frozen
class PromptVersionEvent:
    """One prompt-version webhook. ``composition_known`` is false when the prompt came
    without a ``resolutionGraph`` (as Langfuse sends it): what it includes is then unknown.
    ``updated_at`` is the version's ``updatedAt`` (``None`` if the sender left it out)."""

    id: str
    timestamp: datetime
    action: EventAction
    prompt: Prompt
    composition_known: bool
    updated_at: datetime | None = None


def parse_event(body: bytes) -> PromptVersionEvent:
    """Parse a webhook body strictly; anything else raises ``WebhookError``."""
    if not isinstance(body, bytes | bytearray):
        raise WebhookError(
            f"the webhook body must be the raw bytes received, got {type(body).__name__}")
    try:
        data: Any = read_json(body)
    except NotJSON as exc:
        raise WebhookError(f"the webhook body is {exc}") from None
    if not isinstance(data, dict):
        raise WebhookError("the webhook body is not a JSON object")
    event_id = _str(data, "id")
    timestamp = _date(data, "timestamp", "the webhook's 'timestamp'")
    if data.get("type") != "prompt-version":
        raise WebhookError(f"not a prompt-version webhook (type {_shown(data.get('type'))})")
    if data.get("apiVersion") != "v1":
        raise WebhookError(f"unsupported webhook apiVersion {_shown(data.get('apiVersion'))}")
    action = data.get("action")
    if action not in _ACTIONS:
        raise WebhookError(f"unknown webhook action {_shown(action)}")
    raw = data.get("prompt")
    if not isinstance(raw, dict):
        raise WebhookError("the webhook's 'prompt' should be an object")
    try:
        prompt = parse_prompt(raw)
    except InvalidResponseError as exc:
        raise WebhookError(f"the webhook's prompt is invalid: {exc}") from None
    updated_at = (
        _date(raw, "updatedAt", "the webhook's 'prompt.updatedAt'") if "updatedAt" in raw
        else None
    )
    return PromptVersionEvent(
        id=event_id, timestamp=timestamp, action=action, prompt=prompt,
        composition_known="resolutionGraph" in raw, updated_at=updated_at,
    )


def _date(data: dict[str, Any], field: str, what: str) -> datetime:
    value = data.get(field)
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise WebhookError(f"{what} should be an ISO date") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _str(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise WebhookError(f"the webhook's {field!r} should be a non-empty string")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


class _Bounded(Generic[_K, _V]):
    """The last ``max_size`` keys set, oldest forgotten first."""

    def __init__(self, max_size: int = 10_000) -> None:
        self._items: OrderedDict[_K, _V] = OrderedDict()
        self._max = max_size

    def _set(self, key: _K, value: _V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)


class SeenIds(_Bounded[str, None]):
    """The last ``max_size`` event ids, to refuse a delivery seen before. Bounded memory: a
    replay gets past it only after ``max_size`` newer events, and only within the signature's
    5-minute window."""

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._items

    def add(self, event_id: str) -> None:
        self._set(event_id, None)


class VersionStates(_Bounded[tuple[str, int], datetime]):
    """The ``updatedAt`` of the newest state applied per prompt version (the last
    ``max_size`` versions). Langfuse retries a failed delivery later, so events arrive out of
    order: a state older than one applied must not be applied over it."""

    def is_outdated(self, name: str, version: int, updated_at: datetime) -> bool:
        applied = self._items.get((name, version))
        return applied is not None and updated_at < applied

    def record(self, name: str, version: int, updated_at: datetime) -> None:
        self._set((name, version), updated_at)
