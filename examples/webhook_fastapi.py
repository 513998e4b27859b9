"""Receive Langfuse's prompt-version webhooks in a FastAPI (or plain Starlette) app, so a label
moved in Langfuse is served at once instead of when the TTL runs out.

    pip install fastapi uvicorn
    LANGFUSE_BASE_URL=... LANGFUSE_PUBLIC_KEY=... LANGFUSE_SECRET_KEY=... \\
    LANGFUSE_WEBHOOK_SECRET=... uvicorn examples.webhook_fastapi:app --port 8080

Then, in Langfuse (Prompts > Automations), add a webhook on prompt-version events pointing at
``http://<this host>:8080/langfuse/webhook``; its signing secret is LANGFUSE_WEBHOOK_SECRET.
The endpoint reads the raw body (the signature covers the exact bytes: do not let a JSON
model parse it first) and passes it with the ``x-langfuse-signature`` header to
``client.handle_webhook``. ``starlette_app`` mounts the same endpoint without FastAPI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asyncpromptcache import (
    AsyncPromptClient,
    WebhookError,
    WebhookReplayError,
    WebhookSignatureError,
)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with AsyncPromptClient() as client:  # settings from the environment
        app.state.prompts = client
        yield


async def langfuse_webhook(request: Request) -> JSONResponse:
    client: AsyncPromptClient = request.app.state.prompts
    try:
        event = await client.handle_webhook(
            await request.body(), request.headers.get("x-langfuse-signature")
        )
    except WebhookReplayError:
        return JSONResponse({"status": "already applied"})  # 2xx: Langfuse stops resending
    except WebhookSignatureError:
        return JSONResponse({"error": "bad signature"}, status_code=401)
    except WebhookError as exc:  # not a prompt-version event, or no secret configured
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"status": "applied", "id": event.id})


async def movie_critic(request: Request) -> JSONResponse:
    client: AsyncPromptClient = request.app.state.prompts
    prompt = await client.get_prompt("movie-critic")
    return JSONResponse({"prompt": prompt.compile(movie=request.query_params.get("movie", ""))})


app = FastAPI(lifespan=lifespan)
app.add_api_route("/langfuse/webhook", langfuse_webhook, methods=["POST"])
app.add_api_route("/", movie_critic, methods=["GET"])

starlette_app = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/langfuse/webhook", langfuse_webhook, methods=["POST"]),
        Route("/", movie_critic, methods=["GET"]),
    ],
)
