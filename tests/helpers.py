"""Helpers the test modules share (no test module imports another's): waiting for a
condition, clients and servers set up the same way in many files, a fleet of clients on the
shared tier, webhook bodies, a forwarding proxy, the secret material the secrecy tests look
for, the local LLM endpoint. Fixtures every module may ask for are in ``conftest.py``;
helpers the benchmarks share too live in ``devkit/``."""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web

from asyncpromptcache import AsyncPromptClient, RedisTier, RetryPolicy, TextPrompt
from asyncpromptcache._prompts.signatures import sign
from asyncpromptcache.response import OpenAIChatProducer
from asyncpromptcache.server import run_server
from asyncpromptcache.testing import FakeClock, StaticSource

from .faultserver import FaultServer

#: The safety bound of every wait here: generous (a loaded machine), never a timing assertion.
BOUND = 10.0


# -- waiting -------------------------------------------------------------------------------


async def until(condition: Callable[[], bool], limit: float = BOUND) -> None:
    """Yield to other tasks until ``condition()`` holds: a counter or state fed by another
    task, a socket or Redis. Bounded, so a bug fails instead of hanging."""
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - polling a plain counter, no event to wait on
            await anyio.sleep(0.002)


def until_sync(condition: Callable[[], bool], limit: float = BOUND) -> None:
    """``until`` for a thread: sleeps between looks."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


def read_until_eof(fd: int, pid: int) -> bytes:
    """What a forked child writes to ``fd`` until it exits; kills it if it takes too long."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + BOUND
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the forked child did not finish in time")
    finally:
        os.close(fd)


# -- the shared tier: clients of a fleet in one process, on a real redis-server --------------
# (the server itself: the ``redis_server`` and ``redis_url`` fixtures of conftest.py)

#: The Langfuse host a client without one talks to: part of its namespace in Redis.
HOST = "https://cloud.langfuse.com"


def text(name: str, version: int = 1, body: str | None = None) -> TextPrompt:
    return TextPrompt(name=name, version=version, prompt=body or f"{name} v{version}",
                      labels=["production"])


class Fleet:
    """Clients sharing one source and one fake clock (their monotonic and wall clock)."""

    def __init__(self, url: str, source: StaticSource, clock: FakeClock) -> None:
        self.url, self.source, self.clock = url, source, clock
        self.stack = AsyncExitStack()

    async def client(self, *, namespace: str = "test", ttl: float = 60.0,
                     signing_key: str | None = None, url: str | None = None,
                     redis_timeout: float = 2.0, **options: Any) -> AsyncPromptClient:
        # A generous bound on each Redis call: these tests count fetches and states, and a
        # call that overran the default 0.25 s on a loaded machine would mark the tier down
        # (every fetch then goes upstream), which is not what they are about.
        tier = RedisTier(url or self.url, namespace=namespace, signing_key=signing_key,
                         wall_clock=self.clock, timeout_seconds=redis_timeout)
        client = AsyncPromptClient(source=self.source, cache_ttl_seconds=ttl,
                                   clock=self.clock, shared=tier, **options)
        return await self.stack.enter_async_context(client)


@asynccontextmanager
async def fleet(url: str, *prompts: TextPrompt) -> AsyncIterator[Fleet]:
    made = Fleet(url, StaticSource(prompts), FakeClock())
    async with made.stack:
        yield made


async def gather(client: AsyncPromptClient, names: list[str], callers: int) -> list[Any]:
    results: list[Any] = []

    async def one(name: str) -> None:
        try:
            results.append(await client.get_prompt(name))
        except Exception as exc:  # collected: the tests count them
            results.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(callers):
            tg.start_soon(one, names[i % len(names)])
    return results


@asynccontextmanager
async def raw_redis(url: str) -> AsyncIterator[Any]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


# -- a client against a fault server ------------------------------------------------------

NO_WAIT = RetryPolicy(max_retries=2, base_delay=0.0, max_delay=0.0)


def client_for(server: FaultServer, clock: FakeClock, **kwargs: object) -> AsyncPromptClient:
    options: dict[str, object] = {
        "base_url": server.base_url, "clock": clock, "cache_ttl_seconds": 60,
        "retry": NO_WAIT, "fetch_timeout_seconds": 2, "env": {},
    }
    options.update(kwargs)
    return AsyncPromptClient(**options)  # type: ignore[arg-type]


# -- webhooks ------------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec-for-tests"


def event(
    action: str, version: int, labels: list[str], *, event_id: str = "evt-1",
    prompt: str | None = None, name: str = "p", updated_at: str = "2026-11-30T06:59:59.000Z",
) -> bytes:
    """A body shaped as Langfuse's worker sends it (prompt key last, no resolutionGraph)."""
    return json.dumps({
        "id": event_id, "timestamp": "2026-11-30T07:00:00.000Z", "type": "prompt-version",
        "apiVersion": "v1", "action": action,
        "user": {"name": "Ada", "email": "ada@example.com"},
        "prompt": {
            "id": f"id-{version}", "name": name, "version": version, "projectId": "proj",
            "createdBy": "user-1", "labels": labels,
            "prompt": prompt if prompt is not None else f"text v{version}", "type": "text",
            "config": {}, "commitMessage": None, "tags": [],
            "createdAt": "2026-11-30T06:59:00.000Z", "updatedAt": updated_at,
        },
    }).encode()


def signed(body: bytes, *, secret: str = WEBHOOK_SECRET, at: float | None = None) -> str:
    return sign(secret, body, int(time.time() if at is None else at))


def propagation_client(url: str, source: StaticSource, clock: FakeClock, *,
           grace: float = 30.0) -> AsyncPromptClient:
    tier = RedisTier(url, namespace="propagation", wall_clock=clock, moved_grace_seconds=grace)
    return AsyncPromptClient(source=source, clock=clock, shared=tier, webhook_secret=WEBHOOK_SECRET)


def received(client: AsyncPromptClient) -> int:
    shared = client.stats().shared
    return 0 if shared is None else shared.changes_received


# -- a forwarding proxy ----------------------------------------------------------------------

class Proxy:
    """A forwarding HTTP proxy: each request (absolute-form) is sent on to its target."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (target URL, Proxy-Authorization)
        self.url = ""

    async def handle(self, request: web.BaseRequest) -> web.Response:
        target = str(request.url)
        self.seen.append((target, request.headers.get("Proxy-Authorization")))
        headers = {k: v for k, v in request.headers.items()
                   if k in ("Accept", "Authorization", "Content-Type")}
        async with aiohttp.ClientSession() as upstream, upstream.request(
            request.method, target, headers=headers, data=await request.read(),
            allow_redirects=False,
        ) as answer:
            return web.Response(
                status=answer.status, body=await answer.read(),
                content_type=answer.content_type,
            )


@asynccontextmanager
async def forwarding_proxy() -> AsyncIterator[Proxy]:
    proxy = Proxy()
    runner = web.ServerRunner(web.Server(proxy.handle), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    proxy.url = f"http://{host}:{port}"
    try:
        yield proxy
    finally:
        await runner.cleanup()


# -- what the secrecy tests look for -----------------------------------------------------------

PUBLIC = "pk-lf-public-0001"
SECRET = "sk-lf-S3CR3T-9f2c41d7-do-not-leak"
SERVER_SECRET = "sk-lf-SERVER-SIDE-7b1e-do-not-leak"


def needles(public: str, secret: str) -> list[str]:
    pair = f"{public}:{secret}".encode()
    return [
        secret,
        secret[6:],  # without its "sk-lf-" prefix
        base64.b64encode(pair).decode(),
        base64.urlsafe_b64encode(pair).decode(),
        base64.b64encode(secret.encode()).decode(),
        quote(secret, safe=""),
        secret.encode().hex(),
    ]


NEEDLES = needles(PUBLIC, SECRET) + needles(PUBLIC, SERVER_SECRET)


def exception_texts(exc: BaseException) -> list[str]:
    """Message, repr, attributes and formatted traceback of ``exc`` and its whole chain."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        texts += [f"{name}={value!r}" for name, value in vars(current).items()]
        todo += [current.__cause__, current.__context__]
    return texts


# -- the local OpenAI-compatible endpoint ---------------------------------------------------

REQUEST: dict[str, Any] = {
    "model": "local-model", "temperature": 0, "max_tokens": 12,
    "messages": [{"role": "user", "content": "What does the cache do?"}],
}
CHUNKS = 12 + 2  # the role chunk, 12 tokens, the finish chunk


@attrs.define
class ChatAdmin:
    """The local server's chat controls and counters (``/_admin/chat/...``)."""

    base_url: str
    http: aiohttp.ClientSession

    async def control(self, **changes: Any) -> None:
        async with self.http.post(self.base_url + "/_admin/chat/controls", json=changes) as r:
            assert r.status == 200, await r.text()

    async def release(self) -> None:
        async with self.http.post(self.base_url + "/_admin/chat/release") as r:
            assert r.status == 204

    async def counts(self) -> dict[str, int]:
        async with self.http.get(self.base_url + "/_admin/chat/requests") as r:
            data: dict[str, int] = await r.json()
            return data


@attrs.define
class Upstream(ChatAdmin):
    """The chat endpoint's controls, and an OpenAI-compatible producer streaming from it."""

    llm: OpenAIChatProducer

    async def direct(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """The upstream's own chunk sequence for ``request``, without the cache."""
        return [chunk async for chunk in self.llm.stream(request)]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with run_server() as server, aiohttp.ClientSession() as http, \
            OpenAIChatProducer(base_url=server.base_url + "/v1") as llm:
        upstream = Upstream(server.base_url, http, llm)
        yield upstream
        await upstream.control(hold_after_chunks=None)  # no held stream delays the shutdown
        await upstream.release()
