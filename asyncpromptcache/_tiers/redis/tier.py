"""``RedisTier``: what the user configures for the shared tier (both caches use it), the
check of its URL, and ``resolve_shared`` (``shared=`` or ``ASYNCPROMPTCACHE_REDIS_URL``)."""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..._core.errors import ConfigurationError

__all__ = ["ENV_VAR", "RedisTier", "redacted", "resolve_shared"]

ENV_VAR = "ASYNCPROMPTCACHE_REDIS_URL"
_SCHEMES = ("redis", "rediss", "unix")
_SOCKET_BACKSTOP = 10.0  # seconds: the socket timeout behind every command's own bound
_SECRET_OPTIONS = frozenset({"password"})


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _secrets_of(url: str) -> list[str]:
    """The secrets a Redis URL carries: the userinfo's password, a ``?password=`` option."""
    found: list[str] = []
    netloc = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    query = url.split("?", 1)[1] if "?" in url else ""
    for name, value in parse_qsl(query.split("#", 1)[0], keep_blank_values=True):
        if name.lower() in _SECRET_OPTIONS and value:
            found.append(value)
    return [secret for secret in found if secret]


def redacted(url: str) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``***``; never
    raises, even on a malformed URL (then only the scheme is kept if a secret is in it)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hostport = netloc.rsplit("@", 1)
            if ":" in userinfo:
                user = userinfo.split(":", 1)[0]
                netloc = f"{user}:***@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(name.lower() in _SECRET_OPTIONS for name, _ in pairs):
                query = urlencode([(name, "***" if name.lower() in _SECRET_OPTIONS else value)
                                   for name, value in pairs], safe="*")
        shown = urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:  # e.g. an unclosed IPv6 bracket
        shown = url
    for secret in _secrets_of(url):
        if secret in shown:
            return f"{_scheme(url) or 'redis'}://***"
    return shown


class RedisTier:
    """A shared L2 cache in Redis for every process of a fleet: pass it (or just a URL) as
    ``shared=`` to ``AsyncPromptClient`` or ``PromptClient``.

    * ``url_or_client``: ``redis://``, ``rediss://`` or ``unix://`` URL, or your own
      ``redis.asyncio`` client (``Redis``, ``RedisCluster`` from redis-py 8 on, one from
      ``Sentinel``), which is never closed by the tier. Needs
      ``pip install 'asyncpromptcache[redis]'``.
    * ``namespace``: separates applications sharing one Redis; entries are namespaced by it,
      the Langfuse host and the public key as well.
    * ``signing_key``: values and change messages are HMAC-signed with it, and unsigned or
      wrongly signed ones are ignored (for a Redis that other services can write; every
      process of the namespace needs the same key).
    * ``timeout_seconds``: the bound on every Redis call; past it the call counts as a failure
      and the client goes on without Redis.
    * ``stale_retention_seconds``: how long past its TTL a value stays in Redis when the
      client's ``max_stale_seconds`` is unbounded (a last-known-good for processes that start
      during an outage).
    * ``moved_grace_seconds``: when a webhook says a label left a version, how long readers
      of that label wait for the webhook of the version it moved to (Langfuse sends it next)
      before fetching it themselves (a label removed, not moved, costs them that wait once).
    """

    def __init__(
        self,
        url_or_client: str | Any,
        *,
        namespace: str = "default",
        signing_key: str | bytes | None = None,
        timeout_seconds: float = 0.25,
        stale_retention_seconds: float = 7 * 24 * 3600.0,
        reconnect_max_seconds: float = 5.0,
        moved_grace_seconds: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if importlib.util.find_spec("redis") is None:
            raise ConfigurationError(
                "the shared tier needs redis-py: pip install 'asyncpromptcache[redis]'"
            )
        if isinstance(url_or_client, str):
            if _scheme(url_or_client) not in _SCHEMES:
                raise ConfigurationError(
                    f"the shared tier's URL must start with redis://, rediss:// or unix://, "
                    f"got {redacted(url_or_client)!r}"
                )
            _check_url(url_or_client)
        elif not callable(getattr(url_or_client, "pubsub", None)):
            kind = type(url_or_client).__name__
            raise ConfigurationError(
                f"shared: expected a Redis URL or a redis.asyncio client, got {kind}"
                + (" without pubsub(): redis-py's asyncio RedisCluster has it from "
                   "redis-py 8.0" if "Cluster" in kind else "")
            )
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace must be a non-empty string, got {namespace!r}")
        for value, what in ((timeout_seconds, "timeout_seconds"),
                            (stale_retention_seconds, "stale_retention_seconds"),
                            (reconnect_max_seconds, "reconnect_max_seconds"),
                            (moved_grace_seconds, "moved_grace_seconds")):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"{what} must be a positive number, got {value!r}")
        self._target = url_or_client
        self.namespace = namespace
        self._signing_key = (
            signing_key.encode() if isinstance(signing_key, str) else signing_key
        )
        self.timeout_seconds = float(timeout_seconds)
        self.stale_retention_seconds = float(stale_retention_seconds)
        self.reconnect_max_seconds = float(reconnect_max_seconds)
        self.moved_grace_seconds = float(moved_grace_seconds)
        self._wall = wall_clock

    def __repr__(self) -> str:
        target = (redacted(self._target) if isinstance(self._target, str)
                  else type(self._target).__name__)
        signed = ", signed" if self._signing_key is not None else ""
        return f"RedisTier({target!r}, namespace={self.namespace!r}{signed})"

    def _connect(self, read_timeout: float | None = None) -> tuple[Any, bool]:
        """A redis.asyncio client for the running loop, and whether the link owns it
        (``read_timeout``: a longer socket timeout, for blocking reads)."""
        if not isinstance(self._target, str):
            return self._target, False
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No silent retries: a lost connection must be seen (a re-subscription may have
        # missed messages), and the connection has its own health policy. Every command is
        # bounded by its caller (``Connection.call``); the socket timeout is only a backstop
        # past the longest such bound.
        client = Redis.from_url(
            self._target,
            socket_timeout=read_timeout or max(_SOCKET_BACKSTOP, 4 * self.timeout_seconds),
            socket_connect_timeout=self.timeout_seconds, retry=Retry(NoBackoff(), 0),
            health_check_interval=10,
        )
        return client, True


def _check_url(url: str) -> None:
    """``ConfigurationError`` for a URL redis-py cannot connect with (a malformed host, IPv6
    included, a bad port, database or option), parsed as ``Redis.from_url`` parses it,
    without connecting. No secret of the URL appears in the message."""
    from redis.asyncio.connection import parse_url

    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here
        parse_url(url)
    except Exception as exc:  # ValueError, or whatever a malformed URL makes urllib raise
        message = str(exc)
        if any(secret in message for secret in _secrets_of(url)):
            message = type(exc).__name__
        raise ConfigurationError(
            f"the shared tier's URL {redacted(url)!r} is not one redis-py can use: {message}"
        ) from None


def resolve_shared(
    shared: str | RedisTier | bool | None, env: Any
) -> RedisTier | None:
    """The tier a client was given: ``shared=``, else ``ASYNCPROMPTCACHE_REDIS_URL``;
    ``shared=False`` turns the shared tier off whatever the environment says."""
    if shared is False:
        return None
    if shared is None:
        shared = (env.get(ENV_VAR) or "").strip() or None
        if shared is None:
            return None
    if isinstance(shared, RedisTier):
        return shared
    if isinstance(shared, str):
        return RedisTier(shared)
    raise ConfigurationError(
        f"shared must be a Redis URL or a RedisTier, got {type(shared).__name__}"
    )
