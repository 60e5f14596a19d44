"""Benchmark statistics: percentiles and the stable per-run summary (the JSON schema).

Every summary has the same keys whether or not requests succeeded; a distribution with no
samples has `n` 0 and None for the rest. Percentiles interpolate linearly between order
statistics (numpy's default), over all samples of all requests of the run.
"""
from __future__ import annotations

from .client import RequestResult

DISTRIBUTIONS = ("ttft_ms", "itl_ms", "tokens_per_second", "latency_ms")
MAX_ERROR_MESSAGES = 5


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation."""
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def distribution(values: list[float]) -> dict:
    """{p50, p90, p99, mean, n} of `values` (rounded to 3 decimals)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "n": 0}
    ordered = sorted(values)
    return {"p50": round(percentile(ordered, 50), 3), "p90": round(percentile(ordered, 90), 3),
            "p99": round(percentile(ordered, 99), 3), "mean": round(sum(ordered) / len(ordered), 3),
            "n": len(ordered)}


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
