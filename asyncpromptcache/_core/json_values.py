"""JSON at the doors, strictly. Pure.

``json_value`` checks that a caller's value is one JSON carries exactly (a request to the
response cache, a prompt's ``config``) and returns it as plain JSON data; ``read_json`` reads
bytes or text that an upstream, a webhook or a client sent. Both fail with one typed error
whatever the reason (a set, NaN, a non-string key, an integer too long for JSON text, nesting
past the recursion limit, a cycle), never with the standard library's ``TypeError``,
``ValueError`` or ``RecursionError``: each door turns ``NotJSON`` into its own error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["NotJSON", "dumps", "json_value", "read_json"]

_TOO_DEEP = "is nested too deeply (or contains itself)"


class NotJSON(ValueError):
    """What ``read_json`` raises: ``str(exc)`` says why (not JSON, not UTF-8, too deep)."""

    def __init__(self, reason: str, *, too_deep: bool = False) -> None:
        super().__init__(reason)
        self.too_deep = too_deep


def read_json(raw: bytes | bytearray | str) -> Any:
    """``raw`` decoded as JSON (UTF-8 when bytes), or ``NotJSON``."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise NotJSON("nested too deeply to read", too_deep=True) from None
    except UnicodeDecodeError:
        raise NotJSON("not UTF-8") from None
    except ValueError:  # a JSONDecodeError, or an integer longer than int() reads
        raise NotJSON("not valid JSON") from None


def _plain(value: Any, path: str, integral_floats: bool) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum or other int subclass is its number
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{path} is {value!r}: JSON has no NaN or infinity")
        return int(value) if integral_floats and value.is_integer() else float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"{path} has the key {key!r} of type {type(key).__name__}: "
                    "JSON object keys are strings"
                )
            out[key] = _plain(item, f"{path}.{key}", integral_floats)
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}[{i}]", integral_floats) for i, item in enumerate(value)]
    raise InvalidArgumentError(
        f"{path} is of type {type(value).__name__}, which JSON cannot carry exactly"
    )


def json_value(value: Any, what: str, *, integral_floats: bool = False) -> Any:
    """``value`` as plain JSON data (dicts, lists, str, int, float, bool, None), or
    ``InvalidArgumentError`` naming ``what`` and the offending path. ``integral_floats``
    writes ``1.0`` as ``1`` (for keys, where the two must be one)."""
    try:
        return _plain(value, what, integral_floats)
    except RecursionError:
        raise InvalidArgumentError(f"{what} {_TOO_DEEP}") from None


def dumps(value: Any, what: str, **options: Any) -> str:
    """``json.dumps`` of plain JSON data (``json_value``'s), its failures (an integer too
    long for JSON text, nesting the encoder refuses) as ``InvalidArgumentError``."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except RecursionError:
        raise InvalidArgumentError(f"{what} {_TOO_DEEP}") from None
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{what} cannot be written as JSON: {exc}") from None
