"""Cache keys: structured values, so no name can collide with another by prefix."""

from __future__ import annotations

from typing import NamedTuple

from ._errors import InvalidArgumentError

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
        """Human form used in messages: ``'greet' (label 'production')``."""
        if self.version is not None:
            return f"{self.name!r} (version {self.version})"
        return f"{self.name!r} (label {self.label!r})"


def make_key(name: str, version: int | None = None, label: str | None = None) -> PromptKey:
    """Validate a request and build its key; the label defaults to ``production``."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"a prompt name must be a non-empty string, got {name!r}")
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
    return PromptKey(name, label, None)
