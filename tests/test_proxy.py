"""Proxies from the environment: HTTP_PROXY/HTTPS_PROXY/ALL_PROXY and
NO_PROXY are honoured by default, as httpx (and so the Langfuse SDK) does; ``trust_env=False``
turns that off; the sync facade goes through the proxy too. The proxy is a real forwarding
proxy on 127.0.0.1 that records what it sees."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from anyio.from_thread import start_blocking_portal

from asyncpromptcache import AsyncPromptClient, ConfigurationError, PromptClient
from asyncpromptcache.response import OpenAIChatProducer
from asyncpromptcache.server import run_server

from .faultserver import FaultServer, fault_server
from .helpers import Proxy, forwarding_proxy


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FaultServer, Proxy]]:
    async with fault_server() as server, forwarding_proxy() as proxy:
        server.put("greet", "Hello")
        yield server, proxy


PATH = "/api/public/v2/prompts/greet?label=production"


@pytest.mark.anyio
async def test_the_proxy_in_the_environment_is_used(
    servers: tuple[FaultServer, Proxy],
) -> None:
    server, proxy = servers
    async with AsyncPromptClient(base_url=server.base_url, env={"HTTP_PROXY": proxy.url}) as c:
        assert (await c.get_prompt("greet")).prompt == "Hello"
    assert proxy.seen == [(server.base_url + PATH, None)]
    assert server.total == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "env",
    [{"http_proxy": "PROXY", "NO_PROXY": "example.com, 127.0.0.1"},
     {"ALL_PROXY": "PROXY", "no_proxy": "*"},
     {"HTTPS_PROXY": "PROXY"}],  # for https only: the server is http
)
async def test_no_proxy_and_other_schemes_connect_directly(
    servers: tuple[FaultServer, Proxy], env: dict[str, str],
) -> None:
    server, proxy = servers
    env = {name: value.replace("PROXY", proxy.url) for name, value in env.items()}
    async with AsyncPromptClient(base_url=server.base_url, env=env) as client:
        assert (await client.get_prompt("greet")).prompt == "Hello"
    assert proxy.seen == []
    assert server.total == 1


@pytest.mark.anyio
async def test_all_proxy_and_proxy_credentials(servers: tuple[FaultServer, Proxy]) -> None:
    server, proxy = servers
    with_credentials = proxy.url.replace("http://", "http://user:pr0xy-PASS@")
    client = AsyncPromptClient(base_url=server.base_url, env={"ALL_PROXY": with_credentials})
    assert "pr0xy-PASS" not in repr(client) + repr(client.source)
    async with client:
        await client.get_prompt("greet")
    assert proxy.seen == [
        (server.base_url + PATH, "Basic " + base64.b64encode(b"user:pr0xy-PASS").decode())
    ]


@pytest.mark.anyio
async def test_trust_env_false_ignores_the_environment(
    servers: tuple[FaultServer, Proxy], monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, proxy = servers
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    async with AsyncPromptClient(base_url=server.base_url, trust_env=False) as client:
        await client.get_prompt("greet")
    assert proxy.seen == []
    async with AsyncPromptClient(base_url=server.base_url) as client:  # os.environ, by default
        await client.get_prompt("greet", version=1)
    assert len(proxy.seen) == 1


def test_a_proxy_that_cannot_be_right_is_a_configuration_error() -> None:
    for value in ("socks5://127.0.0.1:1080", "http://:pw@", "http://127.0.0.1:port"):
        with pytest.raises(ConfigurationError, match="proxy"):
            AsyncPromptClient(base_url="http://127.0.0.1:9", env={"HTTP_PROXY": value})
    AsyncPromptClient(base_url="http://127.0.0.1:9", env={"HTTP_PROXY": "socks5://x"},
                      trust_env=False)


@pytest.fixture
def sync_servers() -> Iterator[tuple[FaultServer, Proxy]]:
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(fault_server()) as server,
        portal.wrap_async_context_manager(forwarding_proxy()) as proxy,
    ):
        server.put("greet", "Hello")
        yield server, proxy


def test_the_sync_facade_uses_the_proxy(
    sync_servers: tuple[FaultServer, Proxy], monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, proxy = sync_servers
    monkeypatch.setenv("http_proxy", proxy.url)
    with PromptClient(base_url=server.base_url) as client:
        assert client.get_prompt("greet").prompt == "Hello"
    with PromptClient(base_url=server.base_url, trust_env=False) as client:
        assert client.get_prompt("greet").prompt == "Hello"
    assert proxy.seen == [(server.base_url + PATH, None)]
    assert server.total == 2


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.mark.anyio
async def test_the_openai_producer_honours_the_proxy_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with run_server() as server, forwarding_proxy() as proxy:
        chat = server.base_url + "/v1/chat/completions"
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://user:pr0xy-PASS@"))
        llm = OpenAIChatProducer(base_url=server.base_url + "/v1", api_key="sk-test")
        assert "pr0xy-PASS" not in repr(llm)
        async with llm:
            chunks = [chunk async for chunk in llm.stream(CHAT)]
            whole = await llm.complete(CHAT)
        assert chunks and whole["object"] == "chat.completion"
        auth = "Basic " + base64.b64encode(b"user:pr0xy-PASS").decode()
        assert proxy.seen == [(chat, auth), (chat, auth)]
        async with OpenAIChatProducer(base_url=server.base_url + "/v1", trust_env=False) as llm:
            assert await llm.complete(CHAT)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with OpenAIChatProducer(base_url=server.base_url + "/v1") as llm:
            assert await llm.complete(CHAT)
        assert len(proxy.seen) == 2  # neither went through the proxy
        async with OpenAIChatProducer(base_url=server.base_url + "/v1", proxy=proxy.url,
                                      trust_env=False) as llm:
            assert await llm.complete(CHAT)
        assert proxy.seen[2:] == [(chat, None)]
        counts = await _chat_requests(server.base_url)
        assert counts["requests"] == 5  # each answered, none twice


async def _chat_requests(base_url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(
            base_url + "/_admin/chat/requests") as answer:
        data: dict[str, int] = await answer.json()
        return data


def test_a_bad_proxy_for_the_openai_producer_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(ConfigurationError, match="proxy"):
        OpenAIChatProducer(base_url="https://127.0.0.1:9/v1")
    OpenAIChatProducer(base_url="https://127.0.0.1:9/v1", trust_env=False)
    with pytest.raises(ConfigurationError, match="proxy"):
        OpenAIChatProducer(base_url="https://127.0.0.1:9/v1", proxy="http://:pw@")
