"""What a source is: anything that fetches one prompt for a key."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs

from .._core.errors import ConfigurationError
from .._core.runtime import current_backend
from .keys import PromptKey
from .models import Prompt, PromptType

__all__ = ["FetchOptions", "NewPrompt", "PromptSource", "PromptWriter", "check_backend"]


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


def check_backend(source: PromptSource) -> None:
    """Raise ``ConfigurationError`` unless ``source`` runs on the running async backend (see
    ``async_backends``)."""
    backend = current_backend()
    supported = getattr(source, "async_backends", None)
    if supported is not None and backend not in supported:
        raise ConfigurationError(
            f"{type(source).__name__} runs on {' or '.join(supported)} only (aiohttp), "
            f"not on {backend}: pass source= (a StoreSource, a DirectorySource, a "
            "FunctionSource or your own PromptSource), or run the client on asyncio"
        )


@attrs.frozen(kw_only=True)
class NewPrompt:
    """A prompt version to create: the body of Langfuse's ``POST /api/public/v2/prompts``."""

    name: str
    type: PromptType
    prompt: Any  # a template string (text) or a list of message / placeholder dicts (chat)
    labels: tuple[str, ...] = ()
    tags: tuple[str, ...] | None = None
    config: Any = None
    commit_message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The request body, as Langfuse's Python SDK sends it (``config`` defaults to ``{}``)."""
        body: dict[str, Any] = {
            "name": self.name, "type": self.type, "prompt": self.prompt,
            "labels": list(self.labels), "config": {} if self.config is None else self.config,
        }
        if self.tags is not None:
            body["tags"] = list(self.tags)
        if self.commit_message is not None:
            body["commitMessage"] = self.commit_message
        return body


@runtime_checkable
class PromptWriter(Protocol):
    """A source that can also write prompts: an optional capability beside ``PromptSource``.

    ``create_prompt`` makes a new version and returns it as the source stored it;
    ``update_prompt_labels`` adds ``new_labels`` to a version (moving each from the version
    that had it) and returns that version. Both raise ``FetchError`` subclasses.
    """

    async def create_prompt(self, new: NewPrompt, options: FetchOptions) -> Prompt: ...

    async def update_prompt_labels(
        self, name: str, version: int, new_labels: list[str], options: FetchOptions
    ) -> Prompt: ...
