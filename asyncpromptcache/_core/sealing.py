"""Sealed values: ``<tag>.<hmac-sha256 hex of body, or ->.<body>``, so that a reader knows a
value is in this SDK's format and, with a signing key, that a process holding that key wrote
it; and ``digest``, the short hash of a tuple of parts that names keys. Pure."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from .errors import InvalidResponseError

__all__ = ["digest", "seal", "unseal"]


def digest(*parts: Any, size: int = 16) -> str:
    """The first ``size`` hex digits of the SHA-256 of ``parts`` as compact JSON."""
    raw = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:size]


def _sign(signing_key: bytes, body: bytes) -> bytes:
    return hmac.new(signing_key, body, hashlib.sha256).hexdigest().encode("ascii")


def seal(tag: bytes, body: bytes, signing_key: bytes | None) -> bytes:
    """``<tag>.<hmac-sha256 hex of body, or ->.<body>``."""
    signature = _sign(signing_key, body) if signing_key is not None else b"-"
    return b".".join((tag, signature, body))


def unseal(raw: bytes, tag: bytes, signing_key: bytes | None, what: str) -> bytes:
    """The body of a ``seal``-ed value, or ``InvalidResponseError`` if it is not one with
    ``tag``, or (with a signing key) unsigned or wrongly signed."""
    found, _, rest = raw.partition(b".")
    signature, _, body = rest.partition(b".")
    if found != tag or not body:
        raise InvalidResponseError(f"{what}: not in this SDK's format", field=None)
    if signing_key is not None:
        if signature == b"-":
            raise InvalidResponseError(f"{what}: unsigned", field=None)
        if not hmac.compare_digest(signature, _sign(signing_key, body)):
            raise InvalidResponseError(f"{what}: wrong signature", field=None)
    return body
