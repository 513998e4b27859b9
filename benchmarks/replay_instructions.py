"""What replaying a cached answer costs in CPU instructions, as a ratio to the floor: a figure
that does not depend on the machine or its load.

    python -m benchmarks.replay_instructions            # about 20 s (needs valgrind)
    python -m benchmarks.replay_instructions --quick    # fewer replays, the same figures

The answer is a chat completion of 52 chunks (the role chunk, 50 tokens, the finish chunk),
stored in a ``ResponseCache``. Contenders, each a loop of whole replays read with
``async for`` as an application writes it:

* the floor: an async generator over the same 52 chunks;
* ``ResponseCache.stream(request, produce)``, a hit: the key computed from the request, the
  stored answer found and its chunks replayed with their boundaries (no pacing);
* the same hit with ``pace=0`` (a zero-second pause between chunks, kept as a checkpoint).

As ``hit_instructions.py`` does, one child process runs under ``valgrind --tool=callgrind``
with ``PYTHONHASHSEED=0``; callgrind zeroes its counter on ``getppid`` and dumps it on
``getpgrp``; each contender runs ``N`` and ``2N`` replays, and the difference divided by ``N``
is the cost of one replay. Without valgrind it says so and reports nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from itertools import repeat
from pathlib import Path
from typing import Any

from .hit_instructions import Loop, _count_all, count_per_call

FLOOR = "floor (async generator over the chunks)"
OURS = "ResponseCache.stream(), hit"
PACED = "ResponseCache.stream(pace=0), hit"
CHUNKS = 52
#: What the replay should cost at most, in floors.
TARGET = 3.0


def _chunks() -> list[dict[str, Any]]:
    from asyncpromptcache.server._openai import answer_tokens

    request = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    tokens = answer_tokens(request, CHUNKS - 2)
    return [chunk({"role": "assistant", "content": ""}),
            *(chunk({"content": token}) for token in tokens), chunk({}, "stop")]


async def _child(n: int) -> list[str]:
    from asyncpromptcache.response import ResponseCache

    chunks = _chunks()
    assert len(chunks) == CHUNKS
    request = {"model": "m", "temperature": 0,
               "messages": [{"role": "user", "content": "What does the cache do?"}]}

    async def produce() -> AsyncIterator[Any]:
        for chunk in chunks:
            yield chunk

    async def floor_loop(n: int) -> None:
        for _ in repeat(None, n):
            async for _chunk in produce():
                pass

    async with ResponseCache() as cache:
        assert [c async for c in cache.stream(request, produce)] == chunks  # stored

        async def ours_loop(n: int) -> None:
            for _ in repeat(None, n):
                async for _chunk in cache.stream(request, produce):
                    pass

        async def paced_loop(n: int) -> None:
            for _ in repeat(None, n):
                async for _chunk in cache.stream(request, produce, pace=0):
                    pass

        loops: dict[str, Loop] = {FLOOR: floor_loop, OURS: ours_loop, PACED: paced_loop}
        await _count_all(loops, n)
        stats = cache.stats()
        assert stats.misses == 1 and stats.hits == 2 * (1000 + 3 * n), stats  # all hits
    return list(loops)


def measure(n: int) -> dict[str, Any]:
    """Instructions per replay of each contender and its ratio to the floor, or
    ``{"skipped": why}`` when valgrind is missing."""
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed (apt-get install valgrind): not measured"}
    per_replay = count_per_call("benchmarks.replay_instructions", n)
    floor = per_replay[FLOOR]
    return {
        "unit": f"instructions per replay of {CHUNKS} chunks (callgrind Ir)",
        "replays": [n, 2 * n],
        "command": "PYTHONHASHSEED=0 valgrind --tool=callgrind --zero-before=getppid "
                   f"--dump-before=getpgrp python -m benchmarks.replay_instructions --child {n}",
        "instructions": {label: round(value, 1) for label, value in per_replay.items()},
        "x_floor": {label: round(value / floor, 2) for label, value in per_replay.items()},
        "target_x_floor": TARGET,
    }


def report(data: dict[str, Any]) -> None:
    if "skipped" in data:
        print(data["skipped"])
        return
    print(f"{'contender':42} {'instructions':>12} {'x floor':>8}")
    for label, value in data["instructions"].items():
        print(f"{label:42} {value:12,.1f} {data['x_floor'][label]:8.2f}")
    print(f"\nreplay of {CHUNKS} chunks / floor: {data['x_floor'][OURS]:.2f}x "
          f"(target <= {TARGET}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer replays, the same figures")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--names-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        names = asyncio.run(_child(args.child))
        args.names_to.write_text(json.dumps(names))
        return 0
    report(measure(40 if args.quick else 200))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
