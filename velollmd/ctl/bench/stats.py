"""Benchmark statistics: percentiles and the stable per-run summary (the JSON schema).

Every summary has the same keys whether or not requests succeeded; a distribution with no
samples has `n` 0 and None for the rest. Percentiles (`percentile`, the project's one
definition) are taken over all samples of all requests of the run.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from .client import RequestResult

DISTRIBUTIONS = ("ttft_ms", "itl_ms", "tokens_per_second", "latency_ms")
MAX_ERROR_MESSAGES = 5


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (q in 0..100) of `values`, in any order.

    The one definition of every p50/p99 the project reports (`velollmctl bench` and the
    scripts under benchmarks/): linear interpolation between the two closest ranks, which is
    numpy's default method ("linear", Hyndman & Fan's type 7) and what most benchmark tools
    report. The rank of q is (n - 1) * q / 100 over the sorted values, so p0 is the minimum,
    p100 the maximum, and p50 of an even count the mean of the middle two.
    Raises ValueError for no values or q outside 0..100.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q!r} is outside 0..100")
    rank = (len(ordered) - 1) * (q / 100)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return _lerp(ordered[low], ordered[high], rank - low)


def _lerp(a: float, b: float, t: float) -> float:
    """a + (b - a) * t, computed from the nearer end (as numpy does) so that t = 1 gives b."""
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)


def distribution(values: list[float]) -> dict:
    """{p50, p90, p99, mean, n} of `values` (rounded to 3 decimals)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "n": 0}
    return {"p50": round(percentile(values, 50), 3), "p90": round(percentile(values, 90), 3),
            "p99": round(percentile(values, 99), 3), "mean": round(sum(values) / len(values), 3),
            "n": len(values)}


def summarize(results: list[RequestResult], wall_s: float) -> dict:
    """The measured part of one run (or of several runs' merged results)."""
    ok = [r for r in results if r.ok]
    num_tokens = sum(r.num_tokens for r in ok)
    messages: list[str] = []
    for r in results:
        if not r.ok and r.error not in messages and len(messages) < MAX_ERROR_MESSAGES:
            messages.append(r.error)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_messages": messages,
        "cache_hits": sum(r.cache_hit for r in results),
        "completion_tokens": num_tokens,
        "wall_s": round(wall_s, 4),
        "aggregate_tokens_per_second": round(num_tokens / wall_s, 3) if wall_s > 0 else 0.0,
        "ttft_ms": distribution([r.ttft_s * 1000 for r in ok if r.ttft_s is not None]),
        "itl_ms": distribution([gap * 1000 for r in ok for gap in r.itl_s]),
        "tokens_per_second": distribution([r.tokens_per_second for r in ok if r.tokens_per_second]),
        "latency_ms": distribution([r.latency_s * 1000 for r in ok]),
    }


def ratio(b: float | None, a: float | None) -> float | None:
    """b / a, or None when either side is missing or a is 0."""
    if a is None or b is None or a == 0:
        return None
    return round(b / a, 3)
