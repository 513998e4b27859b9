"""The sync facade's threads: a slow sync fallback in one thread
does not stall other threads' misses, and interpreter exit with a non-daemon thread waiting on
a hung fetch ends at once (within the close timeout), not after the whole retry budget.

No assertion is on wall time: waits are events and bounded joins that fail the test rather
than hang it; the subprocess test asserts on how the process ended.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from asyncpromptcache import PromptClient

from .faultserver import FaultServer, fault_server_in_thread

BOUND = 20.0  # seconds: a safety bound on joins, never the assertion


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with fault_server_in_thread() as s:
        s.put("greet", "Hello")
        yield s


def test_a_slow_sync_fallback_does_not_stall_other_threads(server: FaultServer) -> None:
    release = threading.Event()
    in_fallback = threading.Event()
    ran_in: list[threading.Thread] = []
    results: dict[str, object] = {}

    def slow_fallback() -> str:
        ran_in.append(threading.current_thread())
        in_fallback.set()
        assert release.wait(BOUND)
        return "fallback text"

    with PromptClient(base_url=server.base_url, env={}, max_retries=0) as client:
        def missing() -> None:  # a 404: its fallback is served
            results["missing"] = client.get_prompt("missing", fallback=slow_fallback)

        def other() -> None:
            results["other"] = client.get_prompt("greet")

        slow = threading.Thread(target=missing)
        slow.start()
        assert in_fallback.wait(BOUND)
        fast = threading.Thread(target=other)
        fast.start()
        fast.join(BOUND)
        # The other thread's miss was fetched and served while the fallback still ran.
        assert not fast.is_alive() and not release.is_set()
        assert getattr(results["other"], "prompt", None) == "Hello"
        release.set()
        slow.join(BOUND)
        assert not slow.is_alive()
        assert ran_in == [slow]  # in the calling thread, not the loop thread
        fallback = results["missing"]
        assert getattr(fallback, "is_fallback", False)
        assert getattr(fallback, "prompt", None) == "fallback text"
        assert client.stats().fallbacks == 1


def test_async_fallbacks_and_failing_fallbacks_from_the_sync_facade(server: FaultServer) -> None:
    async def chat() -> list[dict[str, str]]:
        return [{"role": "system", "content": "hi"}]

    def broken() -> str:
        raise RuntimeError("no fallback today")

    with PromptClient(base_url=server.base_url, env={}, max_retries=0) as client:
        prompt = client.get_prompt("missing", type="chat", fallback=chat)
        assert prompt.is_fallback and prompt.compile() == [{"role": "system", "content": "hi"}]
        with pytest.raises(ValueError, match="no fallback today"):
            client.get_prompt("missing", fallback=broken)
        with pytest.raises(ValueError, match="fallback"):
            client.get_prompt("missing", fallback=["not", "text"])  # type: ignore[call-overload]
        assert client.stats().fallbacks == 1


EXIT_SCRIPT = """
import sys, threading, time
from asyncpromptcache import PromptClient

client = PromptClient(base_url=sys.argv[1], env={}, fetch_timeout_seconds=120, max_retries=3)

def worker():
    try:
        client.get_prompt("greet")
    except Exception as exc:
        print("worker:", type(exc).__name__, flush=True)

threading.Thread(target=worker).start()  # not a daemon: the interpreter waits for it
while client.stats().in_flight == 0:  # the fetch has reached the hanging server
    time.sleep(0.01)
print("main: done", flush=True)
"""


def test_interpreter_exit_does_not_wait_for_a_hung_fetch(server: FaultServer) -> None:
    server.fault = "hang"  # every request hangs: the worker's budget is 4 x 120 s
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, server.base_url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == ["main: done", "worker: ClientStateError"]
    assert server.requests["greet"] <= 1  # one request at most (it may not have landed yet)
