"""The Langfuse HTTP source (aiohttp). aiohttp's exceptions are converted to our error tree
by the HTTP edge's one map (``OwnedSession.converted``), ``from`` the original."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import anyio
import yarl

from .._core.checks import check_count, check_seconds
from .._core.errors import (
    AuthenticationError,
    FetchError,
    FetchTimeoutError,
    InvalidResponseError,
    PromptNotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
    UnexpectedStatusError,
)
from .._core.json_values import NotJSON, dumps, read_json
from .._core.secret import Redactor, Secret
from .._http.retry import RetryPolicy, parse_retry_after
from .._http.session import OwnedSession, basic_auth
from .keys import PromptKey, _shown
from .models import Prompt, parse_prompt
from .settings import check_base_url
from .source import FetchOptions, NewPrompt

__all__ = ["LangfuseSource"]

logger = logging.getLogger("asyncpromptcache")

_T = TypeVar("_T")

_USER_AGENT = "asyncpromptcache/0.1"
_HEADERS = {"Accept": "application/json", "User-Agent": _USER_AGENT}


class LangfuseSource:
    """Fetches prompts from Langfuse's public API: ``GET /api/public/v2/prompts/{name}``.

    One ``aiohttp.ClientSession`` for the source's life, made on first use; a session passed
    in is used as is and never closed here. ``timeout_seconds`` bounds each attempt, body
    included; failed attempts are retried as ``retry`` says, within one deadline per call
    (``retry.budget_seconds(timeout)`` on ``clock``, the event loop's by default). ``proxy`` is
    an http(s) proxy URL (``user:password@`` in it is sent as ``Proxy-Authorization``); without
    one, ``trust_env`` takes it from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and
    ``NO_PROXY``, read here.
    """

    # aiohttp runs on asyncio only: a client refuses to start with this source elsewhere.
    async_backends = ("asyncio",)

    def __init__(
        self,
        *,
        base_url: str,
        public_key: str | None = None,
        secret_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_seconds: float = 5.0,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = 4 * 1024 * 1024,
        verify_ssl: bool = True,
        trust_env: bool = True,
        proxy: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        # Secrets from the first statement on: error reporters record the locals of frames.
        self.__auth = basic_auth(public_key, None if secret_key is None else Secret(secret_key),
                                 "the Langfuse keys")
        del secret_key
        self._base = check_base_url(base_url)
        self._public_key = public_key
        self._http = OwnedSession(self._base, session, verify_ssl=verify_ssl,
                                  trust_env=trust_env, proxy=proxy, secrets=(self.__auth,))
        self._timeout = check_seconds(timeout_seconds, "timeout_seconds", positive=True)
        self._retry = retry or RetryPolicy()
        self._max_bytes = check_count(max_response_bytes, "max_response_bytes", minimum=1)
        self._sleep = sleep
        self._clock = clock
        self.requests_sent = 0

    def __repr__(self) -> str:
        return (
            f"LangfuseSource(base_url={self._base!r}, public_key={self._public_key!r}, "
            f"secret_key={'***' if self.__auth else None})"
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def url_for(self, key: PromptKey) -> yarl.URL:
        """The request URL: the name is one path segment, percent-encoded with nothing safe."""
        if key.version is not None:
            query = f"version={key.version}"
        else:
            query = "label=" + quote(key.label or "production", safe="")
        return yarl.URL(f"{self._base}/api/public/v2/prompts/{name_segment(key.name)}?{query}",
                        encoded=True)

    async def fetch(self, key: PromptKey, options: FetchOptions) -> Prompt:
        """Fetch ``key``, retrying what is worth retrying; raises our errors only."""
        return await self._retrying(
            functools.partial(self._attempt, key), key.describe(), options
        )

    async def _retrying(
        self,
        attempt_once: Callable[[float], Awaitable[_T]],
        what: str,
        options: FetchOptions,
        may_repeat: Callable[[FetchError], bool] | None = None,
    ) -> _T:
        """``attempt_once(timeout)`` until it succeeds or the policy (and ``may_repeat``) says
        stop, all within one deadline: the call's timeout times its attempts."""
        retry = self._retry.for_call(options.max_retries)
        timeout = self._timeout if options.timeout_seconds is None else options.timeout_seconds
        # One deadline for the whole call: attempts, slow bodies and waits all count.
        deadline = self._clock() + retry.budget_seconds(timeout)
        attempt = 0
        while True:
            try:
                return await attempt_once(max(0.0, min(timeout, deadline - self._clock())))
            except FetchError as exc:
                attempt += 1
                delay = retry.delay(attempt, exc, remaining=deadline - self._clock())
                if delay is None or (may_repeat is not None and not may_repeat(exc)):
                    raise
                logger.info(
                    "prompt %s: attempt %d failed (%s); retrying in %.2fs",
                    what, attempt, exc, delay,
                )
                await self._sleep(delay)

    async def _attempt(self, key: PromptKey, timeout: float) -> Prompt:  # noqa: ASYNC109
        status, body, retry_after = await self._exchange(
            "GET", self.url_for(key), None, timeout, key.describe(), name=key.name, key=key
        )
        if status == 200:
            return self._parse(body, key.describe(), key.name, key.version, key=key)
        raise self._status_error(
            f"prompt {key.describe()}", status, body, retry_after, name=key.name, key=key
        )

    async def _exchange(
        self,
        method: str,
        url: yarl.URL,
        payload: Any,
        timeout: float,  # noqa: ASYNC109
        what: str,
        *,
        name: str,
        key: PromptKey | None,
    ) -> tuple[int, bytes, str | None]:
        """One request: ``(status, body, Retry-After)``, or our error when there is no answer."""
        data = None if payload is None else dumps(payload, "the request body").encode()
        session = self._http.get()
        self.requests_sent += 1
        with self._http.converted(
            lambda: FetchTimeoutError(
                f"prompt {what}: no complete answer within {timeout:.3g}s", name=name, key=key),
            lambda cause: TransportError(f"prompt {what}: {cause}", name=name, key=key),
        ), anyio.fail_after(timeout):
            async with session.request(
                method, url, data=data, allow_redirects=False, proxy=self._http.proxy,
                headers=self._headers(json_body=data is not None),
                proxy_headers=self._http.connect_headers(),
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                body = await self._read_body(response, what, name, key)
        return status, body, retry_after

    # A temporary that the request consumes, so that no frame that may raise holds the
    # credentials in a local.

    def _headers(self, *, json_body: bool = False) -> dict[str, str]:
        return {
            **_HEADERS,
            **({"Content-Type": "application/json"} if json_body else {}),
            **({"Authorization": self.__auth.reveal()} if self.__auth else {}),
            **self._http.request_headers(),
        }

    async def _read_body(
        self, response: aiohttp.ClientResponse, what: str, name: str, key: PromptKey | None
    ) -> bytes:
        length = response.content_length
        if length is not None and length > self._max_bytes:
            raise InvalidResponseError(
                f"prompt {what}: response of {length} bytes exceeds the "
                f"{self._max_bytes}-byte limit", name=name, key=key,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > self._max_bytes:
                raise InvalidResponseError(
                    f"prompt {what}: response exceeds the {self._max_bytes}-byte limit",
                    name=name, key=key,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # -- writes (the optional PromptWriter capability) -------------------------------------

    async def create_prompt(self, new: NewPrompt, options: FetchOptions) -> Prompt:
        """``POST /api/public/v2/prompts``. Repeated only when the server surely did not act
        on it (no connection made, or 429): a create is not idempotent, and a repeated one
        would make a second version."""
        url = yarl.URL(f"{self._base}/api/public/v2/prompts")
        what = f"{_shown(new.name)}: create"
        return await self._retrying(
            functools.partial(self._write, "POST", url, new.to_json(), what, new.name, None),
            what, options, _not_acted_on,
        )

    async def update_prompt_labels(
        self, name: str, version: int, new_labels: list[str], options: FetchOptions
    ) -> Prompt:
        """``PATCH /api/public/v2/prompts/{name}/versions/{version}`` with ``newLabels``;
        idempotent (labels are added), so retried as a fetch is."""
        url = yarl.URL(
            f"{self._base}/api/public/v2/prompts/{name_segment(name)}/versions/{version}",
            encoded=True,
        )
        what = f"{_shown(name)} (version {version}): label update"
        return await self._retrying(
            functools.partial(self._write, "PATCH", url, {"newLabels": new_labels}, what, name,
                              version),
            what, options,
        )

    async def _write(
        self, method: str, url: yarl.URL, payload: Any, what: str, name: str,
        version: int | None, timeout: float,  # noqa: ASYNC109
    ) -> Prompt:
        status, body, retry_after = await self._exchange(
            method, url, payload, timeout, what, name=name, key=None
        )
        if status not in (200, 201):
            raise self._status_error(
                f"prompt {what}", status, body, retry_after, name=name, key=None
            )
        return self._parse(body, what, name, version, key=None)

    async def check_auth(self, options: FetchOptions) -> bool:
        """``GET /api/public/projects``, as Langfuse's SDKs check their keys: ``True`` when
        they belong to a project; ``AuthenticationError`` when refused (401/403) or when they
        name no project, and the other ``FetchError``s as a fetch has them. Retried as a
        fetch is."""
        url = yarl.URL(f"{self._base}/api/public/projects")
        return await self._retrying(
            functools.partial(self._check_auth, url), "auth check", options
        )

    async def _check_auth(self, url: yarl.URL, timeout: float) -> bool:  # noqa: ASYNC109
        what = "auth check"
        status, body, retry_after = await self._exchange(
            "GET", url, None, timeout, what, name="", key=None
        )
        if status != 200:
            raise self._status_error(what, status, body, retry_after, name="", key=None)
        data = _json_body(body)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise InvalidResponseError(
                f"{what}: the answer is not a list of projects ({self._http.redact.excerpt(body)})",
                field="data",
            )
        if not data["data"]:
            raise AuthenticationError(
                f"{what}: no project found for the keys provided", status=status
            )
        return True

    def _parse(
        self, body: bytes, what: str, name: str, version: int | None, *, key: PromptKey | None
    ) -> Prompt:
        """The prompt in a 2xx answer, checked to be ``name`` (at ``version`` when given)."""
        try:
            data = read_json(body)
        except NotJSON as exc:
            reason = "nested too deeply" if exc.too_deep else "not valid JSON"
            raise InvalidResponseError(
                f"prompt {what}: response is {reason} ({self._http.redact.excerpt(body)})",
                name=name, key=key,
            ) from None
        try:
            prompt = parse_prompt(data)
        except InvalidResponseError as exc:
            raise InvalidResponseError(
                f"prompt {what}: {self._http.redact(str(exc))}", field=exc.field, name=name,
                key=key,
            ) from None
        if prompt.name != name:
            raise InvalidResponseError(
                f"prompt {what}: the server answered with prompt "
                f"{self._http.redact(repr(prompt.name))}", field="name", name=name, key=key,
            )
        if version is not None and prompt.version != version:
            raise InvalidResponseError(
                f"prompt {what}: the server answered with version {prompt.version}",
                field="version", name=name, key=key,
            )
        return prompt

    def _status_error(
        self, what: str, status: int, body: bytes, retry_after: str | None, *,
        name: str, key: PromptKey | None,
    ) -> FetchError:
        data = _json_body(body)
        detail = _error_message(data, body, self._http.redact)
        what = f"{what}: HTTP {status}" + (f": {detail}" if detail else "")
        if status == 404:
            if data is _TOO_DEEP or (isinstance(data, dict) and isinstance(data.get("error"), str)):
                return PromptNotFoundError(what, name=name, key=key)
            # Not Langfuse's answer (its 404 is JSON naming the error, LangfuseNotFoundError):
            # a proxy or gateway in between, which must not make us drop a cached prompt.
            return ServerError(what, status=status, name=name, key=key)
        if status in (401, 403):
            return AuthenticationError(what, status=status, name=name, key=key)
        if status == 429:
            return RateLimitError(
                what, retry_after=parse_retry_after(retry_after), name=name, key=key
            )
        if status == 408 or 500 <= status <= 599:
            return ServerError(what, status=status, name=name, key=key)
        return UnexpectedStatusError(what, status=status, name=name, key=key)


def name_segment(name: str) -> str:
    """A prompt's name as one URL path segment, for every request that names it: percent-
    encoded with nothing safe, and ``.``/``..`` encoded too (proxies and URL normalisers would
    resolve them away, sending the request to another prompt)."""
    segment = quote(name, safe="")
    return segment.replace(".", "%2E") if not segment.strip(".") else segment


def _not_acted_on(error: FetchError) -> bool:
    """Whether a failed request surely never reached the server's handler: no connection was
    made, or it was rate-limited. Only then may a non-idempotent request be sent again."""
    if isinstance(error, RateLimitError):
        return True
    return isinstance(error, TransportError) and not isinstance(error, FetchTimeoutError) \
        and isinstance(error.__cause__, aiohttp.ClientConnectorError)


_NOT_JSON = object()
_TOO_DEEP = object()  # JSON, as far as can be told, but nested too deeply to read


def _json_body(body: bytes) -> Any:
    """The error body as JSON, else ``_NOT_JSON`` or ``_TOO_DEEP``."""
    try:
        return read_json(body)
    except NotJSON as exc:
        return _TOO_DEEP if exc.too_deep else _NOT_JSON


def _error_message(data: Any, body: bytes, redact: Redactor) -> str:
    """The server's ``message`` from a Langfuse error body, else a short excerpt; redacted
    (a gateway may echo the request's credentials) and escaped (a server echoing a name or
    label with a newline must not forge log lines)."""
    if data is _NOT_JSON or data is _TOO_DEEP:
        return redact.excerpt(body) if body else ""
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return redact.printable(data["message"])
    return redact.excerpt(body)
