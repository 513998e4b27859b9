"""What the client needs to know of the event loop it runs on: which backend, which loop,
how to start a task that belongs to no caller's task group, and ``HostedTask``, such a task
holding something open from entry to close. The only module that speaks asyncio's and trio's
own APIs rather than anyio's."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["HostedTask", "current_backend", "current_loop", "spawn_detached"]

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


class HostedTask:
    """A task of its own (see ``spawn_detached``) that holds something open from ``start`` to
    ``stop``: a task group or a context it enters is left in the task that entered it, so that
    whatever uses it may be closed from any task of the loop, in any order of nested scopes.
    """

    def __init__(self) -> None:
        self._started = False
        self._ready = anyio.Event()
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    async def start(self, body: Callable[[HostedTask], Awaitable[None]]) -> None:
        """Run ``body(self)`` in the task, started by the first call; every call returns once
        ``body`` called ``ready()`` or ended, without being cancelled meanwhile.

        ``body`` opens what it holds, calls ``ready()``, awaits ``stop_requested()``, and
        closes it; it must not raise anything but cancellation (nobody would see it).
        """
        if not self._started:
            self._started = True
            spawn_detached(functools.partial(self._run, body))
        if not self._ready.is_set():
            with anyio.CancelScope(shield=True):
                await self._ready.wait()

    def ready(self) -> None:
        """What the body calls once what it holds is open: ``start`` returns."""
        self._ready.set()

    async def stop_requested(self) -> None:
        """Returns once ``stop`` was called."""
        await self._stop.wait()

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was called (``False`` while the loop alone cancels the task)."""
        return self._stop.is_set()

    @property
    def stopped(self) -> bool:
        """Whether the body has ended."""
        return self._stopped.is_set()

    async def stop(self) -> None:
        """Ask the body to close what it holds and wait, without being cancelled meanwhile,
        until it has ended. Nothing to do if never started."""
        if self._started:
            self._stop.set()
            with anyio.CancelScope(shield=True):
                await self._stopped.wait()

    async def _run(self, body: Callable[[HostedTask], Awaitable[None]]) -> None:
        try:
            await body(self)
        finally:
            self._ready.set()
            self._stopped.set()
