"""``Langfuse`` over ``PromptClient`` and ``AsyncLangfuse`` over ``AsyncPromptClient``: the
Langfuse Python SDK's prompt methods, argument for argument, mapped onto our clients."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Literal, overload

import anyio

from .._core.errors import (
    ClientStateError,
    ConfigurationError,
    FetchError,
    InvalidResponseError,
)
from .._core.secret import Secret
from .._prompts.client import AsyncPromptClient, ChatFallback, TextFallback
from .._prompts.keys import make_key
from .._prompts.langfuse_source import LangfuseSource
from .._prompts.models import Prompt, PromptType, prompt_from_value
from .._prompts.reads import call_fallback
from .._prompts.shared import RedisTier
from .._prompts.source import FetchOptions
from .._prompts.sync import PromptClient
from ._prompts import ChatPromptClient, LangfusePrompt, TextPromptClient, fallback_model, wrap

__all__ = ["AsyncLangfuse", "Langfuse"]

logger = logging.getLogger("asyncpromptcache")

# Langfuse bounds a call's retries to 0..4 and defaults to 2.
_MAX_RETRIES_BOUND = 4


def _bounded_retries(max_retries: int | None) -> int | None:
    return None if max_retries is None else min(max(max_retries, 0), _MAX_RETRIES_BOUND)


def _wrong_type(error: FetchError) -> bool:
    """Whether ``error`` says the prompt is stored as the other type."""
    return isinstance(error, InvalidResponseError) and error.field == "type"


def _other_type(prompt_type: PromptType) -> PromptType:
    return "chat" if prompt_type == "text" else "text"


def _client_options(
    public_key: str | None, secret: Secret | None, base_url: str | None, host: str | None,
    timeout: int | None, env: Mapping[str, str], ours: dict[str, Any],
) -> tuple[dict[str, Any], Secret] | None:
    """Our client's options (all but the secret key) and the secret key, from Langfuse's
    constructor arguments with Langfuse's precedence (``base_url``, ``LANGFUSE_BASE_URL``,
    ``host``, ``LANGFUSE_HOST``); ``None`` when a key is missing, where Langfuse's client
    is disabled."""
    public_key = public_key or env.get("LANGFUSE_PUBLIC_KEY") or None
    if secret is None and env.get("LANGFUSE_SECRET_KEY"):
        secret = Secret(env["LANGFUSE_SECRET_KEY"])
    if public_key is None or secret is None:
        logger.warning(
            "the Langfuse client was built without a %s: it is disabled (give public_key and "
            "secret_key, or set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY)",
            "public_key" if public_key is None else "secret_key",
        )
        return None
    if not base_url and not env.get("LANGFUSE_BASE_URL"):
        base_url = host or None  # else our client reads LANGFUSE_HOST, then the default
    options = {
        "public_key": public_key, "base_url": base_url or None,
        "fetch_timeout_seconds": timeout or None, **ours,
    }
    return options, secret


_DISABLED = (
    "the Langfuse client is disabled: it was built without a public_key or secret_key "
    "(give both, or set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY)"
)


class _Surface:
    """What both clients share: Langfuse's constructor, the options it maps to ours, and the
    shaping of arguments and answers. The I/O is the subclasses'."""

    def __init__(
        self,
        *,
        public_key: str | None = None,
        secret_key: str | None = None,
        base_url: str | None = None,
        host: str | None = None,
        timeout: int | None = None,
        # Langfuse's tracing and HTTP options: accepted, so that a program passing them runs
        # unchanged, and unused (tracing is out of scope; the HTTP client is aiohttp).
        httpx_client: Any = None,
        debug: bool = False,
        tracing_enabled: bool | None = True,
        flush_at: int | None = None,
        flush_interval: float | None = None,
        environment: str | None = None,
        release: str | None = None,
        media_upload_thread_count: int | None = None,
        sample_rate: float | None = None,
        mask: Any = None,
        mask_otel_spans: Any = None,
        should_export_span: Any = None,
        additional_headers: dict[str, str] | None = None,
        tracer_provider: Any = None,
        id_generator: Any = None,
        span_exporter: Any = None,
        otel_compression: Literal["gzip", "none"] | None = None,
        skills: Any = None,
        # Ours.
        cache_ttl_seconds: float | None = None,
        max_size: int = 1024,
        max_stale_seconds: float | None = None,
        negative_cache_seconds: float = 0.0,
        shared: str | RedisTier | None = None,
        webhook_secret: str | Secret | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        # A Secret from the first statement on: error reporters record a frame's locals.
        secret = Secret(secret_key) if secret_key else None
        del secret_key
        ours: dict[str, Any] = dict(
            cache_ttl_seconds=cache_ttl_seconds, max_size=max_size,
            max_stale_seconds=max_stale_seconds, negative_cache_seconds=negative_cache_seconds,
            shared=shared, webhook_secret=webhook_secret, env=env,
        )
        del webhook_secret
        resolved = _client_options(
            public_key, secret, base_url, host, timeout, os.environ if env is None else env, ours,
        )
        self._build(resolved)

    def _build(self, resolved: tuple[dict[str, Any], Secret] | None) -> None:
        raise NotImplementedError

    @staticmethod
    def _fallback(
        name: str, version: int | None, label: str | None, prompt_type: PromptType,
        fallback: Any, error: FetchError,
    ) -> LangfusePrompt:
        """The prompt Langfuse builds from a fallback: ``is_fallback``, version ``version``
        or 0, labels ``[label]`` or ``[]``, empty config and tags; not cached. Without a
        fallback (or an empty one, as Langfuse tests it), ``error`` is raised."""
        if not fallback:
            raise error
        key = make_key(name, version, label)
        value = call_fallback(key, fallback, error)  # a callable's failure is ours, typed
        model = prompt_from_value(name, value, prompt_type, label or None)
        logger.warning("prompt %r: serving the fallback: %s", name, error)
        return wrap(fallback_model(model, version))


class Langfuse(_Surface):
    """The Langfuse Python SDK's ``Langfuse`` client, prompts only, over ``PromptClient``.

    The constructor takes Langfuse's arguments (``public_key``, ``secret_key``,
    ``base_url``/``host``, ``timeout``, and its tracing options, accepted and unused) and
    environment (``LANGFUSE_PUBLIC_KEY``, ``LANGFUSE_SECRET_KEY``, ``LANGFUSE_BASE_URL``,
    ``LANGFUSE_HOST``, ``LANGFUSE_TIMEOUT``, ``LANGFUSE_PROMPT_CACHE_DEFAULT_TTL_SECONDS``),
    plus ours: ``cache_ttl_seconds``, ``max_size``, ``max_stale_seconds``,
    ``negative_cache_seconds`` (0 by default, as Langfuse remembers no missing prompt),
    ``shared`` (a Redis URL or ``RedisTier``: one cache for the fleet) and
    ``webhook_secret``. Without keys the client is disabled, as Langfuse's is:
    ``auth_check()`` is ``False`` and prompt calls raise ``ConfigurationError``.
    """

    def _build(self, resolved: tuple[dict[str, Any], Secret] | None) -> None:
        self._client: PromptClient | None = None if resolved is None else PromptClient(
            secret_key=resolved[1].reveal(), **resolved[0]
        )

    def _open(self) -> PromptClient:
        if self._client is None:
            raise ConfigurationError(_DISABLED)
        return self._client

    def __repr__(self) -> str:
        return f"<Langfuse {'disabled' if self._client is None else self._client!r}>"

    def __enter__(self) -> Langfuse:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    @property
    def prompt_client(self) -> PromptClient:
        """Our client underneath, for what Langfuse's has not (``stats()``, ``prefetch``,
        ``invalidate``, ``handle_webhook``)."""
        return self._open()

    @overload
    def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None,
        type: Literal["chat"], cache_ttl_seconds: int | None = None,
        fallback: ChatFallback | None = None, max_retries: int | None = None,
        fetch_timeout_seconds: int | None = None,
    ) -> ChatPromptClient: ...

    @overload
    def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None,
        type: Literal["text"] = "text", cache_ttl_seconds: int | None = None,
        fallback: TextFallback | None = None, max_retries: int | None = None,
        fetch_timeout_seconds: int | None = None,
    ) -> TextPromptClient: ...

    def get_prompt(
        self,
        name: str,
        *,
        version: int | None = None,
        label: str | None = None,
        type: Literal["chat", "text"] = "text",
        cache_ttl_seconds: int | None = None,
        fallback: TextFallback | ChatFallback | None = None,
        max_retries: int | None = None,
        fetch_timeout_seconds: int | None = None,
    ) -> LangfusePrompt:
        """The prompt ``name`` at ``label`` (default ``production``) or ``version``, from our
        cache (single-flight, stale-while-revalidate, stale-if-error). The prompt comes as it
        is stored, whatever ``type`` says (as Langfuse's); ``type`` shapes the ``fallback``,
        used when the fetch fails with nothing cached. Raises ``InvalidArgumentError`` (a
        ``ValueError``) for version and label together or an empty name, and the
        ``FetchError`` (``PromptNotFoundError`` for a 404) when there is no fallback."""
        client = self._client or self._open()
        get: Callable[..., Prompt] = client.get_prompt
        if max_retries is not None:
            max_retries = _bounded_retries(max_retries)
        try:
            model = get(
                name, version=version, label=label, type=type,
                cache_ttl_seconds=cache_ttl_seconds, max_retries=max_retries,
                fetch_timeout_seconds=fetch_timeout_seconds,
            )
        except FetchError as error:
            if not _wrong_type(error):
                return self._fallback(name, version, label, type, fallback, error)
            # Stored as the other type: served as it is, as Langfuse does.
            try:
                model = get(
                    name, version=version, label=label, type=_other_type(type),
                    cache_ttl_seconds=cache_ttl_seconds, max_retries=max_retries,
                    fetch_timeout_seconds=fetch_timeout_seconds,
                )
            except FetchError as again:
                return self._fallback(name, version, label, type, fallback, again)
        return wrap(model)

    @overload
    def create_prompt(
        self, *, name: str, prompt: list[dict[str, Any]], labels: list[str] = [],  # noqa: B006
        tags: list[str] | None = None, type: Literal["chat"] | None,
        config: Any | None = None, commit_message: str | None = None,
    ) -> ChatPromptClient: ...

    @overload
    def create_prompt(
        self, *, name: str, prompt: str, labels: list[str] = [],  # noqa: B006
        tags: list[str] | None = None, type: Literal["text"] | None = "text",
        config: Any | None = None, commit_message: str | None = None,
    ) -> TextPromptClient: ...

    def create_prompt(
        self,
        *,
        name: str,
        prompt: str | list[dict[str, Any]],
        labels: list[str] = [],  # noqa: B006  # Langfuse's default; never mutated
        tags: list[str] | None = None,
        type: Literal["chat", "text"] | None = "text",
        config: Any | None = None,
        commit_message: str | None = None,
    ) -> LangfusePrompt:
        """Create a new version of ``name``; its labels' keys then serve it from the cache
        with no fetch (Langfuse instead drops every cached prompt of that name)."""
        client = self._open()
        create: Callable[..., Any] = client.create_prompt
        return wrap(create(
            name=name, prompt=prompt, type=type or "text", labels=list(labels), tags=tags,
            config=config or {}, commit_message=commit_message,
        ))

    def update_prompt(
        self, *, name: str, version: int, new_labels: list[str] = []  # noqa: B006
    ) -> LangfusePrompt:
        """Add ``new_labels`` to version ``version`` of ``name``; returns that version, as a
        prompt object with the attributes of the model Langfuse returns (``name``,
        ``version``, ``labels``, ``tags``, ``config``, ``prompt``, ``type``...)."""
        return wrap(self._open().update_prompt(
            name=name, version=version, new_labels=list(new_labels)
        ))

    def clear_prompt_cache(self) -> None:
        """Drop every cached prompt (in every process, with a shared tier)."""
        if self._client is not None:
            self._client.clear()

    def auth_check(self) -> bool:
        """Whether the keys belong to a project (``GET /api/public/projects``): ``True``, or
        ``AuthenticationError`` when refused; ``False`` for a disabled client, as Langfuse."""
        if self._client is None:
            logger.warning("auth check failed: %s", _DISABLED)
            return False
        return self._client._call(_check_auth)

    def flush(self) -> None:
        """Wait for the cache changes still on their way to the shared tier (none without
        one). Langfuse's flushes its traces; there are none here."""
        client = self._client
        if client is not None and client._loop is not None and not client._closed:
            client._call(_drain)

    def shutdown(self) -> None:
        """Close the client: refreshes cancelled, HTTP session closed, loop thread ended."""
        if self._client is not None:
            self._client.close()


class AsyncLangfuse(_Surface):
    """``Langfuse`` for asyncio code, over ``AsyncPromptClient``: the same constructor and
    methods, every one that does I/O awaitable (``get_prompt``, ``create_prompt``,
    ``update_prompt``, ``auth_check``, ``flush``, ``shutdown``); ``clear_prompt_cache`` is
    not. Use it with ``async with``, or keep one and let the first call open it on the
    running event loop; ``await shutdown()`` closes it. Langfuse's SDK has no such client.
    """

    def _build(self, resolved: tuple[dict[str, Any], Secret] | None) -> None:
        self._client: AsyncPromptClient | None = None if resolved is None else AsyncPromptClient(
            secret_key=resolved[1].reveal(), **resolved[0]
        )
        self._open_client: AsyncPromptClient | None = None
        self._opening: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<AsyncLangfuse {'disabled' if self._client is None else self._client!r}>"

    async def _open(self) -> AsyncPromptClient:
        client = self._open_client
        if client is not None:
            return client
        if self._client is None:
            raise ConfigurationError(_DISABLED)
        if self._opening is None:
            self._opening = anyio.Event()
            try:
                await self._client.__aenter__()
                self._open_client = self._client
            finally:
                self._opening.set()
        else:
            await self._opening.wait()
        if self._open_client is None:
            raise ClientStateError("the AsyncLangfuse client is closed, or failed to open")
        return self._open_client

    async def __aenter__(self) -> AsyncLangfuse:
        if self._client is not None:
            await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    @property
    def prompt_client(self) -> AsyncPromptClient:
        """Our client underneath (``stats()``, ``prefetch``, ``invalidate``...)."""
        if self._client is None:
            raise ConfigurationError(_DISABLED)
        return self._client

    @overload
    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None,
        type: Literal["chat"], cache_ttl_seconds: int | None = None,
        fallback: ChatFallback | None = None, max_retries: int | None = None,
        fetch_timeout_seconds: int | None = None,
    ) -> ChatPromptClient: ...

    @overload
    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None,
        type: Literal["text"] = "text", cache_ttl_seconds: int | None = None,
        fallback: TextFallback | None = None, max_retries: int | None = None,
        fetch_timeout_seconds: int | None = None,
    ) -> TextPromptClient: ...

    async def get_prompt(
        self,
        name: str,
        *,
        version: int | None = None,
        label: str | None = None,
        type: Literal["chat", "text"] = "text",
        cache_ttl_seconds: int | None = None,
        fallback: TextFallback | ChatFallback | None = None,
        max_retries: int | None = None,
        fetch_timeout_seconds: int | None = None,
    ) -> LangfusePrompt:
        """As ``Langfuse.get_prompt``, awaited; a fresh hit does not suspend the caller."""
        client = self._open_client or await self._open()
        get: Callable[..., Awaitable[Prompt]] = client.get_prompt
        if max_retries is not None:
            max_retries = _bounded_retries(max_retries)
        try:
            model = await get(
                name, version=version, label=label, type=type,
                cache_ttl_seconds=cache_ttl_seconds, max_retries=max_retries,
                fetch_timeout_seconds=fetch_timeout_seconds,
            )
        except FetchError as error:
            if not _wrong_type(error):
                return self._fallback(name, version, label, type, fallback, error)
            try:
                model = await get(
                    name, version=version, label=label, type=_other_type(type),
                    cache_ttl_seconds=cache_ttl_seconds, max_retries=max_retries,
                    fetch_timeout_seconds=fetch_timeout_seconds,
                )
            except FetchError as again:
                return self._fallback(name, version, label, type, fallback, again)
        return wrap(model)

    async def create_prompt(
        self,
        *,
        name: str,
        prompt: str | list[dict[str, Any]],
        labels: list[str] = [],  # noqa: B006  # Langfuse's default; never mutated
        tags: list[str] | None = None,
        type: Literal["chat", "text"] | None = "text",
        config: Any | None = None,
        commit_message: str | None = None,
    ) -> LangfusePrompt:
        """As ``Langfuse.create_prompt``, awaited."""
        client = await self._open()
        create: Callable[..., Any] = client.create_prompt
        return wrap(await create(
            name=name, prompt=prompt, type=type or "text", labels=list(labels), tags=tags,
            config=config or {}, commit_message=commit_message,
        ))

    async def update_prompt(
        self, *, name: str, version: int, new_labels: list[str] = []  # noqa: B006
    ) -> LangfusePrompt:
        """As ``Langfuse.update_prompt``, awaited."""
        client = await self._open()
        return wrap(await client.update_prompt(
            name=name, version=version, new_labels=list(new_labels)
        ))

    def clear_prompt_cache(self) -> None:
        """Drop every cached prompt (in every process, with a shared tier). Not awaited."""
        if self._client is not None:
            self._client.clear()

    async def auth_check(self) -> bool:
        """As ``Langfuse.auth_check``, awaited."""
        if self._client is None:
            logger.warning("auth check failed: %s", _DISABLED)
            return False
        return await _check_auth(await self._open())

    async def flush(self) -> None:
        """As ``Langfuse.flush``, awaited."""
        if self._open_client is not None:
            await _drain(self._open_client)

    async def shutdown(self) -> None:
        """Close the client. Idempotent; later calls raise ``ClientStateError``."""
        if self._client is not None:
            self._open_client = None
            if self._opening is None:
                self._opening = anyio.Event()
                self._opening.set()
            await self._client.aclose()


async def _check_auth(client: AsyncPromptClient) -> bool:
    source = client.source
    if not isinstance(source, LangfuseSource):
        raise ConfigurationError(
            f"auth_check needs Langfuse's API; the source is a {type(source).__name__}"
        )
    return await source.check_auth(FetchOptions())


async def _drain(client: AsyncPromptClient) -> None:
    link = client._link
    if link is not None:
        await link.drain()
