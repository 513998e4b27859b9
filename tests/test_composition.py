"""Composed prompts: a change to a part reaches every cached prompt that includes it, at any
depth, without waiting for a TTL. Real HTTP to tests/composeserver.py (which resolves
references as Langfuse does)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import attrs
import pytest

from asyncpromptcache import (
    AsyncPromptClient,
    FunctionSource,
    InvalidResponseError,
    PromptKey,
    TextPrompt,
)
from asyncpromptcache._prompts.changes import ChangeLog, version_change
from asyncpromptcache._prompts.composition import (
    CompositionIndex,
    Part,
    has_references,
    parse_resolution_graph,
    part_names,
)
from asyncpromptcache._prompts.signatures import sign
from asyncpromptcache._store._compose import find_references
from asyncpromptcache.testing import FakeClock, StaticSource
from tests.composeserver import ComposeServer, compose_server

pytestmark = pytest.mark.anyio

SECRET = "whsec-test"


def ref(name: str, label: str = "production") -> str:
    return f"@@@langfusePrompt:name={name}|label={label}@@@"


@pytest.fixture
async def server() -> AsyncIterator[ComposeServer]:
    async with compose_server() as running:
        running.create("c", "C1", ["production"])
        running.create("b", f"B[{ref('c')}]", ["production"])
        running.create("a", f"A[{ref('b')}]", ["production"])
        running.create("other", "unrelated", ["production"])
        yield running


@pytest.fixture
async def client(server: ComposeServer) -> AsyncIterator[AsyncPromptClient]:
    # A TTL of an hour on a fake clock that never moves: only a change can refresh anything.
    async with AsyncPromptClient(
        base_url=server.base_url, public_key="pk", secret_key="sk", cache_ttl_seconds=3600,
        clock=FakeClock(), webhook_secret=SECRET, env={},
    ) as opened:
        yield opened


async def warm(client: AsyncPromptClient) -> None:
    for name in ("a", "b", "c", "other"):
        await client.get_prompt(name)


# -- pure parsing --------------------------------------------------------------------------


def test_parse_resolution_graph() -> None:
    graph = {
        "root": {"id": "a1", "name": "a", "version": 1},
        "dependencies": {
            "a1": [{"id": "b1", "name": "b", "version": 1}],
            "b1": [{"id": "c2", "name": "c", "version": 2},
                   {"id": "d1", "name": "d", "version": 1}],
        },
    }
    assert parse_resolution_graph(graph) == {Part("b", 1), Part("c", 2), Part("d", 1)}
    assert parse_resolution_graph(None) == frozenset()


@pytest.mark.parametrize(("graph", "field"), [
    ([], "resolutionGraph"),
    ({"root": {}}, "resolutionGraph.dependencies"),
    ({"dependencies": {"x": {}}}, "resolutionGraph.dependencies['x']"),
    ({"dependencies": {"x": [{"name": "b"}]}}, "resolutionGraph.dependencies['x'][0].version"),
    ({"dependencies": {"x": [{"name": "", "version": 1}]}},
     "resolutionGraph.dependencies['x'][0].name"),
    ({"dependencies": {"x": [{"name": "b", "version": True}]}},
     "resolutionGraph.dependencies['x'][0].version"),
])
def test_a_malformed_graph_is_an_invalid_response(graph: Any, field: str) -> None:
    with pytest.raises(InvalidResponseError) as caught:
        parse_resolution_graph(graph)
    assert caught.value.field == field


def test_references() -> None:
    assert has_references(["x @@@langfusePrompt:name=a|version=3@@@ y"])
    assert not has_references(["@@@langfusePrompt:name=a", "plain {{var}}"])


@pytest.mark.parametrize(("end", "is_reference"), [
    ("\n", True), ("\r", True), ("\u2028", False), ("\u2029", False)])
def test_the_sdk_and_the_store_read_a_tag_across_a_line_end_as_langfuse_does(
        end: str, is_reference: bool) -> None:
    """Langfuse looks for tags in JSON.stringify of the content with a JavaScript regex: a
    newline there is written \\n (inside the tag), U+2028 raw (where "." stops). The SDK
    (whether a write's answer still holds references) and the local store agree."""
    text = f"@@@langfusePrompt:name=a{end}|label=production@@@"
    assert has_references([text]) is is_reference
    assert bool(find_references(text)) is is_reference


def _text(name: str, version: int, parts: Sequence[tuple[str, int]] = (), **kw: Any) -> TextPrompt:
    graph = {"root": {"id": "r", "name": name, "version": version},
             "dependencies": {"r": [{"id": n, "name": n, "version": v} for n, v in parts]}}
    return TextPrompt(name=name, version=version, prompt="t",
                      resolution_graph=graph if parts else None, **kw)


def _indexed(held: Sequence[tuple[PromptKey, TextPrompt]]) -> CompositionIndex:
    index = CompositionIndex()
    for key, prompt in held:
        index.add(key, prompt.name, prompt.resolution_graph)
    return index


def test_dependents_are_transitive_and_exact() -> None:
    held = [
        (PromptKey("a", "production", None), _text("a", 1, [("b", 1)])),
        (PromptKey("b", "production", None), _text("b", 1, [("c", 1)])),
        (PromptKey("x", "production", None), _text("x", 1, [("a", 1)])),
        (PromptKey("greeting", "production", None), _text("greeting", 1)),
        (PromptKey("c", "production", None), _text("c", 1)),
    ]
    index = _indexed(held)
    # x includes a (only a's graph names b): found through a, in a second round.
    assert index.dependents({"c"}) == {
        PromptKey("a", "production", None), PromptKey("b", "production", None),
        PromptKey("x", "production", None),
    }
    assert index.dependents({"greet"}) == set()
    # A prompt whose parts are unknown is dropped by any change.
    unknown = PromptKey("greeting", "production", None)
    assert index.dependents({"zzz"}, suspects={unknown}) == {unknown}
    assert index.dependents({"greeting"}, suspects={unknown}) == set()  # not its own name
    assert index.dependents({"zzz"}, suspects={PromptKey("gone", None, 1)}) == set()


def test_the_index_follows_entries_as_they_come_and_go() -> None:
    a, b = PromptKey("a", "production", None), PromptKey("a", None, 1)
    index = _indexed([(a, _text("a", 1, [("b", 1)])), (b, _text("a", 1, [("b", 1)]))])
    assert index.dependents({"b"}) == {a, b} and index.named("a") == {a, b}
    index.add(a, "a", None)  # a's key now holds a version composed of nothing
    assert index.dependents({"b"}) == {b}
    index.discard(b)
    assert index.dependents({"b"}) == set() and index.named("a") == {a} and len(index) == 1
    # A graph that cannot be read: a suspect, dropped by a change to any other name.
    index.add(b, "a", {"dependencies": []})
    assert index.dependents({"zzz"}) == {b} and index.dependents({"a"}) == set()
    index.clear()
    assert len(index) == 0 and index.dependents({"zzz"}) == set()


def test_change_log_tells_a_fetch_whether_its_parts_changed() -> None:
    log = ChangeLog(max_size=2)
    composed = part_names(_text("a", 1, [("b", 1)]).resolution_graph)
    since = log.seq
    assert not log.touches(composed, since)
    log.record(frozenset({"x"}))
    assert not log.touches(composed, since)
    assert not log.touches(frozenset(), since)  # includes nothing
    log.record(frozenset({"b"}))
    assert log.touches(composed, since)
    assert not log.touches(composed, log.seq)
    since = log.seq
    for name in ("x", "y", "z"):
        log.record(frozenset({name}))
    # The first change after `since` is forgotten (it may have been b): assume the worst.
    assert log.touches(composed, since)
    assert not log.touches(composed, log.seq - 1)


def test_version_change_writes_through_what_it_serves() -> None:
    old = _text("p", 1, labels=["production", "staging"])
    held = [(PromptKey("p", "production", None), old), (PromptKey("p", "staging", None), old),
            (PromptKey("p", None, 1), old)]
    moved = _text("p", 1, labels=["staging"])
    change = version_change("updated", moved, held)
    assert change.drops == (PromptKey("p", "production", None),)
    assert [key for key, _ in change.puts] == [PromptKey("p", "staging", None),
                                               PromptKey("p", None, 1)]
    new = _text("p", 2, labels=["production"])
    change = version_change("created", new, held)
    assert change.drops == ()
    # Version 2's keys get it; version 1, held at other keys, loses the label it took.
    assert change.puts[:3] == tuple((key, new) for key in (
        PromptKey("p", "production", None), PromptKey("p", "latest", None), PromptKey("p", None, 2)
    ))
    relabelled = attrs.evolve(old, labels=["staging"])
    assert change.puts[3:] == ((PromptKey("p", "staging", None), relabelled),
                               (PromptKey("p", None, 1), relabelled))
    change = version_change("deleted", old, held)
    assert change.puts == ()
    assert set(change.drops) == {key for key, _ in held}
    # A prompt as stored, references unresolved, is never served: its keys are dropped.
    raw = TextPrompt(name="p", version=3, prompt=ref("c"), labels=["production"])
    change = version_change("created", raw, held)
    assert all(prompt.version == 1 for _, prompt in change.puts)  # only version 1, relabelled
    assert PromptKey("p", "production", None) in change.drops


# -- over HTTP -----------------------------------------------------------------------------


async def test_three_levels_resolve_and_keep_their_graph(
    server: ComposeServer, client: AsyncPromptClient
) -> None:
    a = await client.get_prompt("a")
    assert a.prompt == "A[B[C1]]"
    assert parse_resolution_graph(a.resolution_graph) == {Part("b", 1), Part("c", 1)}


async def test_a_write_to_a_part_reaches_every_prompt_that_includes_it(
    server: ComposeServer, client: AsyncPromptClient
) -> None:
    await warm(client)
    other = client.cache.snapshot()
    gets = server.gets.copy()
    created = await client.create_prompt(name="c", prompt="C2", labels=["production"])
    assert created.version == 2
    # c is written through; b and a (which include it) are dropped, the rest is untouched.
    held = dict(client.cache.snapshot())
    assert held[("c", "production", None)].prompt is created
    assert ("a", "production", None) not in held
    assert ("b", "production", None) not in held
    assert held[("other", "production", None)] is dict(other)[("other", "production", None)]
    assert (await client.get_prompt("a")).prompt == "A[B[C2]]"
    assert (await client.get_prompt("b")).prompt == "B[C2]"
    assert (await client.get_prompt("c")).prompt == "C2"
    assert (await client.get_prompt("other")).prompt == "unrelated"
    assert server.gets - gets == {"a": 1, "b": 1}


async def test_a_label_move_of_a_part_reaches_the_top(
    server: ComposeServer, client: AsyncPromptClient
) -> None:
    server.create("c", "C2", [])
    await warm(client)
    assert (await client.get_prompt("a")).prompt == "A[B[C1]]"
    await client.update_prompt(name="c", version=2, new_labels=["production"])
    assert (await client.get_prompt("a")).prompt == "A[B[C2]]"


async def test_invalidating_a_part_drops_what_includes_it(
    server: ComposeServer, client: AsyncPromptClient
) -> None:
    await warm(client)
    server.create("c", "C3", ["production"])  # changed behind the client's back
    assert client.invalidate("c", label="production") == 3  # c, b and a
    assert (await client.get_prompt("a")).prompt == "A[B[C3]]"
    assert ("other", "production", None) in dict(client.cache.snapshot())


async def test_a_webhook_for_a_part_reaches_the_top(
    server: ComposeServer, client: AsyncPromptClient
) -> None:
    await warm(client)
    stored = server.create("c", "C4", ["production"])
    body = json.dumps({
        "id": "evt-1", "timestamp": "2026-11-30T07:00:00.000Z", "type": "prompt-version",
        "apiVersion": "v1", "action": "created",
        "prompt": {k: v for k, v in stored.items() if k != "resolutionGraph"},
    }).encode()
    await client.handle_webhook(body, sign(SECRET, body, int(time.time())))
    gets = server.gets.copy()
    assert (await client.get_prompt("c")).prompt == "C4"
    assert (await client.get_prompt("a")).prompt == "A[B[C4]]"
    assert server.gets - gets == {"a": 1}


async def test_a_first_fetch_racing_a_change_to_its_part_is_not_kept(
    server: ComposeServer, client: AsyncPromptClient
) -> None:
    server.hold()
    result: list[str] = []

    async def read() -> None:
        result.append((await client.get_prompt("a")).prompt)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await server.arrived.wait()  # the server resolved a from C1 and holds the answer
        await client.create_prompt(name="c", prompt="C2", labels=["production"])
        server.release()
    assert result == ["A[B[C1]]"]  # what was asked before the change
    assert (await client.get_prompt("a")).prompt == "A[B[C2]]"


# -- the graph read once, changes found through the index ------------------------------------


@pytest.mark.parametrize("invalidate_meanwhile", [False, True])
async def test_a_graph_is_read_as_the_prompt_enters_whatever_else_happens_meanwhile(
        invalidate_meanwhile: bool) -> None:
    """A source's prompt with an unreadable graph is an InvalidResponseError at once, the
    same whether or not an unrelated invalidate() ran while it was fetched (it used to be
    served, unless one did: then the fetch failed)."""
    bad = TextPrompt(name="p", version=1, prompt="t", resolution_graph={"dependencies": []})
    gate = anyio.Event()

    async def fetch(key: PromptKey) -> TextPrompt:
        await gate.wait()
        return bad

    results: list[object] = []
    async with AsyncPromptClient(source=FunctionSource(fetch), env={}) as client:

        async def get() -> None:
            try:
                results.append(await client.get_prompt("p"))
            except InvalidResponseError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(get)
            await anyio.wait_all_tasks_blocked()
            if invalidate_meanwhile:
                assert client.invalidate("unrelated") == 0
            gate.set()
        assert client.stats().entries == 0
    assert isinstance(results[0], InvalidResponseError), results
    assert results[0].field is not None and "resolutionGraph" in results[0].field


async def test_a_change_reads_no_held_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change finds what includes it through the index: invalidating a prompt reads none
    of the graphs held (it used to read every one, on the event loop, per call)."""
    import asyncpromptcache._prompts.changes as changes
    import asyncpromptcache._prompts.composition as composition

    prompts = [_text(f"p{i}", 1, [(f"base{i % 7}", 1)] if i % 3 == 0 else (),
                     labels=["production"]) for i in range(300)]
    async with AsyncPromptClient(source=StaticSource(prompts), env={}, max_size=1000,
                                 cache_ttl_seconds=3600, clock=FakeClock()) as client:
        await client.prefetch([prompt.name for prompt in prompts])
        reads = 0
        original = composition.parse_resolution_graph

        def counting(graph: Any) -> frozenset[Part]:
            nonlocal reads
            reads += 1
            return original(graph)

        for module in (composition, changes):
            monkeypatch.setattr(module, "parse_resolution_graph", counting, raising=False)
        assert client.invalidate("unrelated") == 0
        assert client.invalidate("base1") == len(range(15, 300, 21))
        assert reads == 0
        assert client.stats().entries == 300 - len(range(15, 300, 21))
