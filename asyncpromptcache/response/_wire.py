"""The response cache's shared tier, pure parts: Redis key names, the stored answer's value
format and the stream entries of an answer in flight. No I/O: ``_redis.py`` does the talking.

Key layout (one hash tag per answer, so every command touches one slot of a Cluster)::

    apr:{<ns>.<key>}:a      the stored answer (one value, with its expiry wall time)
    apr:{<ns>.<key>}:l      the lock of the process streaming it (SET NX PX, a random token)
    apr:{<ns>.<key>}:s      the Redis stream of the answer in flight (one entry per chunk,
                            then one end entry: done or failed)
    apr:<ns>:changes        the pub/sub channel of invalidations and clears (not a key)

``<ns>`` hashes the tier's namespace and the cache's (the tenant's: one tenant's ``clear()``
scans its own keys only); ``<key>`` is the request's key (a sha256 hex digest). Values and
stream entries are ``apr1.<hmac-sha256 hex or ->.<JSON>``, signed as the prompt tier's values
are when the tier has a signing key, and always name their key: a value of another key,
format or signer is refused. Messages on the channel are ``arm1.<hmac or ->.<JSON>``, sealed
the same way, and name the process that sent them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import attrs

from .._core.errors import InvalidResponseError
from .._core.sealing import digest as _digest, seal, unseal
from ._keys import Chunk, chunk_size
from ._store import StoredAnswer

__all__ = ["MAX_MESSAGE_KEYS", "Dropped", "End", "ResponseNames", "decode_answer", "decode_entry",
           "decode_message", "encode_answer", "encode_chunk_entry", "encode_end_entry",
           "encode_message"]

_TAG = b"apr1"
_MESSAGE_TAG = b"arm1"
MAX_MESSAGE_KEYS = 1000  # past this many keys, a sender sends a clear instead


@attrs.frozen
class ResponseNames:
    """Redis key names of one namespace's answers."""

    ns: str

    @classmethod
    def of(cls, namespace: str, tenant: str = "") -> ResponseNames:
        """The names of the tier's ``namespace`` for the cache's ``tenant`` (its
        ``namespace=``); the default tenant keeps the names it had before tenants were
        part of them."""
        return cls(_digest("responses", namespace, *((tenant,) if tenant else ())))

    def _tag(self, key: str) -> str:
        return f"apr:{{{self.ns}.{key}}}"

    def answer(self, key: str) -> str:
        return f"{self._tag(key)}:a"

    def lock(self, key: str) -> str:
        return f"{self._tag(key)}:l"

    def stream(self, key: str) -> str:
        return f"{self._tag(key)}:s"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of the namespace."""
        return f"apr:{{{self.ns}.*"

    @property
    def channel(self) -> str:
        """The pub/sub channel of the namespace's invalidations and clears."""
        return f"apr:{self.ns}:changes"


def _wrap(payload: dict[str, Any], signing_key: bytes | None, tag: bytes = _TAG) -> bytes:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8", "surrogatepass")
    return seal(tag, body, signing_key)


def _opened(raw: Any, signing_key: bytes | None, tag: bytes, what: str) -> Any:
    """The JSON a ``_wrap``-ed value holds, or ``InvalidResponseError``."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, bytes):
        raise InvalidResponseError(f"{what}: not bytes", field=None)
    body = unseal(raw, tag, signing_key, what)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested too deep too
        raise InvalidResponseError(
            f"{what}: bad JSON: {type(exc).__name__}: {exc}", field=None) from None


def _unwrap(raw: Any, key: str, signing_key: bytes | None) -> dict[str, Any]:
    data = _opened(raw, signing_key, _TAG, "shared answer")
    if not isinstance(data, dict) or data.get("key") != key:
        raise InvalidResponseError("shared answer: holds another key", field="key")
    return data


def _chunk_wire(chunk: Chunk) -> list[Any]:
    if isinstance(chunk, str):
        return ["s", chunk]
    if isinstance(chunk, bytes):
        return ["b", base64.b64encode(chunk).decode("ascii")]
    return ["d", chunk]


def _chunk_of(item: Any) -> Chunk:
    if isinstance(item, list) and len(item) == 2:
        kind, value = item
        if kind == "s" and isinstance(value, str):
            return value
        if kind == "d" and isinstance(value, dict):
            return value
        if kind == "b" and isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                pass
    raise InvalidResponseError("shared answer: a chunk of an unknown form", field="chunks")


def _number(data: dict[str, Any], field: str) -> float:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidResponseError(f"shared answer: bad {field}", field=field)
    return float(value)


def encode_answer(key: str, answer: StoredAnswer, expires_at: float,
                  signing_key: bytes | None) -> bytes:
    """A stored answer's value; ``expires_at`` is wall-clock time."""
    return _wrap({"key": key, "expires_at": expires_at, "duration": answer.duration_seconds,
                  "chunks": [_chunk_wire(c) for c in answer.chunks]}, signing_key)


def decode_answer(raw: Any, key: str, signing_key: bytes | None) -> tuple[StoredAnswer, float]:
    """The answer and its wall-clock expiry, or ``InvalidResponseError`` saying why the value
    must not be served."""
    data = _unwrap(raw, key, signing_key)
    chunks = data.get("chunks")
    if not isinstance(chunks, list):
        raise InvalidResponseError("shared answer: no chunks", field="chunks")
    decoded = tuple(_chunk_of(item) for item in chunks)
    duration = _number(data, "duration")
    size = sum(chunk_size(c) for c in decoded)
    return StoredAnswer(decoded, size, max(0.0, duration)), _number(data, "expires_at")


@attrs.frozen
class End:
    """The last entry of an answer's stream: ``ok`` (complete) or failed with ``error``;
    ``abandoned`` when its process stopped streaming it (cancelled, closed): followers then
    claim the answer themselves."""

    ok: bool
    error: str = ""
    abandoned: bool = False


def encode_chunk_entry(key: str, index: int, chunk: Chunk, signing_key: bytes | None) -> bytes:
    return _wrap({"key": key, "i": index, "chunk": _chunk_wire(chunk)}, signing_key)


def encode_end_entry(key: str, index: int, end: End, signing_key: bytes | None) -> bytes:
    kind = "done" if end.ok else "abandoned" if end.abandoned else "failed"
    return _wrap({"key": key, "i": index, "end": kind, "error": end.error}, signing_key)


def decode_entry(raw: Any, key: str, index: int, signing_key: bytes | None) -> Chunk | End:
    """The ``index``-th entry of ``key``'s stream: a chunk or the end. An entry out of order,
    of another key or signer is ``InvalidResponseError``; but an end that sends the
    followers away (``abandoned``) may come after chunks they never read: its process cut
    the stream down to it."""
    data = _unwrap(raw, key, signing_key)
    end, at = data.get("end"), data.get("i")
    if at != index and not (end == "abandoned" and type(at) is int and at > index):
        raise InvalidResponseError("shared stream: an entry out of order", field="i")
    if end is not None:
        if end not in ("done", "failed", "abandoned"):
            raise InvalidResponseError("shared stream: a bad end entry", field="end")
        error = data.get("error")
        return End(end == "done", error if isinstance(error, str) else "",
                   abandoned=end == "abandoned")
    return _chunk_of(data.get("chunk"))


@attrs.frozen
class Dropped:
    """A message on the channel: the process ``origin`` dropped ``keys`` (``None``: every
    answer of the namespace, a ``clear()``)."""

    origin: str
    keys: tuple[str, ...] | None


def encode_message(dropped: Dropped, signing_key: bytes | None) -> bytes:
    return _wrap({"origin": dropped.origin,
                  "keys": None if dropped.keys is None else list(dropped.keys)},
                 signing_key, _MESSAGE_TAG)


def decode_message(raw: Any, signing_key: bytes | None) -> Dropped:
    """The message ``raw``, or ``InvalidResponseError`` saying why it is not one to apply
    (not this format, unsigned or wrongly signed, malformed)."""
    data = _opened(raw, signing_key, _MESSAGE_TAG, "change message")
    if not isinstance(data, dict) or not isinstance(data.get("origin"), str):
        raise InvalidResponseError("change message: no origin", field="origin")
    keys = data.get("keys")
    if keys is None:
        return Dropped(data["origin"], None)
    if not (isinstance(keys, list) and 0 < len(keys) <= MAX_MESSAGE_KEYS
            and all(isinstance(key, str) and _is_key(key) for key in keys)):
        raise InvalidResponseError("change message: bad keys", field="keys")
    return Dropped(data["origin"], tuple(keys))


def _is_key(key: str) -> bool:
    """Whether ``key`` is a response key: 64 lowercase hex digits (a sha256)."""
    return len(key) == 64 and all(c in "0123456789abcdef" for c in key)
