"""create_prompt / update_prompt over real HTTP: against the local server, against failing
servers (which failures are repeated), and racing reads."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import assert_type

import anyio
import anyio.lowlevel
import attrs
import pytest
from aiohttp import web

from asyncpromptcache import (
    AsyncPromptClient,
    AuthenticationError,
    ChatPrompt,
    FunctionSource,
    InvalidArgumentError,
    PromptClient,
    PromptKey,
    PromptNotFoundError,
    ServerError,
    TextPrompt,
    TransportError,
    UnexpectedStatusError,
    WritesNotSupportedError,
)
from asyncpromptcache._prompts.langfuse_source import LangfuseSource
from asyncpromptcache.server import RunningServer, run_server
from asyncpromptcache.testing import FakeClock, StaticSource
from tests.composeserver import compose_server
from tests.webapp import serve_app

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with run_server(public_key="pk-lf-1", secret_key="sk-lf-1") as running:
        yield running


@asynccontextmanager
async def open_client(base_url: str, **options: object) -> AsyncIterator[AsyncPromptClient]:
    async with AsyncPromptClient(
        base_url=base_url, public_key="pk-lf-1", secret_key="sk-lf-1",
        cache_ttl_seconds=3600, clock=FakeClock(), env={}, **options,  # type: ignore[arg-type]
    ) as client:
        yield client


def sent(client: AsyncPromptClient) -> int:
    source = client.source
    assert isinstance(source, LangfuseSource)
    return source.requests_sent


async def test_create_prompt_of_greet_leaves_a_cached_greeting_untouched(
    server: RunningServer,
) -> None:
    async with open_client(server.base_url) as client:
        await client.create_prompt(name="greeting", prompt="Hello", labels=["production"])
        await client.create_prompt(name="greet", prompt="Hi v1", labels=["production"])
        client.clear()
        greeting = await client.get_prompt("greeting")
        await client.get_prompt("greet")
        entry = dict(client.cache.snapshot())[("greeting", "production", None)]
        created = await client.create_prompt(name="greet", prompt="Hi v2", labels=["production"])
        assert_type(created, TextPrompt)
        assert isinstance(created, TextPrompt)
        assert (created.version, created.labels) == (2, ("production", "latest"))
        assert dict(client.cache.snapshot())[("greeting", "production", None)] is entry
        before = sent(client)
        assert await client.get_prompt("greeting") is greeting
        # The new version serves its keys without a fetch.
        assert await client.get_prompt("greet") is created
        assert await client.get_prompt("greet", label="latest") is created
        assert await client.get_prompt("greet", version=2) is created
        assert sent(client) == before


async def test_update_prompt_moves_a_label_and_touches_nothing_else(
    server: RunningServer,
) -> None:
    async with open_client(server.base_url) as client:
        await client.create_prompt(name="p", prompt="one", labels=["staging"])
        await client.create_prompt(name="p", prompt="two", labels=["production"])
        await client.create_prompt(name="q", prompt="other", labels=["production"])
        client.clear()
        for label in ("production", "staging", "latest"):
            await client.get_prompt("p", label=label)
        await client.get_prompt("p", version=2)
        await client.get_prompt("q")
        held = dict(client.cache.snapshot())
        updated = await client.update_prompt(name="p", version=1, new_labels=["production"])
        assert (updated.version, set(updated.labels)) == (1, {"production", "staging"})
        after = dict(client.cache.snapshot())
        # Exactly the keys the move changed got the new state; the others are the same entries,
        # but for version 2's labels: production has left it, as Langfuse now answers it.
        assert after[("q", "production", None)] is held[("q", "production", None)]
        for key in (("p", None, 2), ("p", "latest", None)):
            assert after[key].prompt.labels == ("latest",)
            assert after[key].prompt == attrs.evolve(held[key].prompt, labels=["latest"])
        before = sent(client)
        assert (await client.get_prompt("p")).version == 1
        assert (await client.get_prompt("p", label="staging")).version == 1
        assert (await client.get_prompt("p", label="latest")).version == 2
        assert sent(client) == before
        # And the server agrees.
        assert (await client.get_prompt("p", cache_ttl_seconds=0)).version == 1


async def test_a_write_gives_other_cached_versions_their_new_labels_and_tags(
    server: RunningServer,
) -> None:
    # Langfuse keeps one set of tags per name and moves labels: a version held from before a
    # write must not keep the labels or tags the server no longer gives it.
    async with open_client(server.base_url) as client:
        await client.create_prompt(name="p", prompt="one", labels=["production"], tags=["a"])
        first = await client.get_prompt("p", version=1)
        assert (first.labels, first.tags) == (("production", "latest"), ("a",))
        await client.create_prompt(name="p", prompt="two", labels=["production"], tags=["b"])
        before = sent(client)
        held = await client.get_prompt("p", version=1)
        assert (held.labels, held.tags, held.prompt) == ((), ("b",), "one")
        assert sent(client) == before  # no fetch
        assert await client.get_prompt("p", version=1, cache_ttl_seconds=0) == held


async def test_chat_prompts_are_typed(server: RunningServer) -> None:
    async with open_client(server.base_url) as client:
        chat = await client.create_prompt(
            name="c", type="chat", labels=["production"],
            prompt=[{"role": "system", "content": "Be {{tone}}"},
                    {"type": "placeholder", "name": "history"}],
            config={"model": "x"}, tags=["t"], commit_message="first",
        )
        assert_type(chat, ChatPrompt)
        assert isinstance(chat, ChatPrompt)
        assert chat.placeholders == ["history"]
        assert (chat.config, chat.tags, chat.commit_message) == ({"model": "x"}, ("t",), "first")
        assert await client.get_prompt("c", type="chat") is chat


async def test_write_errors_are_typed_and_change_nothing(server: RunningServer) -> None:
    async with open_client(server.base_url) as client:
        await client.create_prompt(name="p", prompt="text", labels=["production"])
        held = client.cache.snapshot()
        with pytest.raises(UnexpectedStatusError) as caught:  # Langfuse: no type change
            await client.create_prompt(name="p", type="chat", prompt=[])
        assert caught.value.status == 400
        with pytest.raises(UnexpectedStatusError):
            await client.update_prompt(name="p", version=1, new_labels=["latest"])
        with pytest.raises(InvalidArgumentError):
            await client.create_prompt(name="p", prompt=["not", "text"])  # type: ignore[call-overload]
        with pytest.raises(InvalidArgumentError):
            await client.update_prompt(name="p", version=0, new_labels=["x"])
        assert client.cache.snapshot() == held
    async with AsyncPromptClient(
        base_url=server.base_url, public_key="pk-lf-1", secret_key="wrong", env={}
    ) as client:
        with pytest.raises(AuthenticationError):
            await client.create_prompt(name="p", prompt="x")


async def test_a_source_that_cannot_write_says_so() -> None:
    async def fetch(key: PromptKey) -> TextPrompt:
        return TextPrompt(name=key.name, version=1, prompt="x")

    async with AsyncPromptClient(source=FunctionSource(fetch), env={}) as client:
        with pytest.raises(WritesNotSupportedError, match="PromptWriter"):
            await client.create_prompt(name="p", prompt="x")
        with pytest.raises(WritesNotSupportedError):
            await client.update_prompt(name="p", version=1, new_labels=["a"])


@asynccontextmanager
async def failing_server(status: int) -> AsyncIterator[tuple[str, Counter[str]]]:
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        calls[request.method] += 1
        return web.json_response({"message": "down", "error": "Down"}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serve_app(app) as url:
        yield url, calls


async def test_a_create_is_not_repeated_when_the_server_may_have_acted_on_it() -> None:
    async with failing_server(503) as (url, calls), open_client(url, max_retries=3) as client:
        with pytest.raises(ServerError):
            await client.create_prompt(name="p", prompt="x")
        assert calls["POST"] == 1
        # A label update is idempotent: retried as a fetch is.
        with pytest.raises(ServerError):
            await client.update_prompt(name="p", version=1, new_labels=["a"])
        assert calls["PATCH"] == 4
    async with failing_server(429) as (url, calls), open_client(url, max_retries=2) as client:
        with pytest.raises(Exception, match="HTTP 429"):
            await client.create_prompt(name="p", prompt="x")
        assert calls["POST"] == 3  # rate-limited: surely not acted on


async def test_a_create_is_repeated_when_no_connection_was_made() -> None:
    async with failing_server(503) as (url, _):
        pass  # the port is free again: connections are refused
    attempts = 0
    async with open_client(url, max_retries=2) as client:
        source = client.source
        assert isinstance(source, LangfuseSource)
        with pytest.raises(TransportError):
            await client.create_prompt(name="p", prompt="x")
        attempts = source.requests_sent
    assert attempts == 3


async def test_a_read_in_flight_does_not_undo_a_write() -> None:
    async with compose_server() as server:
        server.create("p", "v1", ["production"])
        async with open_client(server.base_url) as client:
            server.hold()
            result: list[TextPrompt] = []

            async def read() -> None:
                result.append(await client.get_prompt("p"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await server.arrived.wait()  # the server has read v1 and holds the answer
                created = await client.create_prompt(
                    name="p", prompt="v2", labels=["production"]
                )
                server.release()
            assert result[0].version == 1  # the read answers what it asked for
            assert await client.get_prompt("p") is created  # but the cache keeps the write
            assert server.gets["p"] == 1


async def test_the_sync_client_writes(server: RunningServer) -> None:
    def run() -> None:
        with PromptClient(
            base_url=server.base_url, public_key="pk-lf-1", secret_key="sk-lf-1", env={},
            cache_ttl_seconds=3600,
        ) as client:
            created = client.create_prompt(name="s", prompt="one", labels=["production"])
            assert_type(created, TextPrompt)
            assert isinstance(created, TextPrompt)
            chat = client.create_prompt(name="sc", type="chat", prompt=[])
            assert_type(chat, ChatPrompt)
            assert isinstance(chat, ChatPrompt)
            client.create_prompt(name="s", prompt="two")
            updated = client.update_prompt(name="s", version=2, new_labels=["production"])
            assert client.get_prompt("s") is updated

    await anyio.to_thread.run_sync(run)



async def test_static_source_takes_writes_for_users_tests() -> None:
    source = StaticSource([TextPrompt(name="p", version=1, prompt="one", labels=["production"])])
    async with AsyncPromptClient(source=source, env={}) as client:
        assert (await client.get_prompt("p")).version == 1
        created = await client.create_prompt(name="p", prompt="two", labels=["staging"])
        assert (created.version, created.labels) == (2, ("staging", "latest"))
        updated = await client.update_prompt(name="p", version=2, new_labels=["production"])
        assert set(updated.labels) == {"staging", "latest", "production"}
        assert await client.get_prompt("p") is updated
        assert source.total_fetches == 1
        assert (await client.get_prompt("p", cache_ttl_seconds=0)).version == 2


async def test_readers_see_every_label_move_without_a_fetch(server: RunningServer) -> None:
    async with open_client(server.base_url) as client:
        for text in ("one", "two", "three"):
            await client.create_prompt(name="p", prompt=text)
        await client.update_prompt(name="p", version=1, new_labels=["production"])
        seen: set[int] = set()
        done = anyio.Event()

        async def reader() -> None:
            while not done.is_set():
                seen.add((await client.get_prompt("p")).version)
                await anyio.lowlevel.checkpoint()

        await client.get_prompt("p")
        before = sent(client)
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(reader)
            for version in (2, 3, 1, 3, 2, 1, 3):
                await client.update_prompt(name="p", version=version, new_labels=["production"])
            done.set()
        assert seen == {1, 2, 3}
        assert sent(client) == before + 7  # the writes, and not one fetch
        assert (await client.get_prompt("p")).version == 3
        assert (await client.get_prompt("p", cache_ttl_seconds=0)).version == 3


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../other", "ü ?#"])
async def test_update_prompt_escapes_the_name_as_get_prompt_does(name: str) -> None:
    """A path-normalising proxy resolves ``..`` and ``.`` segments: a label update must not
    be sent to another prompt's URL, so its name segment is escaped exactly as a fetch's."""
    paths: list[str] = []

    async def record(request: web.Request) -> web.Response:
        paths.append(request.raw_path.split("?", 1)[0])
        return web.json_response({"message": "no", "error": "LangfuseNotFoundError"},
                                 status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with serve_app(app) as url:
        source = LangfuseSource(base_url=url, public_key="pk", secret_key="sk")
        try:
            async with AsyncPromptClient(source=source, env={}) as client:
                with pytest.raises(PromptNotFoundError):
                    await client.get_prompt(name)
                with pytest.raises(PromptNotFoundError):
                    await client.update_prompt(name=name, version=1, new_labels=["staging"])
        finally:
            await source.aclose()
    fetched, updated = paths
    assert updated == fetched + "/versions/1"
    segment = fetched.removeprefix("/api/public/v2/prompts/")
    assert "/" not in segment and segment not in (".", "..")
