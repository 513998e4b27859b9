"""Client settings: arguments first, then ``LANGFUSE_*`` environment variables, then defaults.
Read when a client is built, never at import. Pure."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import attrs

from .._core.checks import check_seconds, parse_seconds
from .._core.errors import ConfigurationError, InvalidArgumentError
from .._core.secret import Secret, redact_url
from .._http.urls import check_http_url, proxy_for

__all__ = ["Environment", "Settings", "resolve_settings"]

DEFAULT_BASE_URL = "https://cloud.langfuse.com"
DEFAULT_TTL_SECONDS = 60.0
DEFAULT_TIMEOUT_SECONDS = 5.0
# The second is the Langfuse SDK's own name for it.
TTL_VARS = ("LANGFUSE_PROMPT_CACHE_TTL_SECONDS", "LANGFUSE_PROMPT_CACHE_DEFAULT_TTL_SECONDS")
# Kept wrapped in a Secret, out of Environment.values.
_SECRET_VARS = ("LANGFUSE_SECRET_KEY", "LANGFUSE_WEBHOOK_SECRET")


@attrs.frozen
class Settings:
    public_key: str | None
    secret_key: Secret | None = attrs.field(repr=False)
    base_url: str
    cache_ttl_seconds: float
    timeout_seconds: float
    # The proxy the environment names for base_url (None: connect directly).
    proxy: str | None = attrs.field(default=None, repr=lambda url: repr(url and redact_url(url)))


def check_ttl(value: float, what: str = "cache_ttl_seconds") -> float:
    """A per-call TTL: ``InvalidArgumentError`` when bad (the constructor's is checked by
    ``resolve_settings``)."""
    return check_seconds(value, what, error=InvalidArgumentError)


def check_timeout(value: float, what: str = "fetch_timeout_seconds") -> float:
    """A per-call fetch timeout, as ``check_ttl``."""
    return check_seconds(value, what, positive=True, error=InvalidArgumentError)


_API_SUFFIXES = ("/api/public", "/api/public/v2", "/api/public/v2/prompts")


def check_base_url(url: str, what: str = "base_url") -> str:
    """The Langfuse base URL without its trailing slash, or ``ConfigurationError``.

    Refused: anything but http(s) with a host, credentials in it (the keys go in
    ``public_key``/``secret_key``), a query or a fragment (request paths are appended to
    it), and a path ending in ``/api/public`` (the base URL is the host's, the SDK adds the
    API path).
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"{what} must be a string, got {type(url).__name__}")
    url = url.strip()
    shown = redact_url(url)
    parts = check_http_url(url, what, " (such as https://cloud.langfuse.com)")
    if "@" in parts.netloc:
        raise ConfigurationError(
            f"{what} must not hold credentials ({shown!r}): pass the Langfuse keys as "
            "public_key and secret_key (or LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY)"
        )
    if "?" in url or "#" in url:
        raise ConfigurationError(
            f"{what} must not have a query or a fragment, got {shown!r}: request paths are "
            "appended to it"
        )
    path = parts.path.rstrip("/")
    if path.lower().endswith(_API_SUFFIXES):
        raise ConfigurationError(
            f"{what} must be the Langfuse host without the API path (the client adds "
            f"/api/public/...), got {shown!r}"
        )
    return url.rstrip("/")


@attrs.frozen
class Environment:
    """The variables a client reads (the options' and the proxy variables), taken out of the
    environment when it is built: the secrets wrapped, nothing else kept (a frame holding
    ``os.environ`` would show every secret of the process to an error reporter)."""

    values: Mapping[str, str]
    secret_key: Secret | None = attrs.field(repr=False)
    webhook_secret: Secret | None = attrs.field(default=None, repr=False)

    @classmethod
    def read(cls, env: Mapping[str, str], names: Collection[str]) -> Environment:
        webhook = env.get("LANGFUSE_WEBHOOK_SECRET", "").strip()
        return cls(
            {var: env[var] for var in env
             if (var in names and var not in _SECRET_VARS) or var.lower().endswith("_proxy")},
            Secret(env["LANGFUSE_SECRET_KEY"]) if env.get("LANGFUSE_SECRET_KEY") else None,
            Secret(webhook) if webhook else None,
        )


def resolve_settings(
    environment: Environment,
    *,
    public_key: str | None = None,
    secret_key: Secret | None = None,
    base_url: str | None = None,
    cache_ttl_seconds: float | None = None,
    fetch_timeout_seconds: float | None = None,
    trust_env: bool = True,
) -> Settings:
    """Merge arguments and environment; a bad value raises ``ConfigurationError`` naming it.

    The arguments are ``ClientOptions``' fields of the same names.
    """
    env = environment.values
    public_key = public_key if public_key is not None else env.get("LANGFUSE_PUBLIC_KEY") or None
    secret_key = secret_key if secret_key is not None else environment.secret_key
    if (public_key is None) != (secret_key is None):
        given, missing = ("public", "secret") if secret_key is None else ("secret", "public")
        raise ConfigurationError(
            f"a Langfuse {given} key was given but no {missing} key "
            f"(argument {missing}_key or LANGFUSE_{missing.upper()}_KEY)"
        )
    if base_url:
        url = check_base_url(base_url)
    else:
        var = next((v for v in ("LANGFUSE_BASE_URL", "LANGFUSE_HOST") if env.get(v)), None)
        url = DEFAULT_BASE_URL if var is None else check_base_url(env[var], var)

    if cache_ttl_seconds is not None:
        ttl = check_seconds(cache_ttl_seconds, "cache_ttl_seconds")
    else:
        ttl = DEFAULT_TTL_SECONDS
        for var in TTL_VARS:
            if env.get(var, "").strip():
                ttl = parse_seconds(env[var], var)
                break

    if fetch_timeout_seconds is not None:
        timeout = check_seconds(fetch_timeout_seconds, "fetch_timeout_seconds", positive=True)
    elif env.get("LANGFUSE_TIMEOUT", "").strip():
        timeout = parse_seconds(env["LANGFUSE_TIMEOUT"], "LANGFUSE_TIMEOUT", positive=True)
    else:
        timeout = DEFAULT_TIMEOUT_SECONDS
    return Settings(
        public_key=public_key, secret_key=secret_key, base_url=url,
        cache_ttl_seconds=ttl, timeout_seconds=timeout,
        proxy=proxy_for(url, env) if trust_env else None,
    )
