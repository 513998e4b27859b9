"""Validation at the door: every number, name list and base URL a
user hands the SDK is checked where it enters, with an error of our tree naming it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from asyncpromptcache import (
    AsyncPromptCache,
    AsyncPromptClient,
    ConfigurationError,
    InvalidArgumentError,
    LangfuseSource,
    PromptClient,
    PromptKey,
    RetryPolicy,
)

from .faultserver import FaultServer, fault_server, fault_server_in_thread

NAN, INF = math.nan, math.inf
SECONDS_BAD = [NAN, INF, -INF, -1, "5", True, None, [1]]
COUNT_BAD = [1.5, 2.0, INF, NAN, -1, True, "2", None]

# option -> values it must refuse (None is allowed where it means "the default").
CONSTRUCTOR_BAD: dict[str, list[Any]] = {
    "cache_ttl_seconds": [v for v in SECONDS_BAD if v is not None],
    "max_stale_seconds": [NAN, -1, "60", True, [1]],
    "fetch_timeout_seconds": [0, *(v for v in SECONDS_BAD if v is not None)],
    "max_retries": COUNT_BAD,
    "max_size": [0, *COUNT_BAD],
    "refresh_backoff_seconds": SECONDS_BAD,
    "refresh_backoff_max_seconds": SECONDS_BAD,
}
CASES = [(name, value) for name, values in CONSTRUCTOR_BAD.items() for value in values]


@pytest.mark.parametrize("client_class", [AsyncPromptClient, PromptClient])
@pytest.mark.parametrize(("option", "value"), CASES)
def test_constructor_refuses_bad_numbers(client_class: type, option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=option):
        client_class(base_url="http://127.0.0.1:9", env={}, **{option: value})


@pytest.mark.parametrize("option", ["refresh_backoff_seconds", "max_stale_seconds"])
def test_engine_refuses_bad_numbers_itself(option: str) -> None:
    for value in (NAN, "1", True):
        with pytest.raises(ConfigurationError, match=option):
            AsyncPromptCache(**{option: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_size"):
        AsyncPromptCache(max_size=2.5)  # type: ignore[arg-type]


def test_max_stale_seconds_may_be_infinite() -> None:
    AsyncPromptClient(base_url="http://127.0.0.1:9", env={}, max_stale_seconds=INF)


@pytest.mark.parametrize(
    ("var", "value"),
    [("LANGFUSE_TIMEOUT", v) for v in ("nan", "inf", "-1", "0", "five")]
    + [("LANGFUSE_PROMPT_CACHE_TTL_SECONDS", v) for v in ("nan", "inf", "-1", "x")]
    + [("LANGFUSE_PROMPT_CACHE_DEFAULT_TTL_SECONDS", v) for v in ("NaN", "Infinity")],
)
def test_bad_environment_numbers_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=var):
        AsyncPromptClient(env={"LANGFUSE_BASE_URL": "http://127.0.0.1:9", var: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_retries", v) for v in COUNT_BAD if v is not None]
    + [(f, v) for f in ("base_delay", "max_delay", "max_retry_after")
       for v in SECONDS_BAD if v is not None]
    + [("rng", 0.5)],
)
def test_retry_policy_fields(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"RetryPolicy.{field}"):
        RetryPolicy(**{field: value})


def test_langfuse_source_options() -> None:
    for options in ({"timeout_seconds": NAN}, {"timeout_seconds": 0},
                    {"max_response_bytes": 0}, {"max_response_bytes": 1.5}):
        with pytest.raises(ConfigurationError, match=next(iter(options))):
            LangfuseSource(base_url="http://127.0.0.1:9", **options)


def test_close_timeout() -> None:
    client = PromptClient(base_url="http://127.0.0.1:9", env={})
    for value in (NAN, INF, -1, "1", True):
        with pytest.raises(InvalidArgumentError, match="timeout"):
            client.close(timeout=value)  # type: ignore[arg-type]
    client.close(timeout=0)


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with fault_server() as s:
        s.put("greet", "Hello")
        s.put("g", "one letter")
        yield s


@pytest.mark.anyio
async def test_per_call_numbers_are_refused_before_any_request(server: FaultServer) -> None:
    bad: dict[str, list[Any]] = {
        "cache_ttl_seconds": [NAN, INF, -1, "0", True],
        "fetch_timeout_seconds": [0, NAN, INF, "1", True],
        "max_retries": [1.5, INF, -1, True, "1"],
    }
    async with AsyncPromptClient(base_url=server.base_url, env={}) as client:
        for option, values in bad.items():
            for value in values:
                with pytest.raises(InvalidArgumentError, match=option):
                    await client.get_prompt("greet", **{option: value})
                with pytest.raises(InvalidArgumentError, match=option):
                    await client.prefetch(["greet"], **{option: value})
    assert server.total == 0


# -- item 6: prefetch("name") ------------------------------------------------------------


@pytest.mark.anyio
async def test_prefetch_of_a_bare_string_is_one_name(server: FaultServer) -> None:
    async with AsyncPromptClient(base_url=server.base_url, env={}) as client:
        results = await client.prefetch("greet")
        assert list(results) == [PromptKey("greet", "production", None)]
        results = await client.prefetch(PromptKey("g", "production", None))
        assert list(results) == [PromptKey("g", "production", None)]
    assert server.requests == {"greet": 1, "g": 1}


@pytest.fixture
def sync_server() -> Iterator[FaultServer]:
    """The fault server on a loop thread of its own, for tests of the sync facade."""
    with fault_server_in_thread() as s:
        s.put("greet", "Hello")
        yield s


def test_sync_prefetch_of_a_bare_string_is_one_name(sync_server: FaultServer) -> None:
    with PromptClient(base_url=sync_server.base_url, env={}) as client:
        results = client.prefetch("greet")
        assert list(results) == [PromptKey("greet", "production", None)]
        with pytest.raises(InvalidArgumentError, match="prefetch"):
            client.prefetch(42)  # type: ignore[arg-type]
    assert sync_server.requests == {"greet": 1}


# -- item 7: base URLs that cannot be right -------------------------------------------------

BAD_URLS = [
    "https://cloud.langfuse.com/api/public",
    "https://cloud.langfuse.com/api/public/",
    "https://cloud.langfuse.com/api/public/v2",
    "https://example.com/langfuse/api/public/v2/prompts",
    "https://cloud.langfuse.com?region=eu",
    "https://cloud.langfuse.com/?",
    "https://cloud.langfuse.com#top",
    "https://pk-lf-1:hunter2-PASSWORD@cloud.langfuse.com",
    "https://hunter2-PASSWORD@cloud.langfuse.com",
    "ftp://cloud.langfuse.com",
    "https://",
    "https://host:port",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_base_urls_that_cannot_be_right(url: str) -> None:
    attempts: list[Callable[[], object]] = [
        lambda: AsyncPromptClient(base_url=url, env={}),
        lambda: PromptClient(base_url=url, env={}),
        lambda: AsyncPromptClient(env={"LANGFUSE_BASE_URL": url}),
        lambda: AsyncPromptClient(env={"LANGFUSE_HOST": url}),
        lambda: LangfuseSource(base_url=url),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigurationError) as info:
            attempt()
        assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value)


def test_good_base_urls_are_kept() -> None:
    for url, kept in [
        ("https://cloud.langfuse.com/", "https://cloud.langfuse.com"),
        (" https://us.cloud.langfuse.com\n", "https://us.cloud.langfuse.com"),
        ("http://127.0.0.1:3000/langfuse/", "http://127.0.0.1:3000/langfuse"),
    ]:
        client = AsyncPromptClient(base_url=url, env={})
        assert f"base_url={kept!r}" in repr(client.source)
