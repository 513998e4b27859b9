"""URLs at the HTTP edge: the check that a URL is http(s) with a host (its text redacted in the
error), and the proxy the environment names for a URL. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit

from .._core.errors import ConfigurationError
from .._core.secret import redact_url


def check_http_url(url: str, what: str, hint: str) -> SplitResult:
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ConfigurationError(f"{what} is not a valid URL: {shown!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{what} must be an http(s) URL with a host{hint}, got {shown!r}")
    return parts


def _bypassed(host: str, netloc: str, no_proxy: str) -> bool:
    """Whether ``no_proxy`` (comma-separated host suffixes, or ``*``) covers the host."""
    if no_proxy.strip() == "*":
        return True
    for name in no_proxy.split(","):
        name = name.strip().lstrip(".").lower()
        if name and any(h == name or h.endswith("." + name) for h in (host, netloc)):
            return True
    return False


def proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy ``env`` names for ``url``, read as urllib (and so httpx and requests) read
    it: ``<scheme>_proxy`` in either case, lowercase winning, then ``all_proxy``; ``no_proxy``
    lists hosts to reach directly. ``None``: connect directly."""
    proxies: dict[str, str] = {}
    for name, value in env.items():
        if value and name.lower().endswith("_proxy"):
            proxies[name.lower()[:-6]] = value
    if "REQUEST_METHOD" in env:
        # A CGI script: HTTP_PROXY may come from a client's "Proxy:" header (httpoxy).
        proxies.pop("http", None)
    for name, value in env.items():
        if name.endswith("_proxy"):
            if value:
                proxies[name.lower()[:-6]] = value
            else:
                proxies.pop(name.lower()[:-6], None)
    parts = urlsplit(url)
    if _bypassed(parts.hostname or "", parts.netloc.lower(), proxies.get("no", "")):
        return None
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy is None:
        return None
    proxy = proxy.strip()
    if "://" not in proxy:
        proxy = "http://" + proxy  # "host:port", as curl and httpx take it
    check_http_url(proxy, f"the proxy for {url}", " (trust_env=False ignores the proxy variables)")
    return proxy
