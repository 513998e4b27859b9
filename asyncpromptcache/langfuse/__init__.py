"""Switch with one import: the Langfuse Python SDK's prompt API over this cache.

Change ``from langfuse import Langfuse`` to ``from asyncpromptcache.langfuse import Langfuse``
and keep the program: ``Langfuse`` has the constructor, environment and prompt methods of the
Langfuse SDK's client (``get_prompt``, ``create_prompt``, ``update_prompt``,
``clear_prompt_cache``, ``auth_check``, ``flush``, ``shutdown``) and its prompt objects
(``TextPromptClient``, ``ChatPromptClient``: attributes, types, ``compile()``,
``get_langchain_prompt()``, equality). Underneath is ``PromptClient``: a bounded cache with
single-flight misses, stale-while-revalidate, stale-if-error, exact invalidation, writes that
update the cache at once, and optionally one cache for the fleet (``shared=``).
``AsyncLangfuse`` is the same surface for asyncio code, every I/O method awaitable.

Tracing, scores, datasets, evaluations and the rest of Langfuse's SDK are out of scope: its
tracing options are accepted and ignored, and nothing is sent but prompt requests (and
``auth_check()``'s one).

Where Langfuse raises, this module raises too, with our typed errors (all under
``PromptCacheError``)::

    situation                          Langfuse raises                  here
    missing prompt, label or version   langfuse.api.NotFoundError       PromptNotFoundError
    version and label together         ValueError                       InvalidArgumentError *
    empty name                         ValueError                       InvalidArgumentError *
    create: text not a str, chat not   ValueError, pydantic's           InvalidArgumentError *
    a list of messages                 ValidationError (a ValueError)
    bad keys (401/403)                 langfuse.api.UnauthorizedError,  AuthenticationError
                                       AccessDeniedError
    no answer, 5xx, 429                httpx errors, langfuse.api.Error TransportError,
                                                                        ServerError,
                                                                        RateLimitError
    client built without keys          langfuse.api.Error               ConfigurationError *

    * also a ValueError, so ``except ValueError`` still catches it. Every fetch error is a
      ``FetchError``; ``except Exception`` catches all of them, as with Langfuse.

Differences, all deliberate: prompt objects are views of immutable cached prompts (changing a
list you got changes your copy only); ``update_prompt`` returns a prompt object rather than
Langfuse's API model (the same attribute names); a type asked for that differs from the stored
prompt's returns the stored one, as Langfuse does; without LangChain installed,
``get_langchain_prompt()`` gives an unresolved placeholder as ``("placeholder", "{name}")``
where Langfuse raises ``ImportError``; after ``shutdown()`` calls raise ``ClientStateError``.
"""

from ._clients import AsyncLangfuse as AsyncLangfuse, Langfuse as Langfuse
from ._prompts import (
    ChatPromptClient as ChatPromptClient,
    LangfusePrompt as LangfusePrompt,
    TextPromptClient as TextPromptClient,
)

__all__ = ["AsyncLangfuse", "ChatPromptClient", "Langfuse", "LangfusePrompt", "TextPromptClient"]
