"""Sources other than Langfuse's HTTP API: a function, a prompt store, a folder of files."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import anyio

from .._core.errors import PromptNotFoundError
from .._store._sqlite import PromptStore
from .keys import PromptKey
from .models import Prompt
from .source import FetchOptions

__all__ = ["DirectorySource", "FunctionSource", "StoreSource"]


class FunctionSource:
    """Wraps ``async def fetch(key) -> Prompt`` as a source (a user's own lookup)."""

    def __init__(self, fetch: Callable[[PromptKey], Awaitable[Prompt]]) -> None:
        self._fetch = fetch

    async def fetch(self, key: PromptKey, options: FetchOptions) -> Prompt:
        return await self._fetch(key)

    async def aclose(self) -> None:
        return None


class StoreSource:
    """Reads prompts straight from a local prompt server's ``PromptStore``, without HTTP."""

    def __init__(self, store: PromptStore, *, close_store: bool = False) -> None:
        self._store = store
        self._close_store = close_store

    async def fetch(self, key: PromptKey, options: FetchOptions) -> Prompt:
        stored = await self._store.get(key.name, version=key.version, label=key.label)
        if stored is None:
            raise PromptNotFoundError(
                f"prompt {key.describe()} not found in the store", name=key.name, key=key
            )
        return stored.prompt

    async def aclose(self) -> None:
        if self._close_store:
            self._store.close()


class DirectorySource(StoreSource):
    """Prompts from a folder of JSON files in Langfuse's create-request shape.

    The same files ``python -m asyncpromptcache serve --seed DIR`` reads: each holds one
    prompt or a list of them; listing a name twice makes versions 1, 2, ... in file order.
    The folder is read on the first fetch, off the event loop.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no prompt folder at {os.fspath(path)!r}")
        super().__init__(PromptStore(":memory:"), close_store=True)
        self._path = path
        self._loaded = False
        self._loading = anyio.Lock()

    async def fetch(self, key: PromptKey, options: FetchOptions) -> Prompt:
        if not self._loaded:
            async with self._loading:
                if not self._loaded:
                    await self._store.import_dir(self._path)
                    self._loaded = True
        return await super().fetch(key, options)
