"""What the cache transports do with a request, decided without I/O.

Routes (by the path's end, under any base URL; ``POST`` with a JSON object body only):

* ``chat``: ``.../chat/completions`` (OpenAI Chat Completions);
* ``responses``: ``.../responses`` (OpenAI's Responses API);
* ``messages``: ``.../v1/messages`` (Anthropic Messages);
* ``embeddings``: ``.../embeddings`` (cached input by input).

Anything else is passed through untouched.

Sampled requests (``is_sampled``) pass through uncached unless the cache opts in:

* Chat Completions: ``n`` above 1; else a ``seed`` makes it deterministic; else a
  ``temperature`` above 0 (unset: OpenAI's default, 1) samples. ``top_p`` alone does not
  make a request deterministic.
* Responses: a ``temperature`` above 0 (unset: 1) samples (the API has no seed);
  ``background: true`` is never cached (its answer is a handle to poll).
* Anthropic Messages: a ``temperature`` above 0 (unset: Anthropic's default, 1.0) samples
  (no seed); extended thinking requires temperature 1, so it samples.
* Embeddings: never sampled.

Directives (request headers, removed before the request leaves): ``Cache-Control:
no-cache`` (go upstream, store the new answer), ``no-store`` (go upstream, store nothing),
``only-if-cached`` (a hit or a join, else 504), ``max-age=N`` (replay only an answer younger
than N seconds); ``X-Cache-TTL: N`` (seconds to keep the answer) and ``X-Cache-Namespace:
tenant``.

What goes into a key (``key_material``, hashed by ``ResponseCache``): the route, the upstream
origin (scheme, host, port) and path with its query, the headers that change an answer
(``VARY_HEADERS``), the tenant (``X-Cache-Namespace``), a digest of the credentials
(``Authorization``, ``x-api-key``, ``api-key``) unless keys share answers, and the request
body as canonical JSON (``stream`` included: a stream and a whole answer are kept apart).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeAlias

import attrs

__all__ = [
    "CREDENTIAL_HEADERS",
    "DIRECTIVE_HEADERS",
    "VARY_HEADERS",
    "Bypass",
    "DirectiveError",
    "Directives",
    "Lookup",
    "Route",
    "credentials_digest",
    "decide",
    "is_sampled",
    "key_material",
    "parse_directives",
    "replayed_headers",
    "route_of",
]

Route: TypeAlias = Literal["chat", "responses", "messages", "embeddings"]

#: Request headers read by the transport and never sent upstream.
DIRECTIVE_HEADERS: frozenset[str] = frozenset({"cache-control", "x-cache-ttl",
                                               "x-cache-namespace"})
#: Request headers whose values are hashed into the namespace (never stored or shown).
CREDENTIAL_HEADERS: tuple[str, ...] = ("authorization", "x-api-key", "api-key")
#: Request headers that change the answer, so they are part of the key.
VARY_HEADERS: tuple[str, ...] = ("anthropic-version", "anthropic-beta", "openai-beta",
                                 "openai-organization", "openai-project")
#: Answer headers not kept with a stored answer: hop by hop, framing (the body is kept
#: decoded), and cookies (never shared between callers).
_NOT_REPLAYED = frozenset({
    "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
    "set-cookie", "proxy-authenticate", "trailer", "upgrade", "age", "x-cache",
    "x-cache-key",
})
_SUFFIXES: tuple[tuple[str, Route], ...] = (
    ("/chat/completions", "chat"), ("/v1/messages", "messages"), ("/responses", "responses"),
    ("/embeddings", "embeddings"),
)
_KEY_VERSION = 1


def route_of(method: str, path: str) -> Route | None:
    """The route a request's path names, or ``None`` (passed through). ``path`` is the URL's
    path without its query."""
    if method != "POST":
        return None
    path = path.rstrip("/")
    for suffix, route in _SUFFIXES:
        if path.endswith(suffix):
            return route
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _samples(temperature: Any, default: float) -> bool:
    value = default if temperature is None else _number(temperature)
    return value is None or value > 0  # a value we cannot read: do not guess


def is_sampled(route: Route, body: Mapping[str, Any]) -> bool:
    """Whether repeating ``body`` on ``route`` may give another answer (see the module
    docstring for each protocol's rule)."""
    if route == "embeddings":
        return False
    if route == "chat":
        n = _number(body.get("n"))
        if n is not None and n > 1:
            return True
        if body.get("seed") is not None:
            return False
        return _samples(body.get("temperature"), 1.0)
    if route == "responses":
        return _samples(body.get("temperature"), 1.0)
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive"):
        return True
    return _samples(body.get("temperature"), 1.0)


class DirectiveError(ValueError):
    """A directive header the transport cannot read (answered with a 400)."""


@attrs.frozen
class Directives:
    """The cache directives of one request."""

    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    max_age: float | None = None
    ttl: float | None = None
    tenant: str = ""


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise DirectiveError(f"{name} must be a number of seconds, got {text.strip()!r}") \
            from None
    if not math.isfinite(value) or value < 0:
        raise DirectiveError(f"{name} must be 0 or more seconds, got {text.strip()!r}")
    return value


def parse_directives(headers: Iterable[tuple[str, str]]) -> Directives:
    """The directives among ``headers`` (lower-case names). Unknown ``Cache-Control``
    directives are ignored, as RFC 9111 says; a bad number raises ``DirectiveError``."""
    no_cache = no_store = only = False
    max_age: float | None = None
    ttl: float | None = None
    tenant = ""
    for name, value in headers:
        if name == "cache-control":
            for part in value.split(","):
                directive, _, argument = part.strip().partition("=")
                directive = directive.strip().lower()
                if directive == "no-cache":
                    no_cache = True
                elif directive == "no-store":
                    no_store = True
                elif directive == "only-if-cached":
                    only = True
                elif directive == "max-age":
                    max_age = _seconds("max-age", argument.strip('"'))
        elif name == "x-cache-ttl":
            ttl = _seconds("X-Cache-TTL", value)
        elif name == "x-cache-namespace":
            tenant = value.strip()
    if only and (no_cache or no_store):
        raise DirectiveError("only-if-cached cannot be combined with no-cache or no-store")
    return Directives(no_cache, no_store, only, max_age, ttl, tenant)


@attrs.frozen
class Bypass:
    """Go upstream as if there were no cache; nothing is stored (``x-cache: bypass``)."""

    reason: str


@attrs.frozen
class Lookup:
    """Ask the cache: ``mode`` as ``ResponseCache.stream`` takes it; ``max_age``: a hit
    older than this is refreshed; ``ttl``: ``None`` for the cache's own."""

    mode: Literal["normal", "refresh", "cache_only"]
    max_age: float | None
    ttl: float | None


def decide(route: Route, body: Mapping[str, Any], directives: Directives, *,
           cache_sampled: bool) -> Bypass | Lookup:
    """What to do with a request on ``route``: bypass the cache or look it up."""
    if route == "responses" and body.get("background") is True:
        return Bypass("a background response is a handle to poll")
    if directives.no_store:
        return Bypass("no-store")
    if not cache_sampled and is_sampled(route, body) and not directives.only_if_cached:
        return Bypass("sampled")
    mode: Literal["normal", "refresh", "cache_only"] = (
        "cache_only" if directives.only_if_cached else
        "refresh" if directives.no_cache or directives.max_age == 0 else "normal")
    return Lookup(mode, directives.max_age, directives.ttl)


def credentials_digest(headers: Iterable[tuple[str, str]]) -> str:
    """A digest of the request's credentials: two API keys never meet in one key."""
    digest = hashlib.sha256(b"asyncpromptcache-credentials\0")
    for name, value in headers:
        if name in CREDENTIAL_HEADERS:
            digest.update(name.encode() + b"\0" + value.encode("utf-8", "surrogatepass")
                          + b"\0")
    return digest.hexdigest()


def key_material(route: Route, origin: str, target: str, body: Mapping[str, Any],
                 headers: Iterable[tuple[str, str]], *, tenant: str,
                 share_across_keys: bool) -> dict[str, Any]:
    """The mapping ``ResponseCache`` hashes into the key (see the module docstring).
    ``target`` is the path with its query; ``headers`` have lower-case names."""
    pairs = list(headers)
    vary = sorted((name, value) for name, value in pairs if name in VARY_HEADERS)
    return {
        "transport": _KEY_VERSION, "route": route, "origin": origin, "target": target,
        "vary": vary, "tenant": tenant,
        "credentials": "" if share_across_keys else credentials_digest(pairs),
        "body": body,
    }


def replayed_headers(headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The answer headers kept with a stored answer (lower-case names, order kept)."""
    return [[name, value] for name, value in headers if name not in _NOT_REPLAYED]
