"""asyncpromptcache: an asyncio-native cache for prompts from Langfuse's prompt API."""

from ._cache import (
    AsyncPromptCache as AsyncPromptCache,
)
from ._cache import (
    CacheStats as CacheStats,
)
from ._cache import (
    KeyStats as KeyStats,
)
from ._client import (
    AsyncPromptClient as AsyncPromptClient,
)
from ._client import (
    ChatFallback as ChatFallback,
)
from ._client import (
    TextFallback as TextFallback,
)
from ._errors import (
    AuthenticationError as AuthenticationError,
)
from ._errors import (
    ClientStateError as ClientStateError,
)
from ._errors import (
    ConfigurationError as ConfigurationError,
)
from ._errors import (
    FetchError as FetchError,
)
from ._errors import (
    FetchTimeoutError as FetchTimeoutError,
)
from ._errors import (
    InvalidArgumentError as InvalidArgumentError,
)
from ._errors import (
    InvalidResponseError as InvalidResponseError,
)
from ._errors import (
    PromptCacheError as PromptCacheError,
)
from ._errors import (
    PromptNotFoundError as PromptNotFoundError,
)
from ._errors import (
    RateLimitError as RateLimitError,
)
from ._errors import (
    ServerError as ServerError,
)
from ._errors import (
    TemplateError as TemplateError,
)
from ._errors import (
    TransportError as TransportError,
)
from ._errors import (
    UnexpectedStatusError as UnexpectedStatusError,
)
from ._keys import PromptKey as PromptKey
from ._langfuse import LangfuseSource as LangfuseSource
from ._models import (
    ChatMessage as ChatMessage,
)
from ._models import (
    ChatPrompt as ChatPrompt,
)
from ._models import (
    Placeholder as Placeholder,
)
from ._models import (
    Prompt as Prompt,
)
from ._models import (
    PromptType as PromptType,
)
from ._models import (
    TextPrompt as TextPrompt,
)
from ._models import (
    parse_prompt as parse_prompt,
)
from ._retry import RetryPolicy as RetryPolicy
from ._source import FetchOptions as FetchOptions
from ._source import PromptSource as PromptSource
from ._sync import PromptClient as PromptClient

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
    "FetchError",
    "FetchOptions",
    "FetchTimeoutError",
    "InvalidArgumentError",
    "InvalidResponseError",
    "KeyStats",
    "LangfuseSource",
    "Placeholder",
    "Prompt",
    "PromptCacheError",
    "PromptClient",
    "PromptKey",
    "PromptNotFoundError",
    "PromptSource",
    "PromptType",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "TemplateError",
    "TextFallback",
    "TextPrompt",
    "TransportError",
    "UnexpectedStatusError",
    "parse_prompt",
]
