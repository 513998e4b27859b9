"""What the client and the response cache need to know of the event loop they run on: which
backend, which loop, how to start a task that belongs to no caller's task group, and the task
group they host in such a task (``HostedTaskGroup``). The only module that speaks asyncio's
and trio's own APIs rather than anyio's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from .errors import ClientStateError

__all__ = ["HostedTaskGroup", "current_backend", "current_loop", "spawn_detached"]

logger = logging.getLogger("asyncpromptcache")

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


def spawn_detached(func: Callable[[], Awaitable[None]], *,
                   name: str = "asyncpromptcache-client") -> None:
    """Run ``func()`` in a task of its own on the running loop, child of no task group: it
    ends when ``func`` returns, or is cancelled when the loop itself shuts down.

    ``func`` must not raise anything but cancellation (nobody would see it).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        trio.lowlevel.spawn_system_task(func, name=name)
        return
    task = loop.create_task(_run(func), name=name)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _run(func: Callable[[], Awaitable[None]]) -> None:
    await func()


class HostedTaskGroup:
    """An anyio task group that lives in a task of its own (``spawn_detached``) from
    ``start()`` to ``stop()``, for an object used with ``async with``: a task group entered
    directly must be left by the task that entered it, this one may be started by one task
    of the loop and stopped by any other, in any order of nested cancel scopes. The loop
    shutting down cancels it as it cancels any task.

    Its owner's hooks run in the host task: ``opened(tg)`` once the group is open (``start``
    returns once it has run, or once the host failed), ``stopping()`` when a stop is asked,
    before the group is cancelled, and ``closed()`` once the group is over, whichever way it
    ended (stopped, failed: ``error``, or cancelled with the loop), shielded. ``what`` names
    the owner in the log of a group that failed ("an AsyncPromptClient").
    """

    def __init__(self, what: str, *, name: str) -> None:
        self._what = what
        self._name = name
        #: The loop it runs on (set by ``start``).
        self.loop: object = None
        #: The first error of a group that failed (then ``closed`` has run), else ``None``.
        self.error: BaseException | None = None
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._close_error: Exception | None = None

    @property
    def started(self) -> bool:
        return self._stopped is not None

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was asked (false for a group the loop cancelled)."""
        return self._stop is not None and self._stop.is_set()

    @property
    def stopped(self) -> bool:
        """Whether the host task is over (``closed`` has run)."""
        return self._stopped is not None and self._stopped.is_set()

    async def start(
        self, opened: Callable[[TaskGroup], Awaitable[None]], *,
        stopping: Callable[[], Awaitable[None]] | None = None,
        closed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Start the host task and wait (shielded) until ``opened`` has run in it, or the
        host is over. Once only."""
        if self._stopped is not None:
            raise ClientStateError("a hosted task group is started once")
        self.loop = current_loop()
        self._stop, self._stopped = anyio.Event(), anyio.Event()
        ready = anyio.Event()

        async def host() -> None:
            assert self._stop is not None and self._stopped is not None
            try:
                async with anyio.create_task_group() as tg:
                    await opened(tg)
                    ready.set()
                    await self._stop.wait()
                    if stopping is not None:
                        await stopping()
                    tg.cancel_scope.cancel()
            except Exception as exc:  # the owner's tasks never raise; if one did, nobody
                # else would see it: the group ends, and its owner is told in ``error``
                logger.exception("the task group of %s failed", self._what)
                self.error = _first_leaf(exc)
            finally:
                try:
                    if closed is not None:
                        with anyio.CancelScope(shield=True):
                            await closed()
                except Exception as exc:  # for the caller of stop(); else only logged
                    if self.stopping:
                        self._close_error = exc
                    else:
                        logger.exception("closing %s failed", self._what)
                finally:
                    ready.set()
                    self._stopped.set()

        spawn_detached(host, name=self._name)
        with anyio.CancelScope(shield=True):  # set at the host's first step
            await ready.wait()

    def check_loop(self) -> None:
        """``ClientStateError`` unless called on the loop that started the group."""
        if self._stopped is not None and current_loop() is not self.loop:
            raise ClientStateError(
                f"{self._what} belongs to the event loop that opened it: close it there")

    async def stop(self) -> None:
        """Ask the host to end and wait (shielded) until it has: ``stopping``, the group's
        tasks cancelled, ``closed`` (what that raised is raised here). From any task of the
        loop that started it (from another loop: ``ClientStateError``); idempotent, and
        nothing to do when never started."""
        if self._stopped is None or self._stopped.is_set():
            return
        self.check_loop()
        assert self._stop is not None
        self._stop.set()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()
        error, self._close_error = self._close_error, None
        if error is not None:
            raise error


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception a task group's ``ExceptionGroup`` holds (itself if not a group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
