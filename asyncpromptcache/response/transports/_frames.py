"""An event stream cut into its events as raw bytes, and whether it ended as its protocol
says a whole answer ends. Pure: bytes in, bytes out.

A stored stream is these raw events, so a replay sends the very bytes the upstream sent
(framing, ``event:`` names, comments), one event per chunk.
"""

from __future__ import annotations

import re

from ._policy import Route

__all__ = ["EventSplitter", "StreamCheck"]

# An event ends at a blank line: two line ends in a row, whichever line ends are used.
_BLANK = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")
_TERMINAL: dict[Route, tuple[bytes, ...]] = {
    "responses": (b"response.completed", b"response.incomplete"),
    "messages": (b"message_stop",),
}
_FAILED = (b"error", b"response.failed")


class EventSplitter:
    """Incremental: ``feed(bytes)`` returns the events those bytes complete, each with its
    closing blank line; ``rest()`` is what is left at the end (an unterminated tail)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._pending + data if self._pending else data
        events: list[bytes] = []
        start = 0
        for match in _BLANK.finditer(buffer):
            events.append(buffer[start:match.end()])
            start = match.end()
        self._pending = buffer[start:]
        return events

    def rest(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def _fields(event: bytes) -> tuple[bytes, bytes]:
    """The ``event:`` name and the first ``data:`` value of a raw event."""
    name = data = b""
    for line in event.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:") and not data:
            data = line[5:].strip()
    return name, data


class StreamCheck:
    """Whether a stream of ``route`` ended whole: Chat Completions with ``data: [DONE]``, the
    Responses API with ``response.completed`` (or ``response.incomplete``), Anthropic with
    ``message_stop``; with no error event on the way. Only a whole stream is stored."""

    __slots__ = ("_failed", "_route", "_whole")

    def __init__(self, route: Route) -> None:
        self._route = route
        self._whole = False
        self._failed = False

    def feed(self, event: bytes) -> None:
        name, data = _fields(event)
        if name in _FAILED or data.startswith(b'{"error"'):
            self._failed = True
        elif self._route == "chat":
            self._whole = data == b"[DONE]"
        elif name in _TERMINAL.get(self._route, ()):
            self._whole = True

    @property
    def whole(self) -> bool:
        return self._whole and not self._failed

    @property
    def failed(self) -> bool:
        return self._failed
