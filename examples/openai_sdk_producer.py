"""The official ``openai`` SDK's stream as a producer for ``ResponseCache``.

    python -m asyncpromptcache serve                    # a local OpenAI-compatible endpoint
    OPENAI_BASE_URL=http://127.0.0.1:3000/v1 OPENAI_API_KEY=local \\
        python examples/openai_sdk_producer.py

Any callable returning an async iterator of chunks is a producer. Here each chunk is the
SDK's ``ChatCompletionChunk`` as plain JSON data (``model_dump``), so a stored answer is
replayed exactly and a Redis store could hold it. The request mapping is what the cache keys
on; the same values are passed to the SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from openai import AsyncOpenAI

from asyncpromptcache import ResponseCache
from asyncpromptcache.response import chunk_text


def sdk_producer(client: AsyncOpenAI, *, model: str, question: str,
                 max_tokens: int) -> Callable[[], AsyncIterator[dict[str, Any]]]:
    async def produce() -> AsyncIterator[dict[str, Any]]:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}],
            temperature=0, max_tokens=max_tokens, stream=True,
        )
        async with stream:  # closes the HTTP response if the cache stops reading
            async for chunk in stream:
                yield chunk.model_dump(mode="json", exclude_unset=True)
    return produce


async def ask(client: AsyncOpenAI, cache: ResponseCache, question: str,
              model: str = "gpt-4o-mini", max_tokens: int = 50) -> tuple[str, str]:
    """The answer to ``question`` and where it came from (hit, miss, join or bypass)."""
    request = {"model": model, "temperature": 0, "max_tokens": max_tokens,
               "messages": [{"role": "user", "content": question}]}
    answer = cache.stream(request, sdk_producer(client, model=model, question=question,
                                                max_tokens=max_tokens))
    text = "".join([chunk_text(chunk) async for chunk in answer])
    assert answer.source is not None
    return text, answer.source


async def main() -> None:
    async with AsyncOpenAI() as client, ResponseCache() as cache:  # OPENAI_* from the env
        for _ in range(2):
            text, source = await ask(client, cache, "What does a response cache do?")
            print(f"[{source}] {text}")


if __name__ == "__main__":
    asyncio.run(main())
