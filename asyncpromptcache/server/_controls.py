"""Instruments of the local server for tests, benchmarks and demos: a request counter and
knobs that make the prompt endpoint slow or failing."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import attrs

__all__ = ["MAX_COUNTED_NAMES", "ROUTE_KINDS", "RequestCounter", "ServerControls"]

#: What ``RequestCounter`` counts. ``other`` is any request under ``/api`` that matched no
#: endpoint (or used a method the endpoint does not have).
ROUTE_KINDS = ("create", "delete", "get_prompt", "health", "list", "other", "patch")
#: Distinct (route kind, prompt name) pairs ``RequestCounter`` keeps counts for by default.
MAX_COUNTED_NAMES = 1000


class RequestCounter:
    """Requests the server received, per route kind and per (route kind, prompt name).

    Every request is counted per route kind as it arrives, before authentication, whatever
    its answer: the point is to show how many requests a client really sent. Its memory is
    bounded: the server passes a prompt name only for authenticated requests (so a stranger's
    made-up names cost nothing), and at most ``max_names`` distinct (route kind, name) pairs
    are kept; requests for further names count in ``untracked_names`` instead. Thread-safe,
    so a test can read it while the server runs on another thread (``ServerThread``).
    """

    def __init__(self, *, max_names: int = MAX_COUNTED_NAMES) -> None:
        if isinstance(max_names, bool) or not isinstance(max_names, int) or max_names < 0:
            raise ValueError(f"max_names must be an int >= 0, got {max_names!r}")
        self._lock = threading.Lock()
        self._max_names = max_names
        self._routes: Counter[str] = Counter()
        self._prompts: Counter[tuple[str, str]] = Counter()
        self._untracked = 0

    def record(self, route: str, name: str | None = None) -> None:
        """Count one request of kind ``route`` (for prompt ``name``, when it names one)."""
        if route not in ROUTE_KINDS:
            raise ValueError(f"unknown route kind {route!r}")
        with self._lock:
            self._routes[route] += 1
            if name is None:
                return
            key = (route, name)
            if key in self._prompts or len(self._prompts) < self._max_names:
                self._prompts[key] += 1
            else:
                self._untracked += 1

    @property
    def untracked_names(self) -> int:
        """Requests that named a prompt but were not counted per name (the cap was reached)."""
        with self._lock:
            return self._untracked

    def get(self, route: str, name: str | None = None) -> int:
        """Requests of kind ``route``; only those for prompt ``name`` when it is given."""
        with self._lock:
            return self._routes[route] if name is None else self._prompts[route, name]

    @property
    def total(self) -> int:
        """All requests counted."""
        with self._lock:
            return self._routes.total()

    def reset(self) -> None:
        """Forget every count."""
        with self._lock:
            self._routes.clear()
            self._prompts.clear()
            self._untracked = 0

    def snapshot(self) -> dict[str, Any]:
        """The counts as JSON: ``{"total", "routes": {kind: n}, "prompts": {kind: {name: n}},
        "untracked_names": n}``."""
        with self._lock:
            prompts: dict[str, dict[str, int]] = {}
            for (route, name), count in sorted(self._prompts.items()):
                prompts.setdefault(route, {})[name] = count
            return {
                "total": self._routes.total(),
                "routes": dict(sorted(self._routes.items())),
                "prompts": prompts,
                "untracked_names": self._untracked,
            }

    def __repr__(self) -> str:
        return f"RequestCounter(total={self.total})"


def _check_delay(_: Any, __: Any, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise ValueError(f"get_delay_seconds must be a number from 0 to 3600, got {value!r}")


def _check_status(_: Any, __: Any, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ValueError(f"get_fail_status must be null or a status from 400 to 599, got {value!r}")


@attrs.define
class ServerControls:
    """Knobs on ``GET /api/public/v2/prompts/{name}``; change them while the server runs.

    ``get_delay_seconds`` delays every answer (an upstream with latency); ``get_fail_status``,
    when set, makes every answer that status with a Langfuse error body (an upstream that is
    down or rate limiting). Also settable with ``POST /_admin/controls``.
    """

    get_delay_seconds: float = attrs.field(default=0.0, validator=_check_delay)
    get_fail_status: int | None = attrs.field(default=None, validator=_check_status)

    def to_dict(self) -> dict[str, Any]:
        """The controls as JSON data."""
        return attrs.asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        """Set the fields named in ``changes``; all or nothing. Raises ``ValueError``."""
        unknown = sorted(set(changes) - set(attrs.fields_dict(ServerControls)))
        if unknown:
            raise ValueError(f"unknown controls: {', '.join(unknown)}")
        merged = attrs.evolve(self, **changes)  # validates every value before any is set
        for key in changes:
            setattr(self, key, getattr(merged, key))
