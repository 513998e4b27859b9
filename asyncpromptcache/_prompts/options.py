"""The options of ``AsyncPromptClient`` and ``PromptClient``, defined once: ``ClientOptions``.

Each field is a keyword of both constructors (``session``: of the async one only) with its
default, its check and the environment variables that stand in for it when it is not given.
The constructors spell their keywords out, for users and type checkers, wrap the secrets and
read the environment first thing (error reporters record the locals of a frame that raises),
and build a ``ClientOptions``; tests/test_options.py holds their signatures to these fields.

Adding an option: a field here (``option(default)``, with ``check=``, ``env=`` or
``given=`` as needed), the same keyword in ``AsyncPromptClient.__init__`` and
``PromptClient.__init__`` passed on to ``ClientOptions``, an example value in the test's
``examples()``, and its use where the client is built (``AsyncPromptClient._configure``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs

from .._core.checks import check_count, check_seconds
from .._core.errors import ConfigurationError
from .._core.secret import Secret
from .._http.retry import RetryPolicy
from .._tiers.redis import ENV_VAR as REDIS_URL_VAR
from .engine import AsyncPromptCache, Clock
from .langfuse_source import LangfuseSource
from .settings import TTL_VARS, Environment, Settings, resolve_settings
from .shared import RedisTier, SharedPrompts, resolve_shared
from .source import PromptSource

if TYPE_CHECKING:
    from .apply import ChangeApplier

__all__ = ["DEFAULT_NEGATIVE_CACHE_SECONDS", "ENV_VARS", "ClientOptions", "environment_of"]

DEFAULT_NEGATIVE_CACHE_SECONDS = 5.0

_Check = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def option(
    default: Any, *, check: _Check | None = None, env: tuple[str, ...] = (),
    given: Any = None, sync: bool = True, secret: bool = False,
    converter: Callable[[Any], Any] | None = None,
) -> Any:
    """A field of ``ClientOptions``: ``env``, the variables read when it is not given (first
    set wins); ``given``, the constructors' annotation when the field holds something else
    (a ``Secret`` for a ``str``); ``sync=False``, an option of ``AsyncPromptClient`` only."""
    return attrs.field(default=default, validator=check, converter=converter, repr=not secret,
                       metadata={"env": env, "given": given, "sync": sync})


def _seconds(*, optional: bool = False, positive: bool = False, allow_inf: bool = False
             ) -> _Check:
    def check(_: object, field: attrs.Attribute[Any], value: Any) -> None:
        if value is not None or not optional:
            check_seconds(value, field.name, positive=positive, allow_inf=allow_inf)
    return check


def _count(minimum: int = 0) -> _Check:
    def check(_: object, field: attrs.Attribute[Any], value: Any) -> None:
        check_count(value, field.name, minimum=minimum)
    return check


def _webhook_secret(_: object, field: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (
        not isinstance(value, Secret)
        or not isinstance(value.reveal(), str)  # Secret(b"...") is typed wrong
        or not value.reveal().strip()
    ):
        raise ConfigurationError("webhook_secret must be a non-empty string")


def environment_of(env: Mapping[str, str] | Environment | None) -> Environment:
    """The variables the options read, out of ``env`` (default: ``os.environ``)."""
    if isinstance(env, Environment):
        return env
    return Environment.read(os.environ if env is None else env, ENV_VARS)


@attrs.frozen(kw_only=True)
class ClientOptions:
    """The options a client was built with, checked; the environment as it was then."""

    public_key: str | None = option(None, env=("LANGFUSE_PUBLIC_KEY",))
    secret_key: Secret | None = option(
        None, env=("LANGFUSE_SECRET_KEY",), given=str | None, secret=True)
    base_url: str | None = option(None, env=("LANGFUSE_BASE_URL", "LANGFUSE_HOST"))
    source: PromptSource | None = option(None)
    session: aiohttp.ClientSession | None = option(None, sync=False)
    cache_ttl_seconds: float | None = option(None, check=_seconds(optional=True), env=TTL_VARS)
    max_size: int = option(1024, check=_count(minimum=1))
    max_stale_seconds: float | None = option(
        None, check=_seconds(optional=True, allow_inf=True))
    fetch_timeout_seconds: float | None = option(
        None, check=_seconds(optional=True, positive=True), env=("LANGFUSE_TIMEOUT",))
    max_retries: int = option(2, check=_count())
    retry: RetryPolicy | None = option(None)
    verify_ssl: bool = option(True)
    # The proxy variables (HTTPS_PROXY, NO_PROXY...) are read whatever their case.
    trust_env: bool = option(True)
    refresh_backoff_seconds: float = option(1.0, check=_seconds())
    refresh_backoff_max_seconds: float = option(300.0, check=_seconds())
    clock: Clock | None = option(None)
    env: Environment = option(None, converter=environment_of, given=Mapping[str, str] | None)
    negative_cache_seconds: float = option(DEFAULT_NEGATIVE_CACHE_SECONDS, check=_seconds())
    shared: str | RedisTier | None = option(None, env=(REDIS_URL_VAR,))
    webhook_secret: Secret | None = option(
        None, check=_webhook_secret, env=("LANGFUSE_WEBHOOK_SECRET",),
        given=str | Secret | None, secret=True)
    # OpenTelemetry providers (None: the global ones); typed Any so that the package never
    # needs opentelemetry to be importable.
    meter_provider: Any = option(None)
    tracer_provider: Any = option(None)

    # -- what the client is built from ----------------------------------------------------

    def settings(self) -> Settings:
        """The Langfuse settings: these options, else the environment, else the defaults."""
        return resolve_settings(
            self.env, public_key=self.public_key, secret_key=self.secret_key,
            base_url=self.base_url, cache_ttl_seconds=self.cache_ttl_seconds,
            fetch_timeout_seconds=self.fetch_timeout_seconds, trust_env=self.trust_env,
        )

    def tier(self) -> RedisTier | None:
        return resolve_shared(self.shared, self.env.values)

    def webhook_key(self) -> Secret | None:
        return self.env.webhook_secret if self.webhook_secret is None else self.webhook_secret

    def retry_policy(self) -> RetryPolicy:
        return self.retry or RetryPolicy(max_retries=self.max_retries)

    def source_for(self, settings: Settings, retry: RetryPolicy) -> tuple[PromptSource, bool]:
        """The source, and whether the client owns it (a Langfuse source it made)."""
        if self.source is not None:
            return self.source, False
        return LangfuseSource(
            base_url=settings.base_url, public_key=settings.public_key,
            secret_key=None if settings.secret_key is None else settings.secret_key.reveal(),
            session=self.session, timeout_seconds=settings.timeout_seconds, retry=retry,
            verify_ssl=self.verify_ssl, trust_env=False, proxy=settings.proxy,
        ), True

    def engine(self, *, inline_hits: bool) -> AsyncPromptCache:
        return AsyncPromptCache(
            max_size=self.max_size, max_stale_seconds=self.max_stale_seconds,
            clock=self.clock or time.monotonic,
            refresh_backoff_seconds=self.refresh_backoff_seconds,
            refresh_backoff_max_seconds=self.refresh_backoff_max_seconds,
            negative_ttl_seconds=self.negative_cache_seconds, inline_hits=inline_hits,
        )

    def link(self, tier: RedisTier, settings: Settings, changes: ChangeApplier) -> SharedPrompts:
        """The link to the shared tier ``tier`` (not yet started): other processes' changes,
        and the prompts read from it whose composition is unknown, go to ``changes``."""
        return SharedPrompts.open(
            tier, host=settings.base_url, public_key=settings.public_key,
            max_stale=self.max_stale_seconds, apply=changes.apply_shared,
            put_ttl=settings.cache_ttl_seconds, suspect=changes.note_suspect,
        )


#: Every variable an option may be read from (besides the proxy variables).
ENV_VARS: Collection[str] = frozenset(
    var for field in attrs.fields(ClientOptions) for var in field.metadata["env"])
