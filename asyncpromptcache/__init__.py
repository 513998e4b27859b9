"""asyncpromptcache: an asyncio-native cache for prompts from Langfuse's prompt API."""

from ._core.errors import (
    AuthenticationError as AuthenticationError,
    ClientStateError as ClientStateError,
    ConfigurationError as ConfigurationError,
    FetchError as FetchError,
    FetchTimeoutError as FetchTimeoutError,
    InvalidArgumentError as InvalidArgumentError,
    InvalidResponseError as InvalidResponseError,
    NotCachedError as NotCachedError,
    PromptCacheError as PromptCacheError,
    PromptNotFoundError as PromptNotFoundError,
    RateLimitError as RateLimitError,
    ResponseError as ResponseError,
    ResponseFailedError as ResponseFailedError,
    ServerError as ServerError,
    SharedStreamError as SharedStreamError,
    SharedStreamLostError as SharedStreamLostError,
    SlowConsumerError as SlowConsumerError,
    TemplateError as TemplateError,
    TransportError as TransportError,
    UnexpectedStatusError as UnexpectedStatusError,
    UpstreamError as UpstreamError,
    UpstreamEventError as UpstreamEventError,
    UpstreamProtocolError as UpstreamProtocolError,
    UpstreamStatusError as UpstreamStatusError,
    UpstreamTimeoutError as UpstreamTimeoutError,
    UpstreamTransportError as UpstreamTransportError,
    WebhookError as WebhookError,
    WebhookReplayError as WebhookReplayError,
    WebhookSignatureError as WebhookSignatureError,
    WritesNotSupportedError as WritesNotSupportedError,
)
from ._core.logs import install_default_handler as _install_default_handler
from ._http.retry import RetryPolicy as RetryPolicy
from ._prompts.client import (
    AsyncPromptClient as AsyncPromptClient,
    ChatFallback as ChatFallback,
    TextFallback as TextFallback,
)
from ._prompts.engine import (
    AsyncPromptCache as AsyncPromptCache,
    CacheStats as CacheStats,
    KeyStats as KeyStats,
)
from ._prompts.events import PromptVersionEvent as PromptVersionEvent
from ._prompts.keys import PromptKey as PromptKey
from ._prompts.langfuse_source import LangfuseSource as LangfuseSource
from ._prompts.models import (
    ChatMessage as ChatMessage,
    ChatPrompt as ChatPrompt,
    Placeholder as Placeholder,
    Prompt as Prompt,
    PromptType as PromptType,
    TextPrompt as TextPrompt,
    parse_prompt as parse_prompt,
)
from ._prompts.shared import RedisTier as RedisTier
from ._prompts.source import (
    FetchOptions as FetchOptions,
    NewPrompt as NewPrompt,
    PromptSource as PromptSource,
    PromptWriter as PromptWriter,
)
from ._prompts.sources import (
    DirectorySource as DirectorySource,
    FunctionSource as FunctionSource,
    StoreSource as StoreSource,
)
from ._prompts.sync import PromptClient as PromptClient
from ._tiers.redis.stats import SharedStats as SharedStats
from .response import (
    ResponseCache as ResponseCache,
    ResponseCacheStats as ResponseCacheStats,
    ResponseStream as ResponseStream,
)

__all__ = [
    "AsyncPromptCache",
    "AsyncPromptClient",
    "AuthenticationError",
    "CacheStats",
    "ChatFallback",
    "ChatMessage",
    "ChatPrompt",
    "ClientStateError",
    "ConfigurationError",
    "DirectorySource",
    "FetchError",
    "FetchOptions",
    "FetchTimeoutError",
    "FunctionSource",
    "InvalidArgumentError",
    "InvalidResponseError",
    "KeyStats",
    "LangfuseSource",
    "NewPrompt",
    "NotCachedError",
    "Placeholder",
    "Prompt",
    "PromptCacheError",
    "PromptClient",
    "PromptKey",
    "PromptNotFoundError",
    "PromptSource",
    "PromptType",
    "PromptVersionEvent",
    "PromptWriter",
    "RateLimitError",
    "RedisTier",
    "ResponseCache",
    "ResponseCacheStats",
    "ResponseError",
    "ResponseFailedError",
    "ResponseStream",
    "RetryPolicy",
    "ServerError",
    "SharedStats",
    "SharedStreamError",
    "SharedStreamLostError",
    "SlowConsumerError",
    "StoreSource",
    "TemplateError",
    "TextFallback",
    "TextPrompt",
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
    "parse_prompt",
]

_install_default_handler()
