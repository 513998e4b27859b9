"""An aiohttp test server speaking Langfuse's GET-prompt route, with faults on demand.

Faults are switched by setting ``server.fault`` to one of ``FAULTS``; ``server.gate`` (an
``anyio.Event``), when set up with ``hold()``, makes every GET wait until ``release()``, so a
test controls "slow" without sleeping. Every request is counted in ``server.requests``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import unquote

import anyio
from aiohttp import web
from anyio.from_thread import start_blocking_portal

FAULTS = (
    "ok", "503", "500", "429", "429-retry-after", "hang", "drop", "reset-mid-body",
    "malformed", "truncated", "wrong-type", "wrong-shape", "html", "oversized", "slow-drip",
    "wrong-name", "401",
    # Added for tests/test_faults.py:
    "html-502", "oversized-chunked", "latin1",
    # Added for tests/test_containment.py: a 404 from something in front of the server (an HTML
    # page, or JSON without Langfuse's "error" name), and bodies nested deeper than Python's
    # recursion limit, as an answer and as an error body.
    "html-404", "json-404", "deep-200", "deep-404", "deep-503",
)

DEEP = b"[" * 100_000 + b"]" * 100_000

PREFIX = "/api/public/v2/prompts/"


def text_prompt(name: str, version: int, prompt: str, labels: list[str]) -> dict[str, Any]:
    return {
        "id": f"id-{name}-{version}", "name": name, "version": version, "type": "text",
        "prompt": prompt, "config": {}, "labels": labels, "tags": [], "commitMessage": None,
        "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z",
        "projectId": "p1", "resolutionGraph": None,
    }


class FaultServer:
    def __init__(self) -> None:
        self.prompts: dict[str, list[dict[str, Any]]] = {}
        self.fault = "ok"
        self.requests: Counter[str] = Counter()
        self.gate: anyio.Event | None = None
        self.waiting = 0
        self.retry_after = "0"
        self.base_url = ""
        self.max_body = 4 * 1024 * 1024
        self._runner: web.AppRunner | None = None

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def put(self, name: str, prompt: str, labels: tuple[str, ...] = ("production",)) -> int:
        """Add a new version of a text prompt; its labels move to it. Returns the version."""
        versions = self.prompts.setdefault(name, [])
        for old in versions:
            old["labels"] = [label for label in old["labels"] if label not in labels]
        version = len(versions) + 1
        versions.append(text_prompt(name, version, prompt, list(labels)))
        return version

    def put_chat(
        self, name: str, messages: list[dict[str, Any]], labels: tuple[str, ...] = ("production",)
    ) -> int:
        """Add a chat version (the fault server lets a name change type; Langfuse does not)."""
        version = self.put(name, "", labels)
        self.prompts[name][-1].update(type="chat", prompt=messages)
        return version

    async def go_down(self) -> None:
        """Stop listening and drop every open connection: the next requests are refused."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self.release()
            await runner.cleanup()

    async def come_up(self) -> None:
        """Listen again on the same port (after ``go_down``)."""
        if self._runner is None:
            port = int(self.base_url.rsplit(":", 1)[1]) if self.base_url else 0
            self._runner = await _start(self, port)
            self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def hold(self) -> None:
        self.gate = anyio.Event()

    def release(self) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.set()

    def _find(self, name: str, query: Any) -> dict[str, Any] | None:
        versions = self.prompts.get(name, [])
        if "version" in query:
            return next((p for p in versions if str(p["version"]) == query["version"]), None)
        label = query.get("label", "production")
        return next((p for p in reversed(versions) if label in p["labels"]), None)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        name = unquote(raw[len(PREFIX):])
        self.requests[name] += 1
        if self.gate is not None:
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        fault = self.fault
        if fault == "hang":
            await anyio.sleep_forever()
        if fault in ("503", "500", "401"):
            return web.json_response(
                {"message": "injected", "error": "Injected"}, status=int(fault)
            )
        if fault == "429":
            return web.json_response({"message": "slow down", "error": "RateLimit"}, status=429)
        if fault == "429-retry-after":
            return web.json_response(
                {"message": "slow down", "error": "RateLimit"}, status=429,
                headers={"Retry-After": self.retry_after},
            )
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if fault == "html":
            return web.Response(
                text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
            )
        if fault == "html-404":
            return web.Response(
                text="<html><head><title>404 Not Found</title></head><body>nginx</body></html>",
                status=404, content_type="text/html",
            )
        if fault == "json-404":
            return web.json_response({"message": "no route"}, status=404)
        if fault.startswith("deep-"):
            return web.Response(body=DEEP, status=int(fault[5:]), content_type="application/json")
        if fault == "html-502":
            return web.Response(
                text="<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
                status=502, content_type="text/html",
            )
        prompt = self._find(name, request.query)
        if prompt is None:
            return web.json_response(
                {"message": f"Prompt not found: '{name}'", "error": "LangfuseNotFoundError"},
                status=404,
            )
        body = json.dumps(prompt).encode()
        if fault == "malformed":
            body = b"{'name': not json"
        elif fault == "truncated":
            body = body[: len(body) // 2]
        elif fault == "wrong-type":
            body = json.dumps({**prompt, "type": "chat"}).encode()
        elif fault == "wrong-shape":
            body = json.dumps({"data": [prompt]}).encode()
        elif fault == "wrong-name":
            body = json.dumps({**prompt, "name": name + "-other"}).encode()
        elif fault == "oversized":
            body = json.dumps({**prompt, "prompt": "x" * (self.max_body + 10)}).encode()
        elif fault == "latin1":
            body = json.dumps({**prompt, "prompt": "caf\u00e9"}, ensure_ascii=False).encode(
                "latin-1")
        if fault == "oversized-chunked":  # no Content-Length: only counting the body tells
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(body[:-1] + b', "padding": "')
            for _ in range(self.max_body // 1000 + 2):
                await response.write(b"x" * 1000)
            await response.write(b'"}')
            await response.write_eof()
            return response
        if fault in ("reset-mid-body", "slow-drip"):
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[:10])
            if fault == "slow-drip":
                for byte in body[10:]:
                    await anyio.sleep(0.5)
                    await response.write(bytes([byte]))
                return response
            assert request.transport is not None
            request.transport.close()
            return response
        return web.Response(body=body, content_type="application/json")


async def _start(server: FaultServer, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_get(PREFIX + "{tail:.*}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner


@asynccontextmanager
async def fault_server() -> AsyncIterator[FaultServer]:
    server = FaultServer()
    await server.come_up()
    try:
        yield server
    finally:
        await server.go_down()


@contextmanager
def fault_server_in_thread() -> Iterator[FaultServer]:
    """``fault_server()`` on an event loop of its own thread, for tests of the sync facade.
    Set ``fault`` from the test's thread; work gates through a portal of your own."""
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(fault_server()) as server,
    ):
        yield server
