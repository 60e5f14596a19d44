"""A discrete-event simulation of clients, the daemon's limit and a backend: deterministic,
no clock, so the adaptive limit's behaviour is a plain assertion (benchmarks/adaptive_limit.py
measures the same over real sockets)."""
from __future__ import annotations

import heapq
import random
from typing import Callable

from velollmd.sched.limiter import AdaptiveLimit

ServiceTime = Callable[[int], float]      # requests in flight at the start -> seconds


def degrades_past(width: int, base_s: float = 0.020) -> ServiceTime:
    """A backend whose latency doubles once more than `width` requests are in flight."""
    return lambda num_inflight: base_s if num_inflight <= width else 2 * base_s


def queues_past(width: int, base_s: float = 0.020) -> ServiceTime:
    """A backend of `width` slots with a FIFO behind them: latency grows with the queue."""
    return lambda num_inflight: base_s * max(1.0, num_inflight / width)


def simulate(limit: AdaptiveLimit, service_time: ServiceTime, *, num_clients: int,
             num_requests: int, jitter: float = 0.0, seed: int = 1) -> list[int]:
    """Closed loop: each client sends its next request when its last one is answered, and
    the daemon admits requests while fewer than the limit are in flight. Returns the limit
    after each finished request."""
    rng = random.Random(seed)
    now, num_waiting, history = 0.0, num_clients, []
    inflight: list[tuple[float, float]] = []        # heap of (finish time, latency)
    while len(history) < num_requests:
        while num_waiting and len(inflight) < limit.limit:
            num_waiting -= 1
            seconds = service_time(len(inflight) + 1) * (1 + rng.uniform(-jitter, jitter))
            heapq.heappush(inflight, (now + seconds, seconds))
        limit.on_sample(inflight[0][1], len(inflight))
        now, _ = heapq.heappop(inflight)
        num_waiting += 1
        history.append(limit.limit)
    return history
