"""Prompt names are data: every name reaches exactly its own prompt on the local server."""

from __future__ import annotations

import http.client
import json
import re
import string
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
import yarl
from hypothesis import HealthCheck, given, settings, strategies as st

from asyncpromptcache.server import MAX_NAME_LENGTH, RunningServer, ServerThread, run_server

PROMPTS = "/api/public/v2/prompts"

HOSTILE_NAMES = [
    "team/agent/greet",
    "team/agent",
    "team",
    "..",
    ".",
    "../x",
    "x/..",
    "../../api/public/health",
    "a?b",
    "a?label=staging",
    "a#b",
    "a%2Fb",  # a literal percent sign, not a slash
    "a/b",
    "a%b",
    "%",
    "100%",
    "%00",
    "a b",
    "a+b",
    "a&b=c",
    "a;b",
    "a\\b",
    "a/versions/1",  # must not become PATCH .../a/versions/1
    "a",
    "versions",
    "ünïcödé/名前",
    "emoji 🎉",
    "\u200b",  # zero-width space: a format character, not a control one
    "x" * MAX_NAME_LENGTH,
]
# Names Langfuse's create schema refuses, with the rule each one breaks: refused here too.
LANGFUSE_REFUSED_NAMES = {
    " leading and trailing ": "whitespace",  # Langfuse would store it trimmed
    "/leading": "cannot start with a slash",
    "trailing/": "cannot end with a slash",
    "a//b": "consecutive slashes",
    "/": "cannot start with a slash",
    "a|b": "'|'",
    "<b>bold</b>": "HTML",
    "a<>b": "HTML",
    "new": "cannot be 'new'",
    "metrics": "cannot be 'metrics'",
    "prompt-detail": "cannot be 'prompt-detail'",
}


def item(name: str) -> str:
    return f"{PROMPTS}/{quote(name, safe='')}"


def text_of(name: str) -> str:
    return f"the prompt named {json.dumps(name)}"


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with run_server() as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def call(
    session: aiohttp.ClientSession, server: RunningServer, method: str, path: str,
    body: Any = None,
) -> tuple[int, Any]:
    # encoded=True: the path goes out byte for byte; yarl would otherwise resolve "..".
    url = yarl.URL(server.base_url + path, encoded=True)
    async with session.request(method, url, json=body) as response:
        raw = await response.read()
        return response.status, (json.loads(raw) if raw else None)


async def names_in_listing(session: aiohttp.ClientSession, server: RunningServer) -> list[str]:
    status, page = await call(session, server, "GET", f"{PROMPTS}?limit=100")
    assert status == 200
    return sorted(entry["name"] for entry in page["data"])


@pytest.mark.anyio
async def test_hostile_names_reach_exactly_their_own_prompt(
    server: RunningServer, session: aiohttp.ClientSession
) -> None:
    for name in HOSTILE_NAMES:
        status, data = await call(session, server, "POST", PROMPTS, {
            "name": name, "prompt": text_of(name), "labels": ["production"],
        })
        assert status == 201, (name, data)
        assert (data["name"], data["version"]) == (name, 1)
    assert await names_in_listing(session, server) == sorted(HOSTILE_NAMES)

    for name in HOSTILE_NAMES:
        for query in ("", "?version=1", "?label=production", "?label=latest"):
            status, data = await call(session, server, "GET", item(name) + query)
            assert status == 200, (name, query, data)
            assert (data["name"], data["prompt"]) == (name, text_of(name))
        _, page = await call(session, server, "GET", f"{PROMPTS}?name={quote(name, safe='')}")
        assert [entry["name"] for entry in page["data"]] == [name]
    assert server.counter.get("get_prompt", "a/versions/1") == 4

    # Labels set through a hostile name land on that prompt only.
    for name in HOSTILE_NAMES:
        status, data = await call(session, server, "PATCH", item(name) + "/versions/1",
                                  {"newLabels": ["staging"]})
        assert status == 200, (name, data)
        assert (data["name"], data["labels"]) == (name, ["staging", "production", "latest"])

    # Deleting each name removes that name and nothing else.
    remaining = sorted(HOSTILE_NAMES)
    for name in HOSTILE_NAMES:
        assert (await call(session, server, "DELETE", item(name)))[0] == 204, name
        remaining.remove(name)
        assert await names_in_listing(session, server) == remaining
        assert (await call(session, server, "GET", item(name)))[0] == 404


@pytest.mark.anyio
async def test_dot_segments_and_alternative_encodings(
    server: RunningServer, session: aiohttp.ClientSession
) -> None:
    for name in ("..", ".", "a/b", "ü"):
        await call(session, server, "POST", PROMPTS, {"name": name, "prompt": text_of(name),
                                                      "labels": ["production"]})
    # Any valid percent-encoding of a name is that name: upper or lower case hex, dots encoded.
    for path, name in (("%2E%2E", ".."), ("%2e", "."), ("a%2fb", "a/b"), ("%C3%BC", "ü"),
                       ("%c3%bc", "ü")):
        status, data = await call(session, server, "GET", f"{PROMPTS}/{path}")
        assert (status, data["name"]) == (200, name)
    # A raw slash is a path separator, never part of a name.
    status, data = await call(session, server, "GET", f"{PROMPTS}/a/b")
    assert (status, data["error"]) == (404, "NotFoundError")


@pytest.mark.anyio
async def test_names_that_cannot_be_prompts(
    server: RunningServer, session: aiohttp.ClientSession
) -> None:
    await call(session, server, "POST", PROMPTS, {"name": "a", "prompt": "x",
                                                  "labels": ["production"]})
    # Percent-escapes that are not UTF-8 are refused, never decoded to a lookalike name.
    for segment in ("%FF", "a%C3", "%ED%A0%80"):
        status, data = await call(session, server, "GET", f"{PROMPTS}/{segment}")
        assert (status, data["error"]) == (400, "InvalidRequestError"), segment
    # Control characters cannot be stored, so asking for them finds nothing.
    status, data = await call(session, server, "GET", f"{PROMPTS}/a%00")
    assert (status, data["error"]) == (404, "LangfuseNotFoundError")
    status, data = await call(session, server, "GET", f"{PROMPTS}//versions/1")
    assert status == 405
    status, data = await call(session, server, "PATCH", f"{PROMPTS}//versions/1",
                              {"newLabels": []})
    assert (status, data["error"]) == (400, "InvalidRequestError")
    too_long = "x" * (MAX_NAME_LENGTH + 1)
    status, data = await call(session, server, "POST", PROMPTS, {"name": too_long, "prompt": "x"})
    assert (status, data["error"]) == (400, "InvalidRequestError")
    assert "1000" in data["message"]
    assert await names_in_listing(session, server) == ["a"]


# -- property: any name round-trips --------------------------------------------------------


@pytest.fixture(scope="module")
def thread() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


def _request(base_url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    # http.client sends the path exactly as given.
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=5)
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, body=payload,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else None)
    finally:
        connection.close()


def langfuse_refuses(name: str) -> bool:
    """Langfuse's create schema for names (PromptNameSchema), written out independently."""
    return (
        re.search(r"<[^<>]*>", name) is not None or "|" in name or name.startswith("/")
        or name.endswith("/") or "//" in name or name.strip() != name
        or name in ("new", "metrics", "prompt-detail")
    )


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from("/.%?#& +"),
    min_size=1, max_size=40,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, extra=st.sampled_from(["", "/x", "x", "/..", string.punctuation]))
def test_any_name_round_trips(thread: ServerThread, name: str, extra: str) -> None:
    for candidate in (name, name + extra):
        status, created = _request(thread.base_url, "POST", PROMPTS,
                                   {"name": candidate, "prompt": text_of(candidate)})
        if langfuse_refuses(candidate):
            assert (status, created["error"]) == (400, "InvalidRequestError"), created
            continue
        assert status == 201, created
        status, data = _request(thread.base_url, "GET",
                                f"{item(candidate)}?version={created['version']}")
        assert status == 200, data
        assert (data["name"], data["prompt"]) == (candidate, text_of(candidate))


@pytest.mark.anyio
async def test_names_langfuse_refuses_are_refused(
    server: RunningServer, session: aiohttp.ClientSession
) -> None:
    for name, reason in LANGFUSE_REFUSED_NAMES.items():
        status, data = await call(session, server, "POST", PROMPTS, {"name": name, "prompt": "x"})
        assert status == 400, (name, data)
        assert data["error"] == "InvalidRequestError"
        assert reason in data["message"], (name, data)
    # Near misses are fine: a reserved name inside a folder, a slash inside a name.
    for name in ("team/new", "new/x", "metrics2", "a/b/c", "a < b > c"[:5]):
        status, data = await call(session, server, "POST", PROMPTS, {"name": name, "prompt": "x"})
        assert status == 201, (name, data)
    assert server.counter.get("create") == len(LANGFUSE_REFUSED_NAMES) + 5


@pytest.mark.anyio
async def test_labels_and_commit_messages_have_langfuses_limits(
    server: RunningServer, session: aiohttp.ClientSession
) -> None:
    ok = {"name": "p", "prompt": "x", "labels": ["a" * 36], "commitMessage": "m" * 500}
    assert (await call(session, server, "POST", PROMPTS, ok))[0] == 201
    for bad in ({"labels": ["a" * 37]}, {"commitMessage": "m" * 501}, {"labels": ["Prod"]}):
        status, data = await call(session, server, "POST", PROMPTS, {**ok, **bad})
        assert status == 400, (bad, data)
    status, data = await call(session, server, "PATCH", item("p") + "/versions/1",
                              {"newLabels": ["b" * 37]})
    assert status == 400 and "36" in data["message"]
