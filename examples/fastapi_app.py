"""A FastAPI app that streams LLM answers through the response cache.

    python -m asyncpromptcache serve --seed examples/prompts        # prompts and a local LLM
    curl -X POST localhost:3000/_admin/chat/controls -d '{"token_delay_seconds": 0.03}'
    LANGFUSE_BASE_URL=http://127.0.0.1:3000 LLM_BASE_URL=http://127.0.0.1:3000/v1 \\
        uvicorn examples.fastapi_app:app --port 8000
    open http://127.0.0.1:8000/              # a page that shows the tokens arriving

The prompt comes from ``AsyncPromptClient`` (the ``support`` chat prompt), the answer from
``ResponseCache`` over any OpenAI-compatible endpoint (``LLM_BASE_URL``, ``LLM_API_KEY``;
the local server's by default). Everyone asking the same question at the same moment shares
one upstream stream; asking it again replays the stored answer, chunk by chunk.

* ``GET /ask/stream?q=...``: server-sent events, OpenAI's chunk objects then ``[DONE]``;
  the ``X-Cache`` header says ``hit``, ``miss``, ``join`` or ``bypass``.
* ``GET /ask?q=...``: the whole answer as JSON (a cached non-streaming call).
* ``GET /metrics``: the caches' OpenTelemetry metrics in Prometheus's text format. The app,
  not the library, configures the OpenTelemetry SDK: a ``MeterProvider`` whose reader is
  the Prometheus exporter, given to both caches as ``meter_provider=``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from asyncpromptcache import AsyncPromptClient, PromptCacheError, ResponseCache
from asyncpromptcache.response import OpenAIChatProducer, chunk_text

FALLBACK = [{"role": "system", "content": "You are the support assistant of {{product}}."},
            {"role": "user", "content": "{{question}}"}]


def create_app(*, prompt_base_url: str | None = None, llm_base_url: str | None = None,
               llm_api_key: str | None = None,
               env: Mapping[str, str] | None = None) -> FastAPI:
    """The app; arguments not given come from the environment when it starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        environ = os.environ if env is None else env
        base = llm_base_url or environ.get("LLM_BASE_URL", "http://127.0.0.1:3000/v1")
        # The app's own registry: two apps in one process (tests) do not mix their metrics.
        app.state.registry = registry = CollectorRegistry()
        meters = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
        async with AsyncPromptClient(base_url=prompt_base_url, env=environ,
                                     meter_provider=meters) as prompts, \
                ResponseCache(ttl_seconds=600, meter_provider=meters) as cache, \
                OpenAIChatProducer(base_url=base,
                                   api_key=llm_api_key or environ.get("LLM_API_KEY")) as llm:
            app.state.prompts, app.state.cache, app.state.llm = prompts, cache, llm
            yield
        meters.shutdown()

    app = FastAPI(lifespan=lifespan)

    async def llm_request(request: Request, question: str) -> dict[str, Any]:
        prompt = await request.app.state.prompts.get_prompt(
            "support", type="chat", fallback=FALLBACK)
        messages = prompt.compile(product="asyncpromptcache", user="a visitor", history=[],
                                  question=question)
        config = prompt.config if isinstance(prompt.config, dict) else {}
        # A support answer should not change from one asker to the next: a fixed seed makes
        # the request deterministic, so it is cached (an unseeded sampled one would not be).
        return {"model": config.get("model", "gpt-4o-mini"), "messages": messages,
                "temperature": config.get("temperature", 0), "seed": 0,
                "max_tokens": min(int(config.get("max_tokens", 200)), 200)}

    @app.get("/ask/stream")
    async def ask_stream(request: Request, q: str = Query(min_length=1)) -> StreamingResponse:
        body = await llm_request(request, q)
        cache: ResponseCache = request.app.state.cache
        llm: OpenAIChatProducer = request.app.state.llm
        answer = cache.stream(body, llm.producer(body))
        source = await answer.start()  # a hit, a join or a new upstream stream

        async def events() -> AsyncIterator[str]:
            async with answer:  # a client that disconnects leaves; the stream goes on
                try:
                    async for chunk in answer:
                        yield f"data: {json.dumps(chunk)}\n\n"
                except PromptCacheError as exc:
                    error = {"error": {"message": str(exc), "type": type(exc).__name__}}
                    yield f"event: error\ndata: {json.dumps(error)}\n\n"
                    return
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Cache": source, "Cache-Control": "no-cache"})

    @app.get("/ask")
    async def ask(request: Request, q: str = Query(min_length=1)) -> JSONResponse:
        body = await llm_request(request, q)
        cache: ResponseCache = request.app.state.cache
        llm: OpenAIChatProducer = request.app.state.llm
        try:
            completion = await cache.get(body, llm.whole(body))
        except PromptCacheError as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        return JSONResponse({"answer": chunk_text(completion)})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    return app


PAGE = """<!doctype html>
<meta charset="utf-8"><title>asyncpromptcache: streamed and cached answers</title>
<style>body{font:16px system-ui;max-width:40em;margin:2em auto}#out{white-space:pre-wrap;
border:1px solid #ccc;padding:1em;min-height:4em}small{color:#666}</style>
<h1>Ask the support assistant</h1>
<form id="f"><input id="q" size="40" value="How do I reset my password?">
<button>Ask</button></form>
<p><small id="meta"></small></p><div id="out"></div>
<script>
document.getElementById("f").onsubmit = async (event) => {
  event.preventDefault();
  const out = document.getElementById("out"), meta = document.getElementById("meta");
  out.textContent = ""; const started = performance.now(); let chunks = 0;
  const response = await fetch("/ask/stream?q=" + encodeURIComponent(
    document.getElementById("q").value));
  meta.textContent = "source: " + response.headers.get("X-Cache");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {
      const event = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      const data = event.split("\\n").filter(l => l.startsWith("data: "))
        .map(l => l.slice(6)).join("\\n");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) { out.textContent += "\\n[error] " + chunk.error.message; continue; }
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) { out.textContent += delta.content; chunks++; }
      meta.textContent = "source: " + response.headers.get("X-Cache") + ", " + chunks +
        " chunks in " + Math.round(performance.now() - started) + " ms";
    }
  }
};
</script>
"""

app = create_app()
