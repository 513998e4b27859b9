"""Applying changes to a client's cache: ``ChangeApplier``, beside ``AsyncPromptClient``.

Every change to the prompts a process holds goes through here: ``invalidate`` and ``clear``,
the client's own writes, webhooks, and the changes other processes publish through the shared
tier. It drops and writes through entries of the engine, drops what is composed of a changed
prompt, keeps the keys whose composition is unknown (the suspects: prompts a webhook wrote
through) and, with a shared tier, sends each local change to the rest of the fleet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import attrs

from .changes import CacheChange, ChangeLog
from .engine import AsyncPromptCache
from .keys import PromptKey, make_key
from .models import Prompt
from .shared import SharedPrompts
from .shared_format import Change

__all__ = ["ChangeApplier"]


class ChangeApplier:
    """Applies ``CacheChange``s to ``cache`` (entries put fresh for ``ttl``) and notes them in
    ``change_log``; ``link`` gives the shared tier's link while the client has one open."""

    def __init__(
        self, cache: AsyncPromptCache, *, ttl: float, link: Callable[[], SharedPrompts | None]
    ) -> None:
        self._cache = cache
        self._ttl = ttl
        self._link = link
        # The names changed lately, for fetches in flight (PromptReads).
        self.change_log = ChangeLog()
        # The keys written through without knowing what their prompt includes
        # (CacheChange.composition_known).
        self._unknown_parts: dict[PromptKey, Prompt] = {}

    def invalidate(self, name: str, *, label: str | None, version: int | None) -> int:
        """As ``AsyncPromptClient.invalidate``."""
        if label is not None or version is not None:
            change = CacheChange(
                drops=(make_key(name, version, label),), changed_names=frozenset({name})
            )
        else:
            make_key(name)
            change = CacheChange(drop_names=frozenset({name}), changed_names=frozenset({name}))
        return self.change(change)

    def clear(self) -> int:
        """Drop every cached prompt (in every process, with a shared tier). Returns how many
        this process dropped."""
        dropped = self.clear_here()
        link = self._link()
        if link is not None:
            link.propagate_soon(Change("clear"))
        return dropped

    def change(self, change: CacheChange) -> int:
        """Apply ``change`` here and, with a shared tier, send it to every other process
        (the prompts it puts are written to Redis first). Returns entries dropped here."""
        dropped = self.apply_change(change)
        link = self._link()
        if link is not None:
            link.propagate_soon(Change.invalidate(
                keys=[*change.drops, *(key for key, _ in change.puts)],
                names=change.drop_names, changed=change.changed_names,
                puts=change.puts, moved=change.moved, suspect=not change.composition_known,
            ))
        return dropped

    def apply_shared(self, change: Change) -> int:
        """Apply a change another process published through the shared tier (or the tier's
        own ``expire``). Returns how many entries it affected here."""
        if change.kind == "invalidate":
            return self.apply_change(CacheChange(
                drops=change.keys, drop_names=frozenset(change.names),
                changed_names=frozenset(change.changed),
            ))
        if change.kind == "clear":
            return self.clear_here()
        if change.kind == "expire":
            return self._cache.expire_all()
        return 0

    def note_suspect(self, key: PromptKey, prompt: Prompt) -> None:
        """``prompt``, read from the shared tier for ``key``, came from a webhook: what it
        includes is unknown (``CacheChange.composition_known``)."""
        self._unknown_parts[key] = prompt

    def clear_here(self) -> int:
        self._unknown_parts.clear()
        return self._cache.clear()

    def held(self, name: str) -> list[tuple[PromptKey, Prompt]]:
        return [(PromptKey._make(key), prompt)  # type: ignore[arg-type]
                for key, prompt in self._cache.held(name)]

    def with_known_parts(self, prompt: Prompt) -> tuple[Prompt, bool]:
        """``prompt`` with the resolution graph of the same version held here, if any is
        (a version's references never change: it is immutable in Langfuse)."""
        for key, held in self.held(prompt.name):
            if held.version == prompt.version \
                    and self._unknown_parts.get(key) is not held:
                return attrs.evolve(prompt, resolution_graph=held.resolution_graph), True
        return prompt, False

    def apply_change(self, change: CacheChange) -> int:
        """Apply one change to this process's cache: the one place every local change goes
        through (writes, webhooks, ``invalidate``). Drops ``change.drops`` and every key of
        ``change.drop_names``, holds ``change.puts`` (a fetch in flight for such a key does
        not write back), then drops every held prompt composed of ``change.changed_names``,
        transitively, and notes the names so that a fetch then in flight of a prompt composed
        of them is not kept. Returns how many entries were dropped."""
        cache = self._cache
        dropped = sum(
            cache.invalidate(key.name, label=key.label, version=key.version)
            for key in change.drops
        )
        dropped += sum(cache.invalidate(name) for name in change.drop_names)
        for key, prompt in change.puts:
            cache.put(key, prompt, ttl=self._ttl)
            if change.composition_known:
                self._unknown_parts.pop(key, None)
            else:
                self._unknown_parts[key] = prompt
        self._unknown_parts = {key: prompt for key, prompt in self._unknown_parts.items()
                               if cache.peek(key) is prompt}
        written = {key for key, _ in change.puts}
        for found in cache.dependents(change.changed_names, self._unknown_parts) - written:
            key = cast(PromptKey, found)
            dropped += cache.invalidate(key.name, label=key.label, version=key.version)
        self.change_log.record(change.changed_names)  # see PromptReads._fetch
        return dropped
