"""The cache transports' pure parts: routes, sampling per protocol, directives, keys and
the event splitter."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, strategies as st

from asyncpromptcache.response.transports._frames import EventSplitter, StreamCheck
from asyncpromptcache.response.transports._policy import (
    Bypass,
    DirectiveError,
    Directives,
    Lookup,
    decide,
    is_sampled,
    key_material,
    parse_directives,
    route_of,
)


def test_routes_by_the_end_of_the_path() -> None:
    assert route_of("POST", "/v1/chat/completions") == "chat"
    assert route_of("POST", "/openai/deployments/d/chat/completions") == "chat"
    assert route_of("POST", "/proxy/v1/messages") == "messages"
    assert route_of("POST", "/v1/threads/t/messages") is None  # the Assistants API
    assert route_of("POST", "/v1/responses") == "responses"
    assert route_of("GET", "/v1/responses/resp_1") is None
    assert route_of("POST", "/v1/embeddings") == "embeddings"
    assert route_of("GET", "/v1/chat/completions") is None
    assert route_of("POST", "/v1/models") is None


@pytest.mark.parametrize(("route", "body", "sampled"), [
    ("chat", {}, True),  # OpenAI's default temperature is 1
    ("chat", {"temperature": 0}, False),
    ("chat", {"temperature": 0.7, "seed": 1}, False),
    ("chat", {"temperature": 0, "n": 2}, True),
    ("chat", {"temperature": 0, "top_p": 0.5}, False),
    ("chat", {"temperature": "hot"}, True),
    ("responses", {}, True),
    ("responses", {"temperature": 0}, False),
    ("responses", {"temperature": 0, "seed": 1}, False),
    ("messages", {}, True),  # Anthropic's default temperature is 1.0
    ("messages", {"temperature": 0.0}, False),
    ("messages", {"temperature": 0, "thinking": {"type": "enabled"}}, True),
    ("embeddings", {}, False),
])
def test_sampling_per_protocol(route: Any, body: dict[str, Any], sampled: bool) -> None:
    assert is_sampled(route, body) is sampled


def test_directives() -> None:
    headers = [("cache-control", "no-cache, max-age=30, private"), ("x-cache-ttl", "60"),
               ("x-cache-namespace", " tenant ")]
    assert parse_directives(headers) == Directives(no_cache=True, max_age=30.0, ttl=60.0,
                                                   tenant="tenant")
    for bad in ([("x-cache-ttl", "-1")], [("cache-control", "max-age=soon")],
                [("cache-control", "only-if-cached, no-store")]):
        with pytest.raises(DirectiveError):
            parse_directives(bad)


def test_decisions() -> None:
    plain = Directives()
    assert decide("chat", {"temperature": 0}, plain, cache_sampled=False) == \
        Lookup("normal", None, None)
    assert decide("chat", {}, plain, cache_sampled=False) == Bypass("sampled")
    assert decide("chat", {}, plain, cache_sampled=True) == Lookup("normal", None, None)
    assert decide("chat", {}, Directives(no_store=True), cache_sampled=True) == \
        Bypass("no-store")
    assert decide("chat", {}, Directives(only_if_cached=True), cache_sampled=False) == \
        Lookup("cache_only", None, None)
    assert decide("chat", {"temperature": 0}, Directives(max_age=0), cache_sampled=False) \
        == Lookup("refresh", 0, None)
    assert isinstance(decide("responses", {"temperature": 0, "background": True}, plain,
                             cache_sampled=True), Bypass)


def test_keys_hold_a_digest_of_the_credentials_never_the_key() -> None:
    def material(key: str, share: bool = False) -> dict[str, Any]:
        return key_material("chat", "https://api:443", "/v1/chat/completions", {"m": 1},
                            [("authorization", key), ("anthropic-version", "1")],
                            tenant="", share_across_keys=share)

    one, two = material("Bearer sk-one"), material("Bearer sk-two")
    assert one["credentials"] != two["credentials"]
    assert "sk-one" not in repr(one)
    assert material("Bearer sk-one", True) == material("Bearer sk-two", True)
    assert one["vary"] == [("anthropic-version", "1")]


STREAM = (b"event: message_start\ndata: {}\n\n: a comment\r\n\r\n"
          b"data: [DONE]\n\nevent: x\rdata: y\r\r")


@given(st.lists(st.integers(0, len(STREAM)), max_size=6))
def test_the_splitter_gives_the_same_events_however_the_bytes_are_cut(cuts: list[int]) -> None:
    splitter, events, start = EventSplitter(), [], 0
    for cut in [*sorted(cuts), len(STREAM)]:
        events += splitter.feed(STREAM[start:cut])
        start = cut
    assert events == [b"event: message_start\ndata: {}\n\n", b": a comment\r\n\r\n",
                      b"data: [DONE]\n\n", b"event: x\rdata: y\r\r"]
    assert splitter.rest() == b""


def test_a_stream_is_whole_only_with_its_last_event() -> None:
    chat = StreamCheck("chat")
    chat.feed(b"data: {}\n\n")
    assert not chat.whole
    chat.feed(b"data: [DONE]\n\n")
    assert chat.whole
    messages = StreamCheck("messages")
    messages.feed(b"event: message_stop\ndata: {}\n\n")
    assert messages.whole
    failed = StreamCheck("responses")
    failed.feed(b"event: error\ndata: {}\n\n")
    failed.feed(b"event: response.completed\ndata: {}\n\n")
    assert failed.failed and not failed.whole
