"""Keys of the response cache: canonical JSON of a request, its hash, and whether the request
is deterministic enough to cache. Pure: no I/O, no clock.

What goes into a key (the README repeats it)::

    sha256(canonical_json({"v": 1, "kind": kind, "namespace": namespace,
                           "request": request without its ignored fields}))

* ``kind`` is ``"stream"`` for ``ResponseCache.stream`` and ``"whole"`` for
  ``ResponseCache.get``: a streamed answer and a whole one are stored apart.
* ``namespace`` is the tenant (any string; ``""`` by default).
* ``request`` is every field the caller passed (model, messages, temperature, seed, tools...)
  except the ignored ones (by default only ``stream``, which ``kind`` already says).

Canonical JSON: keys sorted, no spaces, UTF-8 (not ASCII-escaped); a float with an integral
value is written as the integer (``1.0`` and ``1`` are one key); tuples are lists. Strings are
compared as given (no Unicode normalisation). A value JSON cannot carry exactly (a non-string
mapping key, NaN, a set, an object, an integer too long for JSON text, nesting past the
recursion limit, a cycle) is an ``InvalidArgumentError``, never a silent ``str()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import Any, Literal, TypeAlias

from .._core.errors import InvalidArgumentError
from .._core.json_values import dumps, json_value

__all__ = [
    "DEFAULT_IGNORED_FIELDS",
    "Chunk",
    "KeyKind",
    "canonical_json",
    "chunk_size",
    "is_deterministic",
    "response_key",
]

#: What a producer yields and a consumer receives: text, bytes or a JSON object.
Chunk: TypeAlias = str | bytes | dict[str, Any]
KeyKind: TypeAlias = Literal["stream", "whole"]

#: Request fields left out of the key unless the cache is told otherwise.
DEFAULT_IGNORED_FIELDS: frozenset[str] = frozenset({"stream"})

_KEY_VERSION = 1


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON (UTF-8 bytes): equal requests give equal bytes."""
    return dumps(
        json_value(value, "request", integral_floats=True), "request", sort_keys=True,
        separators=(",", ":"), ensure_ascii=False,
    ).encode("utf-8")


def response_key(
    request: Mapping[str, Any], *, namespace: str = "", kind: KeyKind = "stream",
    ignored_fields: Collection[str] = DEFAULT_IGNORED_FIELDS,
) -> str:
    """The cache key of ``request``: a sha256 hex digest (see the module docstring)."""
    if not isinstance(request, Mapping):
        raise InvalidArgumentError(
            f"a request is a mapping (model, messages, parameters), got {type(request).__name__}"
        )
    if not isinstance(namespace, str):
        raise InvalidArgumentError(f"namespace must be a string, got {namespace!r}")
    kept = {k: v for k, v in request.items() if k not in ignored_fields}
    material = {"v": _KEY_VERSION, "kind": kind, "namespace": namespace, "request": kept}
    return hashlib.sha256(canonical_json(material)).hexdigest()


def is_deterministic(request: Mapping[str, Any], *, default_temperature: float = 1.0) -> bool:
    """Whether repeating ``request`` should give the same answer, so caching it is safe.

    Not deterministic: ``n`` above 1, or a temperature above 0 without a ``seed``. A request
    without ``temperature`` is sampled at the provider's default (``default_temperature``;
    OpenAI's is 1).
    """
    n = request.get("n")
    if isinstance(n, int | float) and not isinstance(n, bool) and n > 1:
        return False
    temperature = request.get("temperature")
    if temperature is None:
        temperature = default_temperature
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return False  # a value we cannot read: do not guess
    return temperature <= 0 or request.get("seed") is not None


def chunk_size(chunk: Any) -> int:
    """Bytes ``chunk`` takes when stored: UTF-8 length of text, length of bytes, length of a
    dict's compact JSON. Raises ``InvalidArgumentError`` for anything else."""
    if isinstance(chunk, str):
        return len(chunk.encode("utf-8", "surrogatepass"))
    if isinstance(chunk, bytes):
        return len(chunk)
    if isinstance(chunk, dict):
        return len(dumps(chunk, "a dict chunk", separators=(",", ":"),
                         ensure_ascii=False).encode("utf-8", "surrogatepass"))
    raise InvalidArgumentError(
        f"a chunk is str, bytes or a JSON-able dict, got {type(chunk).__name__}"
    )
