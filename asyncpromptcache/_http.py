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

import base64
import os
from collections.abc import Iterable

import aiohttp
import yarl

from ._errors import ConfigurationError
from ._secret import Redactor, Secret
from ._settings import _http_url, proxy_for

__all__ = ["OwnedSession", "basic_auth"]


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
            _http_url(proxy, "proxy", "")
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
