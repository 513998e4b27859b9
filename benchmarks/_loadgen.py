"""The web-app scenario's clients, in a child process: the app being measured then serves
requests without also paying for the client side of every one of them on its event loop.

The parent writes ``{"url": ..., "n": ...}`` lines; the child fires ``n`` concurrent GETs at
``url + str(i)`` (one connection each) and answers ``{"wall_s": ..., "ok": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from types import TracebackType
from typing import Any

from devkit.upstream import spawn_module


class LoadGenerator:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LoadGenerator:
        self._proc = spawn_module("benchmarks._loadgen")
        if self._readline() != "ready":
            self.__exit__(None, None, None)
            raise RuntimeError("the benchmark's load generator did not start")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def _readline(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout.readline().strip()

    def fire(self, url: str, n: int) -> dict[str, Any]:
        """``n`` concurrent GETs of ``url + str(i)``; wall time and how many answered 200."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"url": url, "n": n}) + "\n")
        self._proc.stdin.flush()
        answer = self._readline()
        if not answer:
            raise RuntimeError("the benchmark's load generator stopped")
        result: dict[str, Any] = json.loads(answer)
        return result

    async def afire(self, url: str, n: int) -> dict[str, Any]:
        return await asyncio.to_thread(self.fire, url, n)


async def _get(session: Any, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        status: int = response.status
        return status


async def _serve() -> None:
    import aiohttp

    print("ready", flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        order = json.loads(line)
        url, n = order["url"], order["n"]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            start = time.perf_counter()
            statuses = await asyncio.gather(
                *(_get(session, url + str(i)) for i in range(n)), return_exceptions=True)
            wall = time.perf_counter() - start
        print(json.dumps({"wall_s": wall, "ok": sum(1 for s in statuses if s == 200)}),
              flush=True)


if __name__ == "__main__":
    asyncio.run(_serve())
