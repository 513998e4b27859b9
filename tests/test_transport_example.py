"""The FastAPI example with ``AsyncOpenAI`` over the cache transport, through Starlette's
TestClient, against the local server."""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.request
from pathlib import Path

from fastapi.testclient import TestClient

from asyncpromptcache.server import ServerThread

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_sdk_transport.py"


def test_the_fastapi_app_caches_its_sdk_calls() -> None:
    spec = importlib.util.spec_from_file_location("examples_fastapi_sdk_transport", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    with ServerThread() as server:
        app = module.create_app(llm_base_url=server.base_url + "/v1", llm_api_key="k")
        with TestClient(app) as client:
            streamed = [client.get("/ask/stream", params={"q": "what is cached?"})
                        for _ in range(2)]
            whole = [client.get("/ask", params={"q": "what is cached?"}).json()
                     for _ in range(2)]
        assert [r.headers["x-cache"] for r in streamed] == ["miss", "hit"]
        assert streamed[0].text == streamed[1].text and "data: " in streamed[0].text
        assert whole[0]["answer"] == whole[1]["answer"]
        assert whole[0]["cache"] == "miss" and whole[1]["cache"] in ("hit", "join")
        with urllib.request.urlopen(server.base_url + "/_admin/chat/requests") as r:
            counts = json.loads(r.read())
        assert counts["requests"] == 2  # one stream, one whole answer
