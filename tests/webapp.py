"""Serve an aiohttp app on 127.0.0.1 for a test."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serve_app(app: web.Application, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port (or on ``sock``, bound by the caller) for the
    ``async with``; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site: web.BaseSite = (
            web.TCPSite(runner, "127.0.0.1", 0) if sock is None else web.SockSite(runner, sock)
        )
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
