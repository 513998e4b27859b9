"""The official Langfuse Python SDK, pointed at the local server, works as against Langfuse.

Synchronous on purpose: the SDK is a threaded, blocking client, so the server runs in a
``ServerThread``. Every Langfuse client gets its own public key because the SDK keeps one
process-wide resource manager per public key (a reused key would reuse an old base URL).
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from asyncpromptcache import ChatPrompt, TextPrompt, parse_prompt
from asyncpromptcache.server import ServerThread, basic_auth_header

langfuse = pytest.importorskip("langfuse")
langfuse_api = pytest.importorskip("langfuse.api")

SECRET = "sk-lf-local-test"


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with ServerThread(public_key=f"pk-lf-{uuid.uuid4()}", secret_key=SECRET) as running:
        yield running


@pytest.fixture
def sdk(server: ServerThread) -> Iterator[Any]:
    client = langfuse.Langfuse(
        public_key=server.public_key, secret_key=SECRET, base_url=server.base_url,
        tracing_enabled=False,  # prompts only: nothing to export, no OpenTelemetry provider
    )
    try:
        yield client
    finally:
        client.shutdown()  # joins the SDK's background threads


def wire(server: ServerThread, name: str, query: str = "") -> Any:
    """The prompt's JSON exactly as the server sends it."""
    request = urllib.request.Request(
        f"{server.base_url}/api/public/v2/prompts/{quote(name, safe='')}{query}",
        headers={"Authorization": basic_auth_header(server.public_key or "", SECRET)},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def test_text_prompts_by_name_label_and_version(server: ServerThread, sdk: Any) -> None:
    created = sdk.create_prompt(
        name="movie-critic", prompt="As a {{level}} critic, do you like {{movie}}?",
        labels=["production"], config={"model": "gpt-4o-mini"}, commit_message="v1",
    )
    assert (created.name, created.version, created.config) == (
        "movie-critic", 1, {"model": "gpt-4o-mini"}
    )
    sdk.create_prompt(name="movie-critic", prompt="Rate {{movie}} out of {{scale}}.",
                      labels=["staging"], tags=["demo"])

    default = sdk.get_prompt("movie-critic", cache_ttl_seconds=0)
    assert (default.version, default.prompt) == (
        1, "As a {{level}} critic, do you like {{movie}}?"
    )
    assert sdk.get_prompt("movie-critic", label="staging", cache_ttl_seconds=0).version == 2
    assert sdk.get_prompt("movie-critic", label="latest", cache_ttl_seconds=0).version == 2
    by_version = sdk.get_prompt("movie-critic", version=2, cache_ttl_seconds=0)
    assert by_version.prompt == "Rate {{movie}} out of {{scale}}."
    assert by_version.tags == ["demo"]
    assert by_version.labels == ["staging", "latest"]
    assert default.commit_message == "v1"

    ours = parse_prompt(wire(server, "movie-critic"))
    assert isinstance(ours, TextPrompt)
    for variables in ({"level": "expert", "movie": "Dune"}, {"movie": "Dune"},
                      {"level": None, "movie": 42}, {"level": "{{movie}}", "movie": "x"}, {}):
        assert default.compile(**variables) == ours.compile(**variables)
    assert ours.variables == default.variables


def test_chat_prompts_with_placeholders(server: ServerThread, sdk: Any) -> None:
    messages = [
        {"role": "system", "content": "You support {{user}} on {{product}}."},
        {"type": "placeholder", "name": "history"},
        {"role": "user", "content": "{{question}}"},
    ]
    created = sdk.create_prompt(name="support", type="chat", prompt=messages,
                                labels=["production", "staging"], config={"temperature": 0})
    assert created.version == 1
    fetched = sdk.get_prompt("support", type="chat", label="staging", cache_ttl_seconds=0)
    ours = parse_prompt(wire(server, "support", "?label=staging"))
    assert isinstance(ours, ChatPrompt)
    history = [{"role": "user", "content": "Hi {{user}}"},
               {"role": "assistant", "content": "Hello", "tool_calls": []}]
    kwargs: dict[str, Any] = {"user": "Ann", "product": "Acme", "question": "Why?",
                              "history": history}
    assert fetched.compile(**kwargs) == ours.compile(**kwargs)
    assert fetched.compile(user="Ann") == ours.compile(user="Ann")  # placeholder left in place
    assert sdk.get_prompt("support", type="chat", version=1, cache_ttl_seconds=0).config == {
        "temperature": 0
    }


def test_names_with_slashes_and_other_characters(server: ServerThread, sdk: Any) -> None:
    # ".." is not here: httpx resolves dot segments in the path, so the SDK cannot reach it.
    for name in ("team/agent/greet", "a b", "a?b", "a#b", "100%", "a%2Fb", "ünï/名前"):
        sdk.create_prompt(name=name, prompt=f"Hello {{{{who}}}} from {name}",
                          labels=["production"])
        sdk.create_prompt(name=name, prompt=f"v2 of {name}")
        for prompt in (sdk.get_prompt(name, cache_ttl_seconds=0),
                       sdk.get_prompt(name, label="production", cache_ttl_seconds=0),
                       sdk.get_prompt(name, version=1, cache_ttl_seconds=0)):
            assert (prompt.name, prompt.version) == (name, 1)
            assert prompt.compile(who="Ann") == f"Hello Ann from {name}"
        assert sdk.get_prompt(name, version=2, cache_ttl_seconds=0).prompt == f"v2 of {name}"
        assert server.counter.get("get_prompt", name) == 4
    # "team" and "team/agent" are other prompts, which do not exist.
    with pytest.raises(langfuse_api.NotFoundError):
        sdk.get_prompt("team/agent", cache_ttl_seconds=0, max_retries=0)


def test_update_labels_list_and_delete(server: ServerThread, sdk: Any) -> None:
    sdk.create_prompt(name="team/greet", prompt="one", labels=["production"])
    sdk.create_prompt(name="team/greet", prompt="two")
    updated = sdk.update_prompt(name="team/greet", version=2, new_labels=["production"])
    assert updated.labels == ["production", "latest"]
    assert sdk.get_prompt("team/greet", cache_ttl_seconds=0).prompt == "two"

    listing = sdk.api.prompts.list(name="team/greet")
    assert [(meta.name, meta.versions) for meta in listing.data] == [("team/greet", [1, 2])]
    assert listing.meta.total_items == 1

    sdk.api.prompts.delete(quote("team/greet", safe=""), version=2)
    assert sdk.get_prompt("team/greet", label="latest", cache_ttl_seconds=0).prompt == "one"


def test_wrong_keys_are_refused(server: ServerThread, sdk: Any) -> None:
    sdk.create_prompt(name="p", prompt="x", labels=["production"])
    intruder = langfuse.Langfuse(
        public_key=f"pk-lf-{uuid.uuid4()}", secret_key="sk-lf-wrong", base_url=server.base_url,
        tracing_enabled=False,
    )
    try:
        with pytest.raises(langfuse_api.UnauthorizedError):
            intruder.get_prompt("p", cache_ttl_seconds=0, max_retries=0)
    finally:
        intruder.shutdown()


def test_composed_prompts_arrive_resolved(server: ServerThread, sdk: Any) -> None:
    sdk.create_prompt(name="tone", prompt="Be {{mood}}.", labels=["production"])
    sdk.create_prompt(name="persona", labels=["production"],
                      prompt="You are {{name}}. @@@langfusePrompt:name=tone|label=production@@@")
    sdk.create_prompt(name="agent", type="chat", labels=["production"], prompt=[
        {"role": "system", "content": "@@@langfusePrompt:name=persona|version=1@@@ Help."},
        {"role": "user", "content": "{{question}}"},
    ])
    agent = sdk.get_prompt("agent", type="chat", cache_ttl_seconds=0)
    assert agent.compile(name="Ann", mood="calm", question="Why?") == [
        {"role": "system", "content": "You are Ann. Be calm. Help."},
        {"role": "user", "content": "Why?"},
    ]
    ours = parse_prompt(wire(server, "agent"))
    assert ours.compile(name="Ann", mood="calm", question="Why?") == agent.compile(
        name="Ann", mood="calm", question="Why?"
    )
    # A new production version of a part: the next fetch of the whole has it.
    sdk.create_prompt(name="tone", prompt="Be {{mood}}, always.", labels=["production"])
    persona = sdk.get_prompt("persona", cache_ttl_seconds=0)
    assert persona.compile(name="Bo", mood="brief") == "You are Bo. Be brief, always."
    with pytest.raises(langfuse_api.Error, match=r"status_code: 400.*dependency not found: nope"):
        sdk.create_prompt(name="broken", prompt="@@@langfusePrompt:name=nope|label=production@@@")
