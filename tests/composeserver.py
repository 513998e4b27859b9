"""A small Langfuse-like prompt server for composed prompts and writes, over real HTTP.

It does what Langfuse does and the local server (on another branch) does not yet: GET resolves
``@@@langfusePrompt:name=N|label=L@@@`` / ``|version=V@@@`` references recursively and fills
``resolutionGraph`` ({"root", "dependencies": {parent id: [{"id", "name", "version"}]}}), as
``PromptService.buildAndResolvePromptGraph`` does; POST creates a version (its labels and
``latest`` move to it) and PATCH adds labels, both answering the stored (unresolved) prompt as
Langfuse does. ``hold()`` makes every GET wait (``arrived`` is set) until ``release()``;
``gets`` counts them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import anyio
from aiohttp import web

from tests.webapp import serve_app

PREFIX = "/api/public/v2/prompts"
_TAG = re.compile(r"@@@langfusePrompt:name=([^|@]+)\|(label|version)=([^@]+)@@@")


class ComposeServer:
    def __init__(self) -> None:
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.gets: Counter[str] = Counter()
        self.gate: anyio.Event | None = None
        self.arrived = anyio.Event()  # set when a GET reaches the gate
        self.base_url = ""

    def create(self, name: str, prompt: str, labels: list[str]) -> dict[str, Any]:
        versions = self.versions.setdefault(name, [])
        moved = [*labels, "latest"]
        for old in versions:
            old["labels"] = [label for label in old["labels"] if label not in moved]
        stored = {
            "id": f"{name}-v{len(versions) + 1}", "name": name, "version": len(versions) + 1,
            "type": "text", "prompt": prompt, "config": {}, "labels": list(dict.fromkeys(moved)),
            "tags": [], "commitMessage": None, "resolutionGraph": None,
        }
        versions.append(stored)
        return stored

    def set_labels(self, name: str, version: int, labels: list[str]) -> dict[str, Any]:
        for other in self.versions[name]:
            if other["version"] != version:
                other["labels"] = [label for label in other["labels"] if label not in labels]
        stored = self.versions[name][version - 1]
        stored["labels"] = list(dict.fromkeys([*stored["labels"], *labels]))
        return stored

    def find(self, name: str, label: str | None, version: int | None) -> dict[str, Any] | None:
        for stored in self.versions.get(name, []):
            if stored["version"] == version or (version is None and label in stored["labels"]):
                return stored
        return None

    def resolve(self, stored: dict[str, Any]) -> dict[str, Any]:
        dependencies: dict[str, list[dict[str, Any]]] = {}

        def text_of(node: dict[str, Any]) -> str:
            def replace(match: re.Match[str]) -> str:
                name, kind, value = match.groups()
                part = self.find(
                    name, value if kind == "label" else None,
                    int(value) if kind == "version" else None,
                )
                assert part is not None, match.group(0)
                dependencies.setdefault(node["id"], []).append(
                    {"id": part["id"], "name": part["name"], "version": part["version"]}
                )
                return text_of(part)

            return _TAG.sub(replace, node["prompt"])

        resolved = text_of(stored)
        graph = {
            "root": {"id": stored["id"], "name": stored["name"], "version": stored["version"]},
            "dependencies": dependencies,
        } if dependencies else None
        return {**stored, "prompt": resolved, "resolutionGraph": graph}

    def hold(self) -> None:
        self.gate = anyio.Event()
        self.arrived = anyio.Event()

    def release(self) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.set()

    async def get(self, request: web.Request) -> web.Response:
        name = unquote(request.match_info["name"])
        self.gets[name] += 1
        # Read before waiting: what a server answers is what it had when the request came.
        version = request.query.get("version")
        stored = self.find(
            name, request.query.get("label", "production"),
            int(version) if version else None,
        )
        body = None if stored is None else json.dumps(self.resolve(stored))
        if self.gate is not None:
            self.arrived.set()
            await self.gate.wait()
        if body is None:
            return web.json_response(
                {"message": "not found", "error": "LangfuseNotFoundError"}, status=404
            )
        return web.Response(text=body, content_type="application/json")

    async def post(self, request: web.Request) -> web.Response:
        data = await request.json()
        stored = self.create(data["name"], data["prompt"], data.get("labels", []))
        return web.json_response(stored, status=201)

    async def patch(self, request: web.Request) -> web.Response:
        data = await request.json()
        stored = self.set_labels(
            unquote(request.match_info["name"]), int(request.match_info["version"]),
            data["newLabels"],
        )
        return web.json_response(stored)


@asynccontextmanager
async def compose_server() -> AsyncIterator[ComposeServer]:
    server = ComposeServer()
    app = web.Application()
    app.router.add_post(PREFIX, server.post)
    app.router.add_get(PREFIX + "/{name}", server.get)
    app.router.add_patch(PREFIX + "/{name}/versions/{version}", server.patch)
    async with serve_app(app) as url:
        server.base_url = url
        try:
            yield server
        finally:
            server.release()
