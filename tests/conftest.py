from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devkit.redisserver import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    # The SDK is asyncio-native (aiohttp); anyio is used for structured concurrency on it.
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_proxy_from_the_outer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Clients honour HTTP(S)_PROXY/ALL_PROXY by default; the suite talks to 127.0.0.1 only,
    # whatever proxy the machine running it has set. Tests of proxies set their own.
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server (``devkit.redisserver``), one for each module that asks."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The module's redis-server, flushed for each test."""
    redis_server.command("FLUSHALL")
    return redis_server.url
