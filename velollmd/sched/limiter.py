"""How many requests one backend gets at once: a limit learnt from the latency it shows.

A backend that does not say how wide it is (vLLM, SGLang, LM Studio, LocalAI, an Ollama with
OLLAMA_NUM_PARALLEL unknown) must neither be throttled nor buried. The limit follows TCP Vegas,
as Netflix's concurrency-limits `VegasLimit` does: with `rtt_base` the latency the backend shows
unloaded and `rtt` the latency of the last window of requests, the requests queued inside the
backend are about `queue = limit x (1 - rtt_base / rtt)`. Below `alpha` the limit grows, above
`beta` it shrinks, in between it holds (alpha = 3 log10 limit, beta = 6 log10 limit): the band is
what keeps it from oscillating. It grows only while the limit is in use (half of it in flight),
so an idle backend's limit does not drift upward.

Latencies are per output token where the answer says how many (`per_token`): a long generation
is not mistaken for queueing. Each window's latency is its median, so one slow answer is no
signal; the unloaded latency `rtt_base` is the lowest window median, with 10 % tolerance for
noise. It is learnt again when it cannot be right: a queue estimate longer than the requests
in flight means the backend got slower for good (a bigger model loaded), not busier.

Pure: no clock, no I/O; the caller reports samples (sched/admission.py).
"""
from __future__ import annotations

import math
import statistics

MIN_WINDOW = 8                # samples per limit update, at least
ALPHA, BETA = 2, 4            # hold while alpha x log10(limit) <= queue <= beta x log10(limit)
TOLERANCE = 0.1               # a window within 10 % of the unloaded latency shows no queue


def per_token(seconds: float, num_tokens: int | None) -> float:
    """A request's latency per generated token (the whole time when the count is unknown)."""
    return seconds / num_tokens if isinstance(num_tokens, int) and num_tokens > 1 else seconds


class AdaptiveLimit:
    """A concurrency limit in [min_limit, max_limit] that follows the backend's latency."""

    def __init__(self, initial: int, min_limit: int = 1, max_limit: int = 1024):
        self.min_limit, self.max_limit = min_limit, max(min_limit, max_limit)
        self.estimate = float(min(max(initial, min_limit), self.max_limit))
        self.rtt_base = math.inf         # the lowest window latency seen: the unloaded backend
        self.window: list[float] = []
        self.max_inflight = 0            # in the current window
        self.slow_start = True           # grow by a quarter per window until the first queue
        self.num_updates = 0

    @property
    def limit(self) -> int:
        return max(self.min_limit, int(self.estimate))

    def on_sample(self, latency: float, num_inflight: int) -> None:
        """One request finished: its latency (per token) and how many were in flight with it."""
        if latency <= 0 or not math.isfinite(latency):
            return
        self.window.append(latency)
        self.max_inflight = max(self.max_inflight, num_inflight)
        if len(self.window) >= max(MIN_WINDOW, self.limit // 2):
            self._update(statistics.median(self.window), self.max_inflight)
            self.window.clear()
            self.max_inflight = 0

    def _update(self, rtt: float, num_inflight: int) -> None:
        limit = self.estimate
        queue = self._queue(limit, rtt)
        if rtt < self.rtt_base or queue > max(1, num_inflight - 1):
            self.rtt_base = rtt          # a queue longer than the requests behind one: stale base
            queue = self._queue(limit, rtt)
        log_limit = max(1.0, math.log10(limit))
        if queue > BETA * log_limit:
            limit -= log_limit
            self.slow_start = False
        elif queue < ALPHA * log_limit and num_inflight * 2 >= limit:
            limit += max(log_limit, limit / 4) if self.slow_start and queue < 1 else log_limit
        self.estimate = min(max(limit, self.min_limit), self.max_limit)
        self.num_updates += 1

    def _queue(self, limit: float, rtt: float) -> float:
        """Requests waiting inside the backend, by Vegas: limit x (1 - unloaded / measured)."""
        return max(0.0, limit * (1 - self.rtt_base * (1 + TOLERANCE) / rtt))
