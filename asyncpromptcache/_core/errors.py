"""Every error the SDK raises, under one root.

The tree::

    PromptCacheError                    root: ``except PromptCacheError`` catches all we raise
    ├── ConfigurationError              bad argument or environment value (also ValueError)
    ├── ClientStateError                the client is used before ``async with`` / after close
    ├── TemplateError                   strict compile found missing variables or placeholders
    ├── WritesNotSupportedError         create/update_prompt on a source that cannot write
    ├── WebhookError                    a webhook that cannot be applied (bad body, no secret)
    │   ├── WebhookSignatureError       missing, malformed, wrong or expired signature
    │   └── WebhookReplayError          an event id seen before (already applied: answer 2xx)
    ├── ResponseError                   the LLM response cache (``ResponseCache``) and its producers
    │   ├── NotCachedError              ``mode="cache_only"`` and no answer stored or in flight
    │   ├── SlowConsumerError           a consumer fell more than its buffer behind the live
    │   │                               stream and was dropped (the others go on)
    │   ├── ResponseFailedError         the answer's upstream failed or was cut off: raised to
    │   │                               each consumer after the chunks it got; ``.upstream``
    │   │                               (also ``__cause__``) is the producer's error
    │   └── UpstreamError               what an LLM producer raises (``OpenAIChatProducer``)
    │       ├── UpstreamStatusError     a non-2xx answer, ``.status`` (``.retry_after`` on 429)
    │       ├── UpstreamEventError      an error event inside the stream, ``.error_type``
    │       ├── UpstreamProtocolError   not SSE or JSON, or the stream ended before ``[DONE]``
    │       └── UpstreamTransportError  no answer, or the connection was lost mid-stream
    │           └── UpstreamTimeoutError  no data within the producer's timeout
    └── FetchError                      a request for a prompt failed (a fetch, or a write:
                                        create/update_prompt); ``.name`` and ``.key`` say which
        ├── PromptNotFoundError         404: no such prompt, label or version
        ├── AuthenticationError         401 (bad keys) or 403 (wrong kind of key)
        ├── RateLimitError              429; ``.retry_after`` in seconds when the server sent it
        ├── ServerError                 5xx (and 408), ``.status``
        ├── TransportError              connection refused/reset, DNS, TLS: no HTTP answer at all
        │   └── FetchTimeoutError       no answer within the fetch timeout
        ├── InvalidResponseError        the answer is not a prompt: bad JSON, too large, a field
        │                               missing or of the wrong type (``.field`` names it)
        └── UnexpectedStatusError       any other non-2xx status (400, 405, ...), ``.status``

Arguments that are plainly wrong at the call site (empty name, both ``version`` and ``label``)
raise ``InvalidArgumentError``, which is both a ``PromptCacheError`` and a ``ValueError``.

Messages never contain the secret key: sources build them from the prompt name, the status and
the server's own error message only, and every upstream text they quote goes through the
client's ``Redactor`` (an upstream may echo the credentials it was sent).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "ClientStateError",
    "ConfigurationError",
    "FetchError",
    "FetchTimeoutError",
    "InvalidArgumentError",
    "InvalidResponseError",
    "NotCachedError",
    "PromptCacheError",
    "PromptNotFoundError",
    "RateLimitError",
    "ResponseError",
    "ResponseFailedError",
    "ServerError",
    "SharedStreamError",
    "SharedStreamLostError",
    "SlowConsumerError",
    "TemplateError",
    "TransportError",
    "UnexpectedStatusError",
    "UpstreamError",
    "UpstreamEventError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "UpstreamTransportError",
    "WebhookError",
    "WebhookReplayError",
    "WebhookSignatureError",
    "WritesNotSupportedError",
]


class PromptCacheError(Exception):
    """Root of every error asyncpromptcache raises."""


class ConfigurationError(PromptCacheError, ValueError):
    """A constructor argument or an environment variable has a bad value."""


class InvalidArgumentError(PromptCacheError, ValueError):
    """A call's arguments cannot name a prompt (empty name, version and label together...)."""


class ClientStateError(PromptCacheError, RuntimeError):
    """The client is not open: use it inside ``async with`` (or ``with``), not after close."""


class TemplateError(PromptCacheError):
    """A strict compile found variables or placeholders that were not given."""

    def __init__(
        self, message: str, *, missing_variables: tuple[str, ...] = (),
        missing_placeholders: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.missing_variables = missing_variables
        self.missing_placeholders = missing_placeholders


class WebhookError(PromptCacheError, ValueError):
    """A webhook that cannot be applied: its body is not a prompt-version event, or no webhook
    secret is configured. Nothing was changed."""


class WebhookSignatureError(WebhookError):
    """A webhook's signature is missing, malformed, wrong, or outside the accepted time window.
    Nothing was changed."""


class WebhookReplayError(WebhookError):
    """A webhook whose event id was seen before: a replay, or Langfuse delivering again an
    event already applied. Nothing was changed; a receiver should answer it with a 2xx."""


class WritesNotSupportedError(PromptCacheError, TypeError):
    """``create_prompt`` or ``update_prompt`` on a client whose source cannot write prompts
    (it does not implement ``PromptWriter``)."""


class FetchError(PromptCacheError):
    """Fetching one prompt failed, or writing one did (``create_prompt``, ``update_prompt``).

    ``name`` is the prompt's name and ``key`` the cache key asked for (when known).
    """

    def __init__(self, message: str, *, name: str | None = None, key: Any = None) -> None:
        super().__init__(message)
        self.name = name
        self.key = key


class PromptNotFoundError(FetchError):
    """The source has no prompt of that name, label or version (HTTP 404)."""


class _StatusError(FetchError):
    """A fetch answered with an HTTP status; ``status`` says which."""

    def __init__(
        self, message: str, *, status: int, name: str | None = None, key: Any = None
    ) -> None:
        super().__init__(message, name=name, key=key)
        self.status = status


class AuthenticationError(_StatusError):
    """The source refused the credentials (HTTP 401) or their kind (HTTP 403)."""


class RateLimitError(FetchError):
    """HTTP 429. ``retry_after`` is the delay in seconds the server asked for, when it said."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, name: str | None = None,
        key: Any = None,
    ) -> None:
        super().__init__(message, name=name, key=key)
        self.retry_after = retry_after
        self.status = 429


class ServerError(_StatusError):
    """The source answered with a 5xx (or 408) status."""


class UnexpectedStatusError(_StatusError):
    """The source answered with a status that is neither success nor one of the above."""


class TransportError(FetchError):
    """No HTTP answer at all: connection refused or reset, DNS or TLS failure."""


class FetchTimeoutError(TransportError):
    """No complete answer within the fetch timeout."""


class InvalidResponseError(FetchError):
    """The answer is not a valid prompt. ``field`` names the offending field when there is one."""

    def __init__(
        self, message: str, *, field: str | None = None, name: str | None = None, key: Any = None
    ) -> None:
        super().__init__(message, name=name, key=key)
        self.field = field


class ResponseError(PromptCacheError):
    """Raised by the LLM response cache or one of its producers."""


class NotCachedError(ResponseError):
    """``mode="cache_only"``: no answer for the request is stored or in flight (in this
    process or, with the shared tier, in another)."""


class ResponseFailedError(ResponseError):
    """The answer's upstream stream failed or was cut off; nothing was stored.

    Raised to each consumer after the chunks it received (``chunks_received``).
    ``upstream`` (also ``__cause__``) is what the producer raised: an ``UpstreamError`` from
    our producers, or whatever a producer of yours raised.
    """

    def __init__(
        self, message: str, *, upstream: BaseException | None = None, chunks_received: int = 0,
    ) -> None:
        super().__init__(message)
        self.upstream = upstream
        self.chunks_received = chunks_received


class SlowConsumerError(ResponseError):
    """This consumer fell more than its buffer behind the live stream and was dropped.

    The stream goes on for the others and is stored when it completes.
    ``chunks_received`` is how many chunks this consumer had taken.
    """

    def __init__(self, message: str, *, chunks_received: int = 0) -> None:
        super().__init__(message)
        self.chunks_received = chunks_received


class UpstreamError(ResponseError):
    """An LLM producer failed: the call could not start, or its stream broke."""


class UpstreamStatusError(UpstreamError):
    """The LLM endpoint answered with a non-2xx status (``status``; ``retry_after`` in seconds
    when a 429 or 503 said). ``error_type`` is the body's ``error.type`` when it had one."""

    def __init__(
        self, message: str, *, status: int, retry_after: float | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.error_type = error_type


class UpstreamEventError(UpstreamError):
    """The stream carried an error event (``error_type`` names its kind when given)."""

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


class UpstreamProtocolError(UpstreamError):
    """The answer is not what the protocol says: not SSE, not JSON, or cut off before its end
    marker (``[DONE]``)."""


class UpstreamTransportError(UpstreamError):
    """No answer (connection refused, DNS, TLS), or the connection was lost mid-stream."""


class UpstreamTimeoutError(UpstreamTransportError):
    """No data from the LLM endpoint within the producer's timeout."""


class SharedStreamError(UpstreamError):
    """The answer this process followed from another process's stream failed there (the
    shared tier of the response cache)."""


class SharedStreamLostError(SharedStreamError):
    """The other process streaming this answer vanished (its claim expired with no new
    chunks), or the shared tier stopped answering while this process followed it."""
