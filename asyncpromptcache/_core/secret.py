"""``Secret``: a string that stays out of reprs, ``str()``, logs and error reporters; the
``Redactor`` that hides known secrets in text quoted from elsewhere; ``redact_url``. Pure.

Error reporters (Sentry and the like) record the local variables of every frame of a
traceback by their ``repr``. The secret key is therefore wrapped in a ``Secret`` as it enters
(the first statement of the function that receives it) and revealed only as a temporary in
the expression that needs it, never kept in a plain local or attribute.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["NO_SECRETS", "Redactor", "Secret", "redact_url"]


class Secret:
    """Holds a secret string; ``repr``, ``str`` and ``format`` show ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickled (a multiprocessing argument, a cache dump), it would be written out whole.
        raise TypeError("a Secret cannot be pickled")


#: Shorter secrets are not looked for in text: hiding every "a" of a message hides nothing.
MIN_REDACTED_LENGTH = 4
_AUTH_SCHEMES = ("Basic ", "Bearer ")


def _forms(value: str) -> list[str]:
    """How ``value`` may come back in an echo: as sent, percent-encoded, and, for an
    ``Authorization`` value, its token and (Basic) the password inside it."""
    forms = [value, quote(value, safe="")]
    for scheme in _AUTH_SCHEMES:
        if value.startswith(scheme):
            token = value[len(scheme):]
            forms.append(token)
            if scheme == "Basic ":
                try:
                    pair = base64.b64decode(token, validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    pair = ""
                forms += [pair, *_forms(pair.partition(":")[2])] if ":" in pair else []
    return forms


class Redactor:
    """Replaces the known secrets (``Secret`` values: keys, passwords, ``Authorization``
    values) in a text quoted from elsewhere, such as an upstream's or a gateway's error body
    that echoes the request's credentials, with ``***``: each as sent, percent-encoded, and
    the token and password inside an ``Authorization`` value. The one redactor of every
    upstream text a message or a log line quotes."""

    __slots__ = ("__forms",)

    def __init__(self, secrets: Iterable[Secret | None] = ()) -> None:
        forms = {form for secret in secrets if secret is not None
                 for form in _forms(secret.reveal()) if len(form) >= MIN_REDACTED_LENGTH}
        # Longest first: a secret containing another is replaced whole.
        self.__forms = tuple(Secret(form) for form in sorted(forms, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for form in self.__forms:
            text = text.replace(form.reveal(), "***")
        return text

    def _head(self, text: str | bytes, limit: int) -> tuple[str, bool]:
        # Redacted whole before it is cut (an error body: bounded, and rare): a secret
        # across the cut is hidden whole, not halved.
        shown = self(text if isinstance(text, str) else text.decode("utf-8", "replace"))
        return shown[:limit], len(shown) > limit

    def excerpt(self, text: str | bytes, limit: int = 80) -> str:
        """The start of an upstream's ``text`` (bytes read as UTF-8), redacted, as a repr."""
        head, cut = self._head(text, limit)
        return repr(head) + ("..." if cut else "")

    def printable(self, text: str, limit: int = 300) -> str:
        """The start of an upstream's message, redacted, with what is not printable escaped:
        a message with a newline must not forge log lines."""
        head, _ = self._head(text, limit)
        return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                       for ch in head)

    def __repr__(self) -> str:
        return f"Redactor({len(self.__forms)} forms)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Redactor cannot be pickled")


_USERINFO = re.compile(r"(//)([^/?#]*)@")
_SECRET_QUERY = re.compile(
    r"([?&;](?:password|passwd|pwd|pass|secret|token|api_key|apikey|key)=)[^&;#]*",
    re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` for messages and reprs: a password in its userinfo (``user:***@``; a lone
    user, which may be a token, as ``***@``) and the values of query parameters that carry
    secrets (``?password=``, ``token=``...) replaced. Any string, even one that is not a
    valid URL."""

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match.group(2).partition(":")
        return match.group(1) + (f"{user}:***@" if colon and user else "***@")

    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(userinfo, url, count=1))


#: The redactor of a client holding no secret: it only cuts and escapes.
NO_SECRETS = Redactor()
