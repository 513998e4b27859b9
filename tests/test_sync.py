"""PromptClient, the sync facade, from its callers' threads, over real loopback HTTP.

The fault server runs on its own event loop in a background thread (an anyio blocking
portal); the client under test runs its own loop thread. Assertions are on counts (requests
the server saw, cache counters) and on thread states, never on wall time: every wait is a
bounded join or poll that fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import assert_type

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from asyncpromptcache import (
    ChatPrompt,
    ClientStateError,
    FunctionSource,
    Prompt,
    PromptClient,
    PromptKey,
    RetryPolicy,
    ServerError,
    TextPrompt,
)
from asyncpromptcache.testing import FakeClock

from .faultserver import FaultServer, fault_server, text_prompt
from .helpers import read_until_eof, until_sync as until

NO_WAIT = RetryPolicy(max_retries=2, base_delay=0.0, max_delay=0.0)
LOOP_THREAD = "asyncpromptcache-loop"
BOUND = 10.0  # seconds: generous bound on every join and poll


class Server:
    """The fault server and the portal to its event loop (gates must be worked there)."""

    def __init__(self, server: FaultServer, portal: BlockingPortal) -> None:
        self.s = server
        self.portal = portal

    def hold(self) -> None:
        self.portal.call(self.s.hold)

    def release(self) -> None:
        self.portal.call(self.s.release)

    def put(self, name: str, text: str) -> int:
        return self.portal.call(self.s.put, name, text)


@pytest.fixture
def server() -> Iterator[Server]:
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(fault_server()) as s,
    ):
        s.put("greet", "Hello {{name}}")
        s.put("greeting", "Good day {{name}}")
        chat = {**text_prompt("support", 1, "", ["production"]), "type": "chat",
                "prompt": [{"role": "system", "content": "Help {{user}}."}]}
        s.prompts["support"] = [chat]
        yield Server(s, portal)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client_for(server: Server, clock: FakeClock | None = None,
               fetch_timeout_seconds: float = 2) -> PromptClient:
    return PromptClient(
        base_url=server.s.base_url, clock=clock, cache_ttl_seconds=60, retry=NO_WAIT,
        fetch_timeout_seconds=fetch_timeout_seconds, env={},
    )


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


def drop_all(holder: list[PromptClient]) -> None:
    holder.clear()
    gc.collect()


def in_threads(n: int, target: Callable[[], object]) -> list[object]:
    """Run ``target`` in ``n`` threads released at once; their results (or exceptions)."""
    results: list[object] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND)
        assert not t.is_alive()
    return results


def test_typed_get_prompt_and_basic_use(server: Server) -> None:
    with client_for(server) as client:
        text = client.get_prompt("greet")
        assert_type(text, TextPrompt)
        assert text.compile(name="Ann") == "Hello Ann"
        chat = client.get_prompt("support", type="chat")
        assert_type(chat, ChatPrompt)
        assert chat.compile(user="Bo") == [{"role": "system", "content": "Help Bo."}]
        assert client.get_prompt("greet") is text and client.get_prompt("greet", version=1)
        assert client.stats().hits == 1 and server.s.total == 3


def test_sixty_four_threads_missing_one_key_make_one_request(server: Server) -> None:
    server.hold()
    with client_for(server) as client:
        holder: list[list[object]] = []
        caller = threading.Thread(
            target=lambda: holder.append(in_threads(64, lambda: client.get_prompt("greet")))
        )
        caller.start()
        # All 64 wait on the one fetch, held in the server.
        until(lambda: client.stats().misses == 64 and server.s.waiting == 1)
        server.release()
        caller.join(BOUND)
        results = holder[0]
        assert all(isinstance(r, TextPrompt) and r is results[0] for r in results)
        assert server.s.requests["greet"] == 1 and server.s.total == 1
        stats = client.stats()
        assert (stats.fetches, stats.joined, stats.misses) == (1, 63, 64)


def test_fresh_hits_never_cross_to_the_loop_thread(server: Server) -> None:
    """With the loop thread blocked, hits are still answered: they never wait on it."""
    with client_for(server) as client:
        first = client.get_prompt("greet")
        gate, entered = threading.Event(), threading.Event()

        def blocking_fallback() -> str:  # runs on the loop thread, and blocks it
            entered.set()
            gate.wait(BOUND)
            return "Fallback {{name}}"

        blocked = threading.Thread(
            target=client.get_prompt, args=("nobody",), kwargs={"fallback": blocking_fallback}
        )
        blocked.start()
        assert entered.wait(BOUND)
        hitter = threading.Thread(
            target=lambda: [client.get_prompt("greet") for _ in range(1000)]
        )
        hitter.start()
        hitter.join(BOUND / 2)
        assert not hitter.is_alive() and not gate.is_set()
        assert client.get_prompt("greet") is first
        gate.set()
        blocked.join(BOUND)
        stats = client.stats()
        assert stats.hits == 1001 and stats.fallbacks == 1 and server.s.requests["greet"] == 1


def test_hits_from_many_threads_are_all_counted(server: Server) -> None:
    with client_for(server) as client:
        client.get_prompt("greet")
        in_threads(16, lambda: [client.get_prompt("greet") for _ in range(2000)])
        assert client.stats().hits == 16 * 2000


def test_stale_while_revalidate_from_sync_callers(server: Server, clock: FakeClock) -> None:
    with client_for(server, clock) as client:
        first = client.get_prompt("greet")
        server.put("greet", "Hi {{name}}, v2")
        clock.advance(61)
        server.hold()  # the refresh hangs until released; stale callers must not wait for it
        results = in_threads(8, lambda: all(client.get_prompt("greet") is first for _ in range(25)))
        assert results == [True] * 8
        until(lambda: server.s.waiting == 1)
        assert server.s.requests["greet"] == 2  # exactly one refresh for 200 stale calls
        stats = client.stats()
        assert (stats.stale_hits, stats.refreshes) == (200, 1)
        server.release()
        until(lambda: client.stats().in_flight == 0)
        fresh = client.get_prompt("greet")
        assert fresh.version == 2 and fresh.compile(name="Bo") == "Hi Bo, v2"
        assert server.s.requests["greet"] == 2 and client.stats().hits == 1


def test_stale_if_error_from_sync_callers(server: Server, clock: FakeClock) -> None:
    with client_for(server, clock) as client:
        cached = client.get_prompt("greet")
        server.s.fault = "503"
        clock.advance(61)
        assert client.get_prompt("greet") is cached
        until(lambda: client.stats().in_flight == 0)
        assert client.stats().refresh_errors == 1
        assert client.get_prompt("greet") is cached
        assert client.get_prompt("greet", cache_ttl_seconds=0) is cached  # a failed fetch
        fallback = client.get_prompt("greeting", fallback="Hey {{name}}")
        assert fallback.is_fallback and fallback.compile(name="Cy") == "Hey Cy"
        with pytest.raises(ServerError, match="greeting"):
            client.get_prompt("greeting")


def test_forked_child_keeps_parent_prompts_and_fetches_new_ones(server: Server) -> None:
    client = client_for(server)
    try:
        parent_prompt = client.get_prompt("greet")
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():  # 3.12+ warns about forking a threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: report over the pipe, never return into pytest
            code = 1
            try:
                os.close(read_end)
                threads_at_start = [t.name for t in threading.enumerate()]
                greet = client.get_prompt("greet")
                after_hit = client.stats()
                greeting = client.get_prompt("greeting")
                after_fetch = client.stats()
                threads_running = [t.name for t in threading.enumerate()]
                client.close()
                report = {
                    "threads_at_start": threads_at_start, "greet": greet.prompt,
                    "hits": after_hit.hits, "fetches_after_hit": after_hit.fetches,
                    "greeting": greeting.prompt, "fetches": after_fetch.fetches,
                    "threads_running": threads_running,
                    "threads_after_close": [t.name for t in threading.enumerate()],
                }
                os.write(write_end, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        data = read_until_eof(read_end, pid)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        report = json.loads(data)
        assert report["threads_at_start"] == ["MainThread"]  # no loop thread until needed
        assert report["greet"] == "Hello {{name}}"
        assert (report["hits"], report["fetches_after_hit"]) == (1, 0)  # the parent's copy
        assert report["greeting"] == "Good day {{name}}" and report["fetches"] == 1
        assert report["threads_running"] == ["MainThread", LOOP_THREAD]
        assert report["threads_after_close"] == ["MainThread"]
        assert server.s.requests["greet"] == 1  # only the parent's fetch
        assert server.s.requests["greeting"] == 1  # the child's own, over its own session
        # The parent's client is untouched by the fork.
        assert client.get_prompt("greet") is parent_prompt
        assert client.get_prompt("greeting").version == 1
        assert server.s.requests["greeting"] == 2
    finally:
        client.close()


def test_calls_from_inside_a_running_event_loop(server: Server, clock: FakeClock) -> None:
    with client_for(server, clock) as client:

        async def fallback() -> str:
            return "Async {{name}}"

        async def main() -> tuple[Prompt, Prompt, object, int]:
            first = client.get_prompt("greet")  # a miss: blocks this loop, runs on the other
            again = client.get_prompt("greet")  # a hit
            clock.advance(61)
            stale = client.get_prompt("greet")
            server.s.fault = "503"
            fell_back = client.get_prompt("nobody", fallback=fallback)
            assert first is again is stale and fell_back.is_fallback
            prefetched = client.prefetch(["greeting"])
            return first, fell_back, next(iter(prefetched.values())), client.stats().stale_hits

        first, fell_back, prefetched, stale_hits = asyncio.run(main())
        assert first.version == 1 and stale_hits == 1
        assert fell_back.compile(name="Di") == "Async Di"
        assert isinstance(prefetched, ServerError)


def test_close_is_bounded_while_the_server_hangs(server: Server, clock: FakeClock) -> None:
    before = set(threading.enumerate())
    client = client_for(server, clock, fetch_timeout_seconds=60)
    client.get_prompt("greeting")
    server.s.fault = "hang"
    clock.advance(61)
    client.get_prompt("greeting")  # stale: starts a refresh that hangs
    outcome: list[object] = []

    def cold_miss() -> None:
        try:
            outcome.append(client.get_prompt("greet"))
        except ClientStateError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=cold_miss)
    waiter.start()
    until(lambda: server.s.total == 3)  # the refresh and the miss both hang in the server
    closer = threading.Thread(target=client.close)  # not the thread that made the client
    closer.start()
    closer.join(BOUND)
    waiter.join(BOUND)
    assert not closer.is_alive() and not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ClientStateError)
    assert set(threading.enumerate()) == before  # loop thread gone, nothing else left
    client.close()  # idempotent


def test_lazy_start_once_then_close_leaves_no_thread(server: Server) -> None:
    before = set(threading.enumerate())
    client = client_for(server)  # no `with`
    assert loop_threads() == []
    results = in_threads(16, lambda: client.get_prompt("greet"))  # 16 first uses at once
    assert all(isinstance(r, TextPrompt) for r in results)
    assert len(loop_threads()) == 1 and server.s.total == 1
    client.close()
    assert set(threading.enumerate()) == before
    client.close()
    with pytest.raises(ClientStateError, match="closed"):
        client.get_prompt("greet")
    with pytest.raises(ClientStateError):
        client.prefetch(["greet"])
    assert client.invalidate("greet") == 0 and client.stats().entries == 0
    assert set(threading.enumerate()) == before


def test_invalidate_is_exact_and_clear_drops_all(server: Server) -> None:
    with client_for(server) as client:
        client.prefetch(["greet", "greeting"])
        assert client.invalidate("greet") == 1
        assert client.stats().entries == 1
        client.get_prompt("greeting")
        assert server.s.requests["greeting"] == 1  # untouched by invalidating "greet"
        client.get_prompt("greet")
        assert server.s.requests["greet"] == 2
        assert client.clear() == 2 and client.stats().entries == 0


def test_unclosed_client_warns_when_garbage_collected(server: Server) -> None:
    holder = [client_for(server)]
    holder[0].get_prompt("greet")
    threads = loop_threads()
    assert len(threads) == 1
    with pytest.warns(ResourceWarning, match="unclosed"):
        drop_all(holder)
    threads[0].join(BOUND)  # and its loop thread winds down
    assert not threads[0].is_alive()
    with warnings.catch_warnings(record=True) as caught:  # never started: nothing to warn
        warnings.simplefilter("always")
        drop_all([client_for(server)])
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_calling_it_from_its_own_loop_thread_is_a_clear_error(server: Server) -> None:
    holder: list[PromptClient] = []

    async def reentrant_fetch(key: PromptKey) -> Prompt:  # a source runs on the loop thread
        return holder[0].get_prompt("greet")

    with PromptClient(source=FunctionSource(reentrant_fetch), env={}) as client:
        holder.append(client)
        with pytest.raises(ClientStateError, match="own event loop thread"):
            client.get_prompt("nobody")


def test_a_fallback_may_call_the_client(server: Server) -> None:
    # Fallbacks run in the calling thread, not the loop thread: calling the client works.
    with client_for(server) as client:
        fallback = client.get_prompt("nobody", fallback=lambda: client.get_prompt("greet").prompt)
        assert fallback.is_fallback and fallback.prompt == "Hello {{name}}"


def test_close_from_its_own_loop_thread(server: Server) -> None:
    before = set(threading.enumerate())
    client = client_for(server)

    def closing_fallback() -> str:  # runs on the loop thread: close() must not wait for it
        client.close()
        return "Bye {{name}}"

    assert client.get_prompt("nobody", fallback=closing_fallback).is_fallback
    assert client.stats().entries == 0  # waits for the loop to end, then reads the cache
    assert set(threading.enumerate()) == before
    with pytest.raises(ClientStateError):
        client.get_prompt("greet")


def test_closed_at_interpreter_exit(server: Server) -> None:
    script = (
        "import atexit, sys, threading\n"
        "atexit.register(lambda: print(sorted(t.name for t in threading.enumerate())))\n"
        "from asyncpromptcache import PromptClient\n"  # its exit hook runs before the above
        "client = PromptClient(base_url=sys.argv[1], env={})\n"
        "print(client.get_prompt('greet').version)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", script, server.s.base_url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")  # no unclosed session or loop
    assert done.stdout.split("\n")[:2] == ["1", "['MainThread']"]
