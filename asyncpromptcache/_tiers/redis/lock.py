"""The token lock: ``SET NX PX`` with a random token, kept alive and released only by the
holder of that token (Lua compare-and-extend, compare-and-delete)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from .connection import Connection

__all__ = ["RELEASE", "extend", "new_token", "release", "take"]

#: Compare-and-delete: only the holder of the token releases the lock.
RELEASE = Connection.script(
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end"
)
#: Keep the lock (KEYS[1]) and what lives with it (the other KEYS) alive for ARGV[2] ms,
#: only while the token is still the holder's.
_EXTEND = Connection.script(
    "if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end "
    "for i = 1, #KEYS do redis.call('pexpire', KEYS[i], ARGV[2]) end return 1"
)


def new_token() -> str:
    return secrets.token_hex(16)


async def take(conn: Connection, lock: str, token: str, ms: int, *,
               bound: float | None = None) -> bool:
    """Take ``lock`` for ``ms`` milliseconds; false when someone holds it."""
    return bool(await conn.call(lambda r: r.set(lock, token, nx=True, px=max(1, ms)),
                                bound=bound))


async def extend(conn: Connection, lock: str, token: str, ms: int,
                 also: Sequence[Any] = ()) -> bool:
    """Keep ``lock`` (and ``also``) for ``ms`` more milliseconds, if still held with ``token``."""
    return bool(await conn.run(_EXTEND, [lock, *also], [token, max(1, ms)]))


async def release(conn: Connection, lock: str, token: str, *,
                  bound: float | None = None) -> bool:
    """Release ``lock`` if ``token`` still holds it."""
    return bool(await conn.run(RELEASE, [lock], [token], bound=bound))
