"""What the cache engine holds: its entries, the bounded LRU store and the indexes over it.
Pure bookkeeping: no I/O, no tasks, no clock of its own.

Every entry is in the store (which orders and bounds them) and in ``hot``, the plain dict the
hit paths read; a default-label entry is in ``by_name`` as well, under its name alone; the
prompts each entry was composed of are in ``composition``. ``touched`` holds the hit paths'
notes of use, applied to the LRU order before anything is stored. The engine reads ``hot``,
``by_name`` and ``touched`` directly, on its hot paths, and hands them out (``hit_path``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import attrs
import cachetools

from .composition import CompositionIndex
from .keys import DEFAULT_LABEL
from .models import Prompt

__all__ = ["Entry", "HeldEntries"]


@attrs.frozen(slots=True, eq=False)  # eq=False: hashed by identity, for the recency notes
class Entry:
    """One prompt held, with its times on the cache's clock. Immutable: a change replaces it."""

    key: Hashable
    prompt: Prompt
    fetched_at: float
    expires_at: float
    stale_until: float
    # Copied from the prompt: the hit path compares it without a class-attribute lookup.
    type: str = attrs.field(init=False, default=attrs.Factory(
        lambda self: self.prompt.type, takes_self=True))


class _Store(cachetools.LRUCache[Hashable, Entry]):
    """The bounded store. Says when it evicts, so the indexes follow."""

    def __init__(self, maxsize: int, on_evict: Callable[[Hashable], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[Hashable, Entry]:
        key, entry = super().popitem()
        self._on_evict(key)
        return key, entry


class HeldEntries:
    """The entries of one cache, at most ``max_size`` (the least recently used is evicted
    first, and ``on_evict`` told its key), and the indexes over them."""

    def __init__(self, max_size: int, on_evict: Callable[[Hashable], None]) -> None:
        self._store = _Store(max_size, self._evicted)
        self._on_evict = on_evict
        # The hit path reads ``hot`` (a plain dict, C speed) and notes each use in ``touched``,
        # keyed by the entry (an identity hash costs less than re-hashing the key tuple), with
        # the clock reading it took anyway; the notes are applied to the LRU order, oldest
        # reading first, before any insertion can evict.
        self.hot: dict[Hashable, Entry] = {}
        # Default-label entries again, by the name alone: the hit path looks a name up without
        # building a key tuple (a str caches its hash). A str never equals a tuple, so nothing
        # but a default-label name finds an entry here.
        self.by_name: dict[str, Entry] = {}
        self.touched: dict[Entry, float] = {}
        # The entries held by name and by the prompts they include (read once as they come).
        self.composition = CompositionIndex()

    def hold(self, key: Hashable, entry: Entry) -> None:
        """Hold ``entry`` for ``key``, replacing what was held; may evict the least recently
        used key first."""
        self._apply_touches()
        self._store[key] = entry
        self._index(key, entry)

    def restore(self, entries: Iterable[tuple[Hashable, Entry]]) -> int:
        """Hold each of ``entries`` as it is; returns how many."""
        count = 0
        for key, entry in entries:
            self.hold(key, entry)
            count += 1
        return count

    def _apply_touches(self) -> None:
        """Move the keys the hit paths noted as used to the recent end of the LRU order."""
        # The dict is cleared, never replaced: the client's hit path holds a reference to it.
        # list() first: another thread (the sync facade) may add to it meanwhile.
        touched = self.touched
        notes = list(touched.items())
        touched.clear()
        # Least recent reading first (a stable sort: equal readings keep their first-use order),
        # so the LRU order ends as if every use had moved its key at once.
        notes.sort(key=_reading)
        store = self._store
        for entry, _ in notes:
            key = entry.key
            if key in store:
                store[key]  # LRUCache.__getitem__ marks the key as recently used

    def _index(self, key: Hashable, entry: Entry) -> None:
        self.hot[key] = entry
        self.composition.add(key, entry.prompt.name, entry.prompt.resolution_graph)
        name = _default_label_name(key)
        if name is not None:
            self.by_name[name] = entry

    def _evicted(self, key: Hashable) -> None:
        self._on_evict(key)
        self._forget(key)

    def _forget(self, key: Hashable) -> None:
        self.composition.discard(key)
        entry = self.hot.pop(key, None)
        if entry is not None:
            self.touched.pop(entry, None)
            name = _default_label_name(key)
            if name is not None:
                self.by_name.pop(name, None)

    def discard(self, key: Hashable) -> None:
        """Stop holding ``key``, if it is held."""
        self._store.pop(key, None)
        self._forget(key)

    def clear(self) -> None:
        """Hold nothing."""
        self._store.clear()
        self.hot.clear()
        self.composition.clear()
        self.by_name.clear()
        self.touched.clear()

    def expire_all(self, now: float) -> int:
        """Make every entry still fresh at ``now`` stale from ``now``, each keeping its span
        of staleness; returns how many."""
        marked = 0
        for key, entry in list(self.hot.items()):
            if entry.expires_at <= now:
                continue
            stale = Entry(key, entry.prompt, entry.fetched_at, now,
                          now + (entry.stale_until - entry.expires_at))
            self.touched.pop(entry, None)
            self._store[key] = stale  # replaces in place: no eviction
            self._index(key, stale)
            marked += 1
        return marked


def _reading(note: tuple[Entry, float]) -> float:
    return note[1]


def _default_label_name(key: Any) -> str | None:
    """The name a key of the default label is indexed by as well; ``None`` for other keys."""
    if (isinstance(key, tuple) and len(key) == 3 and key[1] == DEFAULT_LABEL and key[2] is None
            and isinstance(key[0], str)):
        return key[0]
    return None
