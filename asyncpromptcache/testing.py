"""Helpers for testing code that uses asyncpromptcache, without a server.

``FakeClock`` drives freshness by hand; ``StaticSource`` serves prompts from memory, counts
fetches and can be told to fail or to hold fetches until released::

    clock = FakeClock()
    source = StaticSource([TextPrompt(name="greet", version=1, prompt="Hi {{name}}",
                                      labels=["production"])])
    async with AsyncPromptClient(source=source, clock=clock, cache_ttl_seconds=60) as client:
        ...
        clock.advance(61)   # now stale
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import anyio
import attrs

from ._core.errors import FetchError, PromptNotFoundError
from ._prompts.keys import PromptKey
from ._prompts.models import Prompt, parse_prompt
from ._prompts.source import FetchOptions, NewPrompt

__all__ = ["FakeClock", "StaticSource"]


class FakeClock:
    """A monotonic clock that moves only when told: ``clock.advance(seconds)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds


class StaticSource:
    """A ``PromptSource`` over prompts held in memory.

    A label resolves to the newest version carrying it. ``fail_with`` makes every fetch raise
    that error until reset to ``None``; ``hold()`` makes fetches wait until ``release()``.
    ``fetches`` counts fetches per key, ``total_fetches`` all of them. It is a
    ``PromptWriter`` too, so ``create_prompt`` and ``update_prompt`` work against it.
    """

    def __init__(self, prompts: Iterable[Prompt] = ()) -> None:
        self._prompts: list[Prompt] = []
        self.fail_with: FetchError | None = None
        self.fetches: Counter[PromptKey] = Counter()
        self._gate: anyio.Event | None = None
        self.waiting = 0
        for prompt in prompts:
            self.add(prompt)

    def add(self, prompt: Prompt) -> None:
        """Add a version; its labels move off older versions of the same name."""
        self._prompts = [
            p if p.name != prompt.name or not set(p.labels) & set(prompt.labels)
            else _without_labels(p, prompt.labels)
            for p in self._prompts if not (p.name == prompt.name and p.version == prompt.version)
        ]
        self._prompts.append(prompt)

    def remove(self, name: str) -> None:
        self._prompts = [p for p in self._prompts if p.name != name]

    @property
    def total_fetches(self) -> int:
        return sum(self.fetches.values())

    def hold(self) -> None:
        """Make fetches wait (after being counted) until ``release()``."""
        if self._gate is None:
            self._gate = anyio.Event()

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    async def fetch(self, key: PromptKey, options: FetchOptions) -> Prompt:
        self.fetches[key] += 1
        if self._gate is not None:
            self.waiting += 1
            try:
                await self._gate.wait()
            finally:
                self.waiting -= 1
        if self.fail_with is not None:
            raise self.fail_with
        for prompt in sorted(self._prompts, key=lambda p: -p.version):
            if prompt.name != key.name:
                continue
            if key.version is not None and prompt.version == key.version:
                return prompt
            if key.version is None and (key.label in prompt.labels or key.label == "latest"):
                return prompt
        raise PromptNotFoundError(f"prompt {key.describe()} not found", name=key.name, key=key)

    async def create_prompt(self, new: NewPrompt, options: FetchOptions) -> Prompt:
        """Add ``new`` as the next version of its name, labelled ``latest`` as well."""
        if self.fail_with is not None:
            raise self.fail_with
        version = 1 + max((p.version for p in self._prompts if p.name == new.name), default=0)
        body = {**new.to_json(), "version": version,
                "labels": list(dict.fromkeys([*new.labels, "latest"]))}
        body.setdefault("tags", [])
        created = parse_prompt(body)
        self.add(created)
        return created

    async def update_prompt_labels(
        self, name: str, version: int, new_labels: list[str], options: FetchOptions
    ) -> Prompt:
        """Add ``new_labels`` to a version (moving them off the others), as Langfuse does."""
        if self.fail_with is not None:
            raise self.fail_with
        for prompt in self._prompts:
            if prompt.name == name and prompt.version == version:
                updated = attrs.evolve(
                    prompt, labels=list(dict.fromkeys([*prompt.labels, *new_labels]))
                )
                self.add(updated)
                return updated
        key = PromptKey(name, None, version)
        raise PromptNotFoundError(f"prompt {key.describe()} not found", name=name, key=key)

    async def aclose(self) -> None:
        return None


def _without_labels(prompt: Prompt, labels: Iterable[str]) -> Prompt:
    import attrs

    drop = set(labels)
    return attrs.evolve(prompt, labels=[label for label in prompt.labels if label not in drop])
