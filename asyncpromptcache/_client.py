"""``AsyncPromptClient``: configuration, lifecycle, ``get_prompt``, fallbacks, prefetch."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeAlias, overload

import aiohttp
import anyio
import attrs
from anyio.abc import TaskGroup

from ._cache import AsyncPromptCache, CacheStats, Clock
from ._changes import CacheChange, ChangeLog, dependents, version_change
from ._errors import (
    ClientStateError,
    ConfigurationError,
    FetchError,
    FetchTimeoutError,
    InvalidArgumentError,
    InvalidResponseError,
    WebhookError,
    WebhookReplayError,
    WritesNotSupportedError,
)
from ._events import PromptVersionEvent, SeenIds, VersionStates, parse_event
from ._keys import PromptKey, make_key
from ._langfuse import LangfuseSource
from ._models import ChatPrompt, Prompt, PromptType, TextPrompt, prompt_from_value
from ._retry import RetryPolicy
from ._settings import check_timeout, check_ttl, resolve_settings
from ._source import FetchOptions, NewPrompt, PromptSource, PromptWriter
from ._webhooks import verify_signature

__all__ = ["AsyncPromptClient", "ChatFallback", "TextFallback"]

logger = logging.getLogger("asyncpromptcache")

ChatMessages: TypeAlias = list[dict[str, Any]]
TextFallback: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]]
ChatFallback: TypeAlias = (
    ChatMessages | Callable[[], ChatMessages] | Callable[[], Awaitable[ChatMessages]]
)

_NEW, _OPEN, _CLOSED = "new", "open", "closed"
_NOT_OPEN = (
    "the client is not open: use `async with AsyncPromptClient(...) as client:` "
    "and call it inside that block"
)


class AsyncPromptClient:
    """Fetches prompts and serves them from a local cache; use it with ``async with``.

    Settings not given come from the environment (``LANGFUSE_PUBLIC_KEY``,
    ``LANGFUSE_SECRET_KEY``, ``LANGFUSE_BASE_URL`` or ``LANGFUSE_HOST``, ``LANGFUSE_TIMEOUT``,
    ``LANGFUSE_PROMPT_CACHE_TTL_SECONDS``), read when the client is built.

    * ``source``: fetch from something other than Langfuse (see ``PromptSource``); the
      Langfuse settings are then unused and the source is not closed by the client.
    * ``session``: an ``aiohttp.ClientSession`` to use (never closed by the client).
    * ``max_size``: entries held; the least recently used is evicted past it.
    * ``max_stale_seconds``: how long past its TTL a prompt may still be served while it is
      refreshed (default: for ever, as Langfuse does).
    * ``clock``: a monotonic ``() -> float`` in seconds, for tests.
    * ``webhook_secret``: the signing secret of Langfuse's webhooks, for ``handle_webhook``
      (default: ``LANGFUSE_WEBHOOK_SECRET``). Never shown in a repr or a message.
    """

    def __init__(
        self,
        *,
        public_key: str | None = None,
        secret_key: str | None = None,
        base_url: str | None = None,
        source: PromptSource | None = None,
        session: aiohttp.ClientSession | None = None,
        cache_ttl_seconds: float | None = None,
        max_size: int = 1024,
        max_stale_seconds: float | None = None,
        fetch_timeout_seconds: float | None = None,
        max_retries: int = 2,
        retry: RetryPolicy | None = None,
        verify_ssl: bool = True,
        refresh_backoff_seconds: float = 1.0,
        refresh_backoff_max_seconds: float = 300.0,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        environ = os.environ if env is None else env
        if webhook_secret is not None and (not isinstance(webhook_secret, str)
                                           or not webhook_secret.strip()):
            raise ConfigurationError("webhook_secret must be a non-empty string")
        self.__webhook_secret = (
            environ.get("LANGFUSE_WEBHOOK_SECRET", "").strip() or None
            if webhook_secret is None else webhook_secret
        )
        # Webhooks: the event ids applied, the newest state applied per version, and the
        # keys written through without knowing what their prompt includes
        # (CacheChange.composition_known); the names changed lately, for fetches in flight.
        self._seen_events = SeenIds()
        self._version_states = VersionStates()
        self._unknown_parts: dict[PromptKey, Prompt] = {}
        self._change_log = ChangeLog()
        settings = resolve_settings(
            environ,
            public_key=public_key, secret_key=secret_key, base_url=base_url,
            cache_ttl_seconds=cache_ttl_seconds, timeout_seconds=fetch_timeout_seconds,
        )
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise InvalidArgumentError(f"max_size must be a positive integer, got {max_size!r}")
        if max_stale_seconds is not None:
            check_ttl(max_stale_seconds, "max_stale_seconds")
        if max_retries < 0:
            raise InvalidArgumentError(f"max_retries must be 0 or more, got {max_retries!r}")
        self._settings = settings
        self._ttl = settings.cache_ttl_seconds
        self._timeout = settings.timeout_seconds
        self._retry = retry or RetryPolicy(max_retries=max_retries)
        if source is None:
            self._source: PromptSource = LangfuseSource(
                base_url=settings.base_url, public_key=settings.public_key,
                secret_key=settings.secret_key, session=session,
                timeout_seconds=settings.timeout_seconds, retry=self._retry,
                verify_ssl=verify_ssl,
            )
            self._owns_source = True
        else:
            self._source = source
            self._owns_source = False
        self._cache = AsyncPromptCache(
            max_size=max_size, max_stale_seconds=max_stale_seconds,
            clock=clock or time.monotonic,
            refresh_backoff_seconds=refresh_backoff_seconds,
            refresh_backoff_max_seconds=refresh_backoff_max_seconds,
        )
        self._cache.detach(_NOT_OPEN)
        # The fresh-hit check is inlined in get_prompt: see AsyncPromptCache.hit_path.
        self._hot, self._touched, self._clock = self._cache.hit_path()
        self._stale_hit = self._cache.stale_hit
        self._hits = 0
        self._tg: TaskGroup | None = None
        self._state = _NEW

    def __repr__(self) -> str:
        return (
            f"<AsyncPromptClient {self._state} source={self._source!r} "
            f"ttl={self._ttl:g}s entries={len(self._cache)}>"
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncPromptClient:
        if self._state != _NEW:
            raise ClientStateError(f"an AsyncPromptClient can be entered once; it is {self._state}")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._cache.attach(tg)
        self._state = _OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel refreshes and fetches, close the HTTP session. Idempotent.

        Call it from the task that entered the client (``async with`` does).
        """
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._cache.detach("the client is closed")
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            self._cache.clear()
            if self._owns_source:
                with anyio.CancelScope(shield=True):
                    await self._source.aclose()

    @property
    def source(self) -> PromptSource:
        return self._source

    @property
    def cache(self) -> AsyncPromptCache:
        """The cache engine, for inspection (``in_flight``, ``len()``) and tests."""
        return self._cache

    # -- get_prompt ------------------------------------------------------------------------

    @overload
    async def get_prompt(
        self,
        name: str,
        *,
        version: int | None = None,
        label: str | None = None,
        type: Literal["text"] = "text",
        cache_ttl_seconds: float | None = None,
        fallback: TextFallback | None = None,
        max_retries: int | None = None,
        fetch_timeout_seconds: float | None = None,
    ) -> TextPrompt: ...

    @overload
    async def get_prompt(
        self,
        name: str,
        *,
        version: int | None = None,
        label: str | None = None,
        type: Literal["chat"],
        cache_ttl_seconds: float | None = None,
        fallback: ChatFallback | None = None,
        max_retries: int | None = None,
        fetch_timeout_seconds: float | None = None,
    ) -> ChatPrompt: ...

    async def get_prompt(
        self,
        name: str,
        *,
        version: int | None = None,
        label: str | None = None,
        type: PromptType = "text",
        cache_ttl_seconds: float | None = None,
        fallback: TextFallback | ChatFallback | None = None,
        max_retries: int | None = None,
        fetch_timeout_seconds: float | None = None,
    ) -> Prompt:
        """The prompt ``name`` at ``label`` (default ``production``) or ``version``.

        Fresh in the cache: returned at once, without I/O or suspension. Stale: returned at
        once while one background refresh runs. Missing: one fetch however many callers
        wait. If the fetch fails the stale copy is served when there is one, else the
        ``fallback`` (a string, a message list, or a sync or async callable returning one;
        the prompt built from it has ``is_fallback=True`` and is not cached), else the
        ``FetchError`` is raised. ``cache_ttl_seconds=0`` always fetches.
        """
        if cache_ttl_seconds is None:
            # The hit path: a tuple equal to the PromptKey, one dict lookup, one clock read,
            # no call into the engine (a method call here measured about 20% of a hit).
            key = (
                (name, "production" if label is None else label, None)
                if version is None
                # Only an int may hit: version=True or 1.0 hash equal to version 1.
                else (name, label, version) if version.__class__ is int else None
            )
            try:
                entry = self._hot.get(key)
            except TypeError:  # an unhashable argument: make_key below names the mistake
                entry = None
            if entry is not None and (now := self._clock()) < entry.expires_at \
                    and entry.type == type:
                self._touched[entry] = now
                self._hits += 1
                prompt: Prompt = entry.prompt
                return prompt
            if entry is not None and entry.type == type:
                # Stale while its refresh runs: served without the full path's allocations.
                stale = self._stale_hit(entry, now)
                if stale is not None:
                    return stale
        return await self._get_prompt(
            make_key(name, version, label), type, cache_ttl_seconds, fallback,
            max_retries, fetch_timeout_seconds,
        )

    async def _get_prompt(
        self,
        key: PromptKey,
        prompt_type: PromptType | None,
        cache_ttl_seconds: float | None,
        fallback: TextFallback | ChatFallback | None,
        max_retries: int | None,
        fetch_timeout_seconds: float | None,
    ) -> Prompt:
        if self._state != _OPEN:
            raise ClientStateError(self._cache_closed_reason())
        ttl = self._ttl if cache_ttl_seconds is None else check_ttl(cache_ttl_seconds)
        options = self._options(max_retries, fetch_timeout_seconds)
        fetch = functools.partial(self._fetch, key, prompt_type, options)
        try:
            prompt = await self._cache.get(key, fetch, ttl=ttl)
            if prompt_type is not None and prompt.type != prompt_type:
                raise _wrong_type(key, prompt, prompt_type)
        except FetchError as exc:
            if fallback is None or prompt_type is None:
                raise
            return await self._fallback(key, prompt_type, fallback, exc)
        return prompt

    def _cache_closed_reason(self) -> str:
        return _NOT_OPEN if self._state == _NEW else "the client is closed"

    def _options(self, max_retries: int | None, timeout: float | None) -> FetchOptions:
        if max_retries is not None and max_retries < 0:
            raise InvalidArgumentError(f"max_retries must be 0 or more, got {max_retries!r}")
        if timeout is not None:
            check_timeout(timeout)
        return FetchOptions(max_retries=max_retries, timeout_seconds=timeout)

    async def _fetch(
        self, key: PromptKey, prompt_type: PromptType | None, options: FetchOptions
    ) -> Prompt:
        timeout = self._timeout if options.timeout_seconds is None else options.timeout_seconds
        retry = self._retry.for_call(options.max_retries)
        # A safety net for any source: no fetch outlives its whole retry budget.
        budget = retry.worst_case_seconds(timeout) + 1.0
        since = self._change_log.seq
        try:
            with anyio.fail_after(budget):
                prompt = await self._source.fetch(key, options)
        except TimeoutError as exc:
            raise FetchTimeoutError(
                f"prompt {key.describe()}: no answer within {budget:g}s", name=key.name, key=key
            ) from exc
        if prompt_type is not None and prompt.type != prompt_type:
            raise _wrong_type(key, prompt, prompt_type)
        if self._change_log.touches(prompt, since):
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
        try:
            value: Any = fallback() if callable(fallback) else fallback
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise InvalidArgumentError(
                f"prompt {key.describe()}: the fetch failed ({error}) and the fallback raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        prompt = prompt_from_value(key.name, value, prompt_type, key.label)
        self._cache.record_fallback()
        logger.warning("prompt %s: serving the fallback: %s", key.describe(), error)
        return prompt

    # -- other operations ------------------------------------------------------------------

    async def prefetch(
        self,
        names: Iterable[str | PromptKey],
        *,
        label: str | None = None,
        cache_ttl_seconds: float | None = None,
        max_retries: int | None = None,
        fetch_timeout_seconds: float | None = None,
    ) -> dict[PromptKey, Prompt | FetchError]:
        """Warm the cache with many prompts at once (for start-up); never raises a FetchError.

        Each item is a name (fetched at ``label``, default ``production``) or a ``PromptKey``.
        Returns, per key, the prompt or the error its fetch ended with.
        """
        keys = [
            make_key(item.name, item.version, item.label) if isinstance(item, PromptKey)
            else make_key(item, None, label)
            for item in names
        ]
        results: dict[PromptKey, Prompt | FetchError] = {}

        async def one(key: PromptKey) -> None:
            try:
                results[key] = await self._get_prompt(
                    key, None, cache_ttl_seconds, None, max_retries, fetch_timeout_seconds
                )
            except FetchError as exc:
                results[key] = exc

        async with anyio.create_task_group() as tg:
            for key in dict.fromkeys(keys):
                tg.start_soon(one, key)
        return results

    def invalidate(
        self, name: str, *, label: str | None = None, version: int | None = None
    ) -> int:
        """Drop one key (``label`` or ``version`` given) or every key of ``name``, exactly,
        and every cached prompt composed of ``name`` (at any depth).

        Returns how many entries were dropped.
        """
        if label is not None or version is not None:
            change = CacheChange(
                drops=(make_key(name, version, label),), changed_names=frozenset({name})
            )
        else:
            make_key(name)
            change = CacheChange(drop_names=frozenset({name}), changed_names=frozenset({name}))
        return self._apply_change(change)

    def clear(self) -> int:
        """Drop every cached prompt. Returns how many."""
        return self._cache.clear()

    # -- writes and webhooks ---------------------------------------------------------------

    @overload
    async def create_prompt(
        self,
        *,
        name: str,
        prompt: str,
        type: Literal["text"] = "text",
        labels: list[str] | None = None,
        tags: list[str] | None = None,
        config: Any | None = None,
        commit_message: str | None = None,
    ) -> TextPrompt: ...

    @overload
    async def create_prompt(
        self,
        *,
        name: str,
        prompt: list[dict[str, Any]],
        type: Literal["chat"],
        labels: list[str] | None = None,
        tags: list[str] | None = None,
        config: Any | None = None,
        commit_message: str | None = None,
    ) -> ChatPrompt: ...

    async def create_prompt(
        self,
        *,
        name: str,
        prompt: str | list[dict[str, Any]],
        type: PromptType = "text",
        labels: list[str] | None = None,
        tags: list[str] | None = None,
        config: Any | None = None,
        commit_message: str | None = None,
    ) -> Prompt:
        """Create a new version of ``name`` (Langfuse's ``create_prompt``); returns it.

        ``labels`` move to it from the versions that had them, and so does ``latest``. Those
        keys then serve it from this cache without a fetch; no other key is touched (prompts
        composed of ``name`` are dropped). Not retried unless the request surely did not
        reach the server: a create repeated after a timeout could make two versions.
        """
        new = _new_prompt(name, prompt, type, labels, tags, config, commit_message)
        writer = self._writer()
        created = await writer.create_prompt(new, FetchOptions())
        if created.type != type:
            raise _wrong_type(PromptKey(name, None, created.version), created, type)
        self._apply_change(version_change("created", created, self._held()))
        return created

    async def update_prompt(self, *, name: str, version: int, new_labels: list[str]) -> Prompt:
        """Add ``new_labels`` to version ``version`` of ``name`` (Langfuse's ``update_prompt``):
        each moves from the version that had it. Returns the version as updated; its labels'
        keys then serve it from this cache without a fetch, and no other key is touched."""
        key = make_key(name, version)
        labels = _labels(new_labels, "new_labels")
        writer = self._writer()
        updated = await writer.update_prompt_labels(key.name, version, labels, FetchOptions())
        self._apply_change(version_change("updated", updated, self._held()))
        return updated

    def _writer(self) -> PromptWriter:
        if self._state != _OPEN:
            raise ClientStateError(self._cache_closed_reason())
        if not isinstance(self._source, PromptWriter):
            raise WritesNotSupportedError(
                f"the source {type(self._source).__name__} cannot write prompts: it does not "
                "implement PromptWriter (create_prompt and update_prompt_labels)"
            )
        return self._source

    async def handle_webhook(self, body: bytes, signature: str | None) -> PromptVersionEvent:
        """Apply one Langfuse prompt-version webhook: ``body`` as received (raw bytes) and the
        value of its ``x-langfuse-signature`` header.

        The signature is checked first (HMAC-SHA256 with the webhook secret, compared in
        constant time, timestamp within 5 minutes), then the body, strictly. The prompt it
        carries is written through, with no fetch, to the keys it now serves (its labels, its
        version, ``latest`` when created); keys it no longer serves are dropped (all of them
        when deleted), and so is every cached prompt composed of it. A state of a version
        older (by ``updatedAt``) than one already applied is not applied: Langfuse retries
        failed deliveries, so events can arrive out of order. Returns the event.

        Raises, having changed nothing: ``WebhookSignatureError`` (missing, wrong or stale
        signature), ``WebhookReplayError`` (an event id already applied: answer it with a
        2xx), ``WebhookError`` (no secret configured, or a body that is not such an event).
        """
        secret = self.__webhook_secret
        if secret is None:
            raise WebhookError(
                "no webhook secret: pass webhook_secret= or set LANGFUSE_WEBHOOK_SECRET"
            )
        verify_signature(secret, body, signature, now=time.time())
        event = parse_event(body)
        if event.id in self._seen_events:
            raise WebhookReplayError(f"webhook event {event.id!r} was already applied")
        if self._state != _OPEN:
            raise ClientStateError(self._cache_closed_reason())
        prompt, known, at = event.prompt, event.composition_known, event.updated_at
        if at is not None and self._version_states.is_outdated(prompt.name, prompt.version, at):
            logger.info(
                "webhook %s: prompt %r version %d has changed since; not applied",
                event.id, prompt.name, prompt.version,
            )
        else:
            if not known:
                prompt, known = self._with_known_parts(prompt)
            self._apply_change(version_change(event.action, prompt, self._held(),
                                              composition_known=known))
            if at is not None:
                self._version_states.record(prompt.name, prompt.version, at)
        self._seen_events.add(event.id)
        return event

    def _held(self) -> list[tuple[PromptKey, Prompt]]:
        return [(PromptKey._make(key), entry.prompt)  # type: ignore[arg-type]
                for key, entry in self._cache.snapshot()]

    def _with_known_parts(self, prompt: Prompt) -> tuple[Prompt, bool]:
        """``prompt`` with the resolution graph of the same version held here, if any is
        (a version's references never change: it is immutable in Langfuse)."""
        for key, held in self._held():
            if held.name == prompt.name and held.version == prompt.version \
                    and self._unknown_parts.get(key) is not held:
                return attrs.evolve(prompt, resolution_graph=held.resolution_graph), True
        return prompt, False

    def _apply_change(self, change: CacheChange) -> int:
        """Apply one change to this process's cache: the one place every local change goes
        through (writes, webhooks, ``invalidate``). Drops ``change.drops`` and every key of
        ``change.drop_names``, holds ``change.puts`` (a fetch in flight for such a key does
        not write back), then drops every held prompt composed of ``change.changed_names``,
        transitively, and notes the names so that a fetch then in flight of a prompt composed
        of them is not kept. Returns how many entries were dropped."""
        cache = self._cache
        dropped = sum(
            cache.invalidate(key.name, label=key.label, version=key.version)
            for key in change.drops
        )
        dropped += sum(cache.invalidate(name) for name in change.drop_names)
        for key, prompt in change.puts:
            cache.put(key, prompt, ttl=self._ttl)
            if change.composition_known:
                self._unknown_parts.pop(key, None)
            else:
                self._unknown_parts[key] = prompt
        held = self._held()
        unknown = {key for key, prompt in held if self._unknown_parts.get(key) is prompt}
        self._unknown_parts = {key: self._unknown_parts[key] for key in unknown}
        written = {key for key, _ in change.puts}
        for key in dependents(change.changed_names, held, suspects=unknown) - written:
            dropped += cache.invalidate(key.name, label=key.label, version=key.version)
        self._change_log.record(change.changed_names)  # see _fetch
        return dropped

    def stats(self) -> CacheStats:
        """Counters (hits, stale hits, misses, fetches, errors...) and per-key state."""
        return self._cache.stats(extra_hits=self._hits)


def _wrong_type(key: PromptKey, prompt: Prompt, asked: PromptType) -> InvalidResponseError:
    return InvalidResponseError(
        f"prompt {key.describe()} is a {prompt.type} prompt, but type={asked!r} was asked for",
        field="type", name=key.name, key=key,
    )


def _labels(labels: Any, what: str) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, list | tuple) \
            or not all(isinstance(label, str) and label for label in labels):
        raise InvalidArgumentError(f"{what} must be a list of non-empty strings, got {labels!r}")
    return list(labels)


def _new_prompt(
    name: str, prompt: Any, prompt_type: Any, labels: list[str] | None,
    tags: list[str] | None, config: Any, commit_message: str | None,
) -> NewPrompt:
    make_key(name)
    if prompt_type == "text":
        if not isinstance(prompt, str):
            raise InvalidArgumentError(
                f"a text prompt must be a string, got {type(prompt).__name__}"
            )
    elif prompt_type == "chat":
        # The messages are checked as a chat fallback is, before anything is sent.
        prompt_from_value(name, prompt, "chat")
    else:
        raise InvalidArgumentError(f"type must be 'text' or 'chat', got {prompt_type!r}")
    if commit_message is not None and not isinstance(commit_message, str):
        raise InvalidArgumentError(
            f"commit_message must be a string, got {type(commit_message).__name__}"
        )
    return NewPrompt(
        name=name, type=prompt_type, prompt=prompt,
        labels=tuple(_labels(labels or [], "labels")),
        tags=None if tags is None else tuple(_labels(tags, "tags")),
        config=config, commit_message=commit_message,
    )
