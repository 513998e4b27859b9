"""``OpenAIChatProducer``: streams ``POST {base_url}/chat/completions`` of any
OpenAI-compatible endpoint over aiohttp (the machinery in ``_base``)."""

from __future__ import annotations

from typing import Any

from ..._core.secret import Redactor
from ._base import SSEProducer
from ._sse import SSEEvent, openai_chunk

__all__ = ["OpenAIChatProducer"]


class OpenAIChatProducer(SSEProducer):
    """Chat completions from an OpenAI-compatible endpoint, as producers for
    ``ResponseCache``::

        async with OpenAIChatProducer(base_url="http://127.0.0.1:3000/v1") as llm:
            async for chunk in cache.stream(request, llm.producer(request)):
                print(chunk_text(chunk), end="")

    ``stream(request)`` yields each chunk object of ``stream=true`` (``[DONE]`` ends it; an
    error event raises ``UpstreamEventError``); ``complete(request)`` returns the whole
    ``chat.completion`` object. The API key is sent as ``Authorization: Bearer``. Options
    (timeouts, session, proxy...) as ``SSEProducer`` says.
    """

    path = "/chat/completions"
    default_base_url = "https://api.openai.com/v1"
    terminal = "[DONE] marker"

    def read_event(self, event: SSEEvent,
                   redact: Redactor) -> tuple[dict[str, Any] | None, bool]:
        chunk = openai_chunk(event, redact)
        return chunk, chunk is None
