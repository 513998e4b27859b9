"""``OwnedSession``: the aiohttp session of an HTTP client of ours (the Langfuse source, the
OpenAI producer) and the proxy it reaches its target through.

A session passed in is used as is and never closed here; otherwise one is made on first use
(again after ``aclose``) and closed by ``aclose``. The proxy is an http(s) URL given by name,
or else, with ``trust_env``, the one ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and
``NO_PROXY`` name for the target (read once, here, with ``proxy_for``). ``user:password@`` in
it is kept in a ``Secret`` and sent as ``Proxy-Authorization``: in the request itself to an
http:// target (sent to the proxy whole), in the CONNECT to an https:// one. ``redact`` hides
the client's credentials and the proxy's in any text an upstream or the proxy sends back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import traceback
from collections.abc import Callable, Iterable, Iterator

import aiohttp
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from .._core.errors import ConfigurationError, PromptCacheError
from .._core.secret import NO_SECRETS, Redactor, Secret
from .urls import check_http_url, proxy_for

__all__ = ["OwnedSession", "basic_auth", "forget_credentials"]


class OwnedSession:
    def __init__(
        self,
        target: str,
        session: aiohttp.ClientSession | None,
        *,
        verify_ssl: bool,
        trust_env: bool,
        proxy: str | None,
        secrets: Iterable[Secret | None] = (),
    ) -> None:
        if proxy is not None:
            check_http_url(proxy, "proxy", "")
        elif trust_env:
            proxy = proxy_for(target, os.environ)
        #: The proxy's URL without its credentials, ``None`` to connect directly.
        self.proxy: yarl.URL | None = None
        self.__proxy_auth: Secret | None = None
        if proxy is not None:
            url = yarl.URL(proxy)
            self.proxy = url.with_user(None)
            if url.user is not None:
                self.__proxy_auth = basic_auth(
                    url.user, Secret(url.password or ""), "the proxy's credentials")
        #: Hides the client's ``secrets`` and the proxy's credentials in upstream text.
        self.redact = Redactor([*secrets, self.__proxy_auth])
        self._tls = target.startswith("https:")
        #: The session in use, ``None`` before the first request and after ``aclose``.
        self.session = session
        self._owned = session is None
        self._verify_ssl = verify_ssl

    @contextlib.contextmanager
    def converted(
        self,
        on_timeout: Callable[[], PromptCacheError],
        on_transport: Callable[[str], PromptCacheError],
    ) -> Iterator[None]:
        """The one map from aiohttp's (and the socket's) exceptions to ours, for every HTTP
        client of ours: a timeout becomes ``on_timeout()``, anything else without an answer
        ``on_transport(what happened)``, each ``from`` the original, whose credentials (frames,
        request headers, what it quotes of a proxy's answer) are removed first. Our own
        errors pass through."""
        try:
            yield
        except PromptCacheError:
            raise
        except TimeoutError as exc:
            forget_credentials(exc, self.redact)
            raise on_timeout() from exc
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            forget_credentials(exc, self.redact)  # a proxy's reason may echo what it was sent
            raise on_transport(f"{type(exc).__name__}: {self.redact(str(exc))}") from exc

    def get(self) -> aiohttp.ClientSession:
        if self.session is None or (self._owned and self.session.closed):
            # ssl=True: aiohttp's default verified context; False only when asked by name.
            # The proxy is resolved once (above), not by aiohttp's trust_env: that also reads
            # ~/.netrc, whose credentials clash with ours.
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._verify_ssl))
            self._owned = True
        return self.session

    async def aclose(self) -> None:
        session, self.session = self.session, None
        if session is not None and self._owned and not session.closed:
            await session.close()

    # The two below build temporaries that the request consumes, so that no frame that may
    # raise holds the credentials in a local.

    def request_headers(self) -> dict[str, str]:
        """``Proxy-Authorization`` to add to the request's headers (an http:// target)."""
        if self.__proxy_auth is None or self._tls:
            return {}
        return {"Proxy-Authorization": self.__proxy_auth.reveal()}

    def connect_headers(self) -> dict[str, str] | None:
        """``proxy_headers`` of the request: ``Proxy-Authorization`` of the CONNECT."""
        if self.__proxy_auth is None or not self._tls:
            return None
        return {"Proxy-Authorization": self.__proxy_auth.reveal()}


def basic_auth(login: str | None, password: Secret | None, what: str) -> Secret | None:
    """The ``Authorization`` value for HTTP Basic, or ``None`` without both parts."""
    if login is None or password is None:
        return None
    try:
        return Secret(
            "Basic " + base64.b64encode(f"{login}:{password.reveal()}".encode()).decode()
        )
    except UnicodeEncodeError:
        raise ConfigurationError(f"{what} must be valid Unicode text") from None


def forget_credentials(exc: BaseException, redact: Redactor = NO_SECRETS) -> None:
    """Remove the credentials from an aiohttp error before it is chained to ours, where any
    error reporter may print it: its frames' locals (aiohttp's hold the auth and the request
    headers), the request headers a ``ClientResponseError`` keeps in ``request_info``, and
    what its message quotes of the answer (a proxy's reason phrase may echo them)."""
    chain: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while chain:
        current = chain.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # Those frames have finished (the error left them); the one running is skipped.
        traceback.clear_frames(current.__traceback__)
        chain += [current.__cause__, current.__context__]
    if isinstance(exc, aiohttp.ClientResponseError):
        exc.message = redact(exc.message)
        info = exc.request_info
        headers = CIMultiDict(info.headers)
        headers.popall("Authorization", None)
        headers.popall("Proxy-Authorization", None)
        exc.request_info = aiohttp.RequestInfo(
            info.url, info.method, CIMultiDictProxy(headers), info.real_url
        )
        exc.args = tuple(exc.request_info if arg is info else arg for arg in exc.args)
