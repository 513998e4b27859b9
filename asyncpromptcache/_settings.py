"""Client settings: arguments first, then ``LANGFUSE_*`` environment variables, then defaults.
Read when a client is built, never at import. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from ._errors import ConfigurationError

__all__ = ["Settings", "resolve_settings"]

DEFAULT_BASE_URL = "https://cloud.langfuse.com"
DEFAULT_TTL_SECONDS = 60.0
DEFAULT_TIMEOUT_SECONDS = 5.0
_TTL_VARS = ("LANGFUSE_PROMPT_CACHE_TTL_SECONDS", "LANGFUSE_PROMPT_CACHE_DEFAULT_TTL_SECONDS")


@attrs.frozen
class Settings:
    public_key: str | None
    secret_key: str | None = attrs.field(repr=False)
    base_url: str
    cache_ttl_seconds: float
    timeout_seconds: float


def _number(value: float | str, what: str, *, positive: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be a number of seconds, got {value!r}") from None
    if math.isnan(number) or math.isinf(number) or number < 0 or (positive and number == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise ConfigurationError(f"{what} must be a finite number {bound}, got {value!r}")
    return number


def check_ttl(value: float | str, what: str = "cache_ttl_seconds") -> float:
    return _number(value, what, positive=False)


def check_timeout(value: float | str, what: str = "fetch_timeout_seconds") -> float:
    return _number(value, what, positive=True)


def resolve_settings(
    env: Mapping[str, str],
    *,
    public_key: str | None = None,
    secret_key: str | None = None,
    base_url: str | None = None,
    cache_ttl_seconds: float | None = None,
    timeout_seconds: float | None = None,
) -> Settings:
    """Merge arguments and environment; a bad value raises ``ConfigurationError`` naming it."""
    public_key = public_key if public_key is not None else env.get("LANGFUSE_PUBLIC_KEY") or None
    secret_key = secret_key if secret_key is not None else env.get("LANGFUSE_SECRET_KEY") or None
    if (public_key is None) != (secret_key is None):
        given, missing = ("public", "secret") if secret_key is None else ("secret", "public")
        raise ConfigurationError(
            f"a Langfuse {given} key was given but no {missing} key "
            f"(argument {missing}_key or LANGFUSE_{missing.upper()}_KEY)"
        )
    url = base_url or env.get("LANGFUSE_BASE_URL") or env.get("LANGFUSE_HOST") or DEFAULT_BASE_URL
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"the Langfuse base URL must start with http(s)://, got {url!r}")

    if cache_ttl_seconds is not None:
        ttl = check_ttl(cache_ttl_seconds)
    else:
        ttl = DEFAULT_TTL_SECONDS
        # The second is the Langfuse SDK's own name for it.
        for var in _TTL_VARS:
            if env.get(var, "").strip():
                ttl = check_ttl(env[var], var)
                break

    if timeout_seconds is not None:
        timeout = check_timeout(timeout_seconds, "timeout_seconds")
    elif env.get("LANGFUSE_TIMEOUT", "").strip():
        timeout = check_timeout(env["LANGFUSE_TIMEOUT"], "LANGFUSE_TIMEOUT")
    else:
        timeout = DEFAULT_TIMEOUT_SECONDS
    return Settings(
        public_key=public_key, secret_key=secret_key, base_url=url.rstrip("/"),
        cache_ttl_seconds=ttl, timeout_seconds=timeout,
    )
