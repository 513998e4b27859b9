"""Reads: ``PromptReads``, what ``AsyncPromptClient.get_prompt`` does past its hit path.

The client answers a fresh hit itself, inlined (see ``AsyncPromptCache.hit_path``); every other
call comes here: the per-call options are checked, the key is read through the engine (one
fetch however many callers wait, through the shared tier when there is one), each fetch is
bounded by its budget (its timeout times its attempts), a prompt composed of a part that
changed while it was fetched is not kept, and when the fetch fails the caller's fallback is
served.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import anyio

from .._core.checks import check_count
from .._core.errors import FetchError, FetchTimeoutError, InvalidArgumentError, InvalidResponseError
from .._http.retry import RetryPolicy
from .changes import ChangeLog
from .composition import part_names
from .engine import AsyncPromptCache
from .keys import PromptKey
from .models import ChatPrompt, Prompt, PromptType, TextPrompt, prompt_from_value, wrong_type
from .settings import check_timeout, check_ttl
from .shared import SharedPrompts
from .source import FetchOptions, PromptSource

__all__ = ["ChatFallback", "PromptReads", "TextFallback", "await_fallback", "call_fallback"]

logger = logging.getLogger("asyncpromptcache")

ChatMessages: TypeAlias = list[dict[str, Any]]
TextFallback: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]]
ChatFallback: TypeAlias = (
    ChatMessages | Callable[[], ChatMessages] | Callable[[], Awaitable[ChatMessages]]
)

# Past a call's deadline, time for its source to report its own error before the safety net.
_GRACE_SECONDS = 0.25


class PromptReads:
    """The reads of a client: through ``cache`` from ``source``, fresh for ``ttl`` unless a
    call says otherwise, each fetch bounded by ``timeout`` and ``retry``. ``opened`` and
    ``check_loop`` raise unless the client is open on this loop; ``link`` gives its shared
    tier's link while it has one open."""

    def __init__(
        self, cache: AsyncPromptCache, source: PromptSource, *, ttl: float, timeout: float,
        retry: RetryPolicy, change_log: ChangeLog, opened: Callable[[], None],
        check_loop: Callable[[], None], link: Callable[[], SharedPrompts | None],
    ) -> None:
        self._cache = cache
        self._source = source
        self._ttl = ttl
        self._timeout = timeout
        self._retry = retry
        self._change_log = change_log
        self._opened = opened
        self._check_loop = check_loop
        self._link = link

    async def get_prompt(
        self,
        key: PromptKey,
        prompt_type: PromptType | None,
        cache_ttl_seconds: float | None,
        fallback: TextFallback | ChatFallback | None,
        max_retries: int | None,
        fetch_timeout_seconds: float | None,
    ) -> Prompt:
        """A call of ``AsyncPromptClient.get_prompt`` past its hit path (``prompt_type=None``:
        of any type, as ``prefetch`` asks)."""
        self._opened()
        self._check_loop()
        ttl = self._ttl if cache_ttl_seconds is None else check_ttl(cache_ttl_seconds)
        options = self._options(max_retries, fetch_timeout_seconds)
        # The fetch is shared by every caller of the key: it knows nothing of this caller's
        # type, which is checked below for this caller only.
        fetch: Callable[[], Awaitable[Any]] = functools.partial(self._fetch, key, options)
        link = self._link()
        if link is not None and ttl > 0:
            fetch = functools.partial(
                link.fetch_through, key, ttl, fetch, self._budget(options),
                functools.partial(self._cache.holds, key),
            )
        try:
            prompt = await self._cache.get(key, fetch, ttl=ttl, wait=self._budget(options))
            if prompt_type is not None and prompt.type != prompt_type:
                raise wrong_type(key, prompt, prompt_type)
        except FetchError as exc:
            if fallback is None or prompt_type is None:
                raise
            return await self._fallback(key, prompt_type, fallback, exc)
        return prompt

    async def prefetch(
        self, keys: list[PromptKey], cache_ttl_seconds: float | None, max_retries: int | None,
        fetch_timeout_seconds: float | None,
    ) -> dict[PromptKey, Prompt | FetchError]:
        """As ``AsyncPromptClient.prefetch``, of ``keys``."""
        # Checked once here: raised in the task group below, it would come as an ExceptionGroup.
        if cache_ttl_seconds is not None:
            check_ttl(cache_ttl_seconds)
        self._options(max_retries, fetch_timeout_seconds)
        results: dict[PromptKey, Prompt | FetchError] = {}

        async def one(key: PromptKey) -> None:
            try:
                results[key] = await self.get_prompt(
                    key, None, cache_ttl_seconds, None, max_retries, fetch_timeout_seconds
                )
            except FetchError as exc:
                results[key] = exc

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(one, key)
        return results

    def _options(self, max_retries: int | None, timeout: float | None) -> FetchOptions:
        if max_retries is not None:
            check_count(max_retries, "max_retries", error=InvalidArgumentError)
        if timeout is not None:
            check_timeout(timeout)
        return FetchOptions(max_retries=max_retries, timeout_seconds=timeout)

    def _budget(self, options: FetchOptions) -> float:
        """How long one call with ``options`` may take in all: its timeout times its attempts
        (the deadline the source keeps), and a little for the source to report its error."""
        timeout = self._timeout if options.timeout_seconds is None else options.timeout_seconds
        budget = self._retry.for_call(options.max_retries).budget_seconds(timeout)
        return budget + min(_GRACE_SECONDS, budget)

    async def _fetch(self, key: PromptKey, options: FetchOptions) -> Prompt:
        # A safety net for any source: no fetch outlives its budget.
        budget = self._budget(options)
        since = self._change_log.seq
        try:
            with anyio.fail_after(budget):
                prompt = await self._source.fetch(key, options)
        except TimeoutError as exc:
            raise FetchTimeoutError(
                f"prompt {key.describe()}: no answer within {budget:g}s", name=key.name, key=key
            ) from exc
        if self._change_log.touches(_parts(key, prompt), since):
            # Resolved from a part that changed meanwhile: it answers its waiters, not kept.
            self._cache.invalidate(key.name, label=key.label, version=key.version)
        return prompt

    async def _fallback(
        self,
        key: PromptKey,
        prompt_type: PromptType,
        fallback: TextFallback | ChatFallback,
        error: FetchError,
    ) -> Prompt:
        value = call_fallback(key, fallback, error)
        if inspect.isawaitable(value):
            value = await await_fallback(key, value, error)
        prompt = prompt_from_value(key.name, value, prompt_type, key.label)
        self.fallback_served(key, error)
        return prompt

    def fallback_served(self, key: PromptKey, error: FetchError) -> None:
        self._cache.record_fallback()
        logger.warning("prompt %s: serving the fallback: %s", key.describe(), error)


def call_fallback(key: PromptKey, fallback: Any, error: FetchError) -> Any:
    """The fallback's value (``fallback()`` when it is callable): maybe an awaitable."""
    try:
        return fallback() if callable(fallback) else fallback
    except Exception as exc:
        raise _fallback_failed(key, error, exc) from exc


async def await_fallback(key: PromptKey, value: Awaitable[Any], error: FetchError) -> Any:
    try:
        return await value
    except Exception as exc:
        raise _fallback_failed(key, error, exc) from exc


def _fallback_failed(key: PromptKey, error: FetchError, exc: Exception) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"prompt {key.describe()}: the fetch failed ({error}) and the fallback raised "
        f"{type(exc).__name__}: {exc}"
    )


def _parts(key: PromptKey, prompt: Prompt) -> frozenset[str]:
    """The names ``prompt``, as a source answered ``key``, includes: its graph read once, as
    the prompt enters the cache, and the same for every source (an unreadable one is an
    ``InvalidResponseError``, whatever else happened meanwhile)."""
    if not isinstance(prompt, TextPrompt | ChatPrompt):
        return frozenset()  # not a prompt at all: the cache refuses it, saying so
    try:
        return part_names(prompt.resolution_graph)
    except InvalidResponseError as exc:
        raise InvalidResponseError(
            f"prompt {key.describe()}: {exc}", field=exc.field, name=key.name, key=key
        ) from None
