"""The local prompt server over real loopback HTTP: endpoints, errors, labels, auth, instruments."""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest
import yarl

import asyncpromptcache.server as server_module
from asyncpromptcache import ConfigurationError, parse_prompt
from asyncpromptcache.server import (
    MAX_BODY_BYTES,
    PromptDraft,
    PromptStore,
    PromptValidationError,
    RequestCounter,
    RunningServer,
    ServerControls,
    ServerThread,
    StoreClosedError,
    basic_auth_header,
    check_bind,
    is_loopback_host,
    run_server,
)

pytestmark = pytest.mark.anyio

PROMPTS = "/api/public/v2/prompts"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prompts"


def item(name: str) -> str:
    """The path of one prompt: the name as one segment, nothing left safe (as Langfuse's SDK)."""
    return f"{PROMPTS}/{quote(name, safe='')}"


class Api:
    """A thin JSON client; paths are sent exactly as written (no normalisation of ``..``)."""

    def __init__(self, session: aiohttp.ClientSession, server: RunningServer) -> None:
        self.session = session
        self.server = server

    async def call(
        self, method: str, path: str, *, body: Any = None, data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        url = yarl.URL(self.server.base_url + path, encoded=True)
        headers = {**self.server.auth_headers, **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        # BytesIO: aiohttp warns about large raw bytes bodies.
        payload = io.BytesIO(data) if data is not None else None
        async with self.session.request(
            method, url, data=payload, headers=headers
        ) as response:
            raw = await response.read()
            return response.status, (json.loads(raw) if raw else None)

    async def create(self, name: str, prompt: Any = "Hello {{who}}", **fields: Any) -> Any:
        status, data = await self.call("POST", PROMPTS, body={"name": name, "prompt": prompt,
                                                              **fields})
        assert status == 201, data
        return data

    async def get(self, name: str, query: str = "") -> tuple[int, Any]:
        return await self.call("GET", item(name) + query)

    async def listing(self) -> Any:
        """Everything the server holds: the full listing and every version of every name."""
        status, page = await self.call("GET", f"{PROMPTS}?limit=100")
        assert status == 200
        versions = []
        for summary in page["data"]:
            for version in summary["versions"]:
                status, data = await self.get(summary["name"], f"?version={version}")
                assert status == 200
                versions.append(data)
        return page, versions


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with run_server() as running:
        yield running


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server)


def assert_error(status: int, body: Any, expected_status: int, error: str) -> None:
    assert status == expected_status, body
    assert set(body) == {"message", "error"}
    assert body["error"] == error
    assert isinstance(body["message"], str) and body["message"]


# -- health, create, get -------------------------------------------------------------------


async def test_health(api: Api) -> None:
    assert await api.call("GET", "/api/public/health") == (
        200, {"status": "OK", "version": importlib.metadata.version("asyncpromptcache")}
    )


async def test_create_returns_the_wire_format_with_server_fields(api: Api) -> None:
    data = await api.create(
        "greet", "Hi {{name}}", config={"model": "m", "t": 0.5}, labels=["production"],
        tags=["x"], commitMessage="first",
    )
    assert data["name"] == "greet"
    assert data["version"] == 1
    assert data["type"] == "text"
    assert data["prompt"] == "Hi {{name}}"
    assert data["config"] == {"model": "m", "t": 0.5}
    assert data["labels"] == ["production", "latest"]
    assert data["tags"] == ["x"]
    assert data["commitMessage"] == "first"
    assert data["resolutionGraph"] is None
    assert data["projectId"] == server_module.DEFAULT_PROJECT_ID
    assert isinstance(data["id"], str) and data["id"]
    assert data["createdAt"].endswith("Z") and data["updatedAt"] == data["createdAt"]
    prompt = parse_prompt(data)
    assert prompt.compile(name="Ann") == "Hi Ann"
    assert await api.get("greet") == (200, data)


async def test_create_defaults(api: Api) -> None:
    data = await api.create("plain", "text only")
    assert (data["type"], data["config"], data["labels"], data["tags"], data["commitMessage"]) == (
        "text", {}, ["latest"], [], None
    )
    # null means "not given" for the optional fields, as Langfuse's SDK sends them.
    data = await api.create("nulls", "x", type=None, config=None, labels=None, tags=None,
                            commitMessage=None)
    assert (data["type"], data["config"], data["labels"], data["tags"]) == (
        "text", {}, ["latest"], []
    )


async def test_chat_prompt_round_trip(api: Api) -> None:
    items = [
        {"role": "system", "content": "You help {{user}}."},
        {"type": "placeholder", "name": "history"},
        {"role": "user", "content": "{{question}}", "type": "chatmessage"},
    ]
    data = await api.create("support", items, type="chat", labels=["production"])
    assert data["type"] == "chat"
    assert data["prompt"] == items
    status, fetched = await api.get("support")
    assert status == 200 and fetched["prompt"] == items
    prompt = parse_prompt(fetched)
    assert prompt.compile(user="Ann", question="Why?", history=[
        {"role": "user", "content": "hi"}
    ]) == [
        {"role": "system", "content": "You help Ann."},
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "Why?"},
    ]


async def test_versions_count_from_one_per_name(api: Api) -> None:
    assert [(await api.create("a"))["version"] for _ in range(3)] == [1, 2, 3]
    assert (await api.create("b"))["version"] == 1
    assert (await api.create("a"))["version"] == 4


async def test_get_by_version_and_label(api: Api) -> None:
    await api.create("p", "one", labels=["production"])
    await api.create("p", "two", labels=["staging"])
    await api.create("p", "three")
    assert (await api.get("p"))[1]["prompt"] == "one"  # default label: production
    assert (await api.get("p", "?label=production"))[1]["prompt"] == "one"
    assert (await api.get("p", "?label=staging"))[1]["prompt"] == "two"
    assert (await api.get("p", "?label=latest"))[1]["prompt"] == "three"
    assert (await api.get("p", "?version=2"))[1]["prompt"] == "two"
    # Unknown query parameters (Langfuse's SDK may send resolve=...) are ignored.
    assert (await api.get("p", "?version=2&resolve=true"))[1]["prompt"] == "two"


async def test_creating_with_a_label_moves_it(api: Api) -> None:
    await api.create("p", "one", labels=["production", "staging"])
    second = await api.create("p", "two", labels=["production"])
    assert second["labels"] == ["production", "latest"]
    _, first = await api.get("p", "?version=1")
    assert first["labels"] == ["staging"]
    assert first["updatedAt"] >= first["createdAt"]
    assert (await api.get("p"))[1]["version"] == 2
    assert (await api.get("p", "?label=staging"))[1]["version"] == 1


async def test_latest_always_names_the_newest_version(api: Api) -> None:
    await api.create("p", "one", labels=["production"])
    assert (await api.get("p", "?version=1"))[1]["labels"] == ["production", "latest"]
    await api.create("p", "two")
    assert (await api.get("p", "?version=1"))[1]["labels"] == ["production"]
    assert (await api.get("p", "?version=2"))[1]["labels"] == ["latest"]
    assert (await api.get("p", "?label=latest"))[1]["version"] == 2
    # Deleting the newest version hands "latest" to the one before.
    assert (await api.call("DELETE", item("p") + "?version=2"))[0] == 204
    assert (await api.get("p", "?label=latest"))[1]["labels"] == ["production", "latest"]


async def test_tags_are_shared_by_all_versions(api: Api) -> None:
    await api.create("p", "one", tags=["a"])
    second = await api.create("p", "two")  # no tags given: the name keeps its tags
    assert second["tags"] == ["a"]
    await api.create("p", "three", tags=["b", "c", "b"])
    for version in (1, 2, 3):
        assert (await api.get("p", f"?version={version}"))[1]["tags"] == ["b", "c"]


async def test_get_errors(api: Api) -> None:
    await api.create("p", labels=["production"])
    status, body = await api.get("p", "?version=1&label=production")
    assert_error(status, body, 400, "InvalidRequestError")
    for query in ("?version=abc", "?version=0", "?version=-1", "?version=1.5", "?version=%201",
                  "?version=99999999999999999999", "?version=1&version=2", "?label=",
                  "?label=a&label=b"):
        status, body = await api.get("p", query)
        assert_error(status, body, 400, "InvalidRequestError")
    status, body = await api.get("p", "?version=7")
    assert_error(status, body, 404, "LangfuseNotFoundError")
    assert "'p'" in body["message"] and "version 7" in body["message"]
    status, body = await api.get("p", "?label=staging")
    assert_error(status, body, 404, "LangfuseNotFoundError")
    assert "'p'" in body["message"] and "label 'staging'" in body["message"]
    status, body = await api.get("nope")
    assert_error(status, body, 404, "LangfuseNotFoundError")
    assert "'nope'" in body["message"] and "label 'production'" in body["message"]


async def test_type_cannot_change_between_versions(api: Api) -> None:
    await api.create("p", "text")
    before = await api.listing()
    status, body = await api.call("POST", PROMPTS, body={
        "name": "p", "type": "chat", "prompt": [{"role": "user", "content": "x"}]
    })
    assert_error(status, body, 400, "InvalidRequestError")
    assert await api.listing() == before


# -- list ----------------------------------------------------------------------------------


async def test_list_filters_and_aggregates(api: Api) -> None:
    await api.create("b", "b1", labels=["production"], tags=["t1"], config={"v": 1})
    await api.create("b", "b2", labels=["staging"], config={"v": 2})
    await api.create("a", [{"role": "user", "content": "x"}], type="chat", tags=["t2"])
    await api.create("c", "c1", labels=["production"], tags=["t1", "t2"])

    status, page = await api.call("GET", PROMPTS)
    assert status == 200
    assert [entry["name"] for entry in page["data"]] == ["a", "b", "c"]
    assert page["meta"] == {"page": 1, "limit": 50, "totalItems": 3, "totalPages": 1}
    b = page["data"][1]
    assert b == {
        "name": "b", "type": "text", "versions": [1, 2],
        "labels": ["latest", "production", "staging"], "tags": ["t1"],
        "lastUpdatedAt": b["lastUpdatedAt"], "lastConfig": {"v": 2},
    }
    assert page["data"][0]["type"] == "chat"

    async def names(query: str) -> list[str]:
        status, page = await api.call("GET", PROMPTS + query)
        assert status == 200
        return [entry["name"] for entry in page["data"]]

    assert await names("?name=b") == ["b"]
    assert await names("?name=zzz") == []
    assert await names("?label=production") == ["b", "c"]
    assert await names("?tag=t2") == ["a", "c"]
    assert await names("?tag=t1&label=production") == ["b", "c"]
    assert await names("?label=latest&name=b") == ["b"]
    # Aggregates cover only the versions that matched.
    _, page = await api.call("GET", PROMPTS + "?name=b&label=production")
    assert page["data"][0]["versions"] == [1]
    assert page["data"][0]["lastConfig"] == {"v": 1}
    assert page["data"][0]["labels"] == ["production"]


async def test_list_pagination(api: Api) -> None:
    for name in ("e", "d", "c", "b", "a"):
        await api.create(name)
    pages = []
    for number in (1, 2, 3, 4):
        status, page = await api.call("GET", f"{PROMPTS}?limit=2&page={number}")
        assert status == 200
        assert page["meta"] == {"page": number, "limit": 2, "totalItems": 5, "totalPages": 3}
        pages.append([entry["name"] for entry in page["data"]])
    assert pages == [["a", "b"], ["c", "d"], ["e"], []]
    for query in ("?limit=0", "?limit=101", "?page=0", "?page=x", "?limit=-1", "?page=1&page=2"):
        status, body = await api.call("GET", PROMPTS + query)
        assert_error(status, body, 400, "InvalidRequestError")


# -- update labels, delete -----------------------------------------------------------------


async def test_patch_labels(api: Api) -> None:
    await api.create("p", "one", labels=["production", "a"])
    await api.create("p", "two", labels=["b"])
    status, data = await api.call(
        "PATCH", item("p") + "/versions/2", body={"newLabels": ["production", "c", "c"]}
    )
    assert status == 200
    assert data["version"] == 2
    assert data["labels"] == ["production", "c", "b", "latest"]  # new ones first, as Langfuse
    assert (await api.get("p", "?version=1"))[1]["labels"] == ["a"]
    assert (await api.get("p"))[1]["version"] == 2
    status, data = await api.call("PATCH", item("p") + "/versions/1", body={"newLabels": []})
    assert (status, data["labels"]) == (200, ["a"])


async def test_patch_errors(api: Api) -> None:
    await api.create("p", labels=["production"])
    before = await api.listing()
    status, body = await api.call("PATCH", item("p") + "/versions/5", body={"newLabels": ["x"]})
    assert_error(status, body, 404, "LangfuseNotFoundError")
    assert "'p'" in body["message"] and "version 5" in body["message"]
    status, body = await api.call("PATCH", item("q") + "/versions/1", body={"newLabels": ["x"]})
    assert_error(status, body, 404, "LangfuseNotFoundError")
    bad_bodies: list[Any] = [{"newLabels": ["latest"]}, {"newLabels": ["Prod"]},
                             {"newLabels": "prod"}, {"newLabels": [1]}, {}, [],
                             {"newLabels": None}]
    for bad in bad_bodies:
        status, body = await api.call("PATCH", item("p") + "/versions/1", body=bad)
        assert_error(status, body, 400, "InvalidRequestError")
    for version in ("abc", "0", "-1", "1.0", "%31%2F"):
        status, body = await api.call(
            "PATCH", item("p") + f"/versions/{version}", body={"newLabels": ["x"]}
        )
        assert_error(status, body, 400, "InvalidRequestError")
    status, body = await api.call("GET", item("p") + "/versions/1")
    assert_error(status, body, 405, "MethodNotAllowedError")
    assert await api.listing() == before


async def test_delete(api: Api) -> None:
    for text in ("one", "two", "three", "four"):
        await api.create("p", text, labels=["production"] if text == "two" else [])
    await api.create("other")

    assert await api.call("DELETE", item("p") + "?version=1") == (204, None)
    assert (await api.get("p", "?version=1"))[0] == 404
    assert await api.call("DELETE", item("p") + "?label=production") == (204, None)
    assert (await api.get("p", "?version=2"))[0] == 404
    assert (await api.get("p", "?version=3"))[0] == 200

    status, body = await api.call("DELETE", item("p") + "?version=1")
    assert_error(status, body, 404, "LangfuseNotFoundError")
    assert "version 1" in body["message"]
    status, body = await api.call("DELETE", item("p") + "?label=production")
    assert_error(status, body, 404, "LangfuseNotFoundError")
    assert "label 'production'" in body["message"]
    status, body = await api.call("DELETE", item("p") + "?version=x")
    assert_error(status, body, 400, "InvalidRequestError")

    assert await api.call("DELETE", item("p")) == (204, None)
    status, body = await api.call("DELETE", item("p"))
    assert_error(status, body, 404, "LangfuseNotFoundError")
    _, page = await api.call("GET", PROMPTS)
    assert [entry["name"] for entry in page["data"]] == ["other"]
    # A deleted name starts again from version 1.
    assert (await api.create("p"))["version"] == 1


async def test_delete_by_latest_label(api: Api) -> None:
    await api.create("p", "one")
    await api.create("p", "two")
    assert (await api.call("DELETE", item("p") + "?label=latest"))[0] == 204
    _, data = await api.get("p", "?label=latest")
    assert (data["version"], data["labels"]) == (1, ["latest"])


# -- routing -------------------------------------------------------------------------------


async def test_unknown_routes_and_methods_get_json_errors(api: Api) -> None:
    for path in ("/api/nope", "/api/public/v2/prompts/a/b", "/api/public/v2/prompts/a/",
                 "/api/public/v2/prompts/a/versions/1/x", "/api/public/v3/prompts", "/api",
                 "/elsewhere", "/api/public/v2/prompts/a/Versions/1"):
        status, body = await api.call("GET", path)
        assert status == 404, path
        assert set(body) == {"message", "error"}
    async with api.session.put(api.server.base_url + PROMPTS) as response:
        assert response.status == 405
        assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
        body = await response.json()
    assert_error(405, body, 405, "MethodNotAllowedError")
    for method in ("POST", "PUT", "PATCH"):
        status, body = await api.call(method, item("p"), body={})
        assert_error(status, body, 405, "MethodNotAllowedError")


# -- bad input changes nothing -------------------------------------------------------------


BAD_BODIES: list[Any] = [
    [], "text", 1, None, True,
    {"prompt": "x"},
    {"name": "x"},
    {"name": "", "prompt": "x"},
    {"name": 5, "prompt": "x"},
    {"name": ["x"], "prompt": "x"},
    {"name": "x" * 1001, "prompt": "x"},
    {"name": "a\nb", "prompt": "x"},
    {"name": "a\x00b", "prompt": "x"},
    {"name": "a\x7fb", "prompt": "x"},
    {"name": "a\tb", "prompt": "x"},
    {"name": "x", "prompt": 5},
    {"name": "x", "prompt": ["a"]},
    {"name": "x", "prompt": None},
    {"name": "x", "type": "chat", "prompt": "a string"},
    {"name": "x", "type": "chat", "prompt": [{"role": "user"}]},
    {"name": "x", "type": "chat", "prompt": [{"content": "x"}]},
    {"name": "x", "type": "chat", "prompt": [{"role": 1, "content": "x"}]},
    {"name": "x", "type": "chat", "prompt": ["hi"]},
    {"name": "x", "type": "chat", "prompt": [{"type": "placeholder"}]},
    {"name": "x", "type": "chat", "prompt": [{"type": "placeholder", "name": ""}]},
    {"name": "x", "type": "chat", "prompt": [{"type": "image", "role": "u", "content": "x"}]},
    {"name": "x", "type": "image", "prompt": "x"},
    {"name": "x", "type": 1, "prompt": "x"},
    {"name": "x", "prompt": "x", "labels": "production"},
    {"name": "x", "prompt": "x", "labels": {"production": 1}},
    {"name": "x", "prompt": "x", "labels": ["Production"]},
    {"name": "x", "prompt": "x", "labels": ["pro duction"]},
    {"name": "x", "prompt": "x", "labels": [""]},
    {"name": "x", "prompt": "x", "labels": ["prod\n"]},
    {"name": "x", "prompt": "x", "labels": ["prod/x"]},
    {"name": "x", "prompt": "x", "labels": ["latest"]},
    {"name": "x", "prompt": "x", "labels": ["production", 1]},
    {"name": "x", "prompt": "x", "tags": "t"},
    {"name": "x", "prompt": "x", "tags": [1]},
    {"name": "x", "prompt": "x", "tags": [""]},
    {"name": "x", "prompt": "x", "commitMessage": 5},
    {"name": "x", "prompt": "x", "commitMessage": ["m"]},
]

BAD_RAW_BODIES: list[bytes] = [
    b"",
    b"{",
    b"{'name': 'x'}",
    b'{"name": "x", "prompt": "x"} trailing',
    b'{"name": "x", "prompt": "x", "config": NaN}',
    b'{"name": "x", "prompt": "x", "config": {"t": Infinity}}',
    b'{"name": "x", "prompt": "\\ud800"}',  # a lone surrogate
    b'{"name": "\\udfff", "prompt": "x"}',
    b'{"name": "x", "prompt": "\xff\xfe"}',  # not UTF-8
    b'{"name": "x", "prompt": "x", "config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"name": "x", "prompt": "x", "config": ' + b"1" * 5000 + b"}",
]


async def _seeded(api: Api) -> Any:
    await api.create("x", "existing", labels=["production"], tags=["keep"])
    await api.create("y", [{"role": "user", "content": "hi"}], type="chat")
    return await api.listing()


@pytest.mark.parametrize("body", BAD_BODIES, ids=repr)
async def test_bad_create_bodies_change_nothing(api: Api, body: Any) -> None:
    before = await _seeded(api)
    status, data = await api.call("POST", PROMPTS, data=json.dumps(body).encode(),
                                  headers={"Content-Type": "application/json"})
    assert_error(status, data, 400, "InvalidRequestError")
    assert await api.listing() == before


@pytest.mark.parametrize("raw", BAD_RAW_BODIES, ids=lambda raw: repr(raw[:40]))
async def test_malformed_json_changes_nothing(api: Api, raw: bytes) -> None:
    before = await _seeded(api)
    status, data = await api.call("POST", PROMPTS, data=raw,
                                  headers={"Content-Type": "application/json"})
    assert_error(status, data, 400, "InvalidRequestError")
    assert await api.listing() == before


async def test_oversized_bodies_are_refused(api: Api) -> None:
    before = await _seeded(api)
    huge = json.dumps({"name": "x", "prompt": "a" * MAX_BODY_BYTES}).encode()
    status, data = await api.call("POST", PROMPTS, data=huge,
                                  headers={"Content-Type": "application/json"})
    assert_error(status, data, 413, "PayloadTooLargeError")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
        yield b'{"name": "x", "prompt": "'
        for _ in range(20):
            yield b"a" * 100_000
        yield b'"}'

    url = yarl.URL(api.server.base_url + PROMPTS)
    async with api.session.post(url, data=chunks()) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "PayloadTooLargeError"
    status, data = await api.call("PATCH", item("x") + "/versions/1", data=huge)
    assert_error(status, data, 413, "PayloadTooLargeError")
    assert await api.listing() == before
    # Just under the limit is fine.
    body = json.dumps({"name": "big", "prompt": "a" * (MAX_BODY_BYTES - 100)}).encode()
    status, data = await api.call("POST", PROMPTS, data=body)
    assert status == 201 and len(data["prompt"]) == MAX_BODY_BYTES - 100


# -- concurrency ---------------------------------------------------------------------------


async def test_concurrent_creates_get_distinct_versions(api: Api) -> None:
    results: list[Any] = []

    async def create(i: int) -> None:
        results.append(await api.create("hot", f"v{i}", labels=["production"]))

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(create, i)
    assert sorted(data["version"] for data in results) == list(range(1, 51))
    _, page = await api.call("GET", f"{PROMPTS}?name=hot")
    assert page["data"][0]["versions"] == list(range(1, 51))
    # The label ended on exactly one version: the one created last.
    labelled = [v for v in range(1, 51)
                if "production" in (await api.get("hot", f"?version={v}"))[1]["labels"]]
    assert labelled == [50]


async def test_concurrent_creates_on_a_file_store(tmp_path: Path) -> None:
    with PromptStore(tmp_path / "prompts.db") as store:
        versions: list[int] = []

        async def create(i: int) -> None:
            stored = await store.create(PromptDraft(name="n", prompt=str(i)))
            versions.append(stored.prompt.version)

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(create, i)
        assert sorted(versions) == list(range(1, 31))


# -- auth ----------------------------------------------------------------------------------


async def test_auth() -> None:
    async with run_server(public_key="pk-lf-1", secret_key="sk-lf-1") as server, \
            aiohttp.ClientSession() as session:
        api = Api(session, server)
        assert (await api.create("p", labels=["production"]))["version"] == 1
        assert (await api.get("p"))[0] == 200

        async def status_with(headers: dict[str, str], path: str = item("p")) -> tuple[int, Any]:
            url = yarl.URL(server.base_url + path, encoded=True)
            async with session.get(url, headers=headers) as response:
                body = await response.json()
                if response.status == 401:
                    assert response.headers["WWW-Authenticate"].startswith("Basic")
                return response.status, body

        def basic(user: str, password: str) -> dict[str, str]:
            return {"Authorization": basic_auth_header(user, password)}

        for headers in (
            {}, basic("pk-lf-1", "wrong"), basic("wrong", "sk-lf-1"), basic("sk-lf-1", "pk-lf-1"),
            basic("pk-lf-1", ""), basic("pk-lf-1", "sk-lf-1x"), basic("pk-lf-1:sk-lf-1", ""),
            {"Authorization": "Bearer sk-lf-1"}, {"Authorization": "Basic !!!"},
            {"Authorization": "Basic " + base64.b64encode(b"pk-lf-1").decode()},
        ):
            status, body = await status_with(headers)
            assert_error(status, body, 401, "UnauthorizedError")
            assert "sk-lf-1" not in body["message"]
        assert (await status_with(basic("pk-lf-1", "sk-lf-1")))[0] == 200
        # Every endpoint is guarded, including unknown ones and the admin ones.
        for path in (PROMPTS, "/api/nope", "/_admin/requests", "/_admin/controls"):
            assert (await status_with({}, path))[0] == 401
        # ... except health.
        assert (await status_with({}, "/api/public/health"))[0] == 200
        status, body = await api.call("POST", PROMPTS, body={"name": "q", "prompt": "x"},
                                      headers=basic("pk-lf-1", "nope"))
        assert status == 401
        assert (await api.get("q"))[0] == 404  # the refused create did nothing


async def test_keys_and_bind_address_are_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"refusing to serve on '0\.0\.0\.0'"):
        async with run_server(host="0.0.0.0"):
            pass
    with pytest.raises(ConfigurationError, match="without authentication"):
        ServerThread(host="192.168.1.10")
    with pytest.raises(ConfigurationError, match="both"):
        async with run_server(public_key="pk"):
            pass
    with PromptStore() as store, pytest.raises(ConfigurationError):
        server_module.create_app(store, public_key="", secret_key="")
    check_bind("0.0.0.0", "pk", "sk")  # with keys any address is allowed
    check_bind("::1", None, None)
    assert all(map(is_loopback_host, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback_host, ["0.0.0.0", "::", "", "10.0.0.1", "example.com",
                                          "localhost.evil.com"]))


async def test_ipv6_loopback() -> None:
    async with run_server(host="::1") as server, aiohttp.ClientSession() as session:
        assert server.base_url == f"http://[::1]:{server.port}"
        async with session.get(server.base_url + "/api/public/health") as response:
            assert response.status == 200


# -- instruments ---------------------------------------------------------------------------


async def test_request_counter(api: Api) -> None:
    counter = api.server.counter
    await api.create("a")
    await api.create("b/c")
    for _ in range(3):
        await api.get("a")
    await api.get("b/c")
    await api.get("missing")
    await api.call("GET", PROMPTS)
    await api.call("PATCH", item("a") + "/versions/1", body={"newLabels": ["x"]})
    await api.call("DELETE", item("b/c"))
    await api.call("GET", "/api/public/health")
    await api.call("GET", "/api/nope")
    assert counter.get("create") == 2
    assert counter.get("get_prompt") == 5
    assert counter.get("get_prompt", "a") == 3
    assert counter.get("get_prompt", "b/c") == 1
    assert counter.get("get_prompt", "missing") == 1
    assert counter.get("get_prompt", "zzz") == 0
    assert counter.get("list") == counter.get("patch") == counter.get("delete") == 1
    assert counter.get("delete", "b/c") == 1
    assert counter.get("health") == counter.get("other") == 1
    assert counter.total == 12

    status, snapshot = await api.call("GET", "/_admin/requests")
    assert status == 200
    assert snapshot["total"] == 12  # admin requests are not counted
    assert snapshot["routes"]["get_prompt"] == 5
    assert snapshot["prompts"]["get_prompt"] == {"a": 3, "b/c": 1, "missing": 1}
    assert await api.call("DELETE", "/_admin/requests") == (204, None)
    assert counter.total == 0 and counter.get("get_prompt", "a") == 0
    assert (await api.call("GET", "/_admin/requests"))[1] == {
        "total": 0, "routes": {}, "prompts": {}, "untracked_names": 0
    }


async def test_counter_counts_refused_requests_too() -> None:
    counter = RequestCounter()
    async with run_server(public_key="pk", secret_key="sk", counter=counter) as server, \
            aiohttp.ClientSession() as session:
        assert server.counter is counter
        async with session.get(server.base_url + item("p")) as response:
            assert response.status == 401
        assert counter.get("get_prompt") == 1
        # ... but a stranger's made-up name is not kept (it would grow without bound).
        assert counter.get("get_prompt", "p") == 0


async def test_controls_fail_status(api: Api) -> None:
    await api.create("p", labels=["production"])
    api.server.controls.get_fail_status = 503
    status, body = await api.get("p")
    assert_error(status, body, 503, "ServiceUnavailableError")
    api.server.controls.get_fail_status = 429
    assert_error(*(await api.get("p")), 429, "TooManyRequestsError")
    assert (await api.call("GET", PROMPTS))[0] == 200  # only GET-prompt is affected
    api.server.controls.get_fail_status = None
    assert (await api.get("p"))[0] == 200
    assert api.server.counter.get("get_prompt", "p") == 3


async def test_controls_over_http(api: Api) -> None:
    await api.create("p", labels=["production"])
    assert await api.call("GET", "/_admin/controls") == (
        200, {"get_delay_seconds": 0.0, "get_fail_status": None}
    )
    status, body = await api.call("POST", "/_admin/controls", body={"get_fail_status": 500})
    assert (status, body) == (200, {"get_delay_seconds": 0.0, "get_fail_status": 500})
    assert_error(*(await api.get("p")), 500, "InternalServerError")
    bad_bodies: list[Any] = [{"get_fail_status": 200}, {"get_fail_status": "500"},
                             {"get_delay_seconds": -1}, {"get_delay_seconds": True},
                             {"get_delay_seconds": 0.1, "nope": 1}, [],
                             {"get_fail_status": 99999}]
    for bad in bad_bodies:
        status, body = await api.call("POST", "/_admin/controls", body=bad)
        assert_error(status, body, 400, "InvalidRequestError")
    assert api.server.controls == ServerControls(get_fail_status=500)  # all or nothing
    await api.call("POST", "/_admin/controls", body={"get_fail_status": None,
                                                     "get_delay_seconds": 0.2})
    started = time.monotonic()
    assert (await api.get("p"))[0] == 200
    assert time.monotonic() - started >= 0.2
    api.server.controls.get_delay_seconds = 0


def test_server_controls_validate() -> None:
    with pytest.raises(ValueError, match="get_fail_status"):
        ServerControls(get_fail_status=302)
    controls = ServerControls()
    with pytest.raises(ValueError, match="get_delay_seconds"):
        controls.get_delay_seconds = -0.5
    assert controls.get_delay_seconds == 0.0


# -- runner, thread, store -----------------------------------------------------------------


async def test_run_server_leaves_a_given_store_open_and_closes_its_own(tmp_path: Path) -> None:
    with PromptStore(tmp_path / "p.db") as store:
        async with run_server(store) as server:
            assert server.store is store
            await store.create(PromptDraft(name="kept", prompt="x"))
        assert (await store.get("kept", version=1)) is not None
    async with run_server() as server:
        own = server.store
    with pytest.raises(StoreClosedError):
        await own.get("x")


async def test_store_persists_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "nested.db"
    with PromptStore(path) as store:
        await store.create(PromptDraft(name="p", prompt="x", labels=["production"], tags=["t"]))
    with PromptStore(path) as store:
        stored = await store.get("p")
        assert stored is not None
        assert (stored.prompt.version, stored.prompt.labels, stored.prompt.tags) == (
            1, ("production", "latest"), ("t",)
        )


async def test_seed_dir_imports_the_examples() -> None:
    async with run_server(seed_dir=EXAMPLES) as server, aiohttp.ClientSession() as session:
        api = Api(session, server)
        assert server.seeded >= 5
        _, critic = await api.get("movie-critic")
        assert critic["version"] == 2 and "staging" in critic["labels"]
        assert parse_prompt(critic).compile(movie="Dune", criticlevel="expert") == (
            "As a expert movie critic, do you like Dune? Answer in one paragraph."
        )
        _, support = await api.get("support", "?label=staging")
        assert parse_prompt(support).type == "chat"
        assert {"type": "placeholder", "name": "history"} in support["prompt"]
        status, greet = await api.get("team/agent/greet")
        assert status == 200 and greet["name"] == "team/agent/greet"
        # Seeding again skips names the store already has.
        assert await server.store.import_dir(EXAMPLES) == []
        _, page = await api.call("GET", f"{PROMPTS}?name=movie-critic")
        assert page["data"][0]["versions"] == [1, 2]


async def test_bad_seed_files_import_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"name": "good", "prompt": "x"}))
    (tmp_path / "b.json").write_text(json.dumps([{"name": "ok", "prompt": "x"},
                                                 {"name": "bad", "prompt": "x", "labels": ["B"]}]))
    (tmp_path / "notes.txt").write_text("ignored")
    with PromptStore() as store:
        with pytest.raises(PromptValidationError, match=r"b\.json item 1: 'labels\[0\]'"):
            await store.import_dir(tmp_path)
        assert (await store.list_prompts()).total_items == 0
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(PromptValidationError, match=r"b\.json: not valid JSON"):
        async with run_server(seed_dir=tmp_path):
            pass


def test_server_thread() -> None:
    with ServerThread(seed_dir=EXAMPLES) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        url = f"{server.base_url}{item('team/agent/greet')}"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert json.load(response)["name"] == "team/agent/greet"
        assert server.counter.get("get_prompt", "team/agent/greet") == 1
        stored = server.call(server.store.create, PromptDraft(name="from-sync", prompt="x"))
        assert stored.prompt.version == 1
        assert "127.0.0.1" in repr(server)
        port = server.port
    assert repr(server) == "ServerThread(stopped)"
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.base_url
    # Restartable, and the port was released.
    with ServerThread(port=port) as again:
        assert again.port == port


def test_server_thread_with_keys_and_start_errors() -> None:
    thread = ServerThread(public_key="pk", secret_key="sk").start()
    try:
        request = urllib.request.Request(f"{thread.base_url}{PROMPTS}")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 401
        info.value.close()
        assert (thread.public_key, thread.secret_key) == ("pk", "sk")
        assert "sk" not in repr(thread.server)
        with pytest.raises(RuntimeError, match="already running"):
            thread.start()
        # The port is taken: start() raises what stopped the server.
        with pytest.raises(OSError, match="address already in use"):
            ServerThread(port=thread.port).start()
    finally:
        thread.stop()


def test_public_names() -> None:
    # Order is ruff's (RUF022); here: complete, and nothing listed that does not exist.
    public = {name for name in dir(server_module) if not name.startswith("_")}
    assert set(server_module.__all__) == public
    assert len(server_module.__all__) == len(public)
