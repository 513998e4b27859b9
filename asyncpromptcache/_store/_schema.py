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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from .._core.errors import InvalidResponseError
from .._prompts.models import ChatPrompt, Placeholder, Prompt, PromptType, parse_prompt

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
    "parse_updated_at",
]

MAX_NAME_LENGTH = 1000
PRODUCTION_LABEL = "production"
LATEST_LABEL = "latest"
# Langfuse's create-time rules (packages/shared/src/features/prompts/constants.ts and
# validation.ts, features/folders/validation.ts, utils/zod.ts in langfuse/langfuse).
MAX_LABEL_LENGTH = 36
MAX_COMMIT_MESSAGE_LENGTH = 500
RESERVED_NAMES = ("new", "metrics", "prompt-detail")
# Used with fullmatch: "$" would let a trailing newline through.
_LABEL_RE = re.compile(r"[a-z0-9_\-.]+")
_HTML_RE = re.compile(r"<[^<>]*>")
# zod's z.iso.datetime({offset: true}), which Langfuse's list query uses for its time filters.
_ISO_DATETIME_RE = re.compile(
    r"((?:\d\d[2468][048]|\d\d[13579][26]|\d\d0[48]|[02468][048]00|[13579][26]00)-02-29"
    r"|\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
    r"|02-(?:0[1-9]|1\d|2[0-8])))"
    r"T((?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d)(?:\.(\d+))?"
    r"(Z|[+-]\d{2}:?\d{2})",
    re.ASCII,
)


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
    # Langfuse's PromptNameSchema, rule by rule and with its messages.
    if _HTML_RE.search(name):
        raise PromptValidationError("Text cannot contain HTML tags")
    if "|" in name:
        raise PromptValidationError("Prompt name cannot contain '|' character")
    if name.startswith("/"):
        raise PromptValidationError("Name cannot start with a slash")
    if "//" in name:
        raise PromptValidationError("Name cannot contain consecutive slashes")
    if name.endswith("/"):
        raise PromptValidationError("Name cannot end with a slash")
    if name.strip() != name:
        # Langfuse trims the name and stores " a" as "a", silently a version of another
        # prompt; refusing it keeps both servers agreeing on every name we accept.
        raise PromptValidationError("Name cannot start or end with whitespace")
    if name in RESERVED_NAMES:
        raise PromptValidationError(f"Prompt name cannot be '{name}'")


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
        if not _LABEL_RE.fullmatch(label):
            raise PromptValidationError(
                f"'{field}[{i}]' is not a valid label: Label must be lowercase alphanumeric "
                f"with optional underscores, hyphens, or periods (^[a-z0-9_\\-.]+$), "
                f"got {label[:100]!r}"
            )
        if len(label) > MAX_LABEL_LENGTH:
            raise PromptValidationError(
                f"'{field}[{i}]' is {len(label)} characters long; the limit for a label is "
                f"{MAX_LABEL_LENGTH}"
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
    if value is not None and len(value) > MAX_COMMIT_MESSAGE_LENGTH:
        raise PromptValidationError(
            f"'commitMessage' is {len(value)} characters long; the limit is "
            f"{MAX_COMMIT_MESSAGE_LENGTH}"
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
            _check_placeholders_are_not_variables(self.prompt)
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


# Langfuse's MUSTACHE_REGEX and VARIABLE_REGEX (packages/shared/src/utils/stringChecks.ts).
_MUSTACHE_RE = re.compile(r"{{([^{}]*)}}")


def _is_variable_name(text: str) -> bool:
    return bool(text) and text[0].isalpha() and all(
        ch.isalpha() or ch.isnumeric() or ch == "_" for ch in text
    )


def _check_placeholders_are_not_variables(messages: Any) -> None:
    """Langfuse's createPrompt refuses a chat prompt whose placeholder names a variable."""
    placeholders = {m.get("name") for m in messages if m.get("type") == "placeholder"}
    variables: dict[str, None] = {}
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            for name in _MUSTACHE_RE.findall(content):
                if _is_variable_name(name):
                    variables[name] = None
    clashes = [name for name in variables if name in placeholders]
    if clashes:
        raise PromptValidationError(
            "Cannot create prompt, variables and placeholders must be unique, the following "
            f"are not: {', '.join(clashes)}"
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



def parse_updated_at(text: str) -> str:
    """An ISO datetime as Langfuse's ``fromUpdatedAt``/``toUpdatedAt`` accept it, as the
    store writes times (UTC, milliseconds, ``Z``), so the two compare as strings.

    Milliseconds are truncated, as JavaScript's ``Date`` does. Raises
    ``PromptValidationError`` for anything zod's ``iso.datetime({offset: true})`` refuses.
    """
    match = _ISO_DATETIME_RE.fullmatch(text)
    if match is None:
        raise PromptValidationError(
            f"{text[:100]!r} is not an ISO datetime with a time zone, such as "
            "2025-01-31T12:00:00Z or 2025-01-31T12:00:00.000+02:00"
        )
    day, clock, fraction, zone = match.groups()
    offset = "+00:00" if zone == "Z" else f"{zone[:3]}:{zone[-2:]}"
    millis = ((fraction or "") + "000")[:3]
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}.{millis}{offset}")
    except ValueError as exc:  # an offset past 23:59
        raise PromptValidationError(f"{text[:100]!r} is not a valid datetime: {exc}") from None
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise PromptValidationError(f"{text[:100]!r} is out of range") from None
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
