"""``AsyncPromptClient``: configuration, lifecycle, ``get_prompt`` (its inlined fresh hit),
``prefetch``, ``invalidate`` and ``stats``.

The rest lives beside it, each job in a collaborator of its own that the client holds and
delegates to: ``PromptReads`` (``reads``: a call past the hit path), ``ChangeApplier``
(``apply``: every change to the cache), ``PromptWrites`` (``writes``) and
``WebhookIntake`` (``webhook_intake``). Its options are ``ClientOptions`` (``options``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, overload

import aiohttp
import anyio
import attrs
from anyio.abc import TaskGroup

from .._core.errors import ClientStateError, FetchError, InvalidArgumentError
from .._core.runtime import HostedTaskGroup, current_loop
from .._core.secret import Secret
from .._http.retry import RetryPolicy
from .._observe import prompt_telemetry
from .._tiers.redis.stats import SharedStats
from .apply import ChangeApplier
from .engine import AsyncPromptCache, CacheStats, Clock
from .events import PromptVersionEvent
from .keys import PromptKey, make_key, prefetch_keys
from .models import (
    ChatPrompt,
    Prompt,
    PromptType,
    TextPrompt,
    check_prompt_type,
)
from .options import DEFAULT_NEGATIVE_CACHE_SECONDS, ClientOptions, environment_of
from .reads import ChatFallback, PromptReads, TextFallback
from .shared import RedisTier, SharedPrompts
from .source import PromptSource, check_backend
from .webhook_intake import WebhookIntake
from .writes import PromptWrites

__all__ = ["AsyncPromptClient", "ChatFallback", "TextFallback"]

logger = logging.getLogger("asyncpromptcache")

#: ``get_prompt``'s guard that its options were given by keyword (see there).
_BY_KEYWORD = object()


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
    * ``meter_provider``, ``tracer_provider``: OpenTelemetry providers for the client's
      metrics and spans (default: the global ones; needs ``asyncpromptcache[otel]``).
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
        meter_provider: Any = None,
        tracer_provider: Any = None,
    ) -> None:
        # Error reporters record the locals of a frame that raises: from here on the secrets
        # are Secrets and the environment only the few variables read.
        secret = None if secret_key is None else Secret(secret_key)
        webhook = Secret(webhook_secret) if isinstance(webhook_secret, str) else webhook_secret
        environment = environment_of(env)
        del secret_key, webhook_secret, env
        self._configure(ClientOptions(
            public_key=public_key, secret_key=secret, base_url=base_url, source=source,
            session=session, cache_ttl_seconds=cache_ttl_seconds, max_size=max_size,
            max_stale_seconds=max_stale_seconds, fetch_timeout_seconds=fetch_timeout_seconds,
            max_retries=max_retries, retry=retry, verify_ssl=verify_ssl, trust_env=trust_env,
            refresh_backoff_seconds=refresh_backoff_seconds,
            refresh_backoff_max_seconds=refresh_backoff_max_seconds, clock=clock,
            env=environment, negative_cache_seconds=negative_cache_seconds, shared=shared,
            webhook_secret=webhook, meter_provider=meter_provider,
            tracer_provider=tracer_provider,
        ))

    @classmethod
    def _from_options(cls, options: ClientOptions) -> AsyncPromptClient:
        """A client built from ``options`` as they are (the environment is not read again)."""
        client = cls.__new__(cls)
        client._configure(options)
        return client

    def _configure(self, options: ClientOptions) -> None:
        self._config = options
        self._settings = settings = options.settings()
        self._tier = options.tier()
        self._link: SharedPrompts | None = None
        self._ttl = settings.cache_ttl_seconds
        retry = options.retry_policy()
        self._source, self._owns_source = options.source_for(settings, retry)
        # A default TTL of 0 fetches on every call, as a call's cache_ttl_seconds=0 does.
        self._cache = options.engine(inline_hits=self._ttl > 0)
        self._cache.detach(_NOT_OPEN)
        # The fresh-hit check is inlined in get_prompt: see AsyncPromptCache.hit_path.
        self._hot, self._by_name, self._touched, self._clock = self._cache.hit_path()
        self._stale_hit = self._cache.stale_hit
        # Applying changes, reads past the hit path, writes and webhooks: beside the client,
        # each in a module of its own.
        changes = self._changes = ChangeApplier(self._cache, ttl=self._ttl, link=lambda: self._link)
        self._reads = PromptReads(
            self._cache, self._source, ttl=self._ttl, timeout=settings.timeout_seconds,
            retry=retry, change_log=changes.change_log, opened=self._opened,
            check_loop=self._check_loop, link=lambda: self._link,
        )
        self._get_prompt = self._reads.get_prompt
        self._writes = PromptWrites(self._source, changes, opened=self._opened)
        self._webhooks = WebhookIntake(
            options.webhook_key(), changes, opened=self._opened, link=lambda: self._link)
        self._telemetry = prompt_telemetry(
            options.meter_provider, options.tracer_provider, self._observed)
        if self._telemetry is not None:
            self._cache.run_fetch = self._telemetry.fetch
        # A float: adding to it takes a float from the interpreter's free list, where an int
        # past 256 is allocated and freed on every hit. Exact up to 2**53 hits.
        self._hits = 0.0
        self._state = _NEW
        self._closed_reason = "the client is closed"
        # Its task group lives in a task of its own; its loop is the one that entered it.
        self._group = HostedTaskGroup("an AsyncPromptClient", name="asyncpromptcache-client")

    def __repr__(self) -> str:
        return (f"<AsyncPromptClient {self._state} source={self._source!r} "
                f"ttl={self._ttl:g}s entries={len(self._cache)}>")

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncPromptClient:
        """Start the client: its task group runs in a task of its own (see ``_host``), so
        that it may be closed from any task of the loop, in any order of nested scopes."""
        if self._state != _NEW:
            raise ClientStateError(f"an AsyncPromptClient can be entered once; it is {self._state}")
        check_backend(self._source)
        self._state = _OPEN
        await self._group.start(self._host, stopping=self._stopping, closed=self._closed)
        if self._state != _OPEN:
            raise ClientStateError(f"the client failed to start: {self._closed_reason}")
        return self

    async def _host(self, tg: TaskGroup) -> None:
        """The client's task group, open from entry to close in a task of its own
        (``HostedTaskGroup``): it runs fetches and refreshes."""
        self._cache.attach(tg)
        if self._tier is not None:
            link = self._config.link(self._tier, self._settings, self._changes)
            await link.start(tg)  # bounded: Redis down means L1-only, not a failure
            self._link = link

    async def _stopping(self) -> None:
        if self._link is not None:
            # Changes made just before closing leave the process before it ends.
            await self._link.drain()

    async def _closed(self) -> None:
        """The task group is over: closed, failed, or cancelled with the loop."""
        failed = self._group.error
        if failed is not None:  # the client closes, saying why
            self._closed_reason = f"its task group failed: {type(failed).__name__}: {failed}"
        elif not self._group.stopping:  # cancelled from outside: the loop is shutting down
            self._closed_reason = "the client was closed as the event loop that ran it ended"
        await self._shut()

    async def _shut(self) -> None:
        """Close what the client holds, without being cancelled meanwhile: the cache (detached
        and emptied), the shared tier's link, and the source if the client made it."""
        self._state = _CLOSED
        self._cache.detach(self._closed_reason)
        self._cache.clear()
        held, self._link = self._link, None
        with anyio.CancelScope(shield=True):
            if held is not None:
                await held.aclose()
            if self._owns_source:
                await self._source.aclose()

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
        if not self._group.started:  # never entered (the link is opened by the host only)
            if self._state != _CLOSED:
                await self._shut()
            return
        if self._group.stopped:
            return
        self._check_loop()
        self._state = _CLOSED
        self._cache.detach(self._closed_reason)
        await self._group.stop()

    def _check_loop(self) -> None:
        if current_loop() is not self._group.loop:
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

    # -- reads and invalidation ------------------------------------------------------------

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
        # The options are keyword-only, as the overloads above say. They are written as
        # positional-or-keyword because CPython fills those defaults from a tuple, where it
        # looks each missing keyword-only default up by name: a quarter of a hit's
        # instructions (callgrind). An option given by position lands in this guard first,
        # and is refused below.
        _by_keyword: object = _BY_KEYWORD,
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
        if cache_ttl_seconds is None and _by_keyword is _BY_KEYWORD:
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
        if _by_keyword is not _BY_KEYWORD:
            raise InvalidArgumentError(
                "get_prompt() takes one positional argument, the name; give its options by "
                "keyword (version=, label=, type=, ...)")
        return await self._get_prompt(
            make_key(name, version, label), check_prompt_type(type), cache_ttl_seconds, fallback,
            max_retries, fetch_timeout_seconds,
        )

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
        return await self._reads.prefetch(
            prefetch_keys(names, label), cache_ttl_seconds, max_retries, fetch_timeout_seconds)

    def invalidate(
        self, name: str, *, label: str | None = None, version: int | None = None
    ) -> int:
        """Drop one key (``label`` or ``version`` given) or every key of ``name``, exactly,
        and every cached prompt composed of ``name`` (at any depth).

        Returns how many entries were dropped.
        """
        return self._changes.invalidate(name, label=label, version=version)

    def clear(self) -> int:
        """Drop every cached prompt (in every process, with a shared tier). Returns how many
        this process dropped."""
        return self._changes.clear()

    def _opened(self) -> None:
        """Raise ``ClientStateError`` unless the client is open."""
        if self._state != _OPEN:
            raise ClientStateError(_NOT_OPEN if self._state == _NEW else self._closed_reason)

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
        return await self._writes.create_prompt(
            name=name, prompt=prompt, type=type, labels=labels, tags=tags, config=config,
            commit_message=commit_message,
        )

    async def update_prompt(self, *, name: str, version: int, new_labels: list[str]) -> Prompt:
        """Add ``new_labels`` to version ``version`` of ``name`` (Langfuse's ``update_prompt``):
        each moves from the version that had it. Returns the version as updated; its labels'
        keys then serve it from this cache without a fetch, and no other key is touched."""
        return await self._writes.update_prompt(name=name, version=version, new_labels=new_labels)

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
        return await self._webhooks.handle_webhook(body, signature)

    def stats(self) -> CacheStats:
        """Counters (hits, stale hits, misses, fetches, errors...) and per-key state; with a
        shared tier, its state and counters in ``shared``."""
        stats = self._cache.stats(extra_hits=int(self._hits))
        if self._link is not None:
            stats = attrs.evolve(stats, shared=self._link.stats())
        return stats

    def _observed(self) -> tuple[dict[str, int], int, SharedStats | None]:
        """What telemetry reads at each collection: lookups by result, entries, the tier."""
        return (self._cache.lookup_counts(extra_hits=int(self._hits)), len(self._cache),
                None if self._link is None else self._link.stats())

