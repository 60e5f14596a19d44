"""How late the daemon's event loop runs what is due: its own CPU load, seen from inside.

A timer due every INTERVAL_S measures how late it ran. When the loop is saturated (the daemon's
CPU full, or taken by other processes), every callback waits for the turn in front of it, and so
does every hop of a request (each chunk of a stream read from the backend and written to the
client): that wait is in each latency sample the adaptive limit gets (sched/admission.py), where
it reads like a queue in the backend. `recent_lag()` is the largest lateness of the last
HISTORY ticks (about a second), or of a tick overdue now: past BUSY_LAG_S the daemon is busy,
and admission passes the mean lag (about one hop's wait) with each sample.

One monitor per loop, started and stopped with the daemon (App.start / App.close); the module
functions find the running loop's monitor, so daemons in threads (tests) each see their own.

The daemon's monitor (`while_held=True`) ticks only while requests hold or wait for a backend
slot (`hold()` / `release()`, from admission), the only time the adaptive limit reads it: a
tick that finds none in flight is the last and forgets the lags, so an idle daemon does not
wake 40 times a second, and its recent lag (/metrics, /health) reads 0 until requests come.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque

INTERVAL_S = 0.025            # a tick every 25 ms
HISTORY = 40                  # ticks remembered: the recent lag covers about a second
BUSY_LAG_S = 0.005            # recent lag past this: the daemon is busy. Measured 2026-12-02
                              # (proxy_overhead.py --backend wide): idle 0.4-4.2 ms, with the
                              # daemon's CPU saturated (16-64 clients) 6-33 ms

_monitors: dict[asyncio.AbstractEventLoop, LoopLag] = {}


class LoopLag:
    """A periodic loop.call_later tick that records how late it ran (seconds)."""

    def __init__(self, interval_s: float = INTERVAL_S, history: int = HISTORY, while_held: bool = False):
        self.interval_s = interval_s
        self.while_held = while_held                         # tick only while hold() is in force
        self.lags: deque[float] = deque(maxlen=history)    # the last ticks' lateness, seconds
        self.running = False                                 # between start() and stop()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None     # the next tick; None: none due
        self._due = 0.0                                      # time.monotonic() the next tick is due
        self._holds = 0                                      # hold() calls not yet released

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Tick on `loop` (the running one by default); `recent_lag()` finds it there."""
        if self.running:
            return
        self.running = True
        self._loop = loop or asyncio.get_running_loop()
        _monitors[self._loop] = self
        if not self.while_held or self._holds:
            self._schedule()

    def stop(self) -> None:
        self.running = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._loop is not None and _monitors.get(self._loop) is self:
            del _monitors[self._loop]

    def hold(self) -> None:
        """A request is in flight: tick (again, if it had stopped) until it is released."""
        self._holds += 1
        if self._handle is None and self.running:
            self._schedule()

    def release(self) -> None:
        self._holds -= 1

    def recent(self) -> float:
        """The largest lateness of the last ticks, or that of a tick overdue now (the loop is
        stuck in, or just came out of, a long callback), seconds."""
        overdue = time.monotonic() - self._due if self._handle is not None else 0.0
        return max(max(self.lags, default=0.0), overdue)

    def mean(self) -> float:
        """The mean lateness of the last ticks: about the wait of one hop of a request for
        its turn, where `recent()` is the worst of them."""
        return sum(self.lags) / len(self.lags) if self.lags else 0.0

    def _schedule(self) -> None:
        # time.monotonic(), not loop.time(): uvloop's clock is read once per loop turn, so it
        # would not see a turn that is still running.
        self._due = time.monotonic() + self.interval_s
        self._handle = self._loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        lag = max(0.0, time.monotonic() - self._due)
        self.lags.append(lag)
        if self._holds or not self.while_held:
            self._schedule()
        else:                                  # idle: the last tick; its lags are the past
            self._handle = None
            self.lags.clear()


def monitor(loop: asyncio.AbstractEventLoop | None = None) -> LoopLag | None:
    """`loop`'s monitor, by default the running loop's (None outside a loop or when none was
    started). A caller that knows its loop passes it: asyncio.get_running_loop() costs a
    getpid syscall on Python 3.11."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
    return _monitors.get(loop)


def recent_lag() -> float:
    """The running loop's recent lag in seconds; 0.0 without a monitor."""
    current = monitor()
    return current.recent() if current is not None else 0.0


def busy_lag(loop: asyncio.AbstractEventLoop | None = None) -> float:
    """The lag a request finishing now carries per hop (the mean of the recent ticks) when the
    daemon is busy (recent lag past BUSY_LAG_S), else 0.0; 0.0 without a monitor. `loop`: as
    for monitor()."""
    current = monitor(loop)
    if current is None or current.recent() < BUSY_LAG_S:
        return 0.0
    return max(current.mean(), 1e-6)
