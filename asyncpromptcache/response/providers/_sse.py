"""Server-sent events and OpenAI's chat-completion stream on top of them. Pure: bytes in,
events and chunks out; no I/O.

``SSEDecoder`` follows the WHATWG event-stream rules (LF, CRLF or CR line ends, split
anywhere across reads; ``data`` lines joined with newlines; comments ignored; an event without
its closing blank line at the end of the stream is dropped). ``openai_chunk`` reads one event
of OpenAI's chat-completion stream: a chunk, the ``[DONE]`` marker, or an error event.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

import attrs

from ..._core.errors import UpstreamEventError, UpstreamProtocolError, UpstreamStatusError
from ..._core.json_values import NotJSON, read_json
from ..._core.secret import NO_SECRETS, Redactor
from ..._http.retry import parse_retry_after

__all__ = ["SSEDecoder", "SSEEvent", "chunk_text", "event_error", "event_json", "openai_chunk",
           "status_error"]


@attrs.frozen(slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Incremental: ``feed(bytes)`` returns the events completed by those bytes."""

    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._pending = ""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._size = 0
        self._max = max_event_bytes
        self._first = True
        self._skip_lf = False  # the last read ended in CR: an LF first in the next is its pair

    def feed(self, raw: bytes) -> list[SSEEvent]:
        try:
            text = self._decoder.decode(raw)
        except UnicodeDecodeError as exc:
            raise UpstreamProtocolError(f"the event stream is not UTF-8: {exc}") from None
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")
        text = self._pending + text
        events: list[SSEEvent] = []
        start = 0
        length = len(text)
        while True:
            cr, lf = text.find("\r", start), text.find("\n", start)
            if cr == -1 and lf == -1:
                break
            end = lf if cr == -1 else cr if lf == -1 else min(cr, lf)
            if text[end] == "\r":
                if end + 1 == length:
                    self._skip_lf = True  # a CR at the end: an LF may follow in the next read
                    step = 1
                else:
                    step = 2 if text[end + 1] == "\n" else 1
            else:
                step = 1
            self._line(text[start:end], events)
            start = end + step
        self._pending = text[start:]
        self._size += len(raw)
        if len(self._pending) > self._max or self._size > self._max:
            raise UpstreamProtocolError(
                f"an event of the stream exceeds {self._max} bytes")
        return events

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent("\n".join(self._data), self._event or "message",
                                       self._id))
            self._data, self._event, self._size = [], "", 0
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value


def openai_chunk(event: SSEEvent, redact: Redactor = NO_SECRETS) -> dict[str, Any] | None:
    """The chunk an event of a chat-completion stream carries; ``None`` for ``[DONE]``.

    Raises ``UpstreamEventError`` for an error event and ``UpstreamProtocolError`` for data
    that is not a JSON object; ``redact`` is applied to the upstream text their messages
    quote (a producer's ``Redactor``: the stream may echo the request's credentials).
    """
    if event.data.strip() == "[DONE]":
        return None
    try:
        data = read_json(event.data)
    except NotJSON as exc:
        what = "nested too deeply" if exc.too_deep else "not JSON"
        raise UpstreamProtocolError(
            f"an event of the stream is {what}: {redact.excerpt(event.data)}") from None
    if isinstance(data, dict) and (event.event == "error" or "error" in data):
        message, kind = _error_fields(data, redact)
        raise UpstreamEventError(f"the stream sent an error: {message}",
                                 error_type=kind and redact(kind))
    if event.event == "error":
        raise UpstreamEventError(f"the stream sent an error: {redact.excerpt(event.data)}")
    if not isinstance(data, dict):
        raise UpstreamProtocolError(
            f"an event of the stream is not a JSON object: {redact.excerpt(event.data)}")
    return data


def event_json(event: SSEEvent, redact: Redactor = NO_SECRETS) -> dict[str, Any]:
    """The JSON object an event carries; ``UpstreamProtocolError`` when it carries none."""
    try:
        data = read_json(event.data)
    except NotJSON:
        raise UpstreamProtocolError(
            f"an event of the stream is not JSON: {redact.excerpt(event.data)}") from None
    if not isinstance(data, dict):
        raise UpstreamProtocolError(
            f"an event of the stream is not a JSON object: {redact.excerpt(event.data)}")
    return data


def event_error(message: str, data: dict[str, Any],
                redact: Redactor = NO_SECRETS) -> UpstreamEventError:
    """``UpstreamEventError`` for an error event's object (``{"error": {...}}`` or the error
    fields themselves), its ``error_type`` the error's ``type`` or ``code``."""
    text, kind = _error_fields(data, redact)
    return UpstreamEventError(f"{message}: {text}", error_type=kind and redact(kind))


def status_error(status: int, body: bytes, retry_after: str | None,
                 redact: Redactor = NO_SECRETS) -> UpstreamStatusError:
    """The error for a non-2xx answer, with the body's ``error.message`` when it has one
    (``redact`` applied to it, as in ``openai_chunk``)."""
    try:
        data: Any = read_json(body)
    except NotJSON:
        data = None
    if isinstance(data, dict) and ("error" in data or "message" in data):
        message, kind = _error_fields(data, redact)
    else:
        message, kind = redact.excerpt(body) if body else "", None
    return UpstreamStatusError(
        f"HTTP {status}" + (f": {message}" if message else ""), status=status,
        retry_after=parse_retry_after(retry_after), error_type=kind and redact(kind),
    )


def chunk_text(chunk: Any) -> str:
    """The text a chunk adds, or a whole answer's text; ``""`` when it has none. Knows Chat
    Completions (a chunk's first ``delta.content``, a completion's ``message.content``), the
    Responses API (``response.output_text.delta``, a ``response`` object's output text) and
    Anthropic Messages (a ``text_delta``, a ``message``'s text blocks)."""
    if not isinstance(chunk, dict):
        return ""
    kind = chunk.get("type")
    if kind == "response.output_text.delta" or (
            kind == "content_block_delta" and isinstance(chunk.get("delta"), dict)):
        text = chunk["delta"] if kind == "response.output_text.delta" else chunk["delta"].get(
            "text") if chunk["delta"].get("type") == "text_delta" else None
        return text if isinstance(text, str) else ""
    if chunk.get("object") == "response" or kind == "message":
        blocks = chunk.get("content") if kind == "message" else [
            part for item in _dicts(chunk.get("output")) if item.get("type") == "message"
            for part in _dicts(item.get("content"))]
        return "".join(block["text"] for block in _dicts(blocks)
                       if block.get("type") in ("text", "output_text")
                       and isinstance(block.get("text"), str))
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    part = choices[0].get("delta") or choices[0].get("message")
    content = part.get("content") if isinstance(part, dict) else None
    return content if isinstance(content, str) else ""


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _error_fields(data: dict[str, Any], redact: Redactor) -> tuple[str, str | None]:
    error = data.get("error", data)
    if isinstance(error, dict):
        message = error.get("message")
        kind = error.get("type") or error.get("code")
        return (redact.printable(str(message)) if message is not None
                else redact.excerpt(json.dumps(error)),
                str(kind) if kind is not None else None)
    return redact.printable(str(error)), None
