"""``OpenAIResponsesProducer``: streams ``POST {base_url}/responses``, OpenAI's Responses API,
over aiohttp (the machinery in ``_base``).

Its stream is typed events, each with an ``event:`` line naming its ``type``:
``response.created`` first, ``response.output_text.delta``s and the other item events, and
``response.completed`` (or ``response.incomplete``, when a limit cut the answer) last. An
``error`` event and ``response.failed`` raise ``UpstreamEventError`` (its ``error_type`` the
error's ``code``); a stream that ends before its terminal event, ``UpstreamProtocolError``.
"""

from __future__ import annotations

from typing import Any

from ..._core.secret import NO_SECRETS, Redactor
from ._base import SSEProducer
from ._sse import SSEEvent, event_error, event_json

__all__ = ["RESPONSES_TERMINAL_EVENTS", "OpenAIResponsesProducer", "responses_event"]

#: The events that end a Responses API stream (each is yielded, then the stream ends).
RESPONSES_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


def responses_event(event: SSEEvent,
                    redact: Redactor = NO_SECRETS) -> tuple[dict[str, Any] | None, bool]:
    """The chunk an event of a Responses API stream carries, and whether it is the last.
    Pure; raises ``UpstreamEventError`` for the stream's error events."""
    if event.data.strip() == "[DONE]":  # not the Responses API's, but some servers add it
        return None, False
    data = event_json(event, redact)
    kind = data.get("type")
    if event.event == "error" or kind == "error":
        # Its "type" is "error" itself: the kind of error is its "code".
        fields = {key: value for key, value in data.items() if key != "type"}
        raise event_error("the stream sent an error", fields, redact)
    if kind == "response.failed":
        response = data.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        raise event_error("the response failed", error if isinstance(error, dict) else {}, redact)
    return data, kind in RESPONSES_TERMINAL_EVENTS


class OpenAIResponsesProducer(SSEProducer):
    """The Responses API of OpenAI (or a compatible server), as producers for
    ``ResponseCache``::

        async with OpenAIResponsesProducer(base_url="http://127.0.0.1:3000/v1") as llm:
            request = {"model": "gpt-5", "input": "Hello"}
            async for event in cache.stream(request, llm.producer(request)):
                print(chunk_text(event), end="")

    ``stream(request)`` yields each event object (``{"type": "response.…", ...}``) up to and
    including ``response.completed``; ``complete(request)`` returns the whole ``response``
    object. The API key is sent as ``Authorization: Bearer``. Options (timeouts, session,
    proxy...) as ``SSEProducer`` says.
    """

    path = "/responses"
    default_base_url = "https://api.openai.com/v1"
    terminal = "response.completed event"

    def read_event(self, event: SSEEvent,
                   redact: Redactor) -> tuple[dict[str, Any] | None, bool]:
        return responses_event(event, redact)
