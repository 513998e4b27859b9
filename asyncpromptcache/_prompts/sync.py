"""``PromptClient``: the sync facade, an ``AsyncPromptClient`` on its own event-loop thread.

A fresh hit is answered in the calling thread from the store the loop thread fills: dict reads
and writes are atomic and entries immutable, so the only thing to guard is the hit counter,
which each calling thread keeps in a cell of its own (a lock per hit measured +180 ns, about
70% of a hit, and halved the throughput of 4 and 16 threads). Everything else (misses, stale
hits, invalidation, stats) runs on the loop thread through one anyio blocking portal, so
single-flight and stale-while-revalidate hold across threads.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

import anyio
import attrs
from anyio.from_thread import BlockingPortal

from .._core.checks import check_seconds
from .._core.errors import ClientStateError, FetchError, InvalidArgumentError, PromptCacheError
from .._core.secret import Secret
from .._http.retry import RetryPolicy
from .client import AsyncPromptClient
from .engine import CacheStats, Clock
from .events import PromptVersionEvent
from .keys import PromptKey, make_key, prefetch_keys
from .models import (
    ChatPrompt,
    Prompt,
    PromptType,
    TextPrompt,
    check_prompt_type,
    prompt_from_value,
)
from .options import DEFAULT_NEGATIVE_CACHE_SECONDS, ClientOptions, environment_of
from .reads import ChatFallback, TextFallback, await_fallback, call_fallback
from .shared import RedisTier
from .source import PromptSource

__all__ = ["PromptClient"]

logger = logging.getLogger("asyncpromptcache")

_T = TypeVar("_T")
_C = TypeVar("_C", bound=AbstractAsyncContextManager[Any])

_CLOSED = "the PromptClient is closed"
_CLOSE_TIMEOUT = 10.0


class _HitCell(threading.local):
    """One hit counter per calling thread, so no update is lost and no lock is taken.

    Cells are kept by thread id: a new thread reusing the id of a finished one continues its
    count, so the dict stays as small as the number of threads alive at once.
    """

    cell: list[int]

    def __init__(self, cells: dict[int, list[int]]) -> None:  # runs once in each thread
        self.cell = cells.setdefault(threading.get_ident(), [0])


class PromptClient:
    """The synchronous client: ``AsyncPromptClient``'s options, cache and guarantees, for
    scripts, WSGI apps, Celery tasks and notebooks. Use it with ``with``, or keep one for the
    process and call ``close()`` (or let interpreter exit close it)::

        with PromptClient() as client:
            prompt = client.get_prompt("movie-critic", version=3)

    Interpreter exit closes it as soon as the main thread ends, before Python waits for
    non-daemon threads (as ``concurrent.futures`` executors stop then): a thread still waiting
    on a fetch gets ``ClientStateError`` at once instead of holding the exit for the whole
    retry budget, and later calls from such threads raise it too.

    The async client runs on a background event-loop thread of its own, started on first use:
    its task group, its refreshes and its HTTP session live there. A fresh hit is served in the
    calling thread without waking that thread; a miss or a stale hit is handed to it, so 64
    threads missing one prompt send one request, and a stale prompt is served at once while
    one refresh runs. The client is thread-safe; ``close()`` may come from any thread.

    The methods block. Called from a thread that runs an event loop (a notebook cell, a sync
    helper inside an async app) they still work, since the work runs on the client's own loop,
    but a miss blocks the caller's loop for the fetch: in async code use ``AsyncPromptClient``.

    After ``os.fork`` (gunicorn ``--preload``, ``multiprocessing``) the child keeps the prompts
    the parent had cached and starts its own loop thread and HTTP session on first use. A
    ``source`` you pass is shared with the child as it is; with ``shared=``, the child opens
    its own Redis connections (a ``redis.asyncio`` client you pass is reset by redis-py in
    the child).

    Options are ``AsyncPromptClient``'s, except ``session``: an aiohttp session belongs to the
    event loop it was made on, and this client's loop is private. The environment is read once,
    when the client is built.
    """

    def __init__(
        self,
        *,
        public_key: str | None = None,
        secret_key: str | None = None,
        base_url: str | None = None,
        source: PromptSource | None = None,
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
        options = ClientOptions(
            public_key=public_key, secret_key=secret, base_url=base_url, source=source,
            cache_ttl_seconds=cache_ttl_seconds, max_size=max_size,
            max_stale_seconds=max_stale_seconds, fetch_timeout_seconds=fetch_timeout_seconds,
            max_retries=max_retries, retry=retry, verify_ssl=verify_ssl, trust_env=trust_env,
            refresh_backoff_seconds=refresh_backoff_seconds,
            refresh_backoff_max_seconds=refresh_backoff_max_seconds, clock=clock,
            env=environment, negative_cache_seconds=negative_cache_seconds, shared=shared,
            webhook_secret=webhook,
            meter_provider=meter_provider, tracer_provider=tracer_provider,
        )
        # Bad options fail here, in the caller's thread.
        self._client = AsyncPromptClient._from_options(options)
        # To build the same client again in a forked child: the same options (the environment
        # as it was read then) with the shared tier this one resolved.
        self._new_client = functools.partial(
            AsyncPromptClient._from_options, attrs.evolve(options, shared=self._client._tier)
        )
        self._lock = threading.Lock()
        self._loop: _LoopThread[AsyncPromptClient] | None = None
        self._closed = False
        self._bind(self._client)
        _clients.add(self)

    def _bind(self, client: AsyncPromptClient) -> None:
        """Point the hit path at ``client``'s store, with hit counts starting from zero."""
        self._hot: dict[Hashable, Any]
        self._by_name: dict[str, Any]
        self._hot, self._by_name, self._touched, self._clock = client.cache.hit_path()
        self._hit_cells: dict[int, list[int]] = {}
        self._hits = _HitCell(self._hit_cells)
        if client._telemetry is not None:  # its counters count this facade's hits too
            client._telemetry.extra_hits = functools.partial(_cell_hits, self._hit_cells)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "new" if self._loop is None else "running"
        return f"<PromptClient {state} {self._client!r}>"

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> PromptClient:
        if self._closed:
            raise ClientStateError(_CLOSED)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Cancel refreshes and fetches, close the HTTP session, stop the loop thread.

        Idempotent, and callable from any thread. Waits at most ``timeout`` seconds for the
        thread to end (a fetch hanging on a dead server is cancelled, not waited for); a thread
        still running then is left to finish as a daemon thread, with a warning logged.
        """
        check_seconds(timeout, "timeout", error=InvalidArgumentError)
        loop = self._loop
        if loop is not None and loop.thread is threading.current_thread():
            # From a fallback or a source: the loop can end only once this returns. Ask it to,
            # without the lock (a close() in another thread may hold it, joining this thread).
            self._closed = True
            self._hot, self._by_name = {}, {}
            _clients.discard(self)
            loop.stop_soon()
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._hot, self._by_name = {}, {}  # every later call misses, meets the closed state
            _clients.discard(self)
            loop = self._loop
            if loop is not None and loop.pid == os.getpid():
                loop.stop(timeout)  # joins it; the loop thread never waits for this lock
            else:
                self._client.cache.clear()  # nothing runs: drop what it held, here
            self._loop = None

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is None or self._closed or loop.pid != os.getpid():
            return
        warnings.warn(
            f"unclosed {self!r}: call close() or use `with PromptClient() as client:`",
            ResourceWarning, source=self, stacklevel=1,
        )
        loop.stop_soon()

    def _running(self) -> _LoopThread[AsyncPromptClient]:
        """The loop thread, started if need be (once, whatever the number of callers)."""
        if self._closed:
            raise ClientStateError(_CLOSED)
        loop = self._loop
        if loop is None or loop.pid != os.getpid():
            with self._lock:
                if self._closed:
                    raise ClientStateError(_CLOSED)
                if self._loop is not None and self._loop.pid != os.getpid():
                    self._leave_parent()  # forked without the at-fork hook running
                if self._loop is None:
                    started = _LoopThread(self._client)
                    started.start()
                    self._loop = started
                loop = self._loop
        if loop.thread is threading.current_thread():
            raise ClientStateError(
                "a PromptClient was called from its own event loop thread (from a source?): "
                "use the AsyncPromptClient there"
            )
        return loop

    def _call(self, func: Callable[[AsyncPromptClient], Awaitable[_T]]) -> _T:
        """``await func(async_client)`` on the loop thread, from this one."""
        loop = self._running()
        try:
            return loop.portal.call(func, loop.client)
        except concurrent.futures.CancelledError as exc:
            raise ClientStateError(_CLOSED) from exc
        except RuntimeError as exc:
            # ClientStateError is a RuntimeError too; the portal's "not running" means closed.
            if isinstance(exc, PromptCacheError) or not self._closed:
                raise
            raise ClientStateError(_CLOSED) from exc

    def _on_owner(self, func: Callable[[AsyncPromptClient], _T]) -> _T:
        """``func(async_client)`` in the thread that writes the store: the loop's while it
        runs, else this one (under the lock: no loop starts meanwhile, a close() has ended)."""
        loop = self._loop
        if loop is not None and loop.pid == os.getpid():
            if loop.thread is threading.current_thread():
                return func(loop.client)
            if not self._closed:
                try:
                    return loop.portal.call(func, loop.client)
                except (RuntimeError, concurrent.futures.CancelledError):
                    if not self._closed:
                        raise
                    # Closed meanwhile: done below, once close() has stopped the loop.
        with self._lock:
            loop = self._loop
            if loop is None or loop.pid != os.getpid() or self._closed:
                if loop is not None and loop.pid == os.getpid():
                    loop.thread.join(_CLOSE_TIMEOUT)  # closed from its own thread: let it end
                return func(self._client)
        return self._on_owner(func)  # the loop started meanwhile

    # -- fork ------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a thread of the parent may have held it
        if self._loop is not None:
            self._leave_parent()

    def _leave_parent(self) -> None:
        """In a forked child: a new async client holding the parent's entries, not started."""
        parent, self._loop = self._loop, None
        if parent is not None:
            # The parent's loop, portal and HTTP session were copied without their thread:
            # never run them, and keep them referenced so that no finalizer touches them.
            _orphans.append(parent)
        client = self._new_client()
        client.cache.restore(self._client.cache.snapshot())
        self._client = client
        self._bind(client)

    # -- get_prompt ------------------------------------------------------------------------

    @overload
    def get_prompt(
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
    def get_prompt(
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

    def get_prompt(
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

        As ``AsyncPromptClient.get_prompt``: fresh in the cache, returned at once from this
        thread; stale, returned at once while one refresh runs; missing, one fetch however many
        threads wait. A failed fetch serves the stale copy, else the ``fallback`` (a string, a
        message list, or a callable returning one; it runs in the calling thread), else raises the
        ``FetchError``. ``cache_ttl_seconds=0`` always fetches.
        """
        if cache_ttl_seconds is None:
            # The hit path, as in AsyncPromptClient.get_prompt: no lock, no hop to the loop.
            try:
                entry = (
                    self._by_name.get(name) if label is None and version is None
                    else self._hot.get((name, label, None)) if version is None
                    # Only an int may hit: version=True or 1.0 hash equal to version 1.
                    else self._hot.get((name, label, version)) if version.__class__ is int
                    else None
                )
            except TypeError:  # an unhashable argument: the slow path names the mistake
                entry = None
            clock = self._clock  # not self._clock(): see AsyncPromptClient.get_prompt
            if entry is not None and (now := clock()) < entry.expires_at \
                    and entry.type == type:
                self._touched[entry] = now
                self._hits.cell[0] += 1
                prompt: Prompt = entry.prompt
                return prompt
        check_prompt_type(type)  # here, before the loop thread is started or woken
        try:
            return self._call(functools.partial(
                _get_prompt, name, version, label, type, cache_ttl_seconds, None, max_retries,
                fetch_timeout_seconds,
            ))
        except FetchError as error:
            if fallback is None:
                raise
            return self._fallback(make_key(name, version, label), type, fallback, error)

    def _fallback(
        self,
        key: PromptKey,
        prompt_type: PromptType,
        fallback: TextFallback | ChatFallback,
        error: FetchError,
    ) -> Prompt:
        """As ``PromptReads._fallback``, in the calling thread: a slow fallback must not
        hold the loop thread, which serves every other thread's misses."""
        value = call_fallback(key, fallback, error)
        if inspect.isawaitable(value):  # an async fallback: awaited on the loop
            awaitable = value
            value = self._call(lambda _: await_fallback(key, awaitable, error))
        prompt = prompt_from_value(key.name, value, prompt_type, key.label)
        self._on_owner(lambda client: client._reads.fallback_served(key, error))
        return prompt

    # -- other operations ------------------------------------------------------------------

    def prefetch(
        self,
        names: Iterable[str | PromptKey] | str | PromptKey,
        *,
        label: str | None = None,
        cache_ttl_seconds: float | None = None,
        max_retries: int | None = None,
        fetch_timeout_seconds: float | None = None,
    ) -> dict[PromptKey, Prompt | FetchError]:
        """Warm the cache with many prompts at once, fetched concurrently; never raises a
        FetchError. Returns, per key, the prompt or the error its fetch ended with."""
        keys = prefetch_keys(names, label)  # checked here, in the caller's thread
        return self._call(lambda client: client.prefetch(
            keys, label=label, cache_ttl_seconds=cache_ttl_seconds, max_retries=max_retries,
            fetch_timeout_seconds=fetch_timeout_seconds,
        ))

    def invalidate(
        self, name: str, *, label: str | None = None, version: int | None = None
    ) -> int:
        """Drop one key (``label`` or ``version`` given) or every key of ``name``, exactly,
        and every cached prompt composed of ``name`` (at any depth).

        Returns how many entries were dropped.
        """
        return self._on_owner(lambda client: client.invalidate(name, label=label, version=version))

    def clear(self) -> int:
        """Drop every cached prompt. Returns how many."""
        return self._on_owner(AsyncPromptClient.clear)

    def stats(self) -> CacheStats:
        """Counters (hits, stale hits, misses, fetches, errors...) and per-key state."""
        stats = self._on_owner(AsyncPromptClient.stats)
        return attrs.evolve(stats, hits=stats.hits + _cell_hits(self._hit_cells))

    # -- writes and webhooks ---------------------------------------------------------------

    @overload
    def create_prompt(
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
    def create_prompt(
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

    def create_prompt(
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
        """Create a new version of ``name``; as ``AsyncPromptClient.create_prompt``."""

        def create(client: AsyncPromptClient) -> Awaitable[Prompt]:
            # Past the overloads, which want ``type`` as a literal: forwarded as it was given.
            call: Callable[..., Awaitable[Prompt]] = client.create_prompt
            return call(
                name=name, prompt=prompt, type=type, labels=labels, tags=tags, config=config,
                commit_message=commit_message,
            )

        return self._call(create)

    def update_prompt(self, *, name: str, version: int, new_labels: list[str]) -> Prompt:
        """Add ``new_labels`` to a version; as ``AsyncPromptClient.update_prompt``."""
        return self._call(lambda client: client.update_prompt(
            name=name, version=version, new_labels=new_labels,
        ))

    def handle_webhook(self, body: bytes, signature: str | None) -> PromptVersionEvent:
        """Apply one Langfuse prompt-version webhook; as ``AsyncPromptClient.handle_webhook``
        (the same errors, raised having changed nothing)."""
        return self._call(lambda client: client.handle_webhook(body, signature))


async def _get_prompt(
    name: str,
    version: int | None,
    label: str | None,
    prompt_type: PromptType,
    cache_ttl_seconds: float | None,
    fallback: TextFallback | ChatFallback | None,
    max_retries: int | None,
    fetch_timeout_seconds: float | None,
    client: AsyncPromptClient,
) -> Prompt:
    # Past the overloads, which want ``type`` as a literal: it is forwarded as it was given.
    get: Callable[..., Awaitable[Prompt]] = client.get_prompt
    return await get(
        name, version=version, label=label, type=prompt_type,
        cache_ttl_seconds=cache_ttl_seconds, fallback=fallback, max_retries=max_retries,
        fetch_timeout_seconds=fetch_timeout_seconds,
    )


class _LoopThread(Generic[_C]):
    """One client's event-loop thread: an anyio blocking portal and the entered async client
    (an ``AsyncPromptClient``, or any async context manager: the cache transports' cache).

    A daemon thread running ``anyio.run`` with a ``BlockingPortal`` in its main task, which is
    what ``anyio.from_thread.start_blocking_portal`` does, kept by hand so that ending it is
    bounded: that context manager joins its thread without a timeout, on ``__exit__`` and
    whenever its suspended generator is finalized (in whatever thread the garbage collector
    runs, at interpreter exit, or in a forked child where the thread no longer exists).
    """

    def __init__(self, client: _C) -> None:
        self.client = client
        self.pid = os.getpid()
        self.portal: BlockingPortal
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: anyio.Event | None = None
        self.thread = threading.Thread(
            target=self._run, name="asyncpromptcache-loop", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        self._ready.wait()  # set by _run whatever way it ends
        if self._error is not None:
            raise ClientStateError(
                f"the PromptClient's event loop thread failed to start: {self._error!r}"
            ) from self._error

    def _run(self) -> None:
        try:
            anyio.run(self._main, backend="asyncio")
        except BaseException as exc:
            if self._ready.is_set():
                logger.exception("the event loop thread of a PromptClient failed")
            else:
                self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with BlockingPortal() as portal:
            self._loop = asyncio.get_running_loop()
            self._stop = anyio.Event()
            try:
                async with self.client:
                    self.portal = portal
                    self._ready.set()
                    await self._stop.wait()
            finally:
                # Calls still waiting got ClientStateError as the client closed; cancel the rest.
                await portal.stop(cancel_remaining=True)

    def stop_soon(self) -> None:
        """Ask the loop to close the client and end, without waiting. Any thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stop.set)

    def stop(self, timeout: float) -> None:
        self.stop_soon()
        if self.thread is threading.current_thread():
            return  # closed from a fallback or a source: the loop ends once it returns
        self.thread.join(timeout)
        if self.thread.is_alive():
            logger.warning(
                "the PromptClient's event loop thread did not end within %gs of close(); "
                "it is left to finish as a daemon thread", timeout,
            )


# Every unclosed client, weakly: closed at interpreter exit, reset in a forked child.
_clients: weakref.WeakSet[PromptClient] = weakref.WeakSet()
# In a forked child: the parent's loop threads, copied without their thread.
_orphans: list[_LoopThread[Any]] = []


def _close_at_exit() -> None:
    for client in list(_clients):
        client.close()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        try:
            client._after_fork_in_child()
        except Exception:
            logger.exception("resetting a PromptClient in a forked child failed")


atexit.register(_close_at_exit)
# Also, and first, when the main thread ends: atexit hooks run only after the interpreter has
# joined every non-daemon thread, and a thread waiting on a hung fetch would hold the exit for
# its whole retry budget. concurrent.futures stops its executors at the same point.
_before_joining_threads = getattr(threading, "_register_atexit", None)
if _before_joining_threads is not None:
    _before_joining_threads(_close_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cell_hits(cells: dict[int, list[int]]) -> int:
    """The hits the facade's threads counted in their cells."""
    return sum(cell[0] for cell in list(cells.values()))
