"""A FastAPI app whose ``AsyncOpenAI`` calls are cached by the transport under its client:
the route code is plain SDK code, unchanged.

    python -m asyncpromptcache serve                       # a local OpenAI-compatible LLM
    LLM_BASE_URL=http://127.0.0.1:3000/v1 uvicorn examples.fastapi_sdk_transport:app

* ``GET /ask/stream?q=...``: the answer as server-sent text, token by token. Everyone asking
  the same question at the same moment shares one upstream stream; asking it again replays
  the stored stream. The ``X-Cache`` header says ``hit``, ``miss``, ``join`` or ``bypass``.
* ``GET /ask?q=...``: the whole answer as JSON (a cached non-streaming call).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI

from asyncpromptcache.response import AsyncCacheTransport


def create_app(*, llm_base_url: str | None = None, llm_api_key: str | None = None,
               env: Mapping[str, str] | None = None) -> FastAPI:
    """The app; arguments not given come from the environment when it starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        environ = os.environ if env is None else env
        # The one change: the SDK's HTTP client gets the cache transport. The client closes
        # the transport, and the transport its cache.
        http = httpx2.AsyncClient(transport=AsyncCacheTransport(ttl_seconds=600))
        async with AsyncOpenAI(
                base_url=llm_base_url or environ.get("LLM_BASE_URL", "http://127.0.0.1:3000/v1"),
                api_key=llm_api_key or environ.get("LLM_API_KEY", "local"),
                http_client=http) as client:
            app.state.llm = client
            yield

    app = FastAPI(lifespan=lifespan)

    def question(q: str) -> dict[str, Any]:
        # temperature 0: deterministic, so cached (a sampled request passes through)
        return {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 200,
                "messages": [{"role": "user", "content": q}]}

    @app.get("/ask/stream")
    async def ask_stream(request: Request, q: str = Query(min_length=1)) -> StreamingResponse:
        client: AsyncOpenAI = request.app.state.llm
        stream = await client.chat.completions.create(**question(q), stream=True)

        async def text() -> AsyncIterator[str]:
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield f"data: {chunk.choices[0].delta.content}\n\n"

        return StreamingResponse(text(), media_type="text/event-stream",
                                 headers={"X-Cache": stream.response.headers["x-cache"]})

    @app.get("/ask")
    async def ask(request: Request, q: str = Query(min_length=1)) -> dict[str, Any]:
        client: AsyncOpenAI = request.app.state.llm
        raw = await client.chat.completions.with_raw_response.create(**question(q))
        completion = raw.parse()
        return {"answer": completion.choices[0].message.content,
                "cache": raw.headers["x-cache"]}

    return app


app = create_app()
