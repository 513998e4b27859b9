"""What comes back from Redis, read as text. Pure: no Redis import."""

from __future__ import annotations

__all__ = ["member_text"]


def member_text(raw: bytes | str) -> str | None:
    """A member of a set (or a key name) read back from Redis as text; ``None`` when it is
    not UTF-8, so not one this SDK wrote (a Redis others write to: never trust its contents)."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
