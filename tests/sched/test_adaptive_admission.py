"""Admission with the adaptive limit: a backend that does not say its width starts at
initial_concurrency and follows its latency; one that says it keeps its slots plus queue-ahead."""
import asyncio
import time
from types import SimpleNamespace

from tests.aio import run
from velollmd.config import SchedulerConfig
from velollmd.errors import BackendBusy
from velollmd.looplag import LoopLag
from velollmd.sched.admission import Admission
from velollmd.sched.request import STOPPED, SchedRequest


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def backend(slots_source=None, num_slots=1):
    return SimpleNamespace(name="b", num_slots=num_slots, slots_source=slots_source, loaded_models=None,
                           context_size=lambda: 4096)


async def one_round(admission, target, clock, num_requests: int, seconds: float, round_no: int) -> int:
    """`num_requests` at once, each answered `seconds` of fake time after it was admitted;
    returns how many were admitted before the first answer."""
    running, first = set(), None

    async def hold(i):
        request = SchedRequest(f"r{round_no}-{i}", "m", [i], 8, arrival_time=clock.now)
        async with admission.slot(target, request):
            running.add(i)
            until = clock.now + seconds
            while clock.now < until:
                await asyncio.sleep(0)
            request.num_output_tokens = 8
            running.discard(i)
    tasks = [asyncio.ensure_future(hold(i)) for i in range(num_requests)]
    while not all(t.done() for t in tasks):
        for _ in range(3):
            await asyncio.sleep(0)
        first = len(running) if first is None else first
        clock.now += 0.001
    return first


def test_unknown_width_starts_at_initial_concurrency_and_grows_while_latency_is_flat():
    async def main():
        clock = FakeClock()
        admission, target = Admission(SchedulerConfig(), clock), backend()
        first = await one_round(admission, target, clock, 64, 0.020, 0)
        for round_no in range(1, 40):
            await one_round(admission, target, clock, 64, 0.020, round_no)
        stats = admission.stats()["b"]
        return first, stats
    first, stats = run(main())
    assert first == 8                                 # [scheduler] initial_concurrency
    assert stats["adaptive"] and stats["concurrency_limit"] >= 64


def test_a_known_width_runs_its_slots_plus_queue_ahead_and_is_not_adaptive():
    async def main():
        clock = FakeClock()
        admission = Admission(SchedulerConfig(backend_queue_per_slot=1), clock)
        target = backend(slots_source="/props", num_slots=4)
        at_once = [await one_round(admission, target, clock, 32, 0.020, r) for r in range(10)]
        return at_once, admission.stats()["b"]
    at_once, stats = run(main())
    assert at_once == [8] * 10
    assert not stats["adaptive"] and stats["concurrency_limit"] == 8


def test_adaptive_off_keeps_initial_concurrency():
    async def main():
        clock = FakeClock()
        admission = Admission(SchedulerConfig(adaptive_concurrency=False, initial_concurrency=3), clock)
        return [await one_round(admission, backend(), clock, 16, 0.020, r) for r in range(10)]
    assert run(main()) == [3] * 10


def test_a_sample_taken_while_the_loop_lags_carries_the_lag_per_hop():
    """The loop held 100 ms (velollmd/looplag.py sees it): a stream's sample carries the mean lag
    per token (a hop per token), an answer in one piece the lag once, spread over its tokens;
    the same sample without a lagging loop carries none."""
    def finished(rid: str, stream: bool) -> SchedRequest:
        request = SchedRequest(rid, "m", [1], 8, arrival_time=0.0, stream=stream)
        request.started_at, request.num_output_tokens = 0.0, 8
        return request

    async def main():
        queue = Admission(SchedulerConfig(), FakeClock()).queue_of(backend())
        queue.record(finished("idle", stream=True), 0.020)
        monitor = LoopLag(interval_s=0.01)
        monitor.start()
        await asyncio.sleep(0.03)
        time.sleep(0.1)
        queue.record(finished("stream", stream=True), 0.020)
        queue.record(finished("whole", stream=False), 0.020)
        monitor.stop()
        return list(queue.limit.window_lags)
    idle, stream, whole = run(main())
    assert idle == 0.0 and stream > 0.0 and whole == stream / 8


def test_a_burst_of_busy_answers_shrinks_the_limit_once_per_episode():
    """The backend refuses as busy every request of a burst: one shrink (8 in flight -> 5), not
    one per refusal (which took it to 1); refusals of requests sent after that shrink are a new
    episode and shrink it again. The known-width backend has no limit to shrink."""
    async def burst(admission, target, clock, tag: str, num_requests: int) -> int:
        refused = []

        async def refuse(i):
            request = SchedRequest(f"{tag}-{i}", "m", [i], 8, arrival_time=clock.now)
            try:
                async with admission.slot(target, request):
                    await asyncio.sleep(0)                  # all of them in flight together
                    raise BackendBusy("busy", code="backend_busy")
            except BackendBusy:
                refused.append(i)
        await asyncio.gather(*[refuse(i) for i in range(num_requests)])
        assert len(refused) == num_requests
        return admission.stats()["b"]["concurrency_limit"]

    async def main():
        clock = FakeClock()
        admission, target = Admission(SchedulerConfig(), clock), backend()
        first = await burst(admission, target, clock, "a", 8)
        second = await burst(admission, target, clock, "b", 5)
        fixed = Admission(SchedulerConfig(backend_queue_per_slot=0), clock)
        known = await burst(fixed, backend(slots_source="/props", num_slots=4), clock, "c", 4)
        return first, second, known
    assert run(main()) == (5, 3, 4)


def test_a_grown_adaptive_limit_sends_nothing_ahead_so_nothing_is_withdrawn_for_priority():
    """The limit grew from 8 to the width it learnt: every request under it runs on the
    backend, none waits in a queue there. A priority-0 request that finds the limit full waits
    for one to finish; withdrawing a running non-streaming one (as from a known width's
    queue-ahead) would throw its half-done answer away. (The width the scheduler took the
    backend for used to stay at the 8 the limit started at: those above it passed for sent ahead.)"""
    async def main():
        clock = FakeClock()
        admission, target = Admission(SchedulerConfig(), clock), backend()
        for round_no in range(40):
            await one_round(admission, target, clock, 64, 0.020, round_no)
        return admission.queue_of(target).scheduler, clock.now
    scheduler, now = run(main())
    limit = scheduler.max_running
    assert limit > 8
    for i in range(limit):
        scheduler.add_request(SchedRequest(f"bulk-{i}", "m", [i], 8, arrival_time=now), now)
    assert len(scheduler.schedule(now).scheduled) == limit
    scheduler.add_request(SchedRequest("urgent", "m", [1], 8, arrival_time=now, priority=0), now)
    output = scheduler.schedule(now)
    assert output.preempted == () and output.scheduled == () and len(scheduler.running) == limit
    scheduler.finish_request("bulk-0", STOPPED, now)
    assert [s.request_id for s in scheduler.schedule(now).scheduled] == ["urgent"]


def test_a_width_said_while_the_adaptive_limit_is_busy_caps_it_at_the_width_plus_queue_ahead():
    """llama-server answered /props only after requests had started (still loading): the queue
    began adaptive. Under load that never lets it empty, the limit kept growing past the width
    (flat latency: it probes up to max_concurrency) though the backend never runs more than
    its 4 slots; from the moment the width is known it runs them plus the one sent ahead per
    slot, as a queue built for that width, and says so."""
    async def main():
        clock = FakeClock()
        admission, target = Admission(SchedulerConfig(backend_queue_per_slot=1), clock), backend(num_slots=4)
        keep_busy = SchedRequest("keep-busy", "m", [0], 8, arrival_time=clock.now)
        async with admission.slot(target, keep_busy):   # the queue is never empty from here on
            for round_no in range(10):
                await one_round(admission, target, clock, 32, 0.020, round_no)
            grown = admission.stats()["b"]["concurrency_limit"]
            target.slots_source = "/props"
            at_once = [await one_round(admission, target, clock, 32, 0.020, r) for r in range(10, 20)]
            stats = admission.stats()["b"]
        return grown, at_once, stats
    grown, at_once, stats = run(main())
    assert grown > 8
    assert at_once == [7] * 10                        # 4 x (1 + 1), one of them held by keep-busy
    assert stats["concurrency_limit"] == 8 and stats["num_slots"] == 4 and not stats["adaptive"]


def test_a_width_learnt_while_busy_sizes_the_token_budget_as_a_queue_built_for_it():
    """The adaptive queue's budget was num_ctx for each of max_concurrency requests; once the
    width is known it is num_ctx for each of the width plus queue-ahead, as in a queue built
    for that width: the same request held reads the same block_usage in both."""
    async def main():
        clock, config = FakeClock(), SchedulerConfig(backend_queue_per_slot=1)
        learnt, learning = Admission(config, clock), backend(num_slots=4)
        built, known = Admission(config, clock), backend(slots_source="/props", num_slots=4)
        held = [SchedRequest(f"held-{i}", "m", list(range(40)), 8, arrival_time=clock.now) for i in range(2)]
        async with learnt.slot(learning, held[0]), built.slot(known, held[1]):
            before = learnt.stats()["b"]["block_usage"]
            learning.slots_source = "/props"
            learnt.queue_of(learning)
            return before, learnt.stats()["b"], built.stats()["b"], [
                a.queues["b"].scheduler.pool.num_blocks for a in (learnt, built)]
    before, learnt, built, num_blocks = run(main())
    assert num_blocks[0] == num_blocks[1] == 4096 * 8 // 16
    assert learnt["block_usage"] == built["block_usage"] == round(3 / num_blocks[1], 4) > before


def test_a_learnt_budget_too_small_for_the_requests_running_waits_until_they_fit():
    """The width learnt while more run than the new budget holds (a context of 64 tokens, 2
    slots: 8 blocks; 4 requests of 3 blocks each): the old pool stays until one finishes."""
    async def main():
        clock = FakeClock()
        admission, target = Admission(SchedulerConfig(backend_queue_per_slot=1), clock), backend(num_slots=1)
        target.context_size = lambda: 64
        held = [SchedRequest(f"held-{i}", "m", list(range(100 * i, 100 * i + 40)), 8, arrival_time=clock.now)
                for i in range(4)]                    # (prompts of their own: no block shared)
        slots = [admission.slot(target, request) for request in held]
        for slot in slots:
            await slot.__aenter__()
        target.slots_source = "/props"
        queue = admission.queue_of(target)
        sizes = [queue.scheduler.pool.num_blocks]
        for slot in slots[:2]:
            await slot.__aexit__(None, None, None)
            await asyncio.sleep(0)                    # (a slot given back well finishes a moment later)
            sizes.append(queue.scheduler.pool.num_blocks)
        usage = admission.stats()["b"]["block_usage"]
        for slot in slots[2:]:
            await slot.__aexit__(None, None, None)
        return sizes, usage
    sizes, usage = run(main())
    adaptive = 64 * SchedulerConfig().max_concurrency // 16    # num_ctx for each of max_concurrency
    assert sizes == [adaptive, adaptive, 8]
    assert usage == 6 / 8
