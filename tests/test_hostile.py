"""Hostile names, labels and versions, through AsyncPromptClient AND the real local server.

Every prompt is created over HTTP on ``run_server`` and read back through the client: each
name, label and version reaches exactly its own prompt (the server's request counter shows
which name each request was routed to), or the caller gets a clear typed error, never
another prompt or another route.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    FetchError,
    InvalidArgumentError,
    PromptKey,
    PromptNotFoundError,
    RetryPolicy,
    UnexpectedStatusError,
)
from asyncpromptcache.server import MAX_NAME_LENGTH, RunningServer, run_server
from asyncpromptcache.testing import StaticSource

pytestmark = pytest.mark.anyio

PROMPTS = "/api/public/v2/prompts"

NAMES = [
    "greet", "Greet", "greeting",  # case and prefixes: distinct prompts
    "a", "a/b", "a%2Fb", "a%252Fb",
    ".", "..", "...", "../greet", "greet/..", "a/../greet", "./greet",
    "%", "%25", "%2F", "%2E%2E", "100%", "%zz",
    "?", "a?b", "greet?version=2", "greet?label=staging", "a?b=c&d=e",
    "#", "a#b", "greet#staging",
    "a b", "a+b", "a&b", "a=b", "a;b", "a\\b", "'\"`",
    "é", "e\u0301",  # NFC and NFD of the same letter: two names, not one
    "ünïcødé/名前", "emoji 🎉", "\u200b", "\u202e", "\ufeffgreet",
    "api/public/health", "versions", "greet/versions/1",
    "x" * MAX_NAME_LENGTH,
]
# Names the server refuses to store (control characters, too long): asking for them gives a
# typed error, never a prompt.
REFUSED_NAMES = ["a\x00b", "a\nb", "a\rb", "\t", "\x7f", "\x1b[31mred", "x" * (MAX_NAME_LENGTH + 1),
                 "x" * 10_000,
                 # Langfuse's name rules: slashes at the ends or doubled, edge whitespace.
                 "/", "//", "/leading", "trailing/", " ", " greet", "greet "]
# Label values that no stored label can have: each is one label, so the answer is a 404.
HOSTILE_LABELS = [
    "production&label=staging", "production&version=1", "staging#x", "x#", "?label=staging",
    "production?", "a/b", "../staging", "a=b", "%2F", "%", "100%", " production", "production ",
    "Production", "prod uction", "ü", "\n", "production\x00", "x" * 5000,
]
# Odd but valid labels (Langfuse's rule: [a-z0-9_.-]+): stored, and found.
ODD_LABELS = [".", "..", "-", "_", "a.b-c_d", "0"]


def text_of(name: str, version: int) -> str:
    return f"v{version} of {json.dumps(name)}"


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with run_server() as running:
        yield running


async def create(server: RunningServer, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.base_url + PROMPTS, json=body) as response,
    ):
        return response.status, await response.json()


def client_for(server: RunningServer) -> AsyncPromptClient:
    return AsyncPromptClient(base_url=server.base_url, retry=RetryPolicy(max_retries=0),
                             fetch_timeout_seconds=5, env={})


def assert_clear(error: FetchError, name: str) -> None:
    """A clear error: names the prompt, bounded in size, no raw control character."""
    message = str(error)
    assert error.name == name
    assert len(message) < 1000, message[:200]
    assert all(unicodedata.category(ch) != "Cc" for ch in message), repr(message)


async def test_every_name_reaches_exactly_its_own_prompt(server: RunningServer) -> None:
    for name in NAMES:
        for version, labels in ((1, ["staging"]), (2, ["production"])):
            status, data = await create(server, {"name": name, "prompt": text_of(name, version),
                                                 "labels": labels})
            assert (status, data["name"], data["version"]) == (201, name, version), data
    server.counter.reset()
    asks: list[tuple[dict[str, Any], int]] = [
        ({}, 2), ({"label": "staging"}, 1), ({"version": 1}, 1), ({"label": "latest"}, 2),
    ]
    async with client_for(server) as client:
        for name in NAMES:
            for kwargs, version in asks:
                prompt = await client.get_prompt(name, **kwargs)
                assert (prompt.name, prompt.version, prompt.prompt) == (
                    name, version, text_of(name, version)), (name, kwargs)
            # Each request was routed to this name's item route, and to nothing else.
            assert server.counter.get("get_prompt", name) == len(asks), name
        assert server.counter.total == len(asks) * len(NAMES)
        assert server.counter.get("get_prompt") == server.counter.total
        # Cached under structured keys: hits, no request, and invalidation is per name.
        for name in NAMES:
            assert (await client.get_prompt(name)).prompt == text_of(name, 2)
        assert server.counter.total == len(asks) * len(NAMES)
        held = len(client.cache)
        assert held == len(asks) * len(NAMES)
        assert client.invalidate("a") == len(asks)  # not "a/b", "a?b", "a b"...
        assert client.invalidate("greet") == len(asks)  # not "Greet", "greet?..."
        assert len(client.cache) == held - 2 * len(asks)
        assert {k.key.name for k in client.stats().keys} == set(NAMES) - {"a", "greet"}


async def test_names_the_server_refuses_get_a_typed_error(server: RunningServer) -> None:
    for name in REFUSED_NAMES:
        status, data = await create(server, {"name": name, "prompt": "x",
                                             "labels": ["production"]})
        assert (status, data["error"]) == (400, "InvalidRequestError"), name
    assert (await create(server, {"name": "a", "prompt": "decoy",
                                  "labels": ["production"]}))[0] == 201
    async with client_for(server) as client:
        for name in REFUSED_NAMES:
            with pytest.raises(FetchError) as info:
                await client.get_prompt(name)
            # 404 when the name fits in a request line, 400 from the HTTP parser when not.
            assert isinstance(info.value, PromptNotFoundError | UnexpectedStatusError), name
            assert_clear(info.value, name)
            assert (await client.get_prompt(name, fallback="fb")).is_fallback
        assert len(client.cache) == 0


async def test_label_values_cannot_inject_query_parameters(server: RunningServer) -> None:
    versions = {1: ["production", *ODD_LABELS[:3]], 2: ["staging", *ODD_LABELS[3:]]}
    for version, labels in versions.items():
        status, _ = await create(server, {"name": "target", "prompt": text_of("target", version),
                                          "labels": labels})
        assert status == 201
    server.counter.reset()
    async with client_for(server) as client:
        for label in HOSTILE_LABELS:
            with pytest.raises(FetchError) as info:
                await client.get_prompt("target", label=label)
            # One label that no version has: a 404, never the production or staging prompt,
            # never the server's 400 for a repeated or extra parameter.
            assert type(info.value) is PromptNotFoundError, (label, info.value)
            assert info.value.key == PromptKey("target", label, None)
            assert_clear(info.value, "target")
        assert server.counter.get("get_prompt", "target") == len(HOSTILE_LABELS)
        for i, label in enumerate(ODD_LABELS):
            prompt = await client.get_prompt("target", label=label)
            assert prompt.version == (1 if i < 3 else 2) and label in prompt.labels


async def test_version_values(server: RunningServer) -> None:
    for name in ("target", "target?version=2"):
        for version in (1, 2):
            status, _ = await create(server, {"name": name, "prompt": text_of(name, version)})
            assert status == 201
    server.counter.reset()
    async with client_for(server) as client:
        for name in ("target", "target?version=2"):
            assert (await client.get_prompt(name, version=1)).prompt == text_of(name, 1)
        # Beyond what the server stores: a typed error, no retry.
        with pytest.raises(PromptNotFoundError):
            await client.get_prompt("target", version=2**31 - 1)
        with pytest.raises(UnexpectedStatusError) as info:
            await client.get_prompt("target", version=2**31)
        assert info.value.status == 400
        with pytest.raises(UnexpectedStatusError):
            await client.get_prompt("target", version=10**40)
        sent = server.counter.total
        assert sent == 5
        # Not versions at all: refused before any request.
        for bad in (0, -1, True, False, "1", 1.0, 1.5, [1]):
            with pytest.raises(InvalidArgumentError):
                await client.get_prompt("target", version=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            await client.get_prompt("target", version=1, label="production")
        for bad_label in ("", 1, b"production"):
            with pytest.raises(InvalidArgumentError):
                await client.get_prompt("target", label=bad_label)  # type: ignore[arg-type]
        assert server.counter.total == sent


async def test_names_that_are_not_text(server: RunningServer) -> None:
    """Names that are not sendable strings: refused, or a typed FetchError; no request."""
    async with client_for(server) as client:
        for bad in ("", None, 5, b"greet", ["greet"]):
            with pytest.raises(InvalidArgumentError):
                await client.get_prompt(bad)  # type: ignore[arg-type]
        # A lone surrogate cannot be encoded in a URL: refused up front, typed, no request.
        with pytest.raises(InvalidArgumentError, match=r"valid Unicode text, got '\\ud800'"):
            await client.get_prompt("\ud800")
        assert client.cache.in_flight == 0
    assert server.counter.total == 0


@pytest.mark.anyio
async def test_unencodable_names_and_labels_fail_before_any_fetch() -> None:
    # A lone surrogate has no UTF-8 form: a typed argument error, not a wrapped encode error.
    source = StaticSource()
    async with AsyncPromptClient(source=source, env={}) as client:
        with pytest.raises(InvalidArgumentError, match="name"):
            await client.get_prompt("bad\ud800name")
        with pytest.raises(InvalidArgumentError, match="label"):
            await client.get_prompt("greet", label="bad\udfff")
    assert source.total_fetches == 0
