"""What a sync fresh hit costs: ``PromptClient.get_prompt`` against the floor and against the
Langfuse Python SDK's cached ``get_prompt``, on the same machine and the same local server.

    python benchmarks/sync_hit.py            # about 20 s
    python benchmarks/sync_hit.py --quick    # a few seconds

The floor is a plain function doing one ``dict.get``: no sync cache can answer for less. Every
contender is called the same way (a ``functools.partial`` holding the name), in rounds
interleaved with the others so that a noisy neighbour slows them all alike; the figure is the
median round. Then hits per second from 1, 4 and 16 threads. Langfuse is an optional
benchmark dependency (``pip install -e '.[bench]'``); without it its rows are skipped.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asyncpromptcache import PromptClient

Call = Callable[[], Any]

NAME = "movie-critic"
PUBLIC_KEY, SECRET_KEY = "pk-lf-bench", "sk-lf-bench"
SEED_DIR = Path(__file__).resolve().parent.parent / "examples" / "prompts"


@contextmanager
def local_server() -> Iterator[str]:
    """The project's local prompt server on a free port, seeded from ``examples/prompts``."""
    from asyncpromptcache.server import ServerThread

    with ServerThread(public_key=PUBLIC_KEY, secret_key=SECRET_KEY, seed_dir=SEED_DIR) as server:
        yield server.base_url


def time_one(call: Call, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        call()
    return (time.perf_counter_ns() - start) / n


def measure(contenders: dict[str, Call], n: int, rounds: int) -> dict[str, list[float]]:
    """ns per call for each contender, ``rounds`` interleaved rounds of ``n`` calls."""
    for call in contenders.values():  # warm up
        time_one(call, max(1, n // 10))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            samples[name].append(time_one(call, n))
    return samples


def hits_per_second(call: Call, threads: int, seconds: float) -> float:
    """Calls per second from ``threads`` threads calling ``call`` for about ``seconds``."""
    counts = [0] * threads
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        barrier.wait()
        done = 0
        while not stop.is_set():
            for _ in range(1000):
                call()
            done += 1000
        counts[i] = done

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


def langfuse_contender(base_url: str) -> tuple[Call, Call] | None:
    """Langfuse's cached ``get_prompt`` (after one fetch), and a closer; None if missing."""
    try:
        from langfuse import Langfuse
    except ImportError:
        print("langfuse not installed (pip install -e '.[bench]'): its rows are skipped",
              file=sys.stderr)
        return None
    logging.getLogger("langfuse").setLevel(logging.ERROR)
    langfuse = Langfuse(public_key=PUBLIC_KEY, secret_key=SECRET_KEY, base_url=base_url,
                        tracing_enabled=False)
    langfuse.get_prompt(NAME)  # the fetch; every call after it is a cache hit
    return functools.partial(langfuse.get_prompt, NAME), langfuse.shutdown


def run(n: int, rounds: int, seconds: float) -> None:
    with local_server() as base_url, PromptClient(
        public_key=PUBLIC_KEY, secret_key=SECRET_KEY, base_url=base_url,
        cache_ttl_seconds=3600, env={},
    ) as client:
        prompt = client.get_prompt(NAME)
        store = {(NAME, "production", None): prompt}

        def floor(name: str) -> Any:
            return store.get((name, "production", None))

        contenders: dict[str, Call] = {
            "floor (def + dict.get)": functools.partial(floor, NAME),
            "PromptClient.get_prompt": functools.partial(client.get_prompt, NAME),
            "PromptClient.get_prompt(label=, type=)": functools.partial(
                client.get_prompt, NAME, label="production", type="text"),
        }
        langfuse = langfuse_contender(base_url)
        if langfuse is not None:
            contenders["Langfuse SDK get_prompt (cached)"] = langfuse[0]
        try:
            report(measure(contenders, n, rounds))
            print(f"\n{'hits per second':38} {'1 thread':>12} {'4 threads':>12} "
                  f"{'16 threads':>12}")
            for name, call in contenders.items():
                rates = [hits_per_second(call, k, seconds) for k in (1, 4, 16)]
                print(f"{name:38} " + " ".join(f"{rate / 1e6:10.2f} M" for rate in rates))
        finally:
            if langfuse is not None:
                langfuse[1]()
        stats = client.stats()
        assert stats.fetches == 1 and stats.misses == 1, stats  # every other call was a hit


def report(samples: dict[str, list[float]]) -> dict[str, float]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    floor = medians["floor (def + dict.get)"]
    ours = medians["PromptClient.get_prompt"]
    print(f"{'sync fresh hit':38} {'ns/call':>9} {'min':>8} {'max':>8} {'x floor':>8} "
          f"{'x ours':>7}")
    for name, values in samples.items():
        print(f"{name:38} {medians[name]:9.1f} {min(values):8.1f} {max(values):8.1f} "
              f"{medians[name] / floor:8.2f} {medians[name] / ours:7.2f}")
    langfuse = medians.get("Langfuse SDK get_prompt (cached)")
    if langfuse is not None:
        print(f"\nLangfuse / ours: {langfuse / ours:.2f}x faster (target >= 3x)")
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    args = parser.parse_args(argv)
    n, rounds, seconds = (20_000, 5, 0.3) if args.quick else (200_000, 9, 1.5)
    run(n, rounds, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
