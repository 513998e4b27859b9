"""Langfuse's reference rules for the prompt store's writes. Blocking; no I/O but the
store's own SQLite connection.

A version is created only if every reference it holds resolves (no cycle, not too deep); a
delete may not leave another prompt referencing a version or a label it removes. Both are
refused with ``PromptReferenceError``, Langfuse's 400.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable

from ._compose import (
    PromptNode,
    Reference,
    ResolutionError,
    find_references,
    resolve as resolve_node,
)
from ._schema import LATEST_LABEL, PromptDraft

__all__ = ["PromptReferenceError", "check_dependents", "check_references"]


class PromptReferenceError(ValueError):
    """A create whose references are missing, too deep or a cycle, or a delete that would
    leave another prompt's reference dangling (Langfuse's 400 ``InvalidRequestError``)."""


def check_references(
    draft: PromptDraft, version: int, lookup: Callable[[Reference], PromptNode | None]
) -> None:
    """Langfuse's create-time check: every reference of ``draft`` (to be ``version``)
    resolves through ``lookup``, without a cycle. Raises ``PromptReferenceError``."""
    if not find_references(draft.prompt):
        return
    node = PromptNode(id=str(uuid.uuid4()), name=draft.name, version=version,
                      type=draft.type, prompt=draft.prompt, labels=draft.labels)
    try:
        resolve_node(node, lookup)
    except ResolutionError as exc:
        raise PromptReferenceError(str(exc)) from None


def check_dependents(
    db: sqlite3.Connection, name: str, doomed: list[int], newest: int | None
) -> None:
    """Langfuse's delete check: no other prompt may be left referencing a version or a
    label that the delete removes. Raises ``PromptReferenceError``."""
    if not doomed:
        return
    remaining_labels: set[str] = set()
    for row in db.execute("SELECT version, labels FROM prompts WHERE name = ?", (name,)):
        if row["version"] not in doomed:
            remaining_labels.update(json.loads(row["labels"]))
            if row["version"] == newest:
                remaining_labels.add(LATEST_LABEL)
    blocking: list[str] = []
    for parent in db.execute(
        "SELECT name, version, prompt FROM prompts WHERE instr(prompt, ?) > 0"
        " ORDER BY name, version",
        ("@@@langfusePrompt:",),
    ):
        for ref in find_references(json.loads(parent["prompt"])):
            if ref.name != name:
                continue
            if ref.version is not None and ref.version in doomed:
                target = f"v{int(ref.version)}"
            elif ref.label is not None and ref.label not in remaining_labels:
                target = ref.label
            else:
                continue
            blocking.append(f"{parent['name']} v{parent['version']} depends on {name} {target}")
    if blocking:
        raise PromptReferenceError(
            "Other prompts are depending on prompt versions you are trying to delete:\n\n"
            + "\n".join(blocking) + "\n\nPlease delete the dependent prompts first."
        )
