"""How many requests one backend gets at once: a limit learnt from the latency it shows.

A backend that does not say how wide it is (vLLM, SGLang, LM Studio, LocalAI, an Ollama with
OLLAMA_NUM_PARALLEL unknown) must neither be throttled nor buried. Each window of finished
requests gives a latency `rtt`; `rtt_base` is the lowest window latency seen (the backend
unloaded) and the gradient `rtt / rtt_base` says whether requests queue inside the backend, as
in Envoy's adaptive concurrency filter and Netflix's Gradient limits:

- gradient <= GROW_BELOW (1.2): no queue. The limit grows by an eighth per window (at least 1),
  but only while half of it is in use, so an idle backend's limit does not drift upward.
- gradient >= SHRINK_ABOVE (1.35): a queue. The limit moves SMOOTHING (0.3) of the way towards
  what the backend showed it serves without queueing, `limit x GROW_BELOW / gradient` (Little's
  law), by at least 1: an exponentially smoothed step, not a cut to the target.
- in between it holds. The band is in latency, not in requests queued (Vegas' alpha/beta x
  log10 limit), so it means the same at a limit of 8 as at 200, and a backend whose latency
  doubles past its width cannot park the limit above the width (Vegas parked it at 11).

What keeps it from oscillating around a backend whose latency steps up past its width:
- the `ceiling`, the limit at which the last queue showed. Growth stops one short of it; from
  there on it needs two windows in a row without a queue and then probes by PROBE (1/8);
  above the ceiling it starts at PROBE and speeds up with the distance, as CUBIC's window
  does around its last maximum. So the limit spends its time just under the width, and a
  backend that got wider is found again in a few dozen windows;
- stale samples are skipped: after the limit changed, the requests that were in flight
  finish under the old limit and say nothing about the new one (but in the ramp, below);
- a window's latency is its mean without its fastest and slowest sample: one slow answer is
  no signal, and the mean moves with the share of requests that queued, where a median flips
  between none and all of them at the width.

What keeps latency that is not the backend's from throttling it (the daemon's own CPU shared
with other processes, other clients of the backend):
- below the ceiling, where the backend ran without a queue, a queue counts only after CONFIRM
  (3) windows in a row: a stall of the daemon is a window or two of high latency, and a
  shrink per stall (then the slow probe back) ratchets the limit down;
- shrinks that do not shorten the queue as a queue of our requests would (in proportion to
  the requests in flight, measured from the first shrink of the series) are in vain; the
  limit then holds, and shrinks once per PATIENCE (64) windows only. Shrinks that left the
  requests in flight as they were (the limit above them) shortened nothing: a window a little
  faster after them is noise;
- the unloaded latency is learnt again only after STALE_WINDOWS (8) windows in a row slower
  than any queue of the requests in flight could make them (the backend got slower for
  good: a bigger model loaded), not after one stall.

The first WARMUP (3) windows only learn the unloaded latency, at the initial limit: the first
one is slow when connections to the backend are opened, and a limit grown past the width on
it would take the overloaded latency of the next window for unloaded.

The ramp: until the first window whose latency rose (gradient > GROW_BELOW), a window that
used the whole limit (requests waited for it) grows it by the usual eighth and skips no samples
after it. Skipping cost a round and a half of answers per step (a wide backend took 7-12 rounds
to reach the clients in flight, issue 13's 16-client miss); the steps stay an eighth, so every
level on the way has its throughput measured (wider steps left gaps that fooled the check
below, and the limit stopped far past a width). The window that ends the ramp with a queue
right after a step (whose samples are partly from before it) takes the limit back to where
that step started and makes the limit it met the ceiling.

What keeps the daemon's own load from throttling a backend it is not waiting for: the caller
passes with each sample the lag of the daemon's event loop (velollmd/looplag.py) when it is past
noise. When the daemon's CPU is saturated (a wide backend, many streams) every request waits
for the loop's turns, latency grows with the requests in flight as in a queue, and shrinking
cannot help (the backend is not the bottleneck). A window where half the samples or more
carry lag is the daemon's, not the backend's: it cannot shrink the limit, count towards a
queue, or teach the unloaded latency; it may grow the limit, up to one short of the ceiling,
when its latency less the lag shows no queue.

What keeps a backend that batches from being throttled (vLLM, llama.cpp with many slots,
Ollama with OLLAMA_NUM_PARALLEL: latency at 32 in flight 1.3-2x that at 1, throughput 10-25x),
or a wide one whose latency grows with load on a shared core: Little's law. A window's
throughput is its mean requests in flight / its latency, kept per level of requests in flight
(smoothed; forgotten after MEMORY windows unmeasured, when the unloaded latency is relearnt,
and all of them when a level's throughput moves 2x: the backend changed). A latency rise
counts as a queue only when the concurrency that caused it did not pay: it pays when the
throughput at this level beats that of every level of at most SPAN (0.7) of it (with none,
the lowest below it) by at least PAYS (0.1) of the rise in concurrency, log for log (a queue:
0; past a width that slows requests: below 0; batching at 2% per request in flight, or a
shared core at twice the unloaded latency: about 0.5). A window that paid neither shrinks the
limit nor counts as a queue; it grows the limit as a quiet window does while throughput still
rises there: its level serves more than the lower levels measured lately, and no level above
it measured less. So the
limit does not climb past a width that slows requests on throughput (each level past it
serves less), and with no level below measured (a limit that starts high) the latency alone
decides, the shrinks measuring the levels below.

Latencies are per output token where the answer says how many (`per_token`): a long generation
is not mistaken for queueing. The unloaded latency is not otherwise probed for (Envoy drops to a low
limit now and then to measure it): a limit that starts above the width of a backend that
slows every request when overloaded learns the overloaded latency as unloaded; velollmd
starts at 8.

A backend that says it is busy (a 503 "no slot available", Ollama's "server busy", a 429) gives
the clearest signal of all, without a latency to read: `on_busy`. The limit drops to BUSY_BACKOFF
(0.7, CUBIC's beta) of the requests that were in flight (at most the limit), which becomes the
ceiling, so that the probe back up is slow next to it. Once per busy episode: the caller ignores
the refusals of requests sent before the last drop (a burst of them is one signal, as TCP cuts
its window once per round trip of losses, not per lost packet), and the circuit breaker never
hears of them (busy is not broken).

Pure: no clock, no I/O; the caller reports samples (sched/admission.py).
"""
from __future__ import annotations

import math

MIN_WINDOW = 8                # samples per limit update, at least (and half the limit)
GROW_BELOW = 1.2              # a window within 20 % of the unloaded latency shows no queue
SHRINK_ABOVE = 1.35           # 35 % above it shows one
GROWTH = 0.125                # per window without a queue, away from the ceiling
SMOOTHING = 0.3               # share of the way to the queue-free limit per window with a queue
PROBE = 0.125                 # per window next to the ceiling
STALE_BASE = 1.1              # gradient > this x requests in flight, STALE_WINDOWS windows in a
STALE_WINDOWS = 8             # row: the unloaded latency is stale
PATIENCE = 64                 # windows held after a shrink in vain before the next one
CONFIRM = 3                   # windows in a row with a queue before a shrink below the ceiling
WARMUP = 3                    # first windows: the unloaded latency is learnt, the limit does not grow
PAYS = 0.1                    # throughput elasticity (log-log) from which more in flight pays
SPAN = 0.7                    # compared with the levels of at most this share of the requests in flight
SMOOTH_SERVED = 0.25          # weight of a window's throughput in its level's record
CHANGED = 2.0                 # a level's throughput this far off its record: all records are stale
FRESH = 16                    # updates within which a level's record is smoothed, not replaced
MEMORY = 1024                 # windows a level's throughput is kept without being measured again
BUSY_BACKOFF = 0.7            # share of the requests in flight kept when the backend says it is busy


def per_token(seconds: float, num_tokens: int | None) -> float:
    """A request's latency per generated token (the whole time when the count is unknown)."""
    return seconds / num_tokens if isinstance(num_tokens, int) and num_tokens > 1 else seconds


def window_latency(samples: list[float]) -> float:
    """The mean of a window's latencies without its fastest and its slowest one."""
    if len(samples) <= 2:
        return sum(samples) / len(samples)
    return (sum(samples) - max(samples) - min(samples)) / (len(samples) - 2)


class AdaptiveLimit:
    """A concurrency limit in [min_limit, max_limit] that follows the backend's latency."""

    def __init__(self, initial: int, min_limit: int = 1, max_limit: int = 1024):
        self.min_limit, self.max_limit = min_limit, max(min_limit, max_limit)
        self.estimate = float(min(max(initial, min_limit), self.max_limit))
        self.rtt_base = math.inf         # the lowest window latency seen: the unloaded backend
        self.ceiling = math.inf          # the limit at which the last queue showed
        self.window: list[float] = []
        self.window_lags: list[float] = []   # the daemon's loop lag with each sample of the window
        self.max_inflight = 0            # in the current window
        self.sum_inflight = 0            # in the current window, over its samples
        self.served: dict[int, tuple[float, int]] = {}   # requests in flight -> (throughput, the
                                                          # update it was last measured in)
        self.num_stale = 0               # samples still to skip: admitted before the last change
        self.num_quiet = 0               # windows in a row without a queue
        self.queued: list[float] = []    # gradients of the last windows in a row with a queue (<= CONFIRM)
        self.first_cut: tuple[int, float] | None = None   # (in flight, gradient) at the first of
                                                          # the shrinks in a row
        self.num_held = 0                # windows held since a shrink in vain
        self.slower: list[float] = []    # window latencies in a row too slow for rtt_base
        self.ramping = True              # until the first window whose latency rose
        self.ramp_from: float | None = None   # the limit before the last update, if that was a ramp step
        self.num_updates = 0

    @property
    def limit(self) -> int:
        return max(self.min_limit, int(self.estimate))

    def on_sample(self, latency: float, num_inflight: int, lag: float = 0.0) -> None:
        """One request finished: its latency (per token), how many were in flight with it, and
        the lag of the daemon's event loop as it finished (0.0: none past noise)."""
        if latency <= 0 or not math.isfinite(latency):
            return
        if self.num_stale:
            self.num_stale -= 1
            return
        self.window.append(latency)
        self.window_lags.append(lag if lag > 0 and math.isfinite(lag) else 0.0)
        self.max_inflight = max(self.max_inflight, num_inflight)
        self.sum_inflight += num_inflight
        if len(self.window) >= max(MIN_WINDOW, self.limit // 2):
            before = self.limit
            if self._daemon_busy():
                own = [max(0.0, sample - lag) for sample, lag in zip(self.window, self.window_lags)]
                self._update_busy(window_latency(self.window), window_latency(own), self.max_inflight)
            else:
                self._update(window_latency(self.window), self.max_inflight,
                             self.sum_inflight / len(self.window))
            if self.limit != before and self.ramp_from is None:
                self.num_stale = num_inflight - 1
            self.window.clear()
            self.window_lags.clear()
            self.max_inflight = self.sum_inflight = 0

    def on_busy(self, num_inflight: int) -> None:
        """The backend refused a request as busy with `num_inflight` of ours in flight (that one
        included): the limit drops to BUSY_BACKOFF of them (of the limit, when fewer), the level
        that met the refusal becomes the ceiling, and the window, the ramp and the quiet streak
        start over; the samples still in flight were sent under the old limit (skipped)."""
        met = min(self.estimate, float(max(1, num_inflight)))
        self.ceiling = met
        self.estimate = max(float(self.min_limit), met * BUSY_BACKOFF)
        self.ramping, self.ramp_from = False, None
        self.num_quiet = 0
        self.queued.clear()
        self.window.clear()
        self.window_lags.clear()
        self.max_inflight = self.sum_inflight = 0
        self.num_stale = max(0, num_inflight - 1)

    def _daemon_busy(self) -> bool:
        """Half the window's samples or more finished while the daemon's loop lagged."""
        return 2 * sum(1 for lag in self.window_lags if lag > 0) >= len(self.window_lags)

    def _update_busy(self, rtt: float, own_rtt: float, num_inflight: int) -> None:
        """A window of the busy daemon: `rtt` as measured, `own_rtt` less the loop's lag. It
        grows the limit when `own_rtt` shows no queue, up to one short of the ceiling (the lag
        is an estimate: that a queue met there is gone is for a window of an idle daemon to
        show); it does not shrink it, count towards a queue or relearn the unloaded latency. In the warm-up it
        counts, with `rtt` as the unloaded latency if it is the lowest yet: too high at worst,
        the first window of an idle daemon lowers it, and a daemon busy from its start must
        not keep the limit at its initial value."""
        if self.num_updates < WARMUP:
            self.rtt_base = min(self.rtt_base, rtt)
        else:
            growth = self._quiet_growth(own_rtt <= self.rtt_base * GROW_BELOW, num_inflight, self.estimate)
            if self.estimate < self.ceiling - 1:
                self.estimate = min(self.estimate + growth, self.ceiling - 1, self.max_limit)
        self.num_updates += 1

    def _update(self, rtt: float, num_inflight: int, mean_inflight: float) -> None:
        self._learn_base(rtt, num_inflight)
        level = self._record(rtt, mean_inflight)
        pays = self._pays(level)
        gradient = rtt / self.rtt_base
        limit = self.estimate
        slow = gradient >= SHRINK_ABOVE
        queue = slow and not pays
        if self.ramping and gradient > GROW_BELOW and self.num_updates >= WARMUP and self._end_ramp(queue, limit):
            return
        growth = self._quiet_growth(gradient <= GROW_BELOW or (pays and self._rising(level)), num_inflight, limit)
        if not slow:                     # shrinks in vain stay in vain through windows that paid
            self.first_cut, self.num_held = None, 0
        if not queue:
            self.queued.clear()
        else:
            self.queued = self.queued[1 - CONFIRM:] + [gradient]
        if queue and self._confirmed(limit) and self._may_shrink(num_inflight, gradient):
            gradient = min(self.queued)
            self.ceiling = limit
            self.first_cut = self.first_cut or (num_inflight, gradient)
            limit -= max(1.0, SMOOTHING * limit * (1 - GROW_BELOW / gradient))
        else:
            limit += growth
        self.estimate = min(max(limit, self.min_limit), self.max_limit)
        self.num_updates += 1

    def _quiet_growth(self, quiet: bool, num_inflight: int, limit: float) -> float:
        """Counts a window towards the quiet streak (or ends it) and returns the growth it
        earns: none unless it was quiet, used at least half the limit and came after the warm-up."""
        self.num_quiet = self.num_quiet + 1 if quiet else 0
        self.ramp_from = None
        if not quiet or num_inflight * 2 < limit or self.num_updates < WARMUP:
            return 0.0
        if self.ramping and num_inflight >= int(limit):
            self.ramp_from = limit       # a step of the ramp: no samples are skipped after it
        return self._growth(limit)

    def _end_ramp(self, queue: bool, limit: float) -> bool:
        """The first window whose latency rose ends the ramp. If it shows a queue right after a
        ramp step, the limit goes back to where that step started and the limit that met the
        queue becomes the ceiling: no samples were skipped after the step, so the queue may
        have shown late, and the last limit known to show none is the step's start. True when
        that took the window's update."""
        self.ramping = False
        ramp_from, self.ramp_from = self.ramp_from, None
        if not queue or ramp_from is None:
            return False
        self.ceiling = limit
        self.estimate = max(ramp_from, float(self.min_limit))
        self.num_quiet = 0
        self.num_updates += 1
        return True

    def _confirmed(self, limit: float) -> bool:
        """A queue at or above the ceiling is new ground and counts at once; below it, where
        the backend ran without one, only CONFIRM windows in a row count: one stall of the
        daemon (its CPU taken for a moment) would otherwise cost a shrink, and the slow probe
        back to the ceiling, each time."""
        return limit >= self.ceiling or len(self.queued) >= CONFIRM

    def _learn_base(self, rtt: float, num_inflight: int) -> None:
        """The lowest window latency; learnt again, as the lowest of them, after STALE_WINDOWS
        windows in a row slower than any queue of the requests in flight could make them: the
        backend got slower for good (a bigger model loaded). One stall (the daemon's CPU taken
        for a moment) must not reset it: the next window, at a limit already past the width,
        would then pass for unloaded."""
        if rtt < self.rtt_base:
            self.rtt_base = rtt
        if rtt <= self.rtt_base * STALE_BASE * max(2, num_inflight):
            self.slower.clear()
            return
        self.slower.append(rtt)
        if len(self.slower) >= STALE_WINDOWS:
            self.rtt_base = min(self.slower)
            self.slower.clear()
            self.served.clear()

    def _record(self, rtt: float, mean_inflight: float) -> int:
        """The window's throughput (Little's law: in flight / latency) into its level's record,
        smoothed with a record at most FRESH updates old, else in its place (the backend may
        have changed since); levels not measured for MEMORY updates are forgotten. A window
        CHANGED (2x) off its level's record forgets every level: the backend, or the time spent
        outside it, changed, and the other levels' records with it. Returns the level."""
        level = max(1, round(mean_inflight))
        served = mean_inflight / rtt
        before, when = self.served.get(level, (served, -math.inf))
        if max(served / before, before / served) >= CHANGED:
            self.served.clear()
        elif self.num_updates - when <= FRESH:
            served += (1 - SMOOTH_SERVED) * (before - served)
        self.served[level] = (served, self.num_updates)
        for old in [n for n, (_, when) in self.served.items() if self.num_updates - when > MEMORY]:
            del self.served[old]
        return level

    def _pays(self, level: int) -> bool:
        """More in flight paid in throughput at `level`: it serves more than every level of at
        most SPAN of it (or, with none measured, than the lowest level below it), by at least
        PAYS of the rise in concurrency (log for log). False with no level below measured:
        then the latency alone decides."""
        served = self.served[level][0]
        below = sorted((n, rate) for n, (rate, _) in self.served.items() if n < level)
        lower = [(n, rate) for n, rate in below if n <= SPAN * level] or below[:1]
        return bool(lower) and all(served >= rate * (level / n) ** PAYS for n, rate in lower)

    def _rising(self, level: int) -> bool:
        """Throughput still rises with the limit at `level`: it serves more than every lower
        level measured in the last FRESH updates (older ones were passed on the way up, one
        window each: one lucky window must not stop the growth), and no level above it was
        measured whose concurrency did not pay over it (throughput stops rising there, until
        that level's record is forgotten)."""
        served = self.served[level][0]
        return all(rate <= served if n < level else rate >= served * (n / level) ** PAYS
                   for n, (rate, when) in self.served.items()
                   if n > level or (n < level and self.num_updates - when <= FRESH))

    def _may_shrink(self, num_inflight: int, gradient: float) -> bool:
        """False while the shrinks so far did not shorten the queue as a queue of this
        backend's requests would shorten, but once every PATIENCE windows.

        A queue of our requests shortens at least in proportion to the requests in flight (a
        FIFO: latency in proportion to them; past a width: back to unloaded). Latency that
        does not fall with them comes from elsewhere: the daemon's own CPU shared with other
        processes, other clients of the backend; shrinking further would only cost throughput.
        Measured against the first shrink of the series, so that noise cannot walk the limit
        down one shrink at a time. It may also be a limit far above a backend that slows down
        every request past its width (latency falls only below the width): the shrink once
        every PATIENCE windows still brings it down."""
        if self.first_cut is None:
            return True
        cut_inflight, cut_gradient = self.first_cut
        if num_inflight < cut_inflight and gradient <= cut_gradient * num_inflight / cut_inflight:
            return True
        self.num_held = (self.num_held + 1) % PATIENCE
        return self.num_held == 0

    def _growth(self, limit: float) -> float:
        """An eighth (at least 1) away from the ceiling; within 1 of it or above it, only after
        two quiet windows in a row: PROBE below it, and above it PROBE plus an eighth of the
        distance, so growth past an old ceiling speeds up again."""
        step = max(1.0, limit * GROWTH)
        if limit + step > self.ceiling - 1 and self.num_quiet < 2:
            return 0.0
        if limit >= self.ceiling:
            return min(step, PROBE + (limit - self.ceiling) * GROWTH)
        if limit + step > self.ceiling - 1:
            return max(min(step, self.ceiling - 1 - limit), PROBE)
        return step
