"""Run every benchmark scenario against the peers; print a table, write the results.

    python -m benchmarks                       # the full run, about 5 minutes
    python -m benchmarks --smoke --out DIR     # tiny sizes, a few seconds (the test suite)
    python -m benchmarks --only stampede,refresh

Writes ``latest.md``, ``latest.json`` (every per-round figure, latency histograms and the
machine) and PNG charts to ``benchmarks/results/`` (or ``--out``). Scenarios:
1. fresh-hit cost, async and sync (1c: in CPU instructions, under callgrind);
2. cold stampede; 3. the refresh window; 4. outage; 5. a cold-started web app; 6. memory;
7. sync throughput from 1, 4 and 16 threads.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from devkit.upstream import Upstream

from ._report import (
    draw_charts,
    evaluate_targets,
    machine_info,
    now_utc,
    render_markdown,
    render_result_text,
    render_targets_text,
    write_json,
)
from .propagation import propagation, propagation_targets
from .response_stream import response_stream
from .scenarios import (
    ASYNC_SCENARIOS,
    FULL,
    SMOKE,
    Context,
    Result,
    Sizes,
    hit_sync_and_threads,
    silence_loggers,
)
from .shared_tier import shared, shared_targets

RESULTS = Path(__file__).resolve().parent / "results"
#: The order of the report; "sync" runs 1b and 7 together.
ORDER = ("hit_async", "hit_instructions", "hit_sync", "stampede", "refresh", "outage", "web_app",
         "memory", "sync_threads", "shared", "response_stream", "propagation")
CHOICES = ("hit_async", "hit_instructions", "sync", "stampede", "refresh", "outage", "web_app",
           "memory", "shared", "response_stream", "propagation")
ASYNC_SCENARIOS = {**ASYNC_SCENARIOS, "response_stream": response_stream,
                   "propagation": propagation}


def _load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


class CpuMeter:
    """How much of the machine's CPU time went to other processes: the time all processes
    spent in user and system mode (``/proc/stat``) less this process's and the upstream
    server's. Interrupt time (loopback traffic is mostly softirq) is left out of both."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        tick = os.sysconf("SC_CLK_TCK")
        try:
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return 0.0, 0.0, 0.0
        user, nice, system, idle, iowait, irq, softirq, steal = values
        busy = (user + nice + system) / tick
        total = (user + nice + system + idle + iowait + irq + softirq + steal) / tick
        times = os.times()  # children_*: child processes already reaped (the load generator)
        ours = (times.user + times.system + times.children_user + times.children_system
                + self._upstream.cpu_seconds())
        return busy, total, ours

    def others_share(self) -> float:
        """Share of all cores' time used by other processes since the last call (0..1)."""
        end = self._read()
        busy, total, ours = (b - a for a, b in zip(self._start, end, strict=True))
        self._start = end
        return max(0.0, busy - ours) / total if total > 0 else 0.0


def reference_loop_ns(calls: int = 300_000) -> float:
    """ns per call of a plain function doing one ``dict.get``, best of 3: how fast this
    machine runs Python right now. Taken around every scenario, it shows a slowdown that the
    CPU counters cannot (a busy neighbour on the host, a lower clock)."""
    store = {"a": 1}

    def floor(key: str) -> Any:
        return store.get(key)

    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        for _ in range(calls):
            floor("a")
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return round(best, 1)


def run(smoke: bool, only: set[str], out: Path, log: Any = print) -> dict[str, Any]:
    """Run the scenarios and write the results to ``out``; returns the JSON document's parts."""
    sizes = SMOKE if smoke else FULL
    with silence_loggers():
        return _run(sizes, smoke, only, out, log)


def _run(sizes: Sizes, smoke: bool, only: set[str], out: Path, log: Any) -> dict[str, Any]:
    load_before = _load()
    started = time.perf_counter()
    results: dict[str, Result] = {}
    others: dict[str, float] = {}
    references: dict[str, list[float]] = {}
    with Upstream() as upstream:
        ctx = Context(upstream=upstream, sizes=sizes, smoke=smoke, log=log)
        meter = CpuMeter(upstream)
        for key in CHOICES:
            if only and key not in only:
                continue
            reference = [reference_loop_ns()]
            began = time.perf_counter()
            if key == "sync":
                hit, threads = hit_sync_and_threads(ctx)
                produced = [hit, threads]
            else:
                produced = [asyncio.run({**ASYNC_SCENARIOS, "shared": shared}[key](ctx))]
            took = time.perf_counter() - began
            others[key] = round(meter.others_share(), 3)
            reference.append(reference_loop_ns())
            references[key] = reference
            for result in produced:
                result.data["seconds"] = round(took, 1)
                result.data["other_processes_cpu_share"] = others[key]
                result.data["reference_loop_ns_before_after"] = reference
                results[result.key] = result
                log(render_result_text(result))
            log(f"  ({key}: {took:.1f} s; other processes used {others[key]:.0%} of the CPUs; "
                f"reference loop {reference[0]:.0f} ns before, {reference[1]:.0f} ns after)")
    duration = time.perf_counter() - started
    load_after = _load()
    busy = {key: share for key, share in others.items() if share > 0.05}
    fastest = min((ns for pair in references.values() for ns in pair), default=0.0)
    slow = {key: max(pair) / fastest for key, pair in references.items()
            if fastest and max(pair) > 1.25 * fastest}
    notes = []
    if busy:
        notes.append(
            "Not a quiet machine: other processes used "
            + ", ".join(f"{share:.0%} of the CPUs during {key}" for key, share in busy.items())
            + "."
        )
    if slow:
        notes.append(
            "The reference loop ran slower than its best around "
            + ", ".join(f"{key} ({ratio:.2f}x)" for key, ratio in slow.items())
            + ": the machine itself was slower then (something outside this VM, or its clock)."
        )
    load_note = " ".join(notes)
    if load_note:
        load_note += (" Absolute figures are noisier for it; ratios are measured within the "
                      "same rounds.")
    ordered = {key: results[key] for key in ORDER if key in results}
    targets = (evaluate_targets(ordered, load_note) + shared_targets(ordered, load_note)
               + propagation_targets(ordered, load_note))
    argv = ["python", "-m", "benchmarks"] + (["--smoke"] if smoke else [])
    if only:
        argv += ["--only", ",".join(sorted(only))]
    meta = {
        "command": shlex.join(argv), "date": now_utc(), "smoke": smoke,
        "duration_s": round(duration, 1), "machine": machine_info(),
        "load_before": load_before, "load_after": load_after,
        "other_processes_cpu_share": others, "reference_loop_ns": references,
        "load_note": load_note,
        "sizes": dataclasses.asdict(sizes),
    }
    out.mkdir(parents=True, exist_ok=True)
    charts = draw_charts(ordered, out)
    (out / "latest.md").write_text(render_markdown(ordered, targets, meta, charts))
    write_json(out / "latest.json", ordered, targets, meta)
    log("\n" + render_targets_text(targets))
    if load_note:
        log(f"\n{load_note}")
    log(f"\nwrote {out / 'latest.md'}, {out / 'latest.json'} and {len(charts)} charts "
        f"in {duration:.0f} s")
    return {"results": ordered, "targets": targets, "meta": meta, "charts": charts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, a few seconds: checks that every scenario still runs")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--only", default="",
                        help=f"comma-separated scenarios to run, of: {', '.join(CHOICES)}")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(CHOICES)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    run(args.smoke, only, args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover - use python -m benchmarks
    sys.exit(main())
