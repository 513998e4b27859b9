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

from asyncpromptcache._store._schema import PromptValidationError, parse_updated_at
from asyncpromptcache.server import PromptStore, RunningServer, run_server

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


# -- composed prompts ----------------------------------------------------------------------


def ref(name: str, **selector: Any) -> str:
    ((key, value),) = selector.items()
    return f"@@@langfusePrompt:name={name}|{key}={value}@@@"


async def test_references_resolve_three_levels_deep_with_langfuses_graph(api: Api) -> None:
    status, c = await api.create("c", 'C "quoted" \\ $& {{x}}\nend', labels=["production"])
    assert status == 201, c
    _, b = await api.create("b", f"B[{ref('c', label='production')}]", labels=["production"])
    _, a = await api.create("a", [
        {"role": "system", "content": f"A: {ref('b', version=1)} / {ref('b', label='latest')}"},
        {"type": "placeholder", "name": "history"},
    ], type="chat", labels=["production"])
    assert a["resolutionGraph"] is None  # the create answer is the raw version, as Langfuse's

    status, got = await api.get("a")
    assert status == 200, got
    c_text = 'C "quoted" \\ $& {{x}}\nend'
    assert got["prompt"][0]["content"] == f"A: B[{c_text}] / B[{c_text}]"
    assert got["prompt"][1] == {"type": "placeholder", "name": "history"}
    assert got["resolutionGraph"] == {
        "root": {"name": "a", "version": 1, "id": a["id"]},
        "dependencies": {
            # Langfuse lists a part once per reference (b by version and by label), and
            # a part's own parts once per visit of it.
            a["id"]: [{"id": b["id"], "name": "b", "version": 1}] * 2,
            b["id"]: [{"id": c["id"], "name": "c", "version": 1}] * 2,
        },
    }
    status, raw = await api.get("a", resolve="false")
    assert raw["prompt"][0]["content"].startswith("A: @@@langfusePrompt:name=b|version=1@@@")
    assert raw["resolutionGraph"] is None
    assert (await api.get("c"))[1]["resolutionGraph"] is None  # no references: null
    assert (await api.get("a", resolve="yes"))[0] == 400

    # A new production version of a part is what the parent resolves to next.
    await api.create("c", "C2", labels=["production"])
    _, got = await api.get("a", label="production")
    assert got["prompt"][0]["content"] == "A: B[C2] / B[C2]"


async def test_create_refuses_references_langfuse_refuses(api: Api) -> None:
    await api.create("part", "P", labels=["production"])
    await api.create("chatty", [{"role": "user", "content": "hi"}], type="chat")
    await api.create("loop", f"L {ref('part', label='production')}")  # loop v1
    cases = {
        ref("nope", label="production"): "Prompt dependency not found: nope - label production",
        ref("part", version=7): "Prompt dependency not found: part - version 7",
        ref("part", label="staging"): "Prompt dependency not found: part - label staging",
        ref("chatty", version=1): "Prompt dependency is not a text prompt: chatty - version 1",
        # Any other version of the prompt's own name is a cycle, directly or through a part.
        ref("loop", version=1): "Circular dependency detected involving prompt 'loop' version 1",
    }
    for text, message in cases.items():
        status, body = await api.create("loop", f"x {text} y")
        assert (status, body) == (400, {"message": message, "error": "InvalidRequestError"})
    await api.create("via", f"V {ref('loop', label='latest')}", labels=["production"])
    status, body = await api.create("loop", f"x {ref('via', label='production')}")
    assert (status, body["message"]) == (
        400, "Circular dependency detected involving prompt 'loop' version 1"
    )
    assert (await api.get("loop", version=2))[0] == 404  # nothing was stored


async def test_nesting_deeper_than_langfuse_allows_is_refused(api: Api) -> None:
    await api.create("p0", "leaf", labels=["production"])
    for i in range(1, 5):  # p4 -> p3 -> p2 -> p1 -> p0: five levels, Langfuse's limit
        status, body = await api.create(f"p{i}", f"<{ref(f'p{i - 1}', label='production')}>",
                                        labels=["production"])
        assert status == 201, body
    assert (await api.get("p4"))[1]["prompt"] == "<<<<leaf>>>>"
    status, body = await api.create("p5", ref("p4", label="production"))
    assert (status, body["message"]) == (400, "Maximum nesting depth exceeded (5)")


async def test_malformed_references_stay_text_as_in_langfuse(api: Api) -> None:
    await api.create("y", "Y", labels=["production"])
    text = ("@@@langfusePrompt:label=production|name=y@@@ "  # name must come first
            "@@@langfusePrompt:name=y|label=production|x=1@@@ "  # exactly two parts
            "@@@langfusePrompt:name=y|other=1@@@ "  # neither version nor label
            "@@@langfusePrompt:name=y|version=1@@@")
    status, body = await api.create("m", text, labels=["production"])
    assert status == 201, body
    _, got = await api.get("m")
    assert got["prompt"] == text.rsplit(" ", 1)[0] + " Y"


async def test_delete_refuses_to_leave_a_reference_dangling(api: Api) -> None:
    await api.create("part", "v1", labels=["production"])
    await api.create("part", "v2")
    await api.create("whole", f"{ref('part', label='production')}+{ref('part', version=2)}")
    for query in ("", "?version=1", "?version=2", "?label=production"):
        status, body = await api.call("DELETE", f"{PROMPTS}/part{query}")
        assert status == 400, (query, body)
        assert body["message"].startswith(
            "Other prompts are depending on prompt versions you are trying to delete:\n\n"
            "whole v1 depends on part "
        )
    status, body = await api.call("DELETE", f"{PROMPTS}/part?label=production")
    assert "whole v1 depends on part production" in body["message"]
    assert (await api.call("DELETE", f"{PROMPTS}/whole"))[0] == 204
    assert (await api.call("DELETE", f"{PROMPTS}/part"))[0] == 204


async def test_a_placeholder_may_not_share_a_variables_name(api: Api) -> None:
    status, body = await api.create("c", [
        {"role": "system", "content": "{{history}} and {{ user }} and {{1x}}"},
        {"type": "placeholder", "name": "history"},
        {"type": "placeholder", "name": "1x"},
    ], type="chat")
    assert (status, body) == (400, {
        "message": "Cannot create prompt, variables and placeholders must be unique, the "
                   "following are not: history",
        "error": "InvalidRequestError",
    })
