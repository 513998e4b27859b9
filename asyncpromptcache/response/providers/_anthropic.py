"""``AnthropicMessagesProducer``: streams ``POST {base_url}/v1/messages``, Anthropic's
Messages API, over aiohttp (the machinery in ``_base``).

Its stream is typed events with ``event:`` lines: ``message_start``, per content block
``content_block_start``, ``content_block_delta``s (``text_delta``, ``thinking_delta``,
``signature_delta``, ``input_json_delta``) and ``content_block_stop``, then
``message_delta`` and ``message_stop`` last; ``ping``s come anywhere and are dropped. An
``error`` event (``{"type": "error", "error": {"type": "overloaded_error", ...}}``) raises
``UpstreamEventError`` with that ``error_type``; a stream that ends before ``message_stop``,
``UpstreamProtocolError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ..._core.secret import NO_SECRETS, Redactor
from ._base import SSEProducer
from ._sse import SSEEvent, event_error, event_json

__all__ = ["ANTHROPIC_VERSION", "AnthropicMessagesProducer", "messages_event"]

#: The ``anthropic-version`` header sent unless ``headers=`` names another.
ANTHROPIC_VERSION = "2023-06-01"


def messages_event(event: SSEEvent,
                   redact: Redactor = NO_SECRETS) -> tuple[dict[str, Any] | None, bool]:
    """The chunk an event of a Messages stream carries (``None`` for a ``ping``), and whether
    it is the last. Pure; raises ``UpstreamEventError`` for an error event."""
    if event.event == "ping":
        return None, False
    data = event_json(event, redact)
    kind = data.get("type")
    if event.event == "error" or kind == "error":
        raise event_error("the stream sent an error", data, redact)
    if kind == "ping":
        return None, False
    return data, kind == "message_stop"


class AnthropicMessagesProducer(SSEProducer):
    """Anthropic's Messages API, as producers for ``ResponseCache``::

        async with AnthropicMessagesProducer(api_key=key) as llm:
            request = {"model": "claude-sonnet-4-5", "max_tokens": 1024,
                       "messages": [{"role": "user", "content": "Hello"}]}
            async for event in cache.stream(request, llm.producer(request)):
                print(chunk_text(event), end="")

    ``base_url`` is the API's root, as Anthropic's SDK takes it (``https://api.anthropic.com``
    by default; the local server's ``base_url`` as is). ``stream(request)`` yields each event
    object up to and including ``message_stop``; ``complete(request)`` returns the whole
    ``message`` object. The key is sent as ``x-api-key``, with ``anthropic-version``
    (``ANTHROPIC_VERSION``; ``headers=`` may set another, or ``anthropic-beta``). Options
    (timeouts, session, proxy...) as ``SSEProducer`` says.
    """

    path = "/v1/messages"
    default_base_url = "https://api.anthropic.com"
    auth_header = "x-api-key"
    auth_prefix = ""
    protocol_headers: ClassVar[Mapping[str, str]] = {"anthropic-version": ANTHROPIC_VERSION}
    terminal = "message_stop event"

    def read_event(self, event: SSEEvent,
                   redact: Redactor) -> tuple[dict[str, Any] | None, bool]:
        return messages_event(event, redact)
