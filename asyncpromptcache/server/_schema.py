"""Validation of what clients write: create-prompt bodies, label updates and seed files.

Pure apart from reading seed files. The HTTP app and seeding share it, so a seed file and a
``POST /api/public/v2/prompts`` body are checked by exactly the same rules.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from .._errors import InvalidResponseError
from .._models import ChatPrompt, Placeholder, Prompt, PromptType, parse_prompt

__all__ = [
    "LATEST_LABEL",
    "MAX_NAME_LENGTH",
    "PRODUCTION_LABEL",
    "PromptDraft",
    "PromptValidationError",
    "check_labels",
    "load_seed_dir",
    "parse_json_body",
    "parse_new_labels",
]

MAX_NAME_LENGTH = 1000
PRODUCTION_LABEL = "production"
LATEST_LABEL = "latest"
# Langfuse's label rule. Used with fullmatch: "$" would let a trailing newline through.
_LABEL_RE = re.compile(r"[a-z0-9_\-.]+")


class PromptValidationError(ValueError):
    """A create request, label update or seed file that breaks the rules; the message says why."""


def _check_text(what: str, value: str) -> None:
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise PromptValidationError(f"{what} must not contain control characters")


def _check_name(_: Any, __: Any, name: Any) -> None:
    if not isinstance(name, str):
        raise PromptValidationError(f"'name' should be a string, got {type(name).__name__}")
    if not name:
        raise PromptValidationError("'name' must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise PromptValidationError(
            f"'name' is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    _check_text("'name'", name)


def check_labels(labels: Iterable[Any], field: str) -> tuple[str, ...]:
    """Labels as a de-duplicated tuple; raises unless each one is a client-settable label."""
    if isinstance(labels, str | bytes):
        raise PromptValidationError(f"{field!r} should be a list of strings, got a string")
    result: list[str] = []
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise PromptValidationError(
                f"'{field}[{i}]' should be a string, got {type(label).__name__}"
            )
        if not _LABEL_RE.fullmatch(label) or len(label) > MAX_NAME_LENGTH:
            raise PromptValidationError(
                f"'{field}[{i}]' is not a valid label: use lowercase letters, digits, "
                f"'_', '-' and '.' only (^[a-z0-9_\\-.]+$), got {label!r}"
            )
        if label == LATEST_LABEL:
            raise PromptValidationError(
                f"'{field}[{i}]': the label 'latest' is reserved; the server sets it on the "
                "newest version"
            )
        result.append(label)
    return tuple(dict.fromkeys(result))


def _labels(value: Iterable[Any]) -> tuple[str, ...]:
    return check_labels(value, "labels")


def _tags(value: Iterable[Any] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        raise PromptValidationError("'tags' should be a list of strings, got a string")
    tags: list[str] = []
    for i, tag in enumerate(value):
        if not isinstance(tag, str):
            raise PromptValidationError(f"'tags[{i}]' should be a string, got {type(tag).__name__}")
        if not tag:
            raise PromptValidationError(f"'tags[{i}]' must not be empty")
        _check_text(f"'tags[{i}]'", tag)
        tags.append(tag)
    return tuple(dict.fromkeys(tags))


def _check_type(_: Any, __: Any, value: Any) -> None:
    if value not in ("text", "chat"):
        raise PromptValidationError(f"'type' should be 'text' or 'chat', got {value!r}")


def _check_commit_message(_: Any, __: Any, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise PromptValidationError(
            f"'commitMessage' should be a string or null, got {type(value).__name__}"
        )


@attrs.frozen(kw_only=True)
class PromptDraft:
    """A validated create request: the content of one new version of prompt ``name``.

    ``tags=None`` keeps the name's current tags; a tuple replaces them on every version (as
    Langfuse does). ``labels`` may not contain ``latest``: the store puts it on the newest
    version by itself. Invalid values raise ``PromptValidationError``.
    """

    name: str = attrs.field(validator=_check_name)
    prompt: str | list[dict[str, Any]]
    type: PromptType = attrs.field(default="text", validator=_check_type)
    config: Any = attrs.field(factory=dict, hash=False)
    labels: tuple[str, ...] = attrs.field(default=(), converter=_labels)
    tags: tuple[str, ...] | None = attrs.field(default=None, converter=_tags)
    commit_message: str | None = attrs.field(default=None, validator=_check_commit_message)

    def __attrs_post_init__(self) -> None:
        # The models' strict parser is the one definition of a valid prompt body.
        model = self._model()
        if isinstance(model, ChatPrompt):
            for i, item in enumerate(model.prompt):
                if isinstance(item, Placeholder) and not item.name:
                    raise PromptValidationError(f"'prompt[{i}].name' must not be empty")
        try:
            # Lone surrogates would break SQLite and every client's JSON decoder; NaN and
            # Infinity are not JSON.
            json.dumps(
                [self.prompt, self.config, self.commit_message, self.tags],
                ensure_ascii=False, allow_nan=False,
            ).encode("utf-8")
        except UnicodeEncodeError:
            raise PromptValidationError(
                "the prompt contains invalid unicode (a lone surrogate)"
            ) from None
        except (TypeError, ValueError, RecursionError) as exc:
            raise PromptValidationError(f"'config' is not JSON data: {exc}") from None
        # Normalise to the wire form, so what is stored is what every reader parses.
        object.__setattr__(self, "prompt", model.to_dict()["prompt"])

    def _model(self) -> Prompt:
        wire = {
            "name": self.name,
            "version": 1,
            "type": self.type,
            "prompt": self.prompt,
            "config": self.config,
            "labels": list(self.labels),
            "tags": list(self.tags or ()),
            "commitMessage": self.commit_message,
        }
        try:
            return parse_prompt(wire)
        except InvalidResponseError as exc:
            message = str(exc).removeprefix("invalid prompt: ")
            raise PromptValidationError(message) from None

    @classmethod
    def from_json(cls, data: Any) -> PromptDraft:
        """Validate a decoded create-request body (``{"name", "type"?, "prompt", ...}``).

        Unknown fields are ignored, as Langfuse does; ``null`` means "not given" for the
        optional fields.
        """
        if not isinstance(data, dict):
            raise PromptValidationError(
                f"the body should be a JSON object, got {_json_kind(data)}"
            )
        if "name" not in data:
            raise PromptValidationError("'name' is missing")
        if "prompt" not in data:
            raise PromptValidationError("'prompt' is missing")
        kind: Any = data.get("type")
        if kind is None:
            kind = "text"
        labels = data.get("labels")
        if labels is not None and not isinstance(labels, list):
            raise PromptValidationError(
                f"'labels' should be a list of strings, got {_json_kind(labels)}"
            )
        tags = data.get("tags")
        if tags is not None and not isinstance(tags, list):
            raise PromptValidationError(
                f"'tags' should be a list of strings, got {_json_kind(tags)}"
            )
        config = data.get("config")
        return cls(
            name=data["name"],
            type=kind,
            prompt=data["prompt"],
            config={} if config is None else config,
            labels=labels or (),
            tags=tags,
            commit_message=data.get("commitMessage"),
        )


def _json_kind(value: Any) -> str:
    kinds: list[tuple[type, str]] = [
        (bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string"),
        (list, "a list"), (dict, "an object"),
    ]
    if value is None:
        return "null"
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def parse_new_labels(data: Any) -> tuple[str, ...]:
    """The labels of a ``PATCH .../versions/{version}`` body ``{"newLabels": [...]}``."""
    if not isinstance(data, dict):
        raise PromptValidationError(f"the body should be a JSON object, got {_json_kind(data)}")
    if "newLabels" not in data:
        raise PromptValidationError("'newLabels' is missing")
    labels = data["newLabels"]
    if not isinstance(labels, list):
        raise PromptValidationError(
            f"'newLabels' should be a list of strings, got {_json_kind(labels)}"
        )
    return check_labels(labels, "newLabels")


def load_seed_dir(path: str | os.PathLike[str]) -> list[PromptDraft]:
    """Read and validate every ``*.json`` file of a folder, in file-name order.

    Each file holds one create request or a list of them. Any invalid file fails the whole
    load with ``PromptValidationError`` naming the file (and item), so a seed is all or nothing.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PromptValidationError(f"seed folder {os.fspath(folder)!r} is not a directory")
    drafts: list[PromptDraft] = []
    for file in sorted(folder.glob("*.json")):
        try:
            data = json.loads(file.read_bytes().decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise PromptValidationError(f"{file}: not valid JSON: {exc}") from None
        items = data if isinstance(data, list) else [data]
        for i, item in enumerate(items):
            try:
                drafts.append(PromptDraft.from_json(item))
            except PromptValidationError as exc:
                where = f"{file}" if not isinstance(data, list) else f"{file} item {i}"
                raise PromptValidationError(f"{where}: {exc}") from None
    return drafts


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes) -> Any:
    """Decode a request body strictly: UTF-8, plain JSON (no NaN/Infinity)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PromptValidationError(f"the body is not valid JSON: {exc}") from None

