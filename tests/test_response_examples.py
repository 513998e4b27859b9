"""The response-cache examples, run against the local server: the FastAPI app (through
Starlette's TestClient), the official openai SDK as a producer, and the demo's part."""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from asyncpromptcache import ResponseCache
from asyncpromptcache.server import ServerThread, run_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def admin(base_url: str, path: str) -> Any:
    with urllib.request.urlopen(base_url + path, timeout=5) as response:  # loopback only
        return json.loads(response.read())


def sse_data(body: str) -> list[str]:
    return [line[6:] for line in body.split("\n") if line.startswith("data: ")]


def test_the_fastapi_app_streams_and_caches_answers() -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    example = load("fastapi_app")
    with ServerThread(seed_dir=EXAMPLES / "prompts") as server:
        app = example.create_app(prompt_base_url=server.base_url,
                                 llm_base_url=server.base_url + "/v1", env={})
        with TestClient(app) as client:
            first = client.get("/ask/stream", params={"q": "How do I reset my password?"})
            second = client.get("/ask/stream", params={"q": "How do I reset my password?"})
            whole = [client.get("/ask", params={"q": "And my email?"}) for _ in range(2)]
            page = client.get("/")
        counts = admin(server.base_url, "/_admin/chat/requests")
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.text == second.text
    data = sse_data(first.text)
    assert data[-1] == "[DONE]" and len(data) > 3
    assert json.loads(data[1])["object"] == "chat.completion.chunk"
    assert whole[0].json() == whole[1].json() and whole[0].json()["answer"]
    assert (counts["streams"], counts["completions"]) == (1, 1)
    assert "getReader" in page.text and "/ask/stream" in page.text


@pytest.mark.anyio
async def test_the_openai_sdk_stream_is_a_producer() -> None:
    pytest.importorskip("openai")
    from openai import AsyncOpenAI

    example = load("openai_sdk_producer")
    async with run_server() as server, ResponseCache() as cache, AsyncOpenAI(
            base_url=server.base_url + "/v1", api_key="local", max_retries=0) as client:
        first = await example.ask(client, cache, "What does a response cache do?")
        second = await example.ask(client, cache, "What does a response cache do?")
    assert first[1] == "miss" and second == (first[0], "hit") and first[0]


@pytest.mark.anyio
async def test_the_demo_answers_50_questions_with_one_stream(
        capsys: pytest.CaptureFixture[str]) -> None:
    from asyncpromptcache._demo import _responses

    with anyio.fail_after(20):
        await _responses()
    out = capsys.readouterr().out
    assert "50 answers" in out and "from 1 upstream stream(s)" in out
    assert "deterministic filler text, not a model's" in out
    assert "source='hit', 14 chunks replayed" in out
