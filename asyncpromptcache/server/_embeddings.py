"""OpenAI's embeddings (``POST /v1/embeddings``) on the local server: deterministic vectors.

Each input's vector depends only on the model, the input and the dimensions, never on the
other inputs of the request: a unit-length float32 vector drawn from a hash of
``[model, input]`` (so a vector with ``dimensions`` is the full one cut short and
renormalised, as OpenAI's text-embedding-3 models do). ``input`` is a string, a list of
strings, a list of token ids or a list of such lists; ``encoding_format`` is ``float`` (the
default) or ``base64`` (little-endian float32, what the OpenAI SDK asks for unless told
otherwise); ``dimensions`` defaults to 3072 for ``text-embedding-3-large`` and 1536
otherwise. ``usage`` counts the words (or token ids) of the inputs. Knobs at
``/_admin/embeddings/controls`` (``fail_status``, ``first_token_delay_seconds`` as latency);
``/_admin/embeddings/requests`` counts ``requests``, ``completions`` (answers) and
``inputs`` (inputs embedded).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from typing import Any

from aiohttp import web

from ._llmcore import FakeLLM
from ._openai import openai_error

__all__ = ["EMBEDDINGS_PATH", "add_embeddings_routes", "embedding_vector"]

EMBEDDINGS_PATH = "/v1/embeddings"
_MAX_DIMENSIONS = 4096
_MAX_INPUTS = 2048

_EMBEDDINGS = web.AppKey("asyncpromptcache_embeddings", FakeLLM)


def add_embeddings_routes(app: web.Application) -> None:
    """Serve ``/v1/embeddings`` and its admin routes (``/_admin/embeddings/...``) on ``app``."""
    FakeLLM("embeddings", openai_error, counter_fields=("requests", "completions", "inputs")
            ).mount(app, _EMBEDDINGS, EMBEDDINGS_PATH, _embeddings)


# -- the vectors (pure) ----------------------------------------------------------------------


def embedding_vector(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """The unit-length vector of one input, its values exactly representable as float32."""
    seed = hashlib.sha256(json.dumps([model, item], separators=(",", ":")).encode()).digest()
    values: list[float] = []
    block = seed
    while len(values) < dimensions:
        block = hashlib.sha256(block).digest()
        values += [n / 2**31 - 1.0 for n in struct.unpack("<8I", block)]
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return list(struct.unpack(f"<{dimensions}f",
                              struct.pack(f"<{dimensions}f", *(v / norm for v in values))))


def _inputs(raw: Any) -> list[str | list[int]] | None:
    """The request's inputs as a list, or ``None`` when ``input`` is not a valid shape."""
    def tokens(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)

    if isinstance(raw, str):
        return [raw] if raw else None
    if tokens(raw):
        return [raw]
    if isinstance(raw, list) and raw and len(raw) <= _MAX_INPUTS and all(
            (isinstance(item, str) and item) or tokens(item) for item in raw):
        return list(raw)
    return None


def _usage(items: list[str | list[int]]) -> dict[str, int]:
    count = sum(len(item.split()) if isinstance(item, str) else len(item) for item in items)
    return {"prompt_tokens": count, "total_tokens": count}


# -- the handler -----------------------------------------------------------------------------


async def _embeddings(request: web.Request) -> web.Response:
    llm = request.app[_EMBEDDINGS]
    body = await llm.read_body(request)
    if isinstance(body, web.Response):
        return body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return openai_error(400, "'model' is required (a string)")
    items = _inputs(body.get("input"))
    if items is None:
        return openai_error(400, "'input' must be a non-empty string, a list of them, a list "
                            f"of token ids or a list of such lists (at most {_MAX_INPUTS})")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        return openai_error(400, "'encoding_format' must be 'float' or 'base64'")
    full = 3072 if model == "text-embedding-3-large" else 1536
    dimensions = body.get("dimensions", full)
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not (
            1 <= dimensions <= _MAX_DIMENSIONS):
        return openai_error(400, f"'dimensions' must be an integer from 1 to {_MAX_DIMENSIONS}")
    failure = llm.injected_failure()
    if failure is not None:
        return failure
    await llm.before_answer()
    llm.counter.add("inputs", len(items))
    data = []
    for index, item in enumerate(items):
        vector = embedding_vector(model, item, dimensions)
        embedding: list[float] | str = vector if fmt == "float" else base64.b64encode(
            struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return web.json_response({"object": "list", "data": data, "model": model,
                              "usage": _usage(items)})
