"""Langfuse webhook signatures: ``x-langfuse-signature: t=<unix seconds>,v1=<hex>``, where the
hex is HMAC-SHA256 of ``"{t}.{raw body}"`` keyed with the webhook secret. Pure: the local
server signs with it and the clients verify with it."""

from __future__ import annotations

import hashlib
import hmac
import re

from .._core.errors import WebhookError, WebhookSignatureError

__all__ = ["SIGNATURE_HEADER", "TOLERANCE_SECONDS", "sign", "verify_signature"]

SIGNATURE_HEADER = "x-langfuse-signature"
TOLERANCE_SECONDS = 300.0

# ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and int() takes
# other scripts' digits, which are not the timestamp that was signed.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _mac(secret: str, body: bytes, timestamp: str) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``x-langfuse-signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, body, str(timestamp))}"


def verify_signature(
    secret: str, body: bytes, header: str | None, *, now: float,
    tolerance_seconds: float = TOLERANCE_SECONDS,
) -> int:
    """Check ``header`` against ``body``; returns its timestamp or raises
    ``WebhookSignatureError`` (missing, malformed, wrong, or too old or new), or
    ``WebhookError`` for a body that is not the raw bytes received."""
    if not isinstance(body, bytes | bytearray):
        raise WebhookError(
            f"the webhook body must be the raw bytes received, got {type(body).__name__}")
    if header is not None and not isinstance(header, str):
        raise WebhookSignatureError(
            f"the webhook signature header must be text, got {type(header).__name__}")
    if not header:
        raise WebhookSignatureError("the webhook has no x-langfuse-signature header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise WebhookSignatureError("the webhook signature header is malformed")
        parts.setdefault(name, []).append(value)
    stamps = parts.get("t", [])
    macs = parts.get("v1", [])
    if len(stamps) != 1 or not _TIMESTAMP.fullmatch(stamps[0]) or not macs:
        raise WebhookSignatureError("the webhook signature header is malformed")
    timestamp = int(stamps[0])
    expected = _mac(secret, body, stamps[0])
    # Every v1 is compared (a secret being rotated may sign twice), each in constant time;
    # one with other than ASCII characters compares as its "?"-replaced bytes: a mismatch.
    if not any(hmac.compare_digest(expected.encode(), mac.encode("ascii", "replace"))
               for mac in macs):
        raise WebhookSignatureError("the webhook signature does not match its body")
    if abs(now - timestamp) > tolerance_seconds:
        raise WebhookSignatureError(
            f"the webhook signature is {abs(now - timestamp):.0f}s away from now "
            f"(at most {tolerance_seconds:g}s is accepted)"
        )
    return timestamp
