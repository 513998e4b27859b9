"""Sources other than Langfuse's plug into the client through the PromptSource protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    ChatPrompt,
    DirectorySource,
    FetchError,
    FunctionSource,
    PromptKey,
    PromptNotFoundError,
    PromptSource,
    StoreSource,
    TextPrompt,
)
from asyncpromptcache.server import PromptDraft, PromptStore

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parent.parent / "examples" / "prompts"


async def test_directory_source_reads_the_example_prompts() -> None:
    source = DirectorySource(EXAMPLES)
    assert isinstance(source, PromptSource)
    async with AsyncPromptClient(source=source, env={}) as client:
        critic = await client.get_prompt("movie-critic")
        assert critic.version == 2 and "production" in critic.labels
        # v2 carries "staging" too, so the label moved off v1 as it does in Langfuse
        assert (await client.get_prompt("movie-critic", version=1)).labels == ()
        chat = await client.get_prompt("support", type="chat")
        assert isinstance(chat, ChatPrompt) and chat.placeholders == ["history"]
        assert (await client.get_prompt("team/agent/greet")).name == "team/agent/greet"
        with pytest.raises(PromptNotFoundError):
            await client.get_prompt("movie-critic", label="no-such-label")
    await source.aclose()


def test_directory_source_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DirectorySource(tmp_path / "missing")


async def test_store_source_reads_a_server_store_directly() -> None:
    with PromptStore(":memory:") as store:
        await store.create(PromptDraft.from_json(
            {"name": "greet", "prompt": "Hi {{name}}", "labels": ["production"]}))
        async with AsyncPromptClient(source=StoreSource(store), env={}) as client:
            assert (await client.get_prompt("greet")).compile(name="Ann") == "Hi Ann"
            await store.create(PromptDraft.from_json(
                {"name": "greet", "prompt": "Hello {{name}}", "labels": ["production"]}))
            assert (await client.get_prompt("greet", cache_ttl_seconds=0)).version == 2


async def test_function_source_and_error_wrapping() -> None:
    calls: list[PromptKey] = []

    async def lookup(key: PromptKey) -> TextPrompt:
        calls.append(key)
        if key.name == "broken":
            raise KeyError("the user's own bug")
        return TextPrompt(name=key.name, version=1, prompt=f"I am {key.name}")

    async with AsyncPromptClient(source=FunctionSource(lookup), env={}) as client:
        assert (await client.get_prompt("a/b")).prompt == "I am a/b"
        await client.get_prompt("a/b")
        assert calls == [PromptKey("a/b", "production", None)]
        # Whatever a custom source raises reaches the caller as one of our errors.
        with pytest.raises(FetchError, match="KeyError") as info:
            await client.get_prompt("broken")
        assert isinstance(info.value.__cause__, KeyError)
        assert (await client.get_prompt("broken", fallback="safe")).is_fallback
