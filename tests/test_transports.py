"""The cache transports under the real SDKs, against the local server's LLM endpoints.

Upstream requests are counted by the server (``/_admin/chat/requests``) or by a recording
transport underneath; streams are held at a chunk by the server (``hold_after_chunks``) so
that identical requests are provably in flight together. Nothing waits on the wall clock.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import anyio
import httpx
import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from asyncpromptcache import ResponseCache, ResponseFailedError
from asyncpromptcache.response import AsyncCacheTransport, CacheTransport
from asyncpromptcache.server import ServerThread, run_server

from .helpers import ChatAdmin, until

pytestmark = pytest.mark.anyio

MESSAGES: Any = [{"role": "user", "content": "What does the cache do?"}]
LIBRARIES = [pytest.param(httpx, id="httpx"), pytest.param(httpx2, id="httpx2")]


class Admin(ChatAdmin):
    """The local server's chat controls and counters, and its own answers."""

    async def release_when_held(self, chunks: int = 2) -> None:
        """Let the held stream go, once it is held (its first ``chunks`` written)."""
        with anyio.fail_after(10):
            while (await self.counts())["chunks"] < chunks:  # noqa: ASYNC110 - over HTTP
                await anyio.sleep(0.005)
        await self.release()

    async def direct(self, body: dict[str, Any]) -> bytes:
        """The upstream's own bytes for ``body``, without any cache (then the counts reset)."""
        async with self.http.post(self.base_url + "/v1/chat/completions", json=body) as r:
            raw = await r.read()
        async with self.http.delete(self.base_url + "/_admin/chat/requests"):
            pass
        return raw


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    async with run_server() as server, aiohttp.ClientSession() as http:
        admin = Admin(server.base_url, http)
        yield admin
        await admin.control(hold_after_chunks=None)
        await admin.release()


class Recording(httpx2.AsyncBaseTransport):
    """The network underneath, keeping every request that left."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.sent: list[httpx2.Request] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def sdk(admin: Admin, transport: Any, library: Any = httpx2, api_key: str = "sk-one",
        ) -> AsyncOpenAI:
    http = library.AsyncClient(transport=transport)
    return AsyncOpenAI(base_url=admin.base_url + "/v1", api_key=api_key, http_client=http,
                       max_retries=0)


async def read_text(stream: Any) -> str:
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


# -- Chat Completions ----------------------------------------------------------------------


@pytest.mark.parametrize("library", LIBRARIES)
async def test_fifty_streams_one_upstream_then_byte_identical_replays(
        admin: Admin, library: Any) -> None:
    body = {"model": "m", "temperature": 0, "messages": MESSAGES, "max_tokens": 20,
            "stream": True, "stream_options": {"include_usage": True}}
    direct = await admin.direct(body)
    await admin.control(hold_after_chunks=2)
    async with AsyncCacheTransport(ttl_seconds=60) as transport:
        client = sdk(admin, transport, library)
        started: list[str] = []
        texts: list[str] = []

        async def one() -> None:
            stream = await client.chat.completions.create(
                model="m", temperature=0, messages=MESSAGES, max_tokens=20, stream=True,
                stream_options={"include_usage": True})
            started.append(stream.response.headers["x-cache"])
            texts.append(await read_text(stream))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
            await until(lambda: len(started) == 50)
            await admin.release_when_held()
        assert sorted(set(started)) == ["join", "miss"] and started.count("miss") == 1
        assert len(set(texts)) == 1 and texts[0]
        counts = await admin.counts()
        assert counts["requests"] == 1 and counts["streams_completed"] == 1

        for _ in range(10):
            async with client.chat.completions.with_streaming_response.create(
                    model="m", temperature=0, messages=MESSAGES, max_tokens=20,
                    stream=True, stream_options={"include_usage": True}) as response:
                assert response.headers["x-cache"] == "hit"
                assert response.headers["content-type"].startswith("text/event-stream")
                replay = b"".join([part async for part in response.iter_bytes()])
            assert replay == direct
        assert (await admin.counts())["requests"] == 1
        stats = transport.cache.stats()
        assert (stats.misses, stats.joins, stats.hits, stats.stored) == (1, 49, 10, 1)


async def test_a_whole_answer_replays_its_body_and_headers(admin: Admin) -> None:
    async with AsyncCacheTransport() as transport:
        client = sdk(admin, transport)
        first = await client.chat.completions.with_raw_response.create(
            model="m", temperature=0, messages=MESSAGES)
        await transport.cache.drain()
        second = await client.chat.completions.with_raw_response.create(
            model="m", temperature=0, messages=MESSAGES)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        assert first.http_response.content == second.http_response.content
        assert second.headers["content-type"] == first.headers["content-type"]
        assert second.headers["x-cache-key"] == first.headers["x-cache-key"]
        assert second.headers["age"] == "0"
        assert second.parse().choices[0].message.content == \
            first.parse().choices[0].message.content
        assert (await admin.counts())["requests"] == 1


async def test_sampled_requests_pass_through_unless_opted_in(admin: Admin) -> None:
    for opted_in, upstream in ((False, 2), (True, 1)):
        async with AsyncCacheTransport(cache_nondeterministic=opted_in) as transport:
            client = sdk(admin, transport)
            sources = []
            for _ in range(2):  # no temperature: OpenAI's default, 1, samples
                raw = await client.chat.completions.with_raw_response.create(
                    model="m", messages=MESSAGES)
                sources.append(raw.headers["x-cache"])
                await transport.cache.drain()
            assert sources == (["miss", "hit"] if opted_in else ["bypass", "bypass"])
        counts = await admin.counts()
        assert counts["requests"] == upstream
        await admin.http.delete(admin.base_url + "/_admin/chat/requests")


async def test_other_routes_pass_through_untouched(admin: Admin) -> None:
    recording = Recording()
    async with httpx2.AsyncClient(transport=AsyncCacheTransport(transport=recording)) as http:
        response = await http.get(admin.base_url + "/_admin/chat/requests",
                                  headers={"Cache-Control": "no-store"})
        assert response.status_code == 200 and "x-cache" not in response.headers
        not_json = await http.post(admin.base_url + "/v1/chat/completions", content=b"{nope")
        assert not_json.status_code == 400 and "x-cache" not in not_json.headers
    assert recording.sent[0].headers["cache-control"] == "no-store"  # not ours to strip
    assert len(recording.sent) == 2


# -- Errors --------------------------------------------------------------------------------


async def test_an_upstream_429_reaches_the_sdk_and_is_not_stored(admin: Admin) -> None:
    await admin.control(fail_status=429)
    async with AsyncCacheTransport() as transport:
        client = sdk(admin, transport)
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="m", temperature=0,
                                                     messages=MESSAGES)
            assert caught.value.status_code == 429
            assert caught.value.response.headers["retry-after"] == "1"
            assert caught.value.body == {"message": "failure injected by the server controls",
                                         "type": "rate_limit_error", "param": None,
                                         "code": None}
        await admin.control(fail_status=None)
        raw = await client.chat.completions.with_raw_response.create(
            model="m", temperature=0, messages=MESSAGES)
        assert raw.headers["x-cache"] == "miss"
        assert (await admin.counts())["requests"] == 3
        assert transport.cache.stats().stored == 1


@pytest.mark.parametrize("mode", ["disconnect", "truncate", "error_event"])
@pytest.mark.parametrize("library", LIBRARIES)
async def test_a_cut_stream_raises_in_the_sdk_and_is_not_stored(
        admin: Admin, library: Any, mode: str) -> None:
    await admin.control(fail_after_chunks=3, fail_mode=mode)
    async with AsyncCacheTransport() as transport:
        client = sdk(admin, transport, library)
        stream = await client.chat.completions.create(
            model="m", temperature=0, messages=MESSAGES, stream=True)
        # The SDK says what it says of a connection cut off: its APIConnectionError, from
        # the library's RemoteProtocolError (ours is a ResponseFailedError too).
        with pytest.raises(openai.APIError) as caught:
            await read_text(stream)
        if mode != "error_event":
            assert isinstance(caught.value, openai.APIConnectionError)
            assert isinstance(caught.value.__cause__, library.RemoteProtocolError)
            assert isinstance(caught.value.__cause__, ResponseFailedError)
        await transport.cache.drain()
        assert transport.cache.stats().stored == 0
        await admin.control(fail_after_chunks=None)
        again = await client.chat.completions.create(
            model="m", temperature=0, messages=MESSAGES, stream=True)
        assert again.response.headers["x-cache"] == "miss"
        assert await read_text(again)
        assert (await admin.counts())["requests"] == 2


async def test_a_refused_connection_is_the_sdks_connection_error() -> None:
    async with AsyncCacheTransport() as transport:
        client = AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0,
                             http_client=httpx2.AsyncClient(transport=transport))
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="m", temperature=0,
                                                 messages=MESSAGES)
        assert transport.cache.stats().stored == 0


# -- Keys and directives -------------------------------------------------------------------


async def test_two_api_keys_never_share_an_answer(admin: Admin) -> None:
    for share, upstream in ((False, 2), (True, 1)):
        async with AsyncCacheTransport(share_across_keys=share) as transport:
            sources = []
            for key in ("sk-one", "sk-two"):
                raw = await sdk(admin, transport, api_key=key).chat.completions \
                    .with_raw_response.create(model="m", temperature=0,
                                              messages=MESSAGES)
                sources.append(raw.headers["x-cache"])
                await transport.cache.drain()
            assert sources == (["miss", "hit"] if share else ["miss", "miss"])
        assert (await admin.counts())["requests"] == upstream
        await admin.http.delete(admin.base_url + "/_admin/chat/requests")


class FakeWall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_directives_steer_the_cache_and_never_leave(admin: Admin) -> None:
    recording, wall = Recording(), FakeWall()
    async with AsyncCacheTransport(transport=recording, wall_clock=wall) as transport:
        client = sdk(admin, transport)

        async def ask(**headers: str) -> Any:
            raw = await client.chat.completions.with_raw_response.create(
                model="m", temperature=0, messages=MESSAGES,
                extra_headers=headers)
            await transport.cache.drain()
            return raw

        with pytest.raises(openai.APIStatusError) as caught:  # nothing stored yet
            await ask(**{"Cache-Control": "only-if-cached"})
        assert caught.value.status_code == 504
        retrying = AsyncOpenAI(base_url=admin.base_url + "/v1", api_key="sk-one",
                               http_client=httpx2.AsyncClient(transport=transport))
        with pytest.raises(openai.APIStatusError):  # the SDK does not retry a 504 of ours
            await retrying.chat.completions.create(
                model="m", temperature=0, messages=MESSAGES,
                extra_headers={"Cache-Control": "only-if-cached"})
        assert transport.cache.stats().cache_only_misses == 2
        assert (await ask(**{"Cache-Control": "no-store"})).headers["x-cache"] == "bypass"
        assert (await ask(**{"Cache-Control": "no-store"})).headers["x-cache"] == "bypass"
        assert transport.cache.stats().stored == 0
        assert (await ask()).headers["x-cache"] == "miss"
        assert (await ask(**{"Cache-Control": "only-if-cached"})).headers["x-cache"] == "hit"
        wall.now += 30  # no-cache goes upstream and stores the new answer, 30 s younger
        assert (await ask(**{"Cache-Control": "no-cache"})).headers["x-cache"] == "miss"
        wall.now += 100
        hit = await ask(**{"Cache-Control": "max-age=500"})
        assert (hit.headers["x-cache"], hit.headers["age"]) == ("hit", "100")
        assert (await ask(**{"Cache-Control": "max-age=50"})).headers["x-cache"] == "miss"
        assert (await ask()).headers["age"] == "0"  # the refreshed answer
        assert (await ask(**{"X-Cache-Namespace": "tenant-a"})).headers["x-cache"] == "miss"
        assert (await ask(**{"X-Cache-Namespace": "tenant-a"})).headers["x-cache"] == "hit"
        with pytest.raises(openai.BadRequestError, match="X-Cache-TTL"):
            await ask(**{"X-Cache-TTL": "soon"})
        assert (await ask(**{"X-Cache-TTL": "0", "X-Cache-Namespace": "b"})).headers[
            "x-cache"] == "miss"
        assert (await ask(**{"X-Cache-Namespace": "b"})).headers["x-cache"] == "miss"
    assert len(recording.sent) == 8
    for request in recording.sent:
        assert not {"cache-control", "x-cache-ttl", "x-cache-namespace"} & set(request.headers)
    assert (await admin.counts())["requests"] == 8


async def test_only_if_cached_joins_a_stream_in_flight_and_sends_nothing(admin: Admin) -> None:
    """``only-if-cached`` is a hit or a join, never a request: a stream in flight for the
    same request is joined (``x-cache: join``), with the same text as its owner."""
    await admin.control(hold_after_chunks=2)
    async with AsyncCacheTransport(ttl_seconds=60) as transport:
        client = sdk(admin, transport)
        texts: dict[str, str] = {}

        async def one(**headers: str) -> None:
            stream = await client.chat.completions.create(
                model="m", temperature=0, messages=MESSAGES, stream=True,
                extra_headers=headers)
            texts[stream.response.headers["x-cache"]] = await read_text(stream)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            with anyio.fail_after(10):
                while (await admin.counts())["chunks"] < 2:  # noqa: ASYNC110 - over HTTP
                    await anyio.sleep(0.005)
            tg.start_soon(functools.partial(one, **{"Cache-Control": "only-if-cached"}))
            await until(lambda: transport.cache.stats().joins == 1)
            await admin.release()
        assert set(texts) == {"miss", "join"} and texts["join"] == texts["miss"] != ""
        assert (await admin.counts())["requests"] == 1


# -- Sync ----------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


@pytest.mark.parametrize("library", LIBRARIES)
def test_ten_threads_of_a_sync_client_one_upstream(server: ServerThread, library: Any) -> None:
    admin = server.base_url + "/_admin/chat"
    httpx.post(admin + "/controls", json={"hold_after_chunks": 2})
    transport = CacheTransport(ttl_seconds=60)
    client = OpenAI(base_url=server.base_url + "/v1", api_key="k", max_retries=0,
                    http_client=library.Client(transport=transport))
    started: list[str] = []
    texts: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        stream = client.chat.completions.create(
            model="m", temperature=0, messages=MESSAGES, stream=True)
        with lock:
            started.append(stream.response.headers["x-cache"])
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for thread in threads:
        thread.start()
    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(until, lambda: len(started) == 10)
        portal.call(until, lambda: httpx.get(admin + "/requests").json()["chunks"] >= 2)
    httpx.post(admin + "/release")
    for thread in threads:
        thread.join(10)
    assert sorted(started) == ["join"] * 9 + ["miss"]
    assert len(set(texts)) == 1 and texts[0]
    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(until, lambda: transport.cache.stats().stored == 1)
    hit = client.chat.completions.create(model="m", temperature=0, messages=MESSAGES,
                                         stream=True)
    assert hit.response.headers["x-cache"] == "hit"
    assert "".join(c.choices[0].delta.content or "" for c in hit if c.choices) == texts[0]
    assert httpx.get(admin + "/requests").json()["requests"] == 1
    client.close()
    assert transport.cache.state == "closed"


def test_a_sync_cut_stream_raises_and_the_cache_is_not_stored(server: ServerThread) -> None:
    admin = server.base_url + "/_admin/chat"
    httpx.post(admin + "/controls", json={"fail_after_chunks": 3, "fail_mode": "disconnect"})
    with CacheTransport() as transport:
        client = OpenAI(base_url=server.base_url + "/v1", api_key="k", max_retries=0,
                        http_client=httpx2.Client(transport=transport))
        stream = client.chat.completions.create(
            model="m", temperature=0, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIConnectionError) as caught:
            list(stream)
        assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
        assert transport.cache.stats().stored == 0


# -- Embeddings ------------------------------------------------------------------------------


def vector(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 97), 0.5]


@pytest.fixture
async def embeddings() -> AsyncIterator[tuple[str, list[list[str]]]]:
    """An embeddings endpoint that records the inputs of every request it gets."""
    from aiohttp import web

    seen: list[list[str]] = []

    async def embed(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        inputs = [body["input"]] if isinstance(body["input"], str) else body["input"]
        seen.append(inputs)
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": vector(text)}
                     for i, text in enumerate(inputs)],
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embed)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


async def test_embeddings_send_only_the_missing_inputs(
        embeddings: tuple[str, list[list[str]]]) -> None:
    base_url, seen = embeddings
    async with AsyncCacheTransport() as transport:
        client = AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0,
                             http_client=httpx2.AsyncClient(transport=transport))
        first = await client.embeddings.create(model="e", input=["alpha", "beta"],
                                               encoding_format="float")
        raw = await client.embeddings.with_raw_response.create(
            model="e", input=["beta", "gamma"], encoding_format="float")
        second = raw.parse()
        assert seen == [["alpha", "beta"], ["gamma"]]
        assert [d.embedding for d in second.data] == [vector("beta"), vector("gamma")]
        assert second.data[0].embedding == first.data[1].embedding
        assert [d.index for d in second.data] == [0, 1]
        assert second.usage.prompt_tokens == 1  # only what was sent upstream
        assert raw.headers["x-cache"] == "miss"
        await transport.cache.drain()
        whole = await client.embeddings.with_raw_response.create(
            model="e", input=["gamma", "alpha"], encoding_format="float")
        assert whole.headers["x-cache"] == "hit" and len(seen) == 2
        assert whole.parse().usage.prompt_tokens == 0
        # another encoding (the SDK's default, base64) or model is another key
        b64 = await client.embeddings.create(model="e", input="alpha")
        assert seen[-1] == ["alpha"] and len(b64.data[0].embedding) == 3


async def test_concurrent_embeddings_share_each_input(
        embeddings: tuple[str, list[list[str]]]) -> None:
    base_url, seen = embeddings
    async with AsyncCacheTransport() as transport:
        client = AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0,
                             http_client=httpx2.AsyncClient(transport=transport))
        results: list[Any] = []

        async def one(inputs: list[str]) -> None:
            results.append(await client.embeddings.create(model="e", input=inputs,
                                                          encoding_format="float"))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one, ["alpha", "beta"])
        assert sum(len(inputs) for inputs in seen) == 2
        assert all(r.data[1].embedding == vector("beta") for r in results)


# -- Many processes --------------------------------------------------------------------------


async def test_two_processes_share_answers_through_redis(admin: Admin) -> None:
    from devkit.redisserver import RedisServer

    with RedisServer() as redis:
        async with AsyncCacheTransport(ResponseCache(shared=redis.url)) as one, \
                AsyncCacheTransport(ResponseCache(shared=redis.url)) as two:
            first = await sdk(admin, one).chat.completions.with_raw_response.create(
                model="m", temperature=0, messages=MESSAGES)
            await one.cache.drain()
            second = await sdk(admin, two).chat.completions.with_raw_response.create(
                model="m", temperature=0, messages=MESSAGES)
            assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
            assert first.http_response.content == second.http_response.content
    assert (await admin.counts())["requests"] == 1


async def test_two_processes_share_a_stream_in_flight_through_redis(admin: Admin) -> None:
    from devkit.redisserver import RedisServer

    await admin.control(hold_after_chunks=2)
    with RedisServer() as redis:
        async with AsyncCacheTransport(ResponseCache(shared=redis.url)) as one, \
                AsyncCacheTransport(ResponseCache(shared=redis.url)) as two:
            texts: dict[str, str] = {}

            async def ask(name: str, transport: AsyncCacheTransport) -> None:
                stream = await sdk(admin, transport).chat.completions.create(
                    model="m", temperature=0, messages=MESSAGES, stream=True)
                texts[name] = await read_text(stream)

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, "one", one)
                await until(lambda: one.cache.stats().misses == 1)
                with anyio.fail_after(10):
                    while (await admin.counts())["chunks"] < 2:  # noqa: ASYNC110 - HTTP
                        await anyio.sleep(0.005)
                tg.start_soon(ask, "two", two)
                # the second process found the first's claim and follows its stream
                await until(lambda: getattr(two.cache.stats().shared, "waits", 0) == 1)
                await admin.release()
            assert texts["one"] == texts["two"] and texts["one"]
            shared = two.cache.stats().shared
            assert shared is not None and shared.waits == 1
    assert (await admin.counts())["requests"] == 1


# -- LangChain -------------------------------------------------------------------------------


async def test_langchain_astream_ten_times_one_upstream(admin: Admin) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    await admin.control(hold_after_chunks=2)
    async with AsyncCacheTransport() as transport:
        model = langchain_openai.ChatOpenAI(
            model="m", temperature=0, base_url=admin.base_url + "/v1", api_key="k",
            http_async_client=httpx.AsyncClient(transport=transport), max_retries=0)
        texts: list[str] = []

        async def one() -> None:
            texts.append("".join([str(part.content) async for part in model.astream("hi")]))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
            await until(lambda: transport.cache.stats().joins == 9)
            await admin.release_when_held()
        assert len(set(texts)) == 1 and texts[0]
    assert (await admin.counts())["requests"] == 1


# -- pydantic-ai -------------------------------------------------------------------------------


async def test_pydantic_ai_agent_streams_ten_times_one_upstream(admin: Admin) -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    await admin.control(hold_after_chunks=2)
    async with AsyncCacheTransport() as transport:
        provider = OpenAIProvider(base_url=admin.base_url + "/v1", api_key="k",
                                  http_client=httpx2.AsyncClient(transport=transport))
        agent = Agent(OpenAIChatModel("m", provider=provider),
                      model_settings={"temperature": 0})
        texts: list[str] = []

        async def one() -> None:
            async with agent.run_stream("What does the cache do?") as result:
                texts.append("".join([part async for part in result.stream_text(delta=True)]))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
            await until(lambda: transport.cache.stats().joins == 9)
            await admin.release_when_held()
        assert len(set(texts)) == 1 and texts[0]
    assert (await admin.counts())["requests"] == 1


# -- Ownership -------------------------------------------------------------------------------


async def test_an_open_cache_is_used_as_it_is_and_left_open(admin: Admin) -> None:
    from asyncpromptcache import ClientStateError, ConfigurationError

    async with ResponseCache() as cache:
        async with AsyncCacheTransport(cache) as transport:
            raw = await sdk(admin, transport).chat.completions.with_raw_response.create(
                model="m", temperature=0, messages=MESSAGES)
            assert raw.headers["x-cache"] == "miss"
        assert cache.state == "open" and cache.stats().misses == 1
        with pytest.raises(ClientStateError):
            CacheTransport(cache)  # a sync transport enters its cache on its own loop
    with pytest.raises(ConfigurationError):
        AsyncCacheTransport(ResponseCache(), ttl_seconds=5)
    built = AsyncCacheTransport(ttl_seconds=5)
    await sdk(admin, built).chat.completions.create(model="m", temperature=0,
                                                    messages=MESSAGES)
    states = [built.cache.state]
    await built.aclose()
    states.append(built.cache.state)
    assert states == ["open", "closed"]
