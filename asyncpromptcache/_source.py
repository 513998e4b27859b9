"""What a source is: anything that fetches one prompt for a key."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs

from ._keys import PromptKey
from ._models import Prompt

__all__ = ["FetchOptions", "PromptSource"]


@attrs.frozen
class FetchOptions:
    """Per-call fetch settings; ``None`` means the source's own default."""

    max_retries: int | None = None
    timeout_seconds: float | None = None


@runtime_checkable
class PromptSource(Protocol):
    """Fetches one prompt. The whole protocol a custom source needs.

    ``fetch`` returns the prompt for ``key`` (``key.label`` or ``key.version`` is set) or raises
    a ``FetchError`` subclass: ``PromptNotFoundError`` when the source has no such prompt,
    which the cache treats as "stop serving this key". Any other exception is wrapped in a
    ``FetchError``. ``aclose`` releases what the source holds; the client calls it on exit
    for sources it made, never for one the user passed in.

    A source that runs only on some async backends says so with an optional class attribute,
    ``async_backends = ("asyncio",)``: the client refuses to start elsewhere.
    """

    async def fetch(self, key: PromptKey, options: FetchOptions) -> Prompt: ...

    async def aclose(self) -> None: ...
