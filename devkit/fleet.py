"""A fleet of real worker processes for the shared tier's tests and benchmark.

``Fleet(n)`` starts ``n`` children (``python -m devkit.fleet``); each answers one JSON
command per line on stdin with one JSON line on stdout, so the parent can step them all
through the same phases (open a client, cold load, invalidate, watch for a new version...).
A worker holds one contender at a time: ``ours`` (``AsyncPromptClient``, with ``shared=``
a Redis URL or none) or ``cashews`` (cashews' two-tier Redis cache, ``client_side=True``,
with its lock, around the same HTTP source).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import attrs

from .upstream import PUBLIC_KEY, SECRET_KEY, spawn_module


class Fleet:
    """``with Fleet(8) as fleet: fleet.all({"op": ...})`` -> one reply per worker
    (``env``: environment variables the workers have besides the parent's)."""

    def __init__(self, size: int, *, env: Mapping[str, str] | None = None) -> None:
        self.size = size
        self._procs = [spawn_module("devkit.fleet", env=env) for _ in range(size)]

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def send(self, index: int, command: dict[str, Any]) -> None:
        proc = self._procs[index]
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()

    def receive(self, index: int) -> Any:
        proc = self._procs[index]
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fleet worker {index} exited ({proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"fleet worker {index}: {reply['error']}")
        return reply

    def one(self, index: int, command: dict[str, Any]) -> Any:
        self.send(index, command)
        return self.receive(index)

    def all(self, command: dict[str, Any], only: range | None = None) -> list[Any]:
        """Send ``command`` to every worker (or ``only`` those), then collect the replies."""
        indexes = only or range(self.size)
        for i in indexes:
            self.send(i, command)
        return [self.receive(i) for i in indexes]


# -- the worker ------------------------------------------------------------------------------


class _Worker:
    def __init__(self) -> None:
        self.get: Callable[[str], Awaitable[int]] | None = None  # name -> version
        self.client: Any = None
        self.response: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        self.llm: Any = None
        self._watching: asyncio.Task[dict[str, Any]] | None = None
        self._close: Callable[[], Awaitable[None]] | None = None
        self.received: dict[str, int] = {}  # webhook answers by status, see ``listen``
        self._receiver: Any = None
        self.paused = False

    async def open(self, command: dict[str, Any]) -> dict[str, Any]:
        await self.close()
        if command.get("mode", "ours") == "cashews":
            return await self._open_cashews(command)
        from asyncpromptcache import AsyncPromptClient

        client = AsyncPromptClient(
            base_url=command["base_url"], public_key=PUBLIC_KEY, secret_key=SECRET_KEY,
            cache_ttl_seconds=command.get("ttl", 60.0), max_retries=0, shared=_tier(command),
            refresh_backoff_seconds=0.2, webhook_secret=command.get("webhook_secret"),
            fetch_timeout_seconds=command.get("fetch_timeout"),
        )
        await client.__aenter__()
        self.client = client

        async def get(name: str) -> int:
            return (await client.get_prompt(name)).version

        self.get = get
        self._close = client.aclose
        stats = client.stats().shared
        return {"shared": None if stats is None else stats.state}

    async def _open_cashews(self, command: dict[str, Any]) -> dict[str, Any]:
        from cashews import Cache

        from asyncpromptcache import FetchOptions, LangfuseSource, PromptKey

        cache = Cache()
        cache.setup(command["redis"], client_side=True, suppress=True)
        source = LangfuseSource(base_url=command["base_url"], public_key=PUBLIC_KEY,
                                secret_key=SECRET_KEY, timeout_seconds=5.0)
        ttl = float(command.get("ttl", 60.0))

        @cache(ttl=ttl, lock=True, key="prompt:{name}")
        async def fetch(name: str) -> int:
            prompt = await source.fetch(PromptKey(name, "production", None),
                                        FetchOptions(max_retries=0))
            return prompt.version

        await cache.init()
        self.get = fetch

        async def close() -> None:
            await cache.close()
            await source.aclose()

        self._close = close
        return {}

    async def close(self, command: dict[str, Any] | None = None) -> dict[str, Any]:
        close, self._close, self.get, self.client = self._close, None, None, None
        self.response = self.llm = None
        if self._watching is not None:
            self._watching.cancel()
            self._watching = None
        if close is not None:
            await close()
        return {}

    async def load(self, command: dict[str, Any]) -> dict[str, Any]:
        """``callers`` concurrent callers over ``names``; counts errors and versions seen."""
        assert self.get is not None
        names: list[str] = command["names"]
        get = self.get
        errors: list[str] = []
        versions: dict[str, int] = {}

        async def one(name: str) -> None:
            try:
                versions[name] = await get(name)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        started_at, started = time.time(), time.perf_counter()
        await asyncio.gather(*(one(names[i % len(names)]) for i in range(command["callers"])))
        return {"errors": len(errors), "first_errors": errors[:3], "versions": versions,
                "seconds": time.perf_counter() - started, "started_at": started_at,
                "ended_at": time.time()}

    async def settle(self, command: dict[str, Any]) -> dict[str, Any]:
        """Wait until no fetch or refresh runs (ours) and report the shared tier's state."""
        if self.client is not None:
            for _ in range(2000):  # refreshes run in the client's tasks; at most 10 s
                if not self.client.cache.in_flight:
                    break
                await asyncio.sleep(0.005)
            shared = self.client.stats().shared
            return {"shared": None if shared is None else shared.state,
                    "stats": None if shared is None else attrs.asdict(shared)}
        return {}

    async def watch(self, command: dict[str, Any]) -> dict[str, Any]:
        """Call ``name`` every millisecond until it is at ``version``: the wall time then."""
        assert self.get is not None
        deadline = time.time() + command.get("limit", 10.0)
        while time.time() < deadline:
            try:
                if await self.get(command["name"]) == command["version"]:
                    return {"seen_at": time.time()}
            except Exception:
                pass
            await asyncio.sleep(0.001)
        return {"seen_at": None}

    async def poll(self, command: dict[str, Any]) -> dict[str, Any]:
        """Call ``name`` every millisecond for ``seconds``: the versions served, the errors."""
        assert self.get is not None
        seen: set[int] = set()
        errors = 0
        deadline = time.monotonic() + command["seconds"]
        while time.monotonic() < deadline:
            try:
                seen.add(await self.get(command["name"]))
            except Exception:
                errors += 1
            await asyncio.sleep(0.001)
        return {"versions": sorted(seen), "errors": errors}

    async def invalidate(self, command: dict[str, Any]) -> dict[str, Any]:
        started = time.time()
        self.client.invalidate(command["name"])
        return {"at": started}

    async def listen(self, command: dict[str, Any]) -> dict[str, Any]:
        """Start an aiohttp app on a free loopback port that hands Langfuse's webhooks to
        ``client.handle_webhook`` (as examples/webhook_aiohttp.py does); its URL."""
        from aiohttp import web

        from asyncpromptcache import WebhookError, WebhookReplayError, WebhookSignatureError

        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            status = 200
            try:
                if self.client is None or self.paused:
                    status = 202  # taken, not applied (see ``pause``)
                else:
                    await self.client.handle_webhook(
                        body, request.headers.get("x-langfuse-signature"))
            except WebhookReplayError:
                status = 208
            except WebhookSignatureError:
                status = 401
            except WebhookError:
                status = 400
            self.received[str(status)] = self.received.get(str(status), 0) + 1
            return web.Response(status=status)

        app = web.Application()
        app.router.add_post("/webhook", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._receiver = runner
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return {"url": f"http://127.0.0.1:{port}/webhook"}

    async def pause(self, command: dict[str, Any]) -> dict[str, Any]:
        """Answer webhooks without applying them (``paused``: true) or apply them again."""
        self.paused = bool(command["paused"])
        return {}

    async def webhooks(self, command: dict[str, Any]) -> dict[str, Any]:
        """The receiver's answers so far, by status (200 applied, 401 bad signature...)."""
        return {"received": dict(self.received)}

    async def text(self, command: dict[str, Any]) -> dict[str, Any]:
        """``get_prompt(name)``: its version and text."""
        prompt = await self.client.get_prompt(command["name"])
        return {"version": prompt.version, "text": prompt.prompt}

    async def create(self, command: dict[str, Any]) -> dict[str, Any]:
        """``create_prompt`` of a text prompt through this worker's client."""
        created = await self.client.create_prompt(
            name=command["name"], prompt=command["prompt"], labels=command.get("labels"))
        return {"version": created.version}

    async def stats(self, command: dict[str, Any]) -> dict[str, Any]:
        """The client's shared-tier counters."""
        shared = self.client.stats().shared
        return {"stats": None if shared is None else attrs.asdict(shared)}

    async def hit_cost(self, command: dict[str, Any]) -> dict[str, Any]:
        """ns per awaited fresh hit (best of ``rounds``), after one warm-up call."""
        assert self.client is not None
        get_prompt = self.client.get_prompt
        name, calls = command["name"], command["calls"]
        await get_prompt(name)
        best = float("inf")
        for _ in range(command.get("rounds", 3)):
            start = time.perf_counter_ns()
            for _ in range(calls):
                await get_prompt(name)
            best = min(best, (time.perf_counter_ns() - start) / calls)
        return {"ns": best}

    # -- the response cache ------------------------------------------------------------------

    async def response_open(self, command: dict[str, Any]) -> dict[str, Any]:
        """A ``ResponseCache`` over the endpoint at ``base_url``, ``shared=`` the Redis at
        ``redis`` (or none); with ``environment``, ``ResponseCache()`` as an app writes it
        (the tier, if any, from ``ASYNCPROMPTCACHE_REDIS_URL``)."""
        await self.close()
        from asyncpromptcache import ResponseCache
        from asyncpromptcache.response import OpenAIChatProducer

        llm = OpenAIChatProducer(base_url=command["base_url"] + "/v1")
        environment = command.get("environment")
        cache = ResponseCache() if environment else ResponseCache(shared=_tier(command))
        await cache.__aenter__()
        self.client, self.llm = cache, llm

        async def stream(request: dict[str, Any]) -> dict[str, Any]:
            chunks: list[Any] = []
            answer = cache.stream(request, lambda: llm.stream(request))
            try:
                async for chunk in answer:
                    chunks.append(chunk)
            except Exception as exc:
                return {"chunks": chunks, "source": answer.source,
                        "failed": type(exc).__name__}
            return {"chunks": chunks, "source": answer.source, "failed": None}

        self.response = stream

        async def close() -> None:
            try:
                await cache.aclose()
            finally:
                await llm.aclose()

        self._close = close
        return {}

    async def response_stream(self, command: dict[str, Any]) -> dict[str, Any]:
        """One streamed answer to ``request``: its chunks, source and ``failed`` (the type
        name of the error it ended with, if any)."""
        assert self.response is not None
        reply = await self.response(command["request"])
        stats = self.client.stats()
        reply["shared"] = None if stats.shared is None else attrs.asdict(stats.shared)
        reply["entries"] = stats.entries  # answers in this process's memory
        return reply

    async def response_invalidate(self, command: dict[str, Any]) -> dict[str, Any]:
        """``invalidate(request)``; the wall time it returned at."""
        await self.client.invalidate(command["request"])
        return {"at": time.time()}

    async def response_watch(self, command: dict[str, Any]) -> dict[str, Any]:
        """Ask for ``request`` every 5 ms in the background with ``mode="cache_only"`` (a hit,
        else ``NotCachedError``: never an upstream stream) until it is not cached; replies
        once the first ask was answered. ``response_watched`` then says when it was not."""
        from asyncpromptcache import NotCachedError

        cache, llm, request = self.client, self.llm, command["request"]
        asked = asyncio.Event()

        async def watch() -> dict[str, Any]:
            deadline, hits = time.time() + command.get("limit", 10.0), 0
            try:
                while time.time() < deadline:
                    try:
                        async with cache.stream(request, lambda: llm.stream(request),
                                                mode="cache_only"):
                            hits += 1
                    except NotCachedError:
                        return {"seen_at": time.time(), "hits": hits}
                    asked.set()
                    await asyncio.sleep(0.005)
                return {"seen_at": None, "hits": hits}
            finally:
                asked.set()

        self._watching = watching = asyncio.create_task(watch())
        await asked.wait()
        return {"done": watching.done()}

    async def response_watched(self, command: dict[str, Any]) -> dict[str, Any]:
        """What the ``response_watch`` running ended with: ``seen_at``, the wall time of the
        first ask not answered from the cache (``None`` past its limit), and ``hits``."""
        assert self._watching is not None
        watching, self._watching = self._watching, None
        return await watching


def _tier(command: dict[str, Any]) -> Any:
    """The ``RedisTier`` of an ``open`` command (``redis``), or none: ``redis_timeout`` is its
    ``timeout_seconds`` (1 s unless given; ``None``: the library's default)."""
    from asyncpromptcache import RedisTier

    if not command.get("redis"):
        return None
    timeout = command.get("redis_timeout", 1.0)
    options = {} if timeout is None else {"timeout_seconds": timeout}
    return RedisTier(command["redis"], namespace=command.get("namespace", "bench"), **options)


async def _serve() -> None:
    worker = _Worker()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            try:
                handler = getattr(worker, command["op"])
                reply = await handler(command)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)
    finally:
        await worker.close()
        if worker._receiver is not None:
            await worker._receiver.cleanup()


if __name__ == "__main__":
    import logging

    logging.getLogger("asyncpromptcache").setLevel(logging.ERROR)
    asyncio.run(_serve())


def applied(fleet: Fleet, count: int, limit: float = 10.0, status: str = "200") -> int:
    """Wait until worker 0's receiver has applied (or answered with ``status``) ``count``
    webhooks; how many it has."""
    deadline = time.monotonic() + limit
    while True:
        done = int(fleet.one(0, {"op": "webhooks"})["received"].get(status, 0))
        if done >= count or time.monotonic() > deadline:
            return done
        time.sleep(0.005)
