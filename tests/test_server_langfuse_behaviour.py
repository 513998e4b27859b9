"""The local server does what Langfuse's own server does (langfuse/langfuse, web/src/features/
prompts and packages/shared/src/server/services/PromptService): list filters by update time,
composed prompts, and create-time validation of references."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest

from asyncpromptcache.server import PromptStore, RunningServer, run_server
from asyncpromptcache.server._schema import PromptValidationError, parse_updated_at

pytestmark = pytest.mark.anyio

PROMPTS = "/api/public/v2/prompts"
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """The store's clock: each reading is one minute after the last."""

    def __init__(self) -> None:
        self.now = T0 - timedelta(minutes=1)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


class Api:
    def __init__(self, server: RunningServer, session: aiohttp.ClientSession) -> None:
        self.server, self.session = server, session

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.server.base_url + path, json=body, headers=self.server.auth_headers,
        ) as response:
            return response.status, (await response.json() if response.status != 204 else None)

    async def create(self, name: str, prompt: Any, **fields: Any) -> tuple[int, Any]:
        return await self.call("POST", PROMPTS, {"name": name, "prompt": prompt, **fields})

    async def get(self, name: str, **query: Any) -> tuple[int, Any]:
        suffix = f"?{urlencode(query)}" if query else ""
        return await self.call("GET", f"{PROMPTS}/{quote(name, safe='')}{suffix}")


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    with PromptStore(clock=Clock()) as store:
        async with run_server(store) as server, aiohttp.ClientSession() as session:
            yield Api(server, session)


# -- fromUpdatedAt / toUpdatedAt -----------------------------------------------------------


async def test_list_filters_by_update_time(api: Api) -> None:
    for name in ("a", "b", "c"):  # created at 12:00, 12:01, 12:02
        assert (await api.create(name, "x"))[0] == 201
    assert (await api.create("a", "x2"))[0] == 201  # a v2 at 12:03; a v1 loses latest

    async def names(**query: str) -> dict[str, list[int]]:
        status, body = await api.call("GET", f"{PROMPTS}?{urlencode(query)}")
        assert status == 200, body
        return {item["name"]: item["versions"] for item in body["data"]}

    assert await names(fromUpdatedAt="2025-03-01T12:01:00Z") == {"a": [2], "b": [1], "c": [1]}
    assert await names(toUpdatedAt="2025-03-01T12:01:00Z") == {"a": [1]}  # exclusive
    assert await names(fromUpdatedAt="2025-03-01T12:01:00.000Z",
                       toUpdatedAt="2025-03-01T12:03:00Z") == {"b": [1], "c": [1]}
    # Offsets are times in other zones: 13:02+01:00 is 12:02Z.
    assert await names(fromUpdatedAt="2025-03-01T13:02:00+01:00") == {"a": [2], "c": [1]}
    assert await names(fromUpdatedAt="2025-03-01T13:02:00+0100") == {"a": [2], "c": [1]}
    assert await names(fromUpdatedAt="2025-03-01T12:04:00Z") == {}
    _status, body = await api.call("GET", f"{PROMPTS}?fromUpdatedAt=2025-03-01T12:01:00Z")
    assert body["meta"]["totalItems"] == 3


@pytest.mark.parametrize("value", [
    "2025-03-01", "2025-03-01T12:00Z", "2025-03-01T12:00:00", "2025-03-01 12:00:00Z",
    "2025-02-29T12:00:00Z", "2025-03-01T24:00:00Z", "yesterday", "1740830400",
    "2025-03-01T12:00:00+01", "２０２５-03-01T12:00:00Z",
])
async def test_list_refuses_what_langfuse_refuses_as_a_datetime(api: Api, value: str) -> None:
    for key in ("fromUpdatedAt", "toUpdatedAt"):
        status, body = await api.call("GET", f"{PROMPTS}?{urlencode({key: value})}")
        assert status == 400, body
        assert key in body["message"]


def test_updated_at_is_normalised_as_javascript_does() -> None:
    assert parse_updated_at("2024-02-29T23:59:59.9999+05:30") == "2024-02-29T18:29:59.999Z"
    assert parse_updated_at("2025-01-01T00:00:00-0100") == "2025-01-01T01:00:00.000Z"
    with pytest.raises(PromptValidationError):
        parse_updated_at("2025-01-01T00:00:00+99:00")
