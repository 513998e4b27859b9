from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # The SDK is asyncio-native (aiohttp); anyio is used for structured concurrency on it.
    return "asyncio"
