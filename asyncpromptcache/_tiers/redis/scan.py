"""A Cluster-safe scan of a namespace's keys: ``SCAN`` on every primary of a Cluster (a
Cluster client's own ``scan_iter`` walks each node), one server's ``SCAN`` otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .connection import Connection

__all__ = ["scan"]


async def scan(conn: Connection, pattern: str, *, count: int = 500) -> AsyncIterator[Any]:
    """The key names matching ``pattern``, each command under the connection's policy."""
    client = conn.client()
    if hasattr(client, "get_primaries"):  # RedisCluster: SCAN node by node
        for node in client.get_primaries():
            cursor: Any = 0
            while True:
                cursor, keys = await conn.do(
                    "scan", cursor, match=pattern, count=count, target_nodes=node)
                for key in keys:
                    yield key
                if not cursor:
                    break
        return
    cursor = 0
    while True:
        cursor, keys = await conn.do("scan", cursor, match=pattern, count=count)
        for key in keys:
            yield key
        if not cursor:
            return
