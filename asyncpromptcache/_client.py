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

from ._cache import AsyncPromptCache, CacheStats, Clock
from ._changes import CacheChange, ChangeLog, dependents, version_change
from ._checks import check_count, check_seconds
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
from ._keys import PromptKey, make_key, prefetch_keys
from ._langfuse import LangfuseSource
from ._models import (
    ChatPrompt,
    Prompt,
    PromptType,
    TextPrompt,
    check_prompt_type,
    prompt_from_value,
)
from ._redis import RedisTier, SharedPrompts, resolve_shared
from ._retry import RetryPolicy
from ._runtime import current_backend, current_loop, spawn_detached
from ._secret import Secret
from ._settings import Environment, Settings, check_timeout, check_ttl, resolve_settings
from ._shared import Change
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
DEFAULT_NEGATIVE_CACHE_SECONDS = 5.0
# Past a call's deadline, time for its source to report its own error before the safety net.
_GRACE_SECONDS = 0.25
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
    * ``trust_env``: use the proxy the environment names (``HTTPS_PROXY``/``HTTP_PROXY``/
      ``ALL_PROXY``, ``NO_PROXY``), as httpx and so the Langfuse SDK do; ``False`` connects
      directly. The environment is read when the client is built; ``~/.netrc`` is not read.
    * ``max_size``: entries held; the least recently used is evicted past it.
    * ``max_stale_seconds``: how long past its TTL a prompt may still be served while it is
      refreshed (default: for ever, as Langfuse does).
    * ``negative_cache_seconds``: how long a key whose fetch failed (an error or a 404) with
      nothing cached is answered with that failure again (its fallback, else the error)
      without asking the source; ``0`` turns it off. Default 5 seconds.
    * ``clock``: a monotonic ``() -> float`` in seconds, for tests.
    * ``shared``: a Redis URL or a ``RedisTier``, to share one cache among every process of
      a fleet (default: ``ASYNCPROMPTCACHE_REDIS_URL`` when set). See ``RedisTier``.
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
        trust_env: bool = True,
        refresh_backoff_seconds: float = 1.0,
        refresh_backoff_max_seconds: float = 300.0,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        negative_cache_seconds: float = DEFAULT_NEGATIVE_CACHE_SECONDS,
        shared: str | RedisTier | None = None,
        webhook_secret: str | Secret | None = None,
    ) -> None:
        # Error reporters record the locals of a frame that raises: from here on the secret
        # is a Secret and the environment only the few variables read.
        secret = None if secret_key is None else Secret(secret_key)
        environment = Environment.read(os.environ if env is None else env)
        del secret_key, env
        if isinstance(webhook_secret, str):
            webhook_secret = Secret(webhook_secret)
        if webhook_secret is not None and (
            not isinstance(webhook_secret, Secret)
            or not isinstance(webhook_secret.reveal(), str)  # Secret(b"...") is typed wrong
            or not webhook_secret.reveal().strip()
        ):
            raise ConfigurationError("webhook_secret must be a non-empty string")
        self.__webhook_secret = (
            environment.webhook_secret if webhook_secret is None else webhook_secret
        )
        del webhook_secret
        # Webhooks: the event ids applied, the newest state applied per version, and the
        # keys written through without knowing what their prompt includes
        # (CacheChange.composition_known); the names changed lately, for fetches in flight.
        self._seen_events = SeenIds()
        self._version_states = VersionStates()
        self._unknown_parts: dict[PromptKey, Prompt] = {}
        self._change_log = ChangeLog()
        settings = resolve_settings(
            environment,
            public_key=public_key, secret_key=secret, base_url=base_url,
            cache_ttl_seconds=cache_ttl_seconds, timeout_seconds=fetch_timeout_seconds,
            trust_env=trust_env,
        )
        # The engine and RetryPolicy check the rest of their options the same way.
        check_count(max_retries, "max_retries")
        self._settings = settings
        self._tier = resolve_shared(shared, environment.values)
        self._max_stale = max_stale_seconds
        self._link: SharedPrompts | None = None
        self._ttl = settings.cache_ttl_seconds
        self._timeout = settings.timeout_seconds
        self._retry = retry or RetryPolicy(max_retries=max_retries)
        if source is None:
            self._source: PromptSource = LangfuseSource(
                base_url=settings.base_url, public_key=settings.public_key,
                secret_key=None if settings.secret_key is None else settings.secret_key.reveal(),
                session=session, timeout_seconds=settings.timeout_seconds, retry=self._retry,
                verify_ssl=verify_ssl, trust_env=False, proxy=settings.proxy,
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
            negative_ttl_seconds=check_seconds(negative_cache_seconds, "negative_cache_seconds"),
            # A default TTL of 0 fetches on every call, as a call's cache_ttl_seconds=0 does.
            inline_hits=self._ttl > 0,
        )
        self._cache.detach(_NOT_OPEN)
        # The fresh-hit check is inlined in get_prompt: see AsyncPromptCache.hit_path.
        self._hot, self._by_name, self._touched, self._clock = self._cache.hit_path()
        self._stale_hit = self._cache.stale_hit
        # A float: adding to it takes a float from the interpreter's free list, where an int
        # past 256 is allocated and freed on every hit. Exact up to 2**53 hits.
        self._hits = 0.0
        self._state = _NEW
        self._closed_reason = "the client is closed"
        # Set on entry: the loop it runs on, and its host task's stop request and end.
        self._loop: object = None
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    @classmethod
    def _from_settings(cls, settings: Settings, **options: Any) -> AsyncPromptClient:
        """A client with ``settings`` as resolved by another (the sync facade's copy in a
        forked child): the environment is not read again."""
        secret = settings.secret_key
        return cls(
            public_key=settings.public_key,
            secret_key=None if secret is None else secret.reveal(),
            base_url=settings.base_url, cache_ttl_seconds=settings.cache_ttl_seconds,
            fetch_timeout_seconds=settings.timeout_seconds,
            # The proxy it resolved, as the one variable that names it.
            env={"all_proxy": settings.proxy} if settings.proxy else {}, **options,
        )

    @property
    def _webhook_secret(self) -> Secret | None:
        return self.__webhook_secret

    def __repr__(self) -> str:
        return (
            f"<AsyncPromptClient {self._state} source={self._source!r} "
            f"ttl={self._ttl:g}s entries={len(self._cache)}>"
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncPromptClient:
        """Start the client: its task group runs in a task of its own (see ``_host``), so
        that it may be closed from any task of the loop, in any order of nested scopes."""
        if self._state != _NEW:
            raise ClientStateError(f"an AsyncPromptClient can be entered once; it is {self._state}")
        backend = current_backend()
        supported = getattr(self._source, "async_backends", None)
        if supported is not None and backend not in supported:
            raise ConfigurationError(
                f"{type(self._source).__name__} runs on {' or '.join(supported)} only (aiohttp), "
                f"not on {backend}: pass source= (a StoreSource, a DirectorySource, a "
                "FunctionSource or your own PromptSource), or run the client on asyncio"
            )
        self._loop = current_loop()
        self._stop, self._stopped = anyio.Event(), anyio.Event()
        ready = anyio.Event()
        self._state = _OPEN
        spawn_detached(functools.partial(self._host, ready))
        with anyio.CancelScope(shield=True):  # set at the host's first step
            await ready.wait()
        if self._state != _OPEN:
            raise ClientStateError(f"the client failed to start: {self._closed_reason}")
        return self

    async def _host(self, ready: anyio.Event) -> None:
        """The client's own task, from entry to close: the task group that runs fetches and
        refreshes lives here. Ends when ``aclose`` asks, or when the loop shuts down."""
        assert self._stop is not None and self._stopped is not None
        failed_reason = False
        try:
            async with anyio.create_task_group() as tg:
                self._cache.attach(tg)
                if self._tier is not None:
                    link = SharedPrompts.open(self._tier,
                        host=self._settings.base_url, public_key=self._settings.public_key,
                        max_stale=self._max_stale, apply=self._apply_shared, put_ttl=self._ttl,
                        suspect=self._note_suspect,
                    )
                    await link.start(tg)  # bounded: Redis down means L1-only, not a failure
                    self._link = link
                ready.set()
                await self._stop.wait()
                if self._link is not None:
                    # Changes made just before closing leave the process before it ends.
                    await self._link.drain()
                tg.cancel_scope.cancel()
        except Exception as exc:  # the engine's tasks never raise; if one did, nobody else
            # would see it: the client closes, saying why
            logger.exception("the task group of an AsyncPromptClient failed")
            failed = _first_leaf(exc)
            self._closed_reason = f"its task group failed: {type(failed).__name__}: {failed}"
            failed_reason = True
        finally:
            if not self._stop.is_set() and not failed_reason:
                # cancelled from outside: the loop is shutting down
                self._closed_reason = "the client was closed as the event loop that ran it ended"
            self._state = _CLOSED
            self._cache.detach(self._closed_reason)
            self._cache.clear()
            try:
                held, self._link = self._link, None
                with anyio.CancelScope(shield=True):
                    if held is not None:
                        await held.aclose()
                    if self._owns_source:
                        await self._source.aclose()
            finally:
                ready.set()
                self._stopped.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel refreshes and fetches, close the HTTP session. Idempotent.

        Any task of the event loop that entered the client may call it; from another event
        loop it raises ``ClientStateError``.
        """
        if self._stopped is None:  # never entered
            if self._state == _CLOSED:
                return
            self._state = _CLOSED
            self._cache.detach(self._closed_reason)
            self._cache.clear()
            link, self._link = self._link, None
            if link is not None:
                await link.aclose()
            if self._owns_source:
                with anyio.CancelScope(shield=True):
                    await self._source.aclose()
            return
        if self._stopped.is_set():
            return
        self._check_loop()
        assert self._stop is not None
        self._state = _CLOSED
        self._cache.detach(self._closed_reason)
        self._stop.set()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()

    def _check_loop(self) -> None:
        if current_loop() is not self._loop:
            raise ClientStateError(
                "this AsyncPromptClient was opened on another event loop; an aiohttp session "
                "and the client's tasks belong to one loop: open a client on each loop (for "
                "tests, one per test or a fixture with the test's loop scope)"
            )

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
            # The hit path: one dict lookup, one clock read, no call into the engine (a method
            # call here measured about 20% of a hit). The default label is looked up by the
            # name string (its hash is cached); others by a tuple equal to the PromptKey.
            try:
                entry = (
                    self._by_name.get(name) if label is None and version is None
                    else self._hot.get((name, label, None)) if version is None
                    # Only an int may hit: version=True or 1.0 hash equal to version 1.
                    else self._hot.get((name, label, version)) if version.__class__ is int
                    else None
                )
            except TypeError:  # an unhashable argument: make_key below names the mistake
                entry = None
            # Read into a local first: an instance attribute called as self._clock() is looked
            # up as a method on every call (the interpreter cannot specialise that).
            clock = self._clock
            if entry is not None and (now := clock()) < entry.expires_at \
                    and entry.type == type:
                self._touched[entry] = now
                self._hits += 1.0
                # Returned without a typed local: that measured 55 instructions a hit.
                return entry.prompt  # type: ignore[no-any-return]
            if entry is not None and entry.type == type:
                # Stale while its refresh runs: served without the full path's allocations.
                stale = self._stale_hit(entry, now)
                if stale is not None:
                    return stale
        return await self._get_prompt(
            make_key(name, version, label), check_prompt_type(type), cache_ttl_seconds, fallback,
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
        self._check_loop()
        ttl = self._ttl if cache_ttl_seconds is None else check_ttl(cache_ttl_seconds)
        options = self._options(max_retries, fetch_timeout_seconds)
        # The fetch is shared by every caller of the key: it knows nothing of this caller's
        # type, which is checked below for this caller only.
        fetch: Callable[[], Awaitable[Any]] = functools.partial(self._fetch, key, options)
        if self._link is not None and ttl > 0:
            fetch = functools.partial(
                self._link.fetch_through, key, ttl, fetch, self._budget(options),
                functools.partial(self._cache.holds, key),
            )
        try:
            prompt = await self._cache.get(key, fetch, ttl=ttl, wait=self._budget(options))
            if prompt_type is not None and prompt.type != prompt_type:
                raise _wrong_type(key, prompt, prompt_type)
        except FetchError as exc:
            if fallback is None or prompt_type is None:
                raise
            return await self._fallback(key, prompt_type, fallback, exc)
        return prompt

    def _cache_closed_reason(self) -> str:
        return _NOT_OPEN if self._state == _NEW else self._closed_reason

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
        value = call_fallback(key, fallback, error)
        if inspect.isawaitable(value):
            value = await await_fallback(key, value, error)
        prompt = prompt_from_value(key.name, value, prompt_type, key.label)
        self._fallback_served(key, error)
        return prompt

    def _fallback_served(self, key: PromptKey, error: FetchError) -> None:
        self._cache.record_fallback()
        logger.warning("prompt %s: serving the fallback: %s", key.describe(), error)

    # -- other operations ------------------------------------------------------------------

    async def prefetch(
        self,
        names: Iterable[str | PromptKey] | str | PromptKey,
        *,
        label: str | None = None,
        cache_ttl_seconds: float | None = None,
        max_retries: int | None = None,
        fetch_timeout_seconds: float | None = None,
    ) -> dict[PromptKey, Prompt | FetchError]:
        """Warm the cache with many prompts at once (for start-up); never raises a FetchError.

        Each item is a name (fetched at ``label``, default ``production``) or a ``PromptKey``;
        a single name (a string) or key may be given alone.
        Returns, per key, the prompt or the error its fetch ended with.
        """
        keys = prefetch_keys(names, label)
        # Checked once here: raised in the task group below, it would come as an ExceptionGroup.
        if cache_ttl_seconds is not None:
            check_ttl(cache_ttl_seconds)
        self._options(max_retries, fetch_timeout_seconds)
        results: dict[PromptKey, Prompt | FetchError] = {}

        async def one(key: PromptKey) -> None:
            try:
                results[key] = await self._get_prompt(
                    key, None, cache_ttl_seconds, None, max_retries, fetch_timeout_seconds
                )
            except FetchError as exc:
                results[key] = exc

        async with anyio.create_task_group() as tg:
            for key in keys:
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
        return self._change(change)

    def clear(self) -> int:
        """Drop every cached prompt (in every process, with a shared tier). Returns how many
        this process dropped."""
        dropped = self._clear_here()
        if self._link is not None:
            self._link.propagate_soon(Change("clear"))
        return dropped

    def _change(self, change: CacheChange) -> int:
        """Apply ``change`` here and, with a shared tier, send it to every other process
        (the prompts it puts are written to Redis first). Returns entries dropped here."""
        dropped = self._apply_change(change)
        if self._link is not None:
            self._link.propagate_soon(Change.invalidate(
                keys=[*change.drops, *(key for key, _ in change.puts)],
                names=change.drop_names, changed=change.changed_names,
                puts=change.puts, moved=change.moved, suspect=not change.composition_known,
            ))
        return dropped

    def _apply_shared(self, change: Change) -> int:
        """Apply a change another process published through the shared tier (or the tier's
        own ``expire``). Returns how many entries it affected here."""
        if change.kind == "invalidate":
            return self._apply_change(CacheChange(
                drops=change.keys, drop_names=frozenset(change.names),
                changed_names=frozenset(change.changed),
            ))
        if change.kind == "clear":
            return self._clear_here()
        if change.kind == "expire":
            return self._cache.expire_all()
        return 0

    def _note_suspect(self, key: PromptKey, prompt: Prompt) -> None:
        """``prompt``, read from the shared tier for ``key``, came from a webhook: what it
        includes is unknown (``CacheChange.composition_known``)."""
        self._unknown_parts[key] = prompt

    def _clear_here(self) -> int:
        self._unknown_parts.clear()
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
        self._change(version_change("created", created, self._held()))
        return created

    async def update_prompt(self, *, name: str, version: int, new_labels: list[str]) -> Prompt:
        """Add ``new_labels`` to version ``version`` of ``name`` (Langfuse's ``update_prompt``):
        each moves from the version that had it. Returns the version as updated; its labels'
        keys then serve it from this cache without a fetch, and no other key is touched."""
        key = make_key(name, version)
        labels = _labels(new_labels, "new_labels")
        writer = self._writer()
        updated = await writer.update_prompt_labels(key.name, version, labels, FetchOptions())
        self._change(version_change("updated", updated, self._held()))
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
        failed deliveries, so events can arrive out of order. With a shared tier both hold
        fleet-wide (a retry may land on another process): an event id is claimed in Redis
        for 10 minutes before it is applied, and the newest state applied of each version is
        kept there; with Redis unreachable, each process's own memory holds. Returns the event.

        Raises, having changed nothing: ``WebhookSignatureError`` (missing, wrong or stale
        signature), ``WebhookReplayError`` (an event id already applied: answer it with a
        2xx), ``WebhookError`` (no secret configured, or a body that is not such an event).
        """
        if self.__webhook_secret is None:
            raise WebhookError(
                "no webhook secret: pass webhook_secret= or set LANGFUSE_WEBHOOK_SECRET"
            )
        verify_signature(self.__webhook_secret.reveal(), body, signature, now=time.time())
        event = parse_event(body)
        if event.id in self._seen_events:
            raise WebhookReplayError(f"webhook event {event.id!r} was already applied")
        if self._state != _OPEN:
            raise ClientStateError(self._cache_closed_reason())
        link = self._link  # with a shared tier, an event is applied once in the whole fleet
        if link is not None and not await link.claim_event(event.id):
            self._seen_events.add(event.id)
            raise WebhookReplayError(
                f"webhook event {event.id!r} was already applied (by another process)")
        prompt, known, at = event.prompt, event.composition_known, event.updated_at
        outdated = at is not None and (
            self._version_states.is_outdated(prompt.name, prompt.version, at)
            or (link is not None and not await link.newest_state(
                prompt.name, prompt.version, at.timestamp(), claimed=event.id)))
        if outdated:
            logger.info(
                "webhook %s: prompt %r version %d has changed since; not applied",
                event.id, prompt.name, prompt.version,
            )
        else:
            if not known:
                prompt, known = self._with_known_parts(prompt)
            self._change(version_change(event.action, prompt, self._held(),
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
        """Counters (hits, stale hits, misses, fetches, errors...) and per-key state; with a
        shared tier, its state and counters in ``shared``."""
        stats = self._cache.stats(extra_hits=int(self._hits))
        if self._link is not None:
            stats = attrs.evolve(stats, shared=self._link.stats())
        return stats


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception a task group's ``ExceptionGroup`` holds (itself if not a group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


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
