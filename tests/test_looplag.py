"""The event-loop lag monitor on a real loop (asyncio's and uvloop's) that a callback blocks."""
import asyncio
import time

import pytest
import uvloop

from velollmd import looplag
from velollmd.looplag import BUSY_LAG_S, LoopLag
from velollmd.metrics import Metrics


def run(coroutine_function, loop_factory):
    loop = loop_factory()
    try:
        return loop.run_until_complete(coroutine_function())
    finally:
        loop.close()


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_blocked_loop_shows_its_lag(loop_name):
    """The loop blocked for 200 ms: the lag is seen while the tick is still overdue, after it
    ran, and by the module functions admission uses; stopping unregisters the monitor."""
    async def main():
        monitor = LoopLag(interval_s=0.01)
        monitor.start()
        await asyncio.sleep(0.03)                   # a few ticks on the running loop
        time.sleep(0.2)                             # a callback that holds the loop
        overdue = monitor.recent()
        busy = looplag.busy_lag()
        await asyncio.sleep(0.05)                   # the late tick runs
        seen = (overdue, busy, monitor.recent(), looplag.recent_lag(), max(monitor.lags))
        monitor.stop()
        return seen, monitor.running, looplag.monitor(), looplag.recent_lag()

    (overdue, busy, recent, module_recent, largest), running, after, after_lag = run(main, LOOPS[loop_name])
    assert overdue >= 0.1 and recent >= 0.1 and module_recent >= 0.1
    assert largest >= 0.1
    assert busy > 0.0                               # past BUSY_LAG_S: admission passes a lag
    assert not running and after is None and after_lag == 0.0


def test_no_monitor_no_lag():
    async def main():
        return looplag.monitor(), looplag.recent_lag(), looplag.busy_lag()
    assert run(main, asyncio.new_event_loop) == (None, 0.0, 0.0)
    assert looplag.recent_lag() == 0.0              # outside a loop
    assert BUSY_LAG_S > 0


def test_start_twice_and_stop_twice_are_harmless():
    async def main():
        monitor = LoopLag(interval_s=0.01)
        monitor.start()
        handle = monitor._handle
        monitor.start()
        same = monitor._handle is handle
        monitor.stop()
        monitor.stop()
        return same, monitor.running, looplag.monitor()
    assert run(main, asyncio.new_event_loop) == (True, False, None)


def test_the_lag_is_a_metric_while_a_monitor_runs():
    async def main():
        monitor = LoopLag(interval_s=0.01)
        monitor.start()
        time.sleep(0.2)
        text = Metrics().render()
        monitor.stop()
        return text, Metrics().render()
    running, stopped = run(main, asyncio.new_event_loop)
    line = next(line for line in running.splitlines() if line.startswith("velollm_event_loop_lag_seconds "))
    assert float(line.split()[1]) >= 0.1
    assert "# TYPE velollm_event_loop_lag_seconds gauge" in running
    assert "velollm_event_loop_lag_seconds" not in stopped


def test_a_monitor_while_held_ticks_only_while_requests_hold_it():
    """The daemon's kind: no tick while nothing is held; hold() starts the ticks, the first
    tick after the last release() is the last and forgets the lags; a late tick still shows."""
    async def main():
        monitor = LoopLag(interval_s=0.01, while_held=True)
        monitor.start()
        idle = monitor._handle
        monitor.hold()
        await asyncio.sleep(0.035)
        held = (monitor._handle is not None, len(monitor.lags))
        time.sleep(0.1)                             # a callback holds the loop
        busy = looplag.busy_lag(asyncio.get_running_loop())
        monitor.release()
        await asyncio.sleep(0.03)                   # the late tick, then the last one
        quiet = (monitor._handle, list(monitor.lags), monitor.recent())
        monitor.hold()
        again = monitor._handle is not None
        monitor.release()
        monitor.stop()
        return idle, held, busy, quiet, again

    idle, (ticking, num_lags), busy, quiet, again = run(main, uvloop.new_event_loop)
    assert idle is None and ticking and num_lags >= 2
    assert busy > 0.0
    assert quiet == (None, [], 0.0) and again
