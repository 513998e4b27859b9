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

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._errors import InvalidResponseError

__all__ = ["Part", "has_references", "parse_resolution_graph"]

# The tag Langfuse resolves (``parsePromptDependencyTags`` in its shared package).
_REFERENCE = re.compile(r"@@@langfusePrompt:(.*?)@@@")


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


def has_references(texts: Iterable[str]) -> bool:
    """Whether any of ``texts`` still holds an unresolved ``@@@langfusePrompt:...@@@`` tag:
    a prompt as stored, before Langfuse resolved it (as create and label updates answer)."""
    return any(_REFERENCE.search(text) for text in texts)
