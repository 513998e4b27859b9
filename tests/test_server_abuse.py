"""The local server under abuse: strangers' requests cost nothing that grows, slow-loris
sockets cannot starve real clients, and unsafe key/bind combinations are clean errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import anyio
import pytest

from asyncpromptcache import ConfigurationError
from asyncpromptcache._store._sqlite import PromptStore
from asyncpromptcache.server import (
    RequestCounter,
    ServerThread,
    check_bind,
    check_keys,
    create_app,
    run_server,
)

pytestmark = pytest.mark.anyio

HEALTH = "/api/public/health"


async def test_unauthenticated_names_are_not_kept() -> None:
    async with run_server(public_key="pk", secret_key="sk") as server, \
            aiohttp.ClientSession() as session:
        for i in range(50):
            async with session.get(f"{server.base_url}/api/public/v2/prompts/n{i}") as resp:
                assert resp.status == 401
        assert server.counter.get("get_prompt") == 50
        assert server.counter.snapshot()["prompts"] == {}
        async with session.get(
            f"{server.base_url}/api/public/v2/prompts/real", headers=server.auth_headers
        ):
            pass
        assert server.counter.get("get_prompt", "real") == 1


def test_counter_keeps_a_bounded_number_of_names() -> None:
    counter = RequestCounter(max_names=3)
    for i in range(10):
        counter.record("get_prompt", f"n{i}")
    counter.record("get_prompt", "n0")  # an already-kept name still counts
    assert counter.get("get_prompt") == 11
    assert counter.get("get_prompt", "n0") == 2
    assert counter.get("get_prompt", "n9") == 0
    assert counter.untracked_names == 7
    assert counter.snapshot()["untracked_names"] == 7
    with pytest.raises(ValueError, match="unknown route kind"):
        counter.record("made-up-kind")
    with pytest.raises(ValueError, match="max_names"):
        RequestCounter(max_names=-1)


async def _slow_socket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A slow-loris client: a connection with the start of a request and never the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/public/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    return reader, writer


async def test_slow_headers_are_cut_off() -> None:
    async with run_server(header_timeout=0.2) as server:
        reader, writer = await _slow_socket(server.port)
        try:
            with anyio.fail_after(10):  # a bound, not the measure: it ends at the close
                while await reader.read(1024):
                    pass  # the server sends nothing, then closes
            assert server.connections.closed_slow == 1
            assert server.connections.open_connections == 0
        finally:
            writer.close()
        async with aiohttp.ClientSession() as session, \
                session.get(server.base_url + HEALTH) as response:
            assert response.status == 200


async def test_slow_loris_sockets_do_not_starve_real_clients() -> None:
    async with run_server(max_connections=4, header_timeout=60) as server:
        sockets = [await _slow_socket(server.port) for _ in range(10)]
        try:
            # Each connection past the limit closed the oldest one still in its headers.
            with anyio.fail_after(10):
                for reader, _ in sockets[:6]:
                    assert await reader.read() == b""
            assert server.connections.open_connections == 4
            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    async with session.get(server.base_url + HEALTH) as response:
                        assert response.status == 200
            assert server.connections.open_connections <= 4
            assert server.connections.closed_over_limit >= 7
        finally:
            for _, writer in sockets:
                writer.close()


async def test_a_connection_past_the_limit_is_refused_when_none_is_slow() -> None:
    async with run_server(max_connections=1) as server, aiohttp.ClientSession() as session:
        async with session.get(server.base_url + HEALTH) as response:
            assert response.status == 200  # its connection stays open (keep-alive)
        assert server.connections.open_connections == 1
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        with anyio.fail_after(10):
            assert await reader.read() == b""  # the newcomer is closed, not the served one
        writer.close()
        assert server.connections.open_connections == 1
        async with session.get(server.base_url + HEALTH) as response:
            assert response.status == 200


@pytest.mark.parametrize("keys", [("", ""), ("  ", "sk"), ("pk", "\t\n"), ("pk", None)])
def test_bad_keys_are_a_clean_error_everywhere(keys: tuple[str, str | None]) -> None:
    public, secret = keys
    with pytest.raises(ConfigurationError):
        check_keys(public, secret)
    with pytest.raises(ConfigurationError):
        check_bind("0.0.0.0", public, secret)
    with pytest.raises(ConfigurationError):
        check_bind("127.0.0.1", public, secret)
    with pytest.raises(ConfigurationError):
        ServerThread(host="0.0.0.0", public_key=public, secret_key=secret)
    with PromptStore() as store, pytest.raises(ConfigurationError):
        create_app(store, public_key=public, secret_key=secret)


@pytest.mark.parametrize("args", [
    ["--host", "0.0.0.0", "--public-key", "", "--secret-key", ""],
    ["--host", "0.0.0.0", "--public-key", " ", "--secret-key", "sk"],
    ["--public-key", "pk", "--secret-key", "   "],
    ["--max-connections", "0"],
    ["--header-timeout", "0"],
    ["--webhook-url", "http://127.0.0.1:9/hook"],  # and no secret
    ["--webhook-url", "ftp://127.0.0.1/hook", "--webhook-secret", "s"],
    ["--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", "  "],
])
def test_cli_refuses_bad_keys_cleanly(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asyncpromptcache", "serve", "--port", "0", *args],
        capture_output=True, text=True, timeout=60, env={"PATH": ""},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
