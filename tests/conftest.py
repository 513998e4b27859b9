from __future__ import annotations

import os

import pytest


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
