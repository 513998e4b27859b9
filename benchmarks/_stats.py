"""Small statistics helpers: percentiles, summaries across rounds, latency histograms."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of values already sorted; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def latency_summary(ns: Sequence[int]) -> dict[str, Any]:
    """n, p50, p90, p99, p99.9 and max of latencies in ns, as microseconds."""
    values = sorted(ns)
    summary: dict[str, Any] = {"n": len(values)}
    for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9)):
        summary[name + "_us"] = percentile(values, q) / 1000
    summary["max_us"] = values[-1] / 1000 if values else math.nan
    return summary


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-round figures."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean)}


#: Histogram edges in ns: 10 per decade from 100 ns to 100 s.
HIST_EDGES_NS = [10 ** (2 + i / 10) for i in range(91)]


def histogram(ns: Sequence[int]) -> list[int]:
    """Counts per ``HIST_EDGES_NS`` bin (below the first edge counts in bin 0, above the last
    in the last): the per-call latencies kept in the JSON, where every call would be too big."""
    counts = [0] * (len(HIST_EDGES_NS) - 1)
    top = len(counts) - 1
    for value in ns:
        index = math.floor((math.log10(max(value, 1)) - 2) * 10)
        counts[min(max(index, 0), top)] += 1
    return counts


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def fmt_ns(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 1e9:
        return f"{value / 1e9:.2f} s"
    if value >= 1e6:
        return f"{value / 1e6:.1f} ms"
    if value >= 1e4:
        return f"{value / 1e3:.0f} µs"
    if value >= 1e3:
        return f"{value / 1e3:.1f} µs"
    return f"{value:.0f} ns"


def fmt_us(value: float) -> str:
    return fmt_ns(value * 1000)
