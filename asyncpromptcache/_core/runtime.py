"""What the client needs to know of the event loop it runs on: which backend, which loop,
and how to start a task that belongs to no caller's task group. The only module that
speaks asyncio's and trio's own APIs rather than anyio's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["current_backend", "current_loop", "spawn_detached"]

# Strong references to running host tasks: asyncio keeps only weak ones.
_tasks: set[asyncio.Task[None]] = set()


def current_backend() -> str:
    """``"asyncio"`` or ``"trio"``: the two backends anyio runs on."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "trio"
    return "asyncio"


def current_loop() -> object:
    """The running event loop (asyncio's loop, trio's token), to tell loops apart."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token()


def spawn_detached(func: Callable[[], Awaitable[None]]) -> None:
    """Run ``func()`` in a task of its own on the running loop, child of no task group: it
    ends when ``func`` returns, or is cancelled when the loop itself shuts down.

    ``func`` must not raise anything but cancellation (nobody would see it).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        trio.lowlevel.spawn_system_task(func, name="asyncpromptcache-client")
        return
    task = loop.create_task(_run(func), name="asyncpromptcache-client")
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _run(func: Callable[[], Awaitable[None]]) -> None:
    await func()
