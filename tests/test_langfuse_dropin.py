"""``asyncpromptcache.langfuse`` is a drop-in for the Langfuse SDK's prompt API, shown by
difference: one program written against the official SDK (tests/langfuse_program.py) runs
once with ``from langfuse import Langfuse`` and once with ``from asyncpromptcache.langfuse
import Langfuse``, each in a subprocess against a fresh local server seeded the same way, and
every observation must be the same. ``AsyncLangfuse`` then makes the same calls awaited, in
this test's event loop, and must see the same again.

The official SDK runs with tracing disabled (argument and environment) and
``OTEL_SDK_DISABLED``: it sends nothing but its prompt and project requests, to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncpromptcache import AuthenticationError, PromptCacheError, PromptNotFoundError
from asyncpromptcache.langfuse import AsyncLangfuse, ChatPromptClient, Langfuse, TextPromptClient
from asyncpromptcache.server import ServerThread
from devkit.redisserver import RedisServer

from .langfuse_program import HISTORY, Observations, OutOfBand, describe, seed, shape

langfuse = pytest.importorskip("langfuse")

PROGRAM = Path(__file__).with_name("langfuse_program.py")
SECRET = "sk-lf-dropin"


@pytest.fixture
def server() -> Iterator[ServerThread]:
    # A key of its own: the official SDK keeps one resource manager per public key.
    with ServerThread(public_key=f"pk-lf-{uuid.uuid4()}", secret_key=SECRET) as running:
        seed(OutOfBand(running.base_url, running.public_key or "", SECRET))
        yield running


def _run_program(which: str) -> list[Any]:
    """The program with one of the two imports, against its own fresh, seeded server."""
    with ServerThread(public_key=f"pk-lf-{uuid.uuid4()}", secret_key=SECRET) as running:
        seed(OutOfBand(running.base_url, running.public_key or "", SECRET))
        env = {
            **os.environ,
            "PROGRAM_BASE_URL": running.base_url, "PROGRAM_PUBLIC_KEY": running.public_key or "",
            "PROGRAM_SECRET_KEY": SECRET,
            # Nothing leaves loopback: no tracing, no OpenTelemetry export, and any default
            # URL the SDK might fall back to is this server too.
            "LANGFUSE_TRACING_ENABLED": "false", "OTEL_SDK_DISABLED": "true",
            "LANGFUSE_BASE_URL": running.base_url, "NO_PROXY": "*",
        }
        done = subprocess.run(
            [sys.executable, str(PROGRAM), which], env=env, capture_output=True, text=True,
            timeout=300, check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        # Every connection the program made, either SDK's, went to this server.
        assert result["hosts"] == ["127.0.0.1"], result["hosts"]
        observed: list[Any] = result["observed"]
        return observed


@pytest.fixture(scope="module")
def official() -> list[Any]:
    """What the program observes with the official SDK (run once for the module)."""
    return _run_program("official")


def test_one_program_observes_the_same_with_either_import(official: list[Any]) -> None:
    ours = _run_program("ours")
    assert [what for what, _ in ours] == [what for what, _ in official]
    for (what, expected), (_, got) in zip(official, ours, strict=True):
        assert got == expected, what
    # The program saw what it was written to see (so the comparison compares something).
    seen = dict(official)
    assert seen["auth_check"] is True
    assert seen["support"]["class"] == "ChatPromptClient"
    assert seen["chat langchain"][1] == {
        "class": "MessagesPlaceholder",
        "repr": "MessagesPlaceholder(variable_name='history')",
    }
    assert seen["missing"] == {"raised": True, "ValueError": False}
    assert seen["version and label"] == {"raised": True, "ValueError": True}
    assert seen["text fallback"]["is_fallback"] is True
    assert seen["cached after a change elsewhere"]["version"] == 1
    assert seen["after clear_prompt_cache"]["prompt"] == "v5 from elsewhere"


def test_the_official_sdk_auth_check_passes_against_the_local_server(
    server: ServerThread,
) -> None:
    official = langfuse.Langfuse(
        public_key=server.public_key, secret_key=SECRET, base_url=server.base_url,
        tracing_enabled=False,
    )
    try:
        assert official.auth_check() is True
    finally:
        official.shutdown()
    # Another public key: the SDK would reuse the first client's keys for the same one.
    wrong = langfuse.Langfuse(
        public_key=f"pk-lf-{uuid.uuid4()}", secret_key="wrong", base_url=server.base_url,
        tracing_enabled=False,
    )
    try:
        with pytest.raises(Exception, match="401"):
            wrong.auth_check()
    finally:
        wrong.shutdown()


def test_our_auth_check_and_a_client_without_keys(server: ServerThread) -> None:
    with Langfuse(public_key=server.public_key, secret_key=SECRET,
                  base_url=server.base_url) as ours:
        assert ours.auth_check() is True
        assert SECRET not in repr(ours)
        # A callable fallback, beyond Langfuse's: its failure is one of our errors.
        assert ours.get_prompt("missing", fallback=lambda: "Hi", max_retries=0).prompt == "Hi"

        def broken() -> str:
            raise RuntimeError("no fallback today")

        with pytest.raises(PromptCacheError, match="fallback raised"):
            ours.get_prompt("missing", fallback=broken, max_retries=0)
    with Langfuse(public_key=server.public_key, secret_key="wrong",
                  base_url=server.base_url) as wrong, pytest.raises(AuthenticationError):
        wrong.auth_check()
    # As Langfuse's: without keys the client is disabled, auth_check() is False.
    disabled = Langfuse(base_url=server.base_url, env={})
    assert disabled.auth_check() is False
    with pytest.raises(PromptCacheError, match="disabled"):
        disabled.get_prompt("greeting")


def test_the_environment_and_langfuse_precedence_of_base_url_and_host(
    server: ServerThread,
) -> None:
    env = {"LANGFUSE_PUBLIC_KEY": server.public_key or "", "LANGFUSE_SECRET_KEY": SECRET,
           "LANGFUSE_HOST": "http://127.0.0.1:9", "LANGFUSE_PROMPT_CACHE_DEFAULT_TTL_SECONDS": "0"}
    # host= beats LANGFUSE_HOST (Langfuse: base_url, LANGFUSE_BASE_URL, host, LANGFUSE_HOST).
    with Langfuse(host=server.base_url, env=env) as client:
        assert client.get_prompt("greeting").version == 1
        client.get_prompt("greeting")
        # The SDK's TTL variable was read: a TTL of 0 fetches on every call.
        assert client.prompt_client.stats().fetches == 2
    with Langfuse(env={**env, "LANGFUSE_BASE_URL": server.base_url}, host="http://127.0.0.1:9",
                  timeout=1) as client:
        assert client.get_prompt("greeting", max_retries=0).version == 1


def test_prompt_objects_are_copies_over_the_cached_prompt(server: ServerThread) -> None:
    with Langfuse(public_key=server.public_key, secret_key=SECRET,
                  base_url=server.base_url) as client:
        support = client.get_prompt("support", type="chat")
        assert isinstance(support, ChatPromptClient)
        support.prompt[0]["content"] = "changed"
        support.labels.append("changed")
        support.config["temperature"] = 1
        again = client.get_prompt("support", type="chat")
        assert again.prompt[0]["content"] == "You support {{user}} on {{product}}."
        assert again.labels == ["production", "latest"]
        assert again.config == {"temperature": 0}
        assert again.model is support.model  # one cached prompt, no fetch
        assert client.prompt_client.stats().fetches == 1
        text = client.get_prompt("greeting")
        assert isinstance(text, TextPromptClient)
        with pytest.raises(TypeError):
            hash(text)  # as Langfuse's: equal by value, so unhashable


async def _program_awaited(base_url: str, public_key: str) -> list[Any]:
    """The program's calls, awaited on ``AsyncLangfuse`` in the running event loop."""
    obs = Observations()
    other = OutOfBand(base_url, public_key, SECRET)
    langfuse_ = AsyncLangfuse(public_key=public_key, secret_key=SECRET, base_url=base_url,
                              timeout=5, tracing_enabled=False)
    async with langfuse_:
        obs.add("auth_check", await langfuse_.auth_check())
        greeting = await langfuse_.get_prompt("greeting")
        obs.prompt("greeting", greeting)
        obs.add("compile", greeting.compile(name="Ann", place="Paris"))
        obs.add("langchain", shape(greeting.get_langchain_prompt()))
        first = await langfuse_.get_prompt("greeting", version=1)
        staging = await langfuse_.get_prompt("greeting", label="staging")
        obs.prompt("staging", staging)
        obs.add("equality", [greeting == first, greeting == staging, greeting != staging,
                             greeting == await langfuse_.get_prompt("greeting"),
                             greeting == "greeting"])
        support = await langfuse_.get_prompt("support", type="chat")
        obs.prompt("support", support)
        obs.add("chat compile", shape(support.compile(user="Ann", product="Acme",
                                                      question="Why?", history=HISTORY)))
        obs.add("chat langchain", shape(support.get_langchain_prompt()))
        obs.prompt("text asked as chat", await langfuse_.get_prompt("greeting", type="chat"))
        for what, call in (
            ("missing", langfuse_.get_prompt("missing", max_retries=0)),
            ("version and label", langfuse_.get_prompt("greeting", version=1, label="x")),
        ):
            try:
                await call
            except Exception as exc:
                obs.add(what, {"raised": True, "ValueError": isinstance(exc, ValueError)})
        obs.prompt("chat fallback", await langfuse_.get_prompt(
            "missing", type="chat", fallback=[{"role": "system", "content": "Be {{tone}}"}],
            max_retries=0))
        obs.prompt("created", await langfuse_.create_prompt(
            name="greeting", prompt="Hey {{name}}, v3", labels=["production"], tags=["demo"],
            config={"temperature": 0.2}, commit_message="third"))
        obs.prompt("production after create", await langfuse_.get_prompt("greeting"))
        updated = await langfuse_.update_prompt(name="greeting", version=1,
                                                new_labels=["production"])
        obs.add("updated", [updated.name, updated.version, updated.labels, updated.prompt,
                            updated.config, updated.tags, updated.commit_message])
        obs.prompt("production after update", await langfuse_.get_prompt("greeting"))
        other.create(name="greeting", type="text", prompt="v4 from elsewhere",
                     labels=["production"])
        obs.prompt("cached after a change elsewhere", await langfuse_.get_prompt("greeting"))
        other.create(name="greeting", type="text", prompt="v5 from elsewhere",
                     labels=["production"])
        langfuse_.clear_prompt_cache()
        obs.prompt("after clear_prompt_cache", await langfuse_.get_prompt("greeting"))
        await langfuse_.flush()
        obs.add("flush", None)  # what Langfuse's flush() returns, as the program records it
    await langfuse_.shutdown()  # again (async with closed it): idempotent
    obs.add("shutdown", None)
    return obs.seen


@pytest.mark.anyio
async def test_async_langfuse_serves_the_same_calls_awaited(
    server: ServerThread, official: list[Any]
) -> None:
    ours = dict(await _program_awaited(server.base_url, server.public_key or ""))
    expected = dict(official)
    assert len(ours) == 21
    for what, got in ours.items():
        assert got == expected[what], what


@pytest.mark.anyio
async def test_async_langfuse_opens_on_first_use_and_raises_when_closed(
    server: ServerThread,
) -> None:
    client = AsyncLangfuse(public_key=server.public_key, secret_key=SECRET,
                           base_url=server.base_url)
    prompt = await client.get_prompt("greeting")  # opened here, on this loop
    assert describe(prompt)["labels"] == ["production"]
    with pytest.raises(PromptNotFoundError):
        await client.get_prompt("missing", max_retries=0)
    await client.shutdown()
    with pytest.raises(PromptCacheError):
        await client.get_prompt("greeting")


def test_two_langfuse_clients_share_one_cache_through_redis(server: ServerThread) -> None:
    """``shared=``: what one process fetched or wrote, the other has without asking."""
    with RedisServer() as redis:
        options: dict[str, Any] = dict(
            public_key=server.public_key, secret_key=SECRET, base_url=server.base_url,
            shared=redis.url,
        )
        with Langfuse(**options) as one, Langfuse(**options) as two:
            assert one.get_prompt("greeting").version == 1
            fetched = server.counter.get("get_prompt")
            assert two.get_prompt("greeting").version == 1
            assert server.counter.get("get_prompt") == fetched  # from Redis
            one.create_prompt(name="greeting", prompt="v3", labels=["production"])
            one.flush()  # the change has reached Redis and the other clients' channel
            deadline = time.monotonic() + 30  # a safety bound only
            while two.get_prompt("greeting").version != 3:
                assert time.monotonic() < deadline, "the change never reached the other client"
                time.sleep(0.01)
            assert two.get_prompt("greeting").prompt == "v3"
            assert server.counter.get("get_prompt") == fetched
