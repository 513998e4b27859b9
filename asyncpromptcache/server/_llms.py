"""The fake LLM endpoints of the local server, registered together: OpenAI Chat Completions,
the Responses API, Anthropic Messages and embeddings (each in a module of its own)."""

from __future__ import annotations

from aiohttp import web

from ._anthropic import MESSAGES_PATH, add_anthropic_routes
from ._embeddings import EMBEDDINGS_PATH, add_embeddings_routes
from ._openai import COMPLETIONS_PATH, add_openai_routes
from ._responses import RESPONSES_PATH, add_responses_routes

__all__ = ["LLM_ENDPOINTS", "add_llm_routes", "describe_llm_endpoints"]

#: Each endpoint's path and the name of its admin routes (``/_admin/NAME/...``).
LLM_ENDPOINTS = (
    (COMPLETIONS_PATH, "chat"),
    (RESPONSES_PATH, "responses"),
    (MESSAGES_PATH, "messages"),
    (EMBEDDINGS_PATH, "embeddings"),
)


def add_llm_routes(app: web.Application) -> None:
    """Serve every fake LLM endpoint and its admin routes on ``app``."""
    add_openai_routes(app)
    add_responses_routes(app)
    add_anthropic_routes(app)
    add_embeddings_routes(app)


def describe_llm_endpoints() -> str:
    """The endpoints and their admin routes, in words, for ``serve``."""
    paths = ", ".join(f"{path} (admin /_admin/{name}/)" for path, name in LLM_ENDPOINTS)
    return (f"fake LLM endpoints {paths}, each admin prefix with controls, requests, "
            "recent and release")
