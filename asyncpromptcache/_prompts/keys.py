"""Cache keys: structured values, so no name can collide with another by prefix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from .._core.errors import InvalidArgumentError

DEFAULT_LABEL = "production"


class PromptKey(NamedTuple):
    """What one cache entry holds: a name with either a label or a version (never both).

    A plain tuple underneath, so ``(name, label, version)`` built on the hit path compares and
    hashes equal to it without constructing a ``PromptKey``.
    """

    name: str
    label: str | None
    version: int | None

    def describe(self) -> str:
        """Human form used in messages: ``'greet' (label 'production')``.

        Escaped (``repr``) and, past 100 characters, shortened: a hostile name or label must
        not make log lines and error messages unbounded or forge lines of their own.
        """
        if self.version is not None:
            return f"{_shown(self.name)} (version {self.version})"
        return f"{_shown(self.name)} (label {_shown(self.label)})"


def _shown(value: object, limit: int = 100) -> str:
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


def make_key(name: str, version: int | None = None, label: str | None = None) -> PromptKey:
    """Validate a request and build its key; the label defaults to ``production``."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(
            f"a prompt name must be a non-empty string, got {_shown(name)}"
        )
    _check_encodable(name, "name")
    if version is not None:
        if label is not None:
            raise InvalidArgumentError(
                f"prompt {name!r}: give a version or a label, not both "
                f"(version={version!r}, label={label!r})"
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidArgumentError(
                f"prompt {name!r}: version must be a positive integer, got {version!r}"
            )
        return PromptKey(name, None, version)
    if label is None:
        label = DEFAULT_LABEL
    elif not isinstance(label, str) or not label:
        raise InvalidArgumentError(
            f"prompt {name!r}: label must be a non-empty string, got {label!r}"
        )
    else:
        _check_encodable(label, "label")
    return PromptKey(name, label, None)


def prefetch_keys(
    names: Iterable[str | PromptKey] | str | PromptKey, label: str | None
) -> list[PromptKey]:
    """The distinct keys a ``prefetch(names, label=...)`` asks for, in order.

    A bare string is one name, not an iterable of one-character names; a ``PromptKey``
    (a tuple itself) is one key.
    """
    if isinstance(names, str | PromptKey):
        names = [names]
    elif not isinstance(names, Iterable):
        raise InvalidArgumentError(
            f"prefetch() takes prompt names or PromptKeys, got {type(names).__name__}"
        )
    keys = [
        make_key(item.name, item.version, item.label) if isinstance(item, PromptKey)
        else make_key(item, None, label)
        for item in names
    ]
    return list(dict.fromkeys(keys))


def _check_encodable(value: str, what: str) -> None:
    # A lone surrogate cannot be sent (UTF-8 has no form for it): say so before any fetch.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"a prompt {what} must be valid Unicode text, got {_shown(value)}"
        ) from None
