"""Steady load: calls arriving at a fixed rate, each one its own task, every call timed.

Open loop, as requests reach an async server: a call that waits does not hold back the calls
after it, so a cache that blocks its callers shows up in the latencies of every call that
arrives meanwhile (a closed loop of N callers would make only N calls wait and hide the rest).
A call's latency is measured inside its task, around ``await get(name)``. A call still
running when the load stops is cancelled and recorded with the time it had waited so far, as
``UNFINISHED``. Records go into typed arrays, not Python objects, so that the harness adds
little work for the garbage collector inside the calls it times.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from ._peers import Get

OK, ERROR, UNFINISHED = 0, 1, 2


class Record(NamedTuple):
    start: float  # time.monotonic() when the call began
    key: int  # index into the names
    ns: int  # how long the call took (or had taken, if unfinished)
    status: int  # OK, ERROR or UNFINISHED


class Load:
    """``rate`` calls per second over ``names`` in turn, started in batches every ``tick``."""

    def __init__(self, get: Get, names: Sequence[str], rate: float, tick: float = 0.001) -> None:
        self._get = get
        self._names = list(names)
        self._rate = rate
        self._tick = tick
        self._running = False
        self._ticker: asyncio.Task[None] | None = None
        self._calls: dict[asyncio.Task[None], tuple[float, int, int]] = {}
        self._starts = array("d")
        self._keys = array("l")
        self._ns = array("q")
        self._status = array("b")
        self.errors: list[str] = []
        self.started = 0

    @property
    def records(self) -> Iterator[Record]:
        for record in zip(self._starts, self._keys, self._ns, self._status, strict=True):
            yield Record(*record)

    def start(self) -> None:
        self._running = True
        self._ticker = asyncio.create_task(self._arrivals())

    async def _arrivals(self) -> None:
        count, rate, tick = len(self._names), self._rate, self._tick
        began = time.monotonic()
        while self._running:
            due = int((time.monotonic() - began) * rate) - self.started
            for _ in range(due):
                task = asyncio.create_task(self._call(self.started % count))
                self.started += 1
                self._calls[task] = (0.0, 0, 0)
            await asyncio.sleep(tick)

    async def _call(self, key: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        start, t0 = time.monotonic(), time.perf_counter_ns()
        self._calls[task] = (start, key, t0)
        try:
            await self._get(self._names[key])
            status = OK
        except Exception as exc:
            status = ERROR
            if len(self.errors) < 5:
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        elapsed = time.perf_counter_ns() - t0
        del self._calls[task]
        self._starts.append(start)
        self._keys.append(key)
        self._ns.append(elapsed)
        self._status.append(status)

    async def stop(self, grace: float = 0.05) -> int:
        """Stop the arrivals, wait ``grace`` seconds for calls in progress, cancel the rest.

        Returns how many calls were cancelled unfinished.
        """
        self._running = False
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=grace)
        now = time.perf_counter_ns()
        pending = list(self._calls.items())
        for task, (start, key, t0) in pending:
            if t0:  # started: record how long it had waited
                self._starts.append(start)
                self._keys.append(key)
                self._ns.append(now - t0)
                self._status.append(UNFINISHED)
            task.cancel()
        if pending:
            await asyncio.wait([task for task, _ in pending])
        return sum(1 for _, (_, _, t0) in pending if t0)
