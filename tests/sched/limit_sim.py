"""A discrete-event simulation of clients, the daemon's limit and a backend: deterministic,
no clock, so the adaptive limit's behaviour is a plain assertion (benchmarks/adaptive_limit.py
measures the same over real sockets, with the same two ways to degrade past a width).

A backend is two functions of the requests in flight: the work a request brings when it
arrives (seconds at full speed; `work(n)` with n counting itself) and the speed at which all
requests in flight progress (`speed(n)`, 1.0 = full). Requests progress together (processor
sharing), so `speed` models a backend that slows down every request when overloaded.
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Callable

from velollmd.looplag import BUSY_LAG_S
from velollmd.sched.limiter import AdaptiveLimit


@dataclass(frozen=True)
class Backend:
    work: Callable[[int], float]                  # requests in flight on arrival -> seconds of work
    speed: Callable[[int], float] = lambda num_inflight: 1.0


def wide(base_s: float = 0.020) -> Backend:
    """The same latency at any concurrency."""
    return Backend(lambda num_inflight: base_s)


def degrades_past(width: int, base_s: float = 0.020) -> Backend:
    """benchmarks/adaptive_limit.py --model arrival: a request that arrives while more than
    `width` are in flight (counting itself) takes twice as long."""
    return Backend(lambda num_inflight: base_s if num_inflight <= width else 2 * base_s)


def slows_past(width: int, base_s: float = 0.020) -> Backend:
    """benchmarks/adaptive_limit.py --model rate: every request in flight runs at half speed
    while more than `width` are in flight."""
    return Backend(lambda num_inflight: base_s, lambda num_inflight: 1.0 if num_inflight <= width else 0.5)


def queues_past(width: int, base_s: float = 0.020) -> Backend:
    """A backend of `width` slots with a FIFO behind them: latency grows with the queue."""
    return Backend(lambda num_inflight: base_s * max(1.0, num_inflight / width))


def batches(width: int = 64, slope: float = 0.02, base_s: float = 0.020) -> Backend:
    """A server that batches (vLLM, llama.cpp with many slots, Ollama with NUM_PARALLEL): each
    request takes longer the more run with it, base x (1 + slope x in flight), but far less than
    in proportion, so throughput keeps rising up to `width`; past it the rest queue."""
    return Backend(lambda num_inflight: base_s * (1 + slope * min(num_inflight, width))
                   * max(1.0, num_inflight / width))


def shares_cpu(cpu_s: float = 0.0004, base_s: float = 0.020) -> Backend:
    """The wide backend on a core shared with its load: each request waits base_s in parallel
    with the others and needs cpu_s of a core that serves the requests in flight in turn, so
    latency grows with them, base_s + cpu_s x in flight, while throughput still rises towards
    1 / cpu_s (flat only at saturation): fewer in flight, fewer answers per second."""
    return Backend(lambda num_inflight: base_s + cpu_s * num_inflight)


def simulate(limit: AdaptiveLimit, backend: Backend, *, num_clients: int, num_requests: int,
             jitter: float = 0.0, daemon_s: float = 0.0, stalls: tuple[float, float] = (0.0, 0.0),
             busy_s: float = 0.0, monitor: bool = False, seed: int = 1) -> list[int]:
    """Closed loop: each client sends its next request when its last one is answered, and
    the daemon admits requests while fewer than the limit are in flight. `jitter` spreads each
    request's work by +-that fraction. `daemon_s`: a request spends up to that long (uniform)
    in the daemon after admission before it reaches the backend, and again after the backend
    answered before its slot is free: it holds a slot, and its measured latency includes
    that time, while the backend does not see it. `stalls` = (every_s, stall_s): the daemon
    stops for stall_s at random times, every_s apart on average (its CPU taken by another
    process): nothing reaches the backend or leaves it meanwhile. `busy_s`: the daemon's CPU is
    saturated, each request waits busy_s per request in flight for its turns (half on the way to
    the backend, half back), as a CPU-bound event loop makes every request wait. `monitor`: each
    sample carries the lag the event-loop monitor (velollmd/looplag.py) would report: busy_s x in
    flight, or the length of a stall that ended while the request was in the daemon, when past
    BUSY_LAG_S (admission passes none below it). Returns the
    limit after each finished request."""
    rng = random.Random(seed)
    stall = _Stalls(rng, *stalls)
    now = work_done = 0.0              # seconds; work done at full speed by each request at the backend
    num_waiting, history = num_clients, []
    sending: list[tuple[float, int, float]] = []      # heap of (reaches the backend at, seq, admitted at)
    at_backend: list[tuple[float, int, float]] = []   # heap of (work_done when finished, seq, admitted at)
    leaving: list[tuple[float, int, float]] = []      # heap of (slot free at, seq, admitted at)
    seq = 0
    while len(history) < num_requests:
        while num_waiting and len(sending) + len(at_backend) + len(leaving) < limit.limit:
            num_waiting -= 1
            in_daemon = rng.uniform(0, daemon_s) + busy_s * (len(sending) + len(at_backend) + len(leaving)) / 2
            heapq.heappush(sending, (now + in_daemon, seq, now))
            seq += 1
        speed = backend.speed(len(at_backend))
        finish = now + (_first(at_backend) - work_done) / speed
        when = min(finish, _first(sending), _first(leaving))
        work_done += (when - now) * speed if at_backend else 0.0
        now = when
        if _first(sending) == when and stall.until(when) > when:
            heapq.heapreplace(sending, (stall.until(when), *sending[0][1:]))
        elif _first(leaving) == when and stall.until(when) > when:
            heapq.heapreplace(leaving, (stall.until(when), *leaving[0][1:]))
        elif _first(sending) == when:
            _, number, admitted = heapq.heappop(sending)
            seconds = backend.work(len(at_backend) + 1) * (1 + rng.uniform(-jitter, jitter))
            heapq.heappush(at_backend, (work_done + seconds, number, admitted))
        elif _first(leaving) == when:
            num_inflight = len(sending) + len(at_backend) + len(leaving)
            _, _, admitted = heapq.heappop(leaving)
            lag = max(busy_s * num_inflight, stall.ended_within(admitted, now)) if monitor else 0.0
            lag = lag if lag >= BUSY_LAG_S else 0.0
            limit.on_sample(now - admitted, num_inflight, lag)
            num_waiting += 1
            history.append(limit.limit)
        else:                          # the backend answered: its work is done
            work_done, number, admitted = heapq.heappop(at_backend)
            in_daemon = rng.uniform(0, daemon_s) + busy_s * (len(sending) + len(at_backend) + len(leaving)) / 2
            heapq.heappush(leaving, (now + in_daemon, number, admitted))
    return history


def _first(heap: list[tuple]) -> float:
    return heap[0][0] if heap else math.inf


class _Stalls:
    """Stalls of the daemon: (start, end) intervals drawn as they are needed."""

    def __init__(self, rng: random.Random, every_s: float, stall_s: float):
        self.rng, self.every_s, self.stall_s = rng, every_s, stall_s
        self.start = self.end = self.last_end = 0.0
        self._draw()

    def _draw(self) -> None:
        self.last_end = self.end
        self.start = self.end + (self.rng.expovariate(1 / self.every_s) if self.every_s else math.inf)
        self.end = self.start + self.stall_s

    def until(self, now: float) -> float:
        """When the daemon runs again: `now` unless a stall holds it."""
        while now >= self.end:
            self._draw()
        return self.end if now >= self.start else now

    def ended_within(self, since: float, now: float) -> float:
        """The stall's length if one ended in (since, now], else 0."""
        return self.stall_s if since < self.last_end <= now else 0.0
