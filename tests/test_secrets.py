"""The secret key appears nowhere: no repr, log record (any level, any logger), exception
message, exception repr or attribute, or traceback text (chained causes included).

Each scenario captures everything it can see and searches it for the secret, for the
``Authorization`` value (``base64(public:secret)``, which gives the secret away at once) and
for other encodings of the secret.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    AuthenticationError,
    FetchError,
    FetchTimeoutError,
    InvalidResponseError,
    LangfuseSource,
    PromptCacheError,
    PromptClient,
    RetryPolicy,
    TransportError,
)
from asyncpromptcache.server import ServerThread, run_server
from asyncpromptcache.testing import FakeClock

from .faultserver import FaultServer, fault_server
from .helpers import NEEDLES, PUBLIC, SECRET, SERVER_SECRET, exception_texts

NO_WAIT = RetryPolicy(max_retries=1, base_delay=0.0, max_delay=0.0)


class Everything(logging.Handler):
    """Keeps every record, formatted with its traceback, whatever logger it came from."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts += [self.format(record), repr(record.args), repr(vars(record))]
        if record.exc_info and record.exc_info[1] is not None:
            self.texts += exception_texts(record.exc_info[1])


def assert_no_secret(texts: list[str]) -> None:
    for text in texts:
        for needle in NEEDLES:
            assert needle not in text, f"secret material {needle!r} in {text[:300]!r}"


@pytest.fixture(autouse=True)
def capture_everything() -> Iterator[Everything]:
    """Every log record of the test, at every level, from every logger (aiohttp's too)."""
    handler = Everything()
    root = logging.getLogger()
    names = ["", "asyncpromptcache", "asyncpromptcache.server", "aiohttp", "aiohttp.client",
             "aiohttp.server", "aiohttp.access", "aiohttp.internal", "asyncio"]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert handler.records, "nothing was logged: the capture is not working"
    assert_no_secret(handler.texts)


def client_for(base_url: str, **kwargs: Any) -> AsyncPromptClient:
    options: dict[str, Any] = {
        "base_url": base_url, "public_key": PUBLIC, "secret_key": SECRET, "retry": NO_WAIT,
        "fetch_timeout_seconds": 0.3, "cache_ttl_seconds": 60, "env": {},
    }
    options.update(kwargs)
    return AsyncPromptClient(**options)


async def failure_of(call: Callable[[], Awaitable[object]]) -> FetchError:
    with pytest.raises(FetchError) as info:
        await call()
    return info.value


def client_texts(client: AsyncPromptClient) -> list[str]:
    stats = client.stats()
    return [repr(client), str(client), repr(client.source), repr(stats), str(stats)]


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with fault_server() as s:
        s.put("greet", "Hello {{name}}")
        s.put("cold", "Brr {{name}}")
        yield s


@asynccontextmanager
async def garbage_server(reply: bytes) -> AsyncIterator[str]:
    """A TCP server answering every request with ``reply`` (not valid HTTP)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"
    finally:
        tcp.close()
        await tcp.wait_closed()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "error_type"),
    [("401", AuthenticationError), ("503", FetchError), ("hang", FetchTimeoutError),
     ("drop", TransportError), ("reset-mid-body", TransportError),
     ("malformed", InvalidResponseError), ("html", InvalidResponseError),
     ("wrong-shape", InvalidResponseError), ("html-502", FetchError),
     ("429-retry-after", FetchError)],
)
async def test_fetch_failures_never_show_the_secret(
    server: FaultServer, fault: str, error_type: type[FetchError]
) -> None:
    clock = FakeClock()
    async with client_for(server.base_url, clock=clock) as client:
        texts = client_texts(client)
        await client.get_prompt("greet")  # a success first: its requests are logged too
        server.fault = fault
        cold = await failure_of(lambda: client.get_prompt("cold"))
        assert isinstance(cold, error_type)
        clock.advance(61)
        await client.get_prompt("greet")  # stale: a refresh that fails in the background
        with anyio.fail_after(5):
            while client.cache.in_flight:  # noqa: ASYNC110 - polling a plain counter
                await anyio.sleep(0.01)
        stale = await client.get_prompt("greet", cache_ttl_seconds=0)  # stale if error
        assert stale.version == 1
        texts += exception_texts(cold) + client_texts(client)
        texts.append(repr(await client.prefetch(["cold", "other"])))
    texts += client_texts(client)
    assert_no_secret(texts)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\n{}",  # a bad status line
     b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n{}",  # a bad header
     b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP at all
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],  # a bad chunk
)
async def test_responses_aiohttp_cannot_parse_never_show_the_secret(reply: bytes) -> None:
    """aiohttp's ClientResponseError keeps the request's headers (Authorization included) and
    shows them in its repr: it must not reach the caller with them."""
    async with garbage_server(reply) as base_url, client_for(base_url) as client:
        error = await failure_of(lambda: client.get_prompt("greet"))
        assert isinstance(error, TransportError | InvalidResponseError)
        assert_no_secret(exception_texts(error) + client_texts(client))


@pytest.mark.anyio
async def test_server_down_never_shows_the_secret(server: FaultServer) -> None:
    await server.go_down()
    async with client_for(server.base_url) as client:
        error = await failure_of(lambda: client.get_prompt("greet"))
        assert isinstance(error, TransportError)
        assert_no_secret(exception_texts(error) + client_texts(client))


@pytest.mark.anyio
async def test_wrong_keys_against_the_local_server() -> None:
    """The local server with keys: a client with the wrong secret is refused (401), and neither
    secret shows on either side: client errors, server logs, server objects."""
    async with run_server(public_key=PUBLIC, secret_key=SERVER_SECRET) as running:
        texts = [repr(running), str(running)]
        async with client_for(running.base_url) as client:  # SECRET, not SERVER_SECRET
            error = await failure_of(lambda: client.get_prompt("greet"))
            assert isinstance(error, AuthenticationError) and error.status == 401
            texts += exception_texts(error) + client_texts(client)
        async with client_for(running.base_url, secret_key=SERVER_SECRET) as client:
            error = await failure_of(lambda: client.get_prompt("greet"))
            assert type(error).__name__ == "PromptNotFoundError"  # authenticated: a 404
            texts += exception_texts(error) + client_texts(client)
        assert running.counter.total == 2
    assert_no_secret(texts)


def test_configuration_errors_never_show_the_secret() -> None:
    attempts: list[Callable[[], object]] = [
        lambda: AsyncPromptClient(secret_key=SECRET, env={}),  # no public key
        lambda: AsyncPromptClient(env={"LANGFUSE_SECRET_KEY": SECRET}),
        lambda: AsyncPromptClient(public_key=PUBLIC, secret_key=SECRET, base_url="ftp://x",
                                  env={}),
        lambda: AsyncPromptClient(env={"LANGFUSE_PUBLIC_KEY": PUBLIC,
                                       "LANGFUSE_SECRET_KEY": SECRET,
                                       "LANGFUSE_PROMPT_CACHE_TTL_SECONDS": "soon"}),
        lambda: AsyncPromptClient(public_key=PUBLIC, secret_key=SECRET, env={},
                                  fetch_timeout_seconds=-1),
        lambda: AsyncPromptClient(public_key=PUBLIC, secret_key=SECRET, env={}, max_size=0),
        lambda: LangfuseSource(base_url="not a url", public_key=PUBLIC, secret_key=SECRET),
        lambda: PromptClient(secret_key=SECRET, env={}),
        lambda: run_server(public_key=PUBLIC, secret_key=SERVER_SECRET, host="0.0.0.0",
                           port=-1),
        lambda: ServerThread(secret_key=SERVER_SECRET),
    ]
    texts: list[str] = []
    for attempt in attempts:
        try:
            made = attempt()
        except (PromptCacheError, ValueError) as exc:
            texts += exception_texts(exc)
            texts.append(type(exc).__name__)
        else:
            texts.append(repr(made))
            if hasattr(made, "__aexit__"):
                continue  # run_server's context manager: not entered
    assert texts.count("ConfigurationError") >= 6
    logging.getLogger("asyncpromptcache").info("configuration checked")  # the capture works
    assert_no_secret(texts)


def test_reprs_of_every_object_holding_a_key() -> None:
    source = LangfuseSource(base_url="http://127.0.0.1:9", public_key=PUBLIC, secret_key=SECRET)
    client = AsyncPromptClient(base_url="http://127.0.0.1:9", public_key=PUBLIC,
                               secret_key=SECRET, env={})
    sync = PromptClient(base_url="http://127.0.0.1:9", public_key=PUBLIC, secret_key=SECRET,
                        env={})
    env_client = AsyncPromptClient(env={"LANGFUSE_PUBLIC_KEY": PUBLIC,
                                        "LANGFUSE_SECRET_KEY": SECRET})
    try:
        texts = [repr(source), str(source), repr(client), repr(sync), repr(env_client),
                 repr(client.source), repr(sync.stats()), repr(client.stats())]
        assert PUBLIC in repr(source)  # the public key is fine to show, and useful
        logging.getLogger("asyncpromptcache").info("reprs: %r %r", client, sync)
        assert_no_secret(texts)
    finally:
        sync.close()


def test_sync_client_failures_never_show_the_secret() -> None:
    with ServerThread(public_key=PUBLIC, secret_key=SERVER_SECRET) as running:
        with PromptClient(base_url=running.base_url, public_key=PUBLIC, secret_key=SECRET,
                          retry=NO_WAIT, env={}) as client:
            with pytest.raises(AuthenticationError) as info:
                client.get_prompt("greet")
            texts = [*exception_texts(info.value), repr(client), repr(client.stats())]
            assert client.get_prompt("greet", fallback="fb").is_fallback
        texts.append(repr(running))
    assert_no_secret(texts)
