"""Composed prompts as Langfuse resolves them: ``@@@langfusePrompt:name=N|label=L@@@`` (or
``|version=V``) references replaced by the text prompts they name, recursively.

Pure: the caller passes a lookup. Follows Langfuse's ``parsePromptDependencyTags``
(packages/shared/src/features/prompts) and ``PromptService.buildAndResolvePromptGraph``
(packages/shared/src/server/services/PromptService) step by step, including their quirks:
references are found and replaced in the prompt's JSON text, a name is referenced only when
``name=`` comes first and there are exactly two parts, and a reference back to any version
of the root prompt's name is a cycle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import attrs

from .._prompts.composition import REFERENCE_PREFIX, js_json as _js_json, reference_tags

__all__ = [
    "MAX_NESTING_DEPTH",
    "PromptNode",
    "Reference",
    "ResolutionError",
    "find_references",
    "resolve",
]

MAX_NESTING_DEPTH = 5
_JS_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_JS_RADIX = {"0x": 16, "0o": 8, "0b": 2}
_JS_SPACE = " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


class ResolutionError(Exception):
    """A reference that is missing, not a text prompt, too deep or a cycle (Langfuse's
    ``LangfuseConflictError``); the message is Langfuse's."""


@attrs.frozen
class Reference:
    """One parsed reference: by ``version`` (a number, as JavaScript reads it) or ``label``."""

    name: str
    version: float | None = None
    label: str | None = None

    @property
    def description(self) -> str:
        """As Langfuse's error messages put it: ``name - version 2``, ``name - label prod``."""
        if self.version is not None:
            return f"{self.name} - version {_js_number_text(self.version)}"
        return f"{self.name} - label {self.label}"


@attrs.frozen
class PromptNode:
    """What resolution needs of one stored version. ``labels`` include ``latest`` when it is
    the newest version, as Langfuse stores them."""

    id: str
    name: str
    version: int
    type: str
    prompt: Any = attrs.field(hash=False)
    labels: tuple[str, ...] = ()


Lookup = Callable[[Reference], PromptNode | None]


def _js_number(text: str) -> float | None:
    """``Number(text)`` when it is finite (what ``z.coerce.number()`` accepts), else None."""
    stripped = text.strip(_JS_SPACE)
    if not stripped:
        return 0.0
    radix = _JS_RADIX.get(stripped[:2].lower())
    try:
        if radix is not None:
            return float(int(stripped[2:], radix))
        if _JS_NUMBER_RE.fullmatch(stripped):
            number = float(stripped)
            return number if number not in (float("inf"), float("-inf")) else None
    except ValueError:
        return None
    return None


def _js_number_text(number: float) -> str:
    return str(int(number)) if number.is_integer() else repr(number)


def find_references(content: Any) -> list[Reference]:
    """The references in a prompt's content, in order of first appearance, as Langfuse
    parses them (malformed tags are left alone, as text)."""
    found: list[Reference] = []
    for tag in reference_tags(content):
        parts = tag[len(REFERENCE_PREFIX):-3].split("|")
        if not parts[0].startswith("name=") or len(parts) != 2:
            continue
        params: dict[str, str | None] = {}
        for part in parts:
            pieces = part.split("=")
            params[pieces[0]] = pieces[1] if len(pieces) > 1 else None
        name = params.get("name")
        if not name:
            continue
        version_text = params.get("version")
        if version_text:
            version = _js_number(version_text)
            if version is not None:
                found.append(Reference(name=name, version=version))
        elif params.get("label") is not None:
            found.append(Reference(name=name, label=params["label"]))
    return found


def resolve(root: PromptNode, lookup: Lookup) -> tuple[Any, dict[str, Any] | None]:
    """``(resolved content, resolutionGraph)`` of ``root``; the graph is None when it has no
    references. Raises ``ResolutionError``."""
    dependencies: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()

    def visit(current: PromptNode, level: int) -> Any:
        if level >= MAX_NESTING_DEPTH:
            raise ResolutionError(f"Maximum nesting depth exceeded ({MAX_NESTING_DEPTH})")
        if current.id in seen or (current.name == root.name and current.id != root.id):
            raise ResolutionError(
                f"Circular dependency detected involving prompt '{current.name}' "
                f"version {current.version}"
            )
        seen.add(current.id)
        references = find_references(current.prompt)
        if not references:
            seen.discard(current.id)
            return current.prompt
        text = _js_json(current.prompt)
        for reference in references:
            part = lookup(reference)
            if part is None:
                raise ResolutionError(f"Prompt dependency not found: {reference.description}")
            if part.type != "text":
                raise ResolutionError(
                    f"Prompt dependency is not a text prompt: {reference.description}"
                )
            dependencies.setdefault(current.id, []).append(
                {"id": part.id, "name": part.name, "version": part.version}
            )
            resolved = visit(part, level + 1)
            tags = [f"{REFERENCE_PREFIX}name={part.name}|version={part.version}@@@"]
            tags += [f"{REFERENCE_PREFIX}name={part.name}|label={label}@@@"
                     for label in part.labels]
            pattern = re.compile("|".join(re.escape(tag) for tag in tags))
            replacement = _js_json(resolved)[1:-1]
            text = pattern.sub(lambda _, value=replacement: value, text)  # type: ignore[misc]
        seen.discard(current.id)
        return json.loads(text)

    content = visit(root, 0)
    if not dependencies:
        return content, None
    graph = {
        "root": {"name": root.name, "version": root.version, "id": root.id},
        "dependencies": dependencies,
    }
    return content, graph
