"""Receive Langfuse's prompt-version webhooks in an aiohttp app, so a label moved in Langfuse
is served at once instead of when the TTL runs out.

    LANGFUSE_BASE_URL=... LANGFUSE_PUBLIC_KEY=... LANGFUSE_SECRET_KEY=... \\
    LANGFUSE_WEBHOOK_SECRET=... python examples/webhook_aiohttp.py

Then, in Langfuse (Prompts > Automations), add a webhook on prompt-version events pointing at
``http://<this host>:8080/langfuse/webhook``; its signing secret is LANGFUSE_WEBHOOK_SECRET.
The handler passes the raw body (the signature covers the exact bytes) and the
``x-langfuse-signature`` header to ``client.handle_webhook``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from asyncpromptcache import (
    AsyncPromptClient,
    WebhookError,
    WebhookReplayError,
    WebhookSignatureError,
)

CLIENT = web.AppKey("client", AsyncPromptClient)


async def langfuse_webhook(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    body = await request.read()
    try:
        event = await client.handle_webhook(body, request.headers.get("x-langfuse-signature"))
    except WebhookReplayError:
        return web.json_response({"status": "already applied"})  # 2xx: Langfuse stops resending
    except WebhookSignatureError:
        return web.json_response({"error": "bad signature"}, status=401)
    except WebhookError as exc:  # not a prompt-version event, or no secret configured
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"status": "applied", "id": event.id})


def add_webhook_route(app: web.Application, path: str = "/langfuse/webhook") -> None:
    """Mount the receiver on ``app``; it applies webhooks to ``app[CLIENT]``."""
    app.router.add_post(path, langfuse_webhook)


async def prompt_client(app: web.Application) -> AsyncIterator[None]:
    """One client for the app's life (a cleanup context): opened at start-up, closed at exit."""
    async with AsyncPromptClient() as client:  # settings from the environment
        app[CLIENT] = client
        yield


async def movie_critic(request: web.Request) -> web.Response:
    prompt = await request.app[CLIENT].get_prompt("movie-critic")
    return web.Response(text=prompt.compile(movie=request.query.get("movie", "Dune")))


def make_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(prompt_client)
    app.router.add_get("/", movie_critic)
    add_webhook_route(app)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=8080)
