"""The local server's fake LLM endpoints, driven over HTTP as any client would: their
controls, counts, request log and release (``/_admin/NAME/...``)."""

from __future__ import annotations

from typing import Any

import aiohttp


class FakeLLMAdmin:
    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self.base_url, self.http = base_url, http

    async def control(self, name: str, **changes: Any) -> None:
        async with self.http.post(f"{self.base_url}/_admin/{name}/controls", json=changes) as r:
            assert r.status == 200, await r.text()

    async def release(self, name: str) -> None:
        async with self.http.post(f"{self.base_url}/_admin/{name}/release") as r:
            assert r.status == 204

    async def counts(self, name: str) -> dict[str, int]:
        async with self.http.get(f"{self.base_url}/_admin/{name}/requests") as r:
            data: dict[str, int] = await r.json()
            return data

    async def recent(self, name: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.base_url}/_admin/{name}/recent") as r:
            data: list[dict[str, Any]] = await r.json()
            return data

    async def post(self, path: str, body: Any, **headers: str,
                   ) -> tuple[int, dict[str, str], bytes]:
        async with self.http.post(self.base_url + path, json=body, headers=headers) as r:
            return r.status, dict(r.headers), await r.read()
