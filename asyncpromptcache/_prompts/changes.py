"""What a change to prompts does to a cache, as data. Pure: no I/O, no cache.

A new version, a label move or a deletion (from our own write or from a webhook) becomes one
``CacheChange``: prompts written through to the keys the version now serves, keys dropped that
it no longer serves, and the name whose content changed, so that every cached prompt composed
of it is dropped too (found through the cache's ``CompositionIndex``). The client applies it
in one place.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable

import attrs

from .composition import has_references
from .events import EventAction
from .keys import PromptKey
from .models import ChatMessage, Prompt, TextPrompt

__all__ = ["LATEST_LABEL", "CacheChange", "ChangeLog", "version_change"]

LATEST_LABEL = "latest"


@attrs.frozen
class CacheChange:
    """One change to apply to a cache.

    ``drops``: keys to drop; ``drop_names``: names whose every key is dropped; ``puts``: prompts
    to hold without a fetch; ``changed_names``: names whose content changed (every cached prompt
    that includes one of them, at any depth, is dropped); ``composition_known``: false when the
    prompts put came without their ``resolutionGraph`` (a webhook's), so what they include is
    unknown and any later change to another prompt drops them; ``moved``: the ``drops`` of
    labels that left this version (Langfuse announces the version a label moved to next, so
    a shared tier has the fleet wait briefly for it rather than fetch it).
    """

    drops: tuple[PromptKey, ...] = ()
    drop_names: frozenset[str] = frozenset()
    puts: tuple[tuple[PromptKey, Prompt], ...] = ()
    changed_names: frozenset[str] = frozenset()
    composition_known: bool = True
    moved: tuple[PromptKey, ...] = ()


def version_change(
    action: EventAction, prompt: Prompt, held: Iterable[tuple[PromptKey, Prompt]],
    *, composition_known: bool = True,
) -> CacheChange:
    """The change for ``prompt`` (one version, as Langfuse now has it) being ``action``-ed,
    given the cache's ``held`` entries.

    It serves its labels, its version and, when created (Langfuse moves ``latest`` to every
    new version), ``latest``. Created or updated: those keys get the prompt, keys held at this
    version under a label it no longer has are dropped, and keys held at another version get
    that version as Langfuse now has it (without the labels this one took, with its tags).
    Deleted:
    every key it served is dropped. A prompt that still holds unresolved references (as
    Langfuse answers a create or a label update) is not written through: its keys are
    dropped, for a fetch to resolve them.
    """
    name, version = prompt.name, prompt.version
    labels = dict.fromkeys(prompt.labels)
    if action == "created":
        labels[LATEST_LABEL] = None
    serves = [PromptKey(name, label, None) for label in labels]
    serves.append(PromptKey(name, None, version))
    at_this_version = [
        key for key, cached in held if key.name == name and cached.version == version
    ]
    if action == "deleted":
        return CacheChange(
            drops=tuple(dict.fromkeys([*serves, *at_this_version])),
            changed_names=frozenset({name}),
        )
    gone = [key for key in at_this_version if key.label is not None and key.label not in labels]
    relabelled = _relabelled(prompt, labels.keys(), serves, held)
    if has_references(_texts(prompt)):
        return CacheChange(
            drops=tuple(dict.fromkeys([*serves, *gone])), puts=relabelled,
            changed_names=frozenset({name}), moved=tuple(gone),
        )
    return CacheChange(
        drops=tuple(gone), puts=(*((key, prompt) for key in serves), *relabelled),
        changed_names=frozenset({name}), composition_known=composition_known,
        moved=tuple(gone),
    )


def _relabelled(
    prompt: Prompt, labels: Collection[str], serves: Collection[PromptKey],
    held: Iterable[tuple[PromptKey, Prompt]],
) -> tuple[tuple[PromptKey, Prompt], ...]:
    """Other versions of ``prompt``'s name held with what Langfuse now answers for them: a
    label ``prompt`` has taken removed, and its tags (Langfuse keeps one set of tags per
    name, for all its versions). No fetch, and no stale labels or tags."""
    copies: dict[int, Prompt] = {}
    puts: list[tuple[PromptKey, Prompt]] = []
    for key, cached in held:
        if key.name != prompt.name or cached.version == prompt.version or key in serves:
            continue
        if cached.tags == prompt.tags and all(label not in labels for label in cached.labels):
            continue
        if id(cached) not in copies:
            copies[id(cached)] = attrs.evolve(
                cached, tags=prompt.tags,
                labels=[label for label in cached.labels if label not in labels],
            )
        puts.append((key, copies[id(cached)]))
    return tuple(puts)


def _texts(prompt: Prompt) -> list[str]:
    if isinstance(prompt, TextPrompt):
        return [prompt.prompt]
    return [item.content for item in prompt.prompt if isinstance(item, ChatMessage)]


class ChangeLog:
    """The names changed lately, numbered in order (the last ``max_size`` changes), so that a
    fetch can tell whether a part of the prompt it read changed while it ran."""

    def __init__(self, max_size: int = 256) -> None:
        self.seq = 0
        self._entries: deque[tuple[int, frozenset[str]]] = deque(maxlen=max_size)

    def record(self, names: frozenset[str]) -> None:
        if names:
            self.seq += 1
            self._entries.append((self.seq, names))

    def touches(self, parts: frozenset[str], since: int) -> bool:
        """Whether one of ``parts`` (the names a prompt includes, read once as it was fetched)
        changed after change number ``since`` (or may have: changes that old are forgotten)."""
        if self.seq == since or not parts:
            return False
        if not self._entries or self._entries[0][0] > since + 1:
            return True
        return any(seq > since and not names.isdisjoint(parts) for seq, names in self._entries)
