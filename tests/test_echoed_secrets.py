"""An upstream, a gateway or a proxy that echoes the request's credentials in its error
answers (Langfuse's secret key, the OpenAI key, a proxy's password, in the clear or inside
their ``Authorization`` headers) never gets them into our exception messages or log lines:
every upstream text we quote goes through the client's one ``Redactor``."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import pickle
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from asyncpromptcache import (
    AsyncPromptClient,
    FetchError,
    ResponseError,
    RetryPolicy,
)
from asyncpromptcache._core.secret import Redactor, Secret, redact_url
from asyncpromptcache.response import OpenAIChatProducer

pytestmark = pytest.mark.anyio

PUBLIC = "pk-lf-echo-0001"
SECRET = "sk-lf-ECHOED-3e1a77c0-never-shown"
OPENAI_KEY = "sk-proj-ECHOED-openai-5b9d02"
PROXY_USER, PROXY_PASSWORD = "squid", "pr0xy-ECHOED-pass-41"

NEEDLES = [
    SECRET, SECRET[6:], OPENAI_KEY, OPENAI_KEY[8:], PROXY_PASSWORD,
    base64.b64encode(f"{PUBLIC}:{SECRET}".encode()).decode(),
    base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode(),
]
# Long enough that an echoed header straddles the 80-character excerpt's end.
PAD = "x" * 50


def _echo(request: web.BaseRequest) -> str:
    """What a careless gateway writes back: the credentials it was sent, as sent and
    decoded."""
    parts = [PAD]
    for header in ("Proxy-Authorization", "Authorization"):
        value = request.headers.get(header)
        if value is None:
            continue
        parts.append(f"{header}: {value}")
        scheme, _, token = value.partition(" ")
        if scheme == "Basic":
            parts.append("decoded " + base64.b64decode(token).decode())
        else:
            parts.append("key " + token)
    return " | ".join(parts)


def gateway(status: int, shape: str) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        echo = _echo(request)
        if shape == "langfuse-json":
            return web.json_response({"message": echo, "error": "Unauthorized"}, status=status)
        if shape == "openai-json":
            return web.json_response({"error": {"message": echo, "type": echo}}, status=status)
        if shape == "openai-stream":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: " + json.dumps({"error": {"message": echo}}).encode()
                                 + b"\n\n")
            return response
        if shape == "not-json-200":
            return web.Response(status=200, text=echo)
        return web.Response(status=status, text=echo)  # "text": an HTML or plain error page

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def proxy_gateway(status: int) -> web.Server:
    """A forwarding proxy that refuses, echoing what it was sent (absolute-form requests)."""

    async def handle(request: web.BaseRequest) -> web.Response:
        echo = _echo(request)
        # In the reason phrase too: for an https:// target, the CONNECT's is all there is.
        return web.json_response({"message": echo, "error": {"message": echo}},
                                 status=status, reason=echo[len(PAD) + 3:][:200])

    return web.Server(handle)


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            self.texts += _exception_texts(record.exc_info[1])


@pytest.fixture
def logs() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _exception_texts(exc: BaseException) -> list[str]:
    texts: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        texts += [str(current), repr(current), repr(vars(current))]
        current = current.__cause__
    return texts


def assert_redacted(error: BaseException, logs: Everything) -> None:
    """The error quoted the echo (as ``***``), and nothing it or the logs hold shows a
    credential."""
    texts = _exception_texts(error)
    assert any("***" in text for text in texts), texts[0]
    for text in texts + logs.texts:
        for needle in NEEDLES:
            assert needle not in text, f"{needle!r} in {text[:400]!r}"


@pytest.fixture
async def served() -> AsyncIterator[Any]:
    async def serve(app: web.Application | web.Server) -> str:
        if isinstance(app, web.Server):
            runner: web.BaseRunner = web.ServerRunner(app, shutdown_timeout=0.1)
        else:
            runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async with contextlib.AsyncExitStack() as stack:
        yield serve


async def _proxy_url(served: Any, status: int) -> str:
    url: str = await served(proxy_gateway(status))
    return url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@")


@pytest.mark.parametrize(("status", "shape"), [
    (401, "langfuse-json"), (502, "langfuse-json"), (400, "text"), (503, "text"),
    (429, "langfuse-json"), (200, "not-json-200"),
])
async def test_langfuse_errors_never_quote_echoed_credentials(
        served: Any, logs: Everything, status: int, shape: str) -> None:
    url = await served(gateway(status, shape))
    async with AsyncPromptClient(base_url=url, public_key=PUBLIC, secret_key=SECRET, env={},
                                 retry=RetryPolicy(max_retries=1, base_delay=0.0)) as client:
        with pytest.raises(FetchError) as info:
            await client.get_prompt("p")
    assert_redacted(info.value, logs)


@pytest.mark.parametrize("status", [407, 502])
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_proxy_echoing_its_credentials_and_the_keys_shows_neither(
        served: Any, logs: Everything, status: int, scheme: str) -> None:
    proxy = await _proxy_url(served, status)
    async with AsyncPromptClient(base_url=f"{scheme}://127.0.0.1:9", public_key=PUBLIC,
                                 secret_key=SECRET, env={"all_proxy": proxy},
                                 retry=RetryPolicy(max_retries=1, base_delay=0.0)) as client:
        with pytest.raises(FetchError) as info:
            await client.get_prompt("p")
    assert_redacted(info.value, logs)
    async with OpenAIChatProducer(base_url=f"{scheme}://127.0.0.1:9/v1", api_key=OPENAI_KEY,
                                  proxy=proxy) as llm:
        with pytest.raises(ResponseError) as answer:
            await llm.complete({"model": "m", "messages": []})
    assert_redacted(answer.value, logs)


@pytest.mark.parametrize(("status", "shape"), [
    (401, "openai-json"), (500, "text"), (200, "openai-stream"),
])
async def test_openai_errors_never_quote_the_echoed_api_key(
        served: Any, logs: Everything, status: int, shape: str) -> None:
    url = await served(gateway(status, shape))
    async with OpenAIChatProducer(base_url=url + "/v1", api_key=OPENAI_KEY) as llm:
        with pytest.raises(ResponseError) as info:
            async for _ in llm.stream({"model": "m", "messages": []}):
                pass
    assert_redacted(info.value, logs)


def test_the_redactor_hides_each_form_and_cuts_after_redacting() -> None:
    auth = Secret("Basic " + base64.b64encode(f"{PUBLIC}:{SECRET}".encode()).decode())
    redact = Redactor([auth, Secret(f"Bearer {OPENAI_KEY}"), None, Secret("ab")])
    text = f"{PAD}{SECRET} {OPENAI_KEY} {auth.reveal()} ab"
    assert redact(text) == f"{PAD}*** *** *** ab"  # too short a secret is not looked for
    assert redact.excerpt(text, limit=60) == repr(PAD + "*** *** **") + "..."
    assert redact.excerpt(text.encode(), limit=len(PAD) + 5) == repr(PAD + "*** *") + "..."
    assert redact.printable(f"line\n{SECRET}") == "line\\n***"
    assert SECRET not in repr(redact) and OPENAI_KEY not in repr(redact)
    with pytest.raises(TypeError):
        pickle.dumps(redact)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pw@proxy:3128", "http://user:***@proxy:3128"),
    ("http://a:p@ss@host/x", "http://a:***@host/x"),
    ("redis://token@host:6379", "redis://***@host:6379"),
    ("redis://:pw@host/0?password=hunter22&db=1", "redis://***@host/0?password=***&db=1"),
    ("rediss://[::1/0?password=x", "rediss://[::1/0?password=***"),  # not even a valid URL
    ("http://host/path", "http://host/path"),
])
def test_one_url_redactor(url: str, shown: str) -> None:
    assert redact_url(url) == shown
