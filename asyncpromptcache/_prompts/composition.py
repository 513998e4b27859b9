"""Composed prompts: what a prompt was resolved from. Pure: no I/O.

Langfuse replaces ``@@@langfusePrompt:name=NAME|label=LABEL@@@`` (or ``|version=N``) in a
prompt with the text of that prompt, on the server, and reports what it used in the prompt's
``resolutionGraph``::

    {"root": {"id", "name", "version"},
     "dependencies": {<id of a prompt>: [{"id", "name", "version"}, ...], ...}}

``dependencies`` maps every prompt of the graph that includes others (the root and, for nested
references, its parts) to the prompts it included, so the graph is already transitive. It is
``null`` for a prompt that includes nothing (``buildAndResolvePromptGraph`` in Langfuse's
``packages/shared/src/server/services/PromptService``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import Any

import attrs

from .._core.errors import InvalidResponseError

__all__ = [
    "REFERENCE_PREFIX",
    "REFERENCE_TAG",
    "CompositionIndex",
    "Part",
    "has_references",
    "js_json",
    "parse_resolution_graph",
    "part_names",
    "reference_tags",
]

#: The tag Langfuse resolves (``parsePromptDependencyTags`` in its shared package:
#: ``/@@@langfusePrompt:(.*?)@@@/g``). JavaScript's "." stops at these four line
#: terminators, Python's only at "\n": the one copy of the tag, for the SDK and the store.
REFERENCE_PREFIX = "@@@langfusePrompt:"
REFERENCE_TAG = re.compile(REFERENCE_PREFIX + "[^\n\r\u2028\u2029]*?@@@")


@attrs.frozen
class Part:
    """One prompt version a composed prompt was resolved from."""

    name: str
    version: int


def parse_resolution_graph(graph: Any) -> frozenset[Part]:
    """The prompts a ``resolutionGraph`` says were included, at any depth (empty for ``None``).

    Strict: a graph of another shape raises ``InvalidResponseError`` naming the field.
    """
    if graph is None:
        return frozenset()
    if not isinstance(graph, Mapping):
        raise _bad("resolutionGraph", "an object or null", graph)
    dependencies = graph.get("dependencies")
    if not isinstance(dependencies, Mapping):
        raise _bad("resolutionGraph.dependencies", "an object", dependencies)
    parts: set[Part] = set()
    for parent, children in dependencies.items():
        path = f"resolutionGraph.dependencies[{parent!r}]"
        if not isinstance(children, list):
            raise _bad(path, "a list", children)
        for i, child in enumerate(children):
            parts.add(_part(child, f"{path}[{i}]"))
    return frozenset(parts)


def part_names(graph: Any) -> frozenset[str]:
    """The names of the prompts a ``resolutionGraph`` says were included: the one reader
    of a graph beside ``parse_resolution_graph`` (strict, the same ``InvalidResponseError``)."""
    return frozenset(part.name for part in parse_resolution_graph(graph))


def _part(node: Any, path: str) -> Part:
    if not isinstance(node, Mapping):
        raise _bad(path, "an object", node)
    name, version = node.get("name"), node.get("version")
    if not isinstance(name, str) or not name:
        raise _bad(f"{path}.name", "a non-empty string", name)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad(f"{path}.version", "an integer", version)
    return Part(name, version)


def _bad(path: str, expected: str, value: Any) -> InvalidResponseError:
    return InvalidResponseError(
        f"invalid prompt: field {path!r} should be {expected}, got {type(value).__name__}",
        field=path,
    )


def js_json(value: Any) -> str:
    """``JSON.stringify(value)``."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def reference_tags(content: Any) -> list[str]:
    """The ``@@@langfusePrompt:...@@@`` tags in a prompt's content, each once, in order of
    first appearance: found as Langfuse finds them, in ``JSON.stringify`` of the content (a
    newline inside a tag is ``\\n`` there, and part of it)."""
    return list(dict.fromkeys(match.group(0) for match in REFERENCE_TAG.finditer(js_json(content))))


def has_references(texts: Iterable[str]) -> bool:
    """Whether any of ``texts`` still holds an unresolved ``@@@langfusePrompt:...@@@`` tag:
    a prompt as stored, before Langfuse resolved it (as create and label updates answer)."""
    return any(reference_tags(text) for text in texts)


class CompositionIndex:
    """The entries a cache holds, by their name and by the names of the prompts they include,
    kept as entries come (``add``) and go (``discard``), so that a change to a prompt finds
    what includes it without reading every held graph.

    A key is any hashable naming one entry, ``name`` the prompt's name. A graph that cannot be
    read makes its entry a suspect, as ``dependents`` says.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[str, Any, frozenset[str] | None]] = {}
        # Most names have one entry: held as the key itself, a set from the second one on
        # (a set per entry would be two thirds of what an entry costs). A key is never a set.
        self._named: dict[str, Hashable | set[Hashable]] = {}
        self._users: dict[str, set[Hashable]] = {}
        self._unreadable: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: Hashable, name: str, graph: Any) -> None:
        """Index the entry ``key`` (prompt ``name`` with ``resolutionGraph`` ``graph``),
        replacing what was indexed for it."""
        held = self._entries.get(key)
        if held is not None:
            if held[0] == name and held[1] is graph:
                return  # the same prompt again (a refresh, a mark as stale): nothing to read
            self.discard(key)
        try:
            # The one empty set for the many prompts that include none.
            parts: frozenset[str] | None = part_names(graph) - {name} or _NO_PARTS
        except InvalidResponseError:
            parts = None
            self._unreadable.add(key)
        self._entries[key] = (name, graph, parts)
        named = self._named.get(name, _ABSENT)
        if named is _ABSENT:
            self._named[name] = key
        elif isinstance(named, set):
            named.add(key)
        elif named != key:
            self._named[name] = {named, key}
        for part in parts or ():
            self._users.setdefault(part, set()).add(key)

    def discard(self, key: Hashable) -> None:
        held = self._entries.pop(key, None)
        if held is None:
            return
        name, _, parts = held
        named = self._named.get(name, _ABSENT)
        if isinstance(named, set):
            _unlink(self._named, name, key)
        elif named == key:
            del self._named[name]
        for part in parts or ():
            _unlink(self._users, part, key)
        self._unreadable.discard(key)

    def clear(self) -> None:
        self._entries.clear()
        self._named.clear()
        self._users.clear()
        self._unreadable.clear()

    def named(self, name: str) -> frozenset[Hashable]:
        """The keys held for prompt ``name``."""
        named = self._named.get(name, _ABSENT)
        if isinstance(named, set):
            return frozenset(named)
        return frozenset() if named is _ABSENT else frozenset((named,))

    def dependents(
        self, names: Collection[str], suspects: Collection[Hashable] = ()
    ) -> set[Hashable]:
        """Keys of held entries that include a prompt named in ``names``, at any depth.

        Closed transitively over what is held: an entry found changes in turn, so what
        includes it is found too. ``suspects`` (keys whose parts are unknown) and entries
        whose graph could not be read are found by a change to any name but their own (a
        prompt never includes itself: Langfuse refuses that cycle).
        """
        entries = self._entries
        doubtful = {key for key in suspects if key in entries} | self._unreadable
        changed = set(names)
        found: set[Hashable] = set()
        todo = list(changed)
        while todo:
            while todo:
                for key in self._users.get(todo.pop(), ()):
                    if key not in found and key not in doubtful:
                        found.add(key)
                        self._changed(key, changed, todo)
            for key in doubtful - found:
                if changed - {entries[key][0]}:
                    found.add(key)
                    self._changed(key, changed, todo)
        return found

    def _changed(self, key: Hashable, changed: set[str], todo: list[str]) -> None:
        name = self._entries[key][0]
        if name not in changed:
            changed.add(name)
            todo.append(name)


_NO_PARTS: frozenset[str] = frozenset()
_ABSENT = object()


def _unlink(index: dict[str, Any], name: str, key: Hashable) -> None:
    keys = index.get(name)
    if isinstance(keys, set):
        keys.discard(key)
        if not keys:
            del index[name]
