"""``KeyMemo``: the cache keys of requests seen before, found by the request's wire JSON.

Computing a key canonicalises the request (every value checked and normalised, then sorted
JSON and a sha256): most of the cost of a hit on a short answer. A request repeated in one
process — what every hit is — has the same JSON as it goes on the wire, which C's JSON
encoder writes in a fraction of that time, so the memo maps that text (with the namespace
and the key kind) to the key computed the first time.

Two requests with the same wire JSON are the same request to the upstream, and get the same
key; the converse need not hold (a key order or ``1.0`` for ``1`` only costs a memo miss). A
request the encoder refuses (NaN, a type JSON cannot carry, too deep), or one the canonical
form refuses, is never memoised: it takes the full path, which raises as it always did.
Bounded by entries and by the bytes of the texts it keeps (oldest out first).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ._keys import DEFAULT_IGNORED_FIELDS, KeyKind, response_key

__all__ = ["KeyMemo"]

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _wire_json() -> Callable[[Any], str]:
    """``_ENCODER.encode`` without its per-call set-up: C's encoder made once (no check for
    cycles: one ends in ``RecursionError``, which the caller treats as any refusal)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return _ENCODER.encode
    encode = make(None, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False,
                  False)

    def wire(value: Any) -> str:
        return "".join(encode(value, 0))

    return wire


_wire = _wire_json()


class KeyMemo:
    def __init__(self, *, ignored_fields: Collection[str] = DEFAULT_IGNORED_FIELDS,
                 max_entries: int = 1024, max_bytes: int = 4 * 1024 * 1024) -> None:
        self._ignored = ignored_fields
        self._keys: dict[tuple[str, str, str], str] = {}
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0

    def key(self, request: Mapping[str, Any], namespace: str, kind: KeyKind) -> str:
        """``response_key(request, namespace=namespace, kind=kind, ...)``, memoised."""
        if type(request) is not dict or type(namespace) is not str:
            return response_key(request, namespace=namespace, kind=kind,
                                ignored_fields=self._ignored)
        try:
            wire = _wire(request)
        except (TypeError, ValueError, RecursionError):
            return response_key(request, namespace=namespace, kind=kind,
                                ignored_fields=self._ignored)
        memo = (wire, namespace, kind)
        key = self._keys.get(memo)
        if key is None:
            key = response_key(request, namespace=namespace, kind=kind,
                               ignored_fields=self._ignored)
            if len(wire) <= self._max_bytes // 16:
                self._remember(memo, key)
        return key

    def _remember(self, memo: tuple[str, str, str], key: str) -> None:
        keys = self._keys
        keys[memo] = key
        self._bytes += len(memo[0])
        while len(keys) > self._max_entries or self._bytes > self._max_bytes:
            oldest = next(iter(keys))
            del keys[oldest]
            self._bytes -= len(oldest[0])

    def clear(self) -> None:
        self._keys.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._keys)
