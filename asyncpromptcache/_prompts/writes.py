"""Writes: ``PromptWrites``, behind ``AsyncPromptClient.create_prompt`` and ``update_prompt``.

A write is checked before anything is sent, sent to the client's source (a ``PromptWriter``),
and what it answers is applied to the cache as one change (``ChangeApplier``): the keys the
version now serves get it without a fetch, and with a shared tier the fleet follows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._core.errors import InvalidArgumentError, WritesNotSupportedError
from .._core.json_values import dumps, json_value
from .apply import ChangeApplier
from .changes import version_change
from .keys import PromptKey, make_key
from .models import Prompt, PromptType, prompt_from_value, wrong_type
from .source import FetchOptions, NewPrompt, PromptSource, PromptWriter

__all__ = ["PromptWrites"]


class PromptWrites:
    """The writes of a client reading from ``source``; ``opened`` raises unless the client is
    open."""

    def __init__(
        self, source: PromptSource, changes: ChangeApplier, *, opened: Callable[[], None]
    ) -> None:
        self._source = source
        self._opened = opened
        self._change = changes.change
        self._held = changes.held

    async def create_prompt(
        self,
        *,
        name: str,
        prompt: str | list[dict[str, Any]],
        type: PromptType,
        labels: list[str] | None,
        tags: list[str] | None,
        config: Any | None,
        commit_message: str | None,
    ) -> Prompt:
        """As ``AsyncPromptClient.create_prompt``."""
        new = _new_prompt(name, prompt, type, labels, tags, config, commit_message)
        writer = self._writer()
        created = await writer.create_prompt(new, FetchOptions())
        if created.type != type:
            raise wrong_type(PromptKey(name, None, created.version), created, type)
        self._change(version_change("created", created, self._held(name)))
        return created

    async def update_prompt(self, *, name: str, version: int, new_labels: list[str]) -> Prompt:
        """As ``AsyncPromptClient.update_prompt``."""
        key = make_key(name, version)
        labels = _labels(new_labels, "new_labels")
        writer = self._writer()
        updated = await writer.update_prompt_labels(key.name, version, labels, FetchOptions())
        self._change(version_change("updated", updated, self._held(key.name)))
        return updated

    def _writer(self) -> PromptWriter:
        self._opened()
        if not isinstance(self._source, PromptWriter):
            raise WritesNotSupportedError(
                f"the source {type(self._source).__name__} cannot write prompts: it does not "
                "implement PromptWriter (create_prompt and update_prompt_labels)"
            )
        return self._source


def _labels(labels: Any, what: str) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, list | tuple) \
            or not all(isinstance(label, str) and label for label in labels):
        raise InvalidArgumentError(f"{what} must be a list of non-empty strings, got {labels!r}")
    return list(labels)


def _new_prompt(
    name: str, prompt: Any, prompt_type: Any, labels: list[str] | None,
    tags: list[str] | None, config: Any, commit_message: str | None,
) -> NewPrompt:
    make_key(name)
    if prompt_type == "text":
        if not isinstance(prompt, str):
            raise InvalidArgumentError(
                f"a text prompt must be a string, got {type(prompt).__name__}"
            )
    elif prompt_type == "chat":
        # The messages are checked as a chat fallback is, before anything is sent.
        prompt_from_value(name, prompt, "chat")
    else:
        raise InvalidArgumentError(f"type must be 'text' or 'chat', got {prompt_type!r}")
    if commit_message is not None and not isinstance(commit_message, str):
        raise InvalidArgumentError(
            f"commit_message must be a string, got {type(commit_message).__name__}"
        )
    if config is not None:
        # Checked whole before anything is sent: a set or NaN in it, a cycle, or nesting
        # past the recursion limit is the caller's error, not a failed request.
        config = json_value(config, "config")
        dumps(config, "config")
    return NewPrompt(
        name=name, type=prompt_type, prompt=prompt,
        labels=tuple(_labels(labels or [], "labels")),
        tags=None if tags is None else tuple(_labels(tags, "tags")),
        config=config, commit_message=commit_message,
    )
