"""Admission: the asyncio wrapper of a backend's Scheduler, with a plain object as backend."""
import asyncio
from types import SimpleNamespace

import pytest

from tests.aio import run
from velollmd.config import SchedulerConfig
from velollmd.errors import BadRequest, RateLimited, Unavailable
from velollmd.sched.admission import Admission, Preempted
from velollmd.sched.request import SchedRequest


def slot_config(**fields) -> SchedulerConfig:
    """Exactly num_slots requests at a backend at once (no requests queued ahead in it)."""
    return SchedulerConfig(backend_queue_per_slot=0, **fields)


def backend(num_slots=1, num_ctx=4096, name="b"):
    return SimpleNamespace(name=name, num_slots=num_slots, slots_source="config", loaded_models=None,
                           context_size=lambda: num_ctx)


def request(rid, priority=5, num_tokens=8, max_tokens=8, stream=False):
    start = sum(map(ord, rid)) * 1000
    return SchedRequest(rid, "m", list(range(start, start + num_tokens)), max_tokens,
                        arrival_time=0.0, priority=priority, stream=stream)


async def hold(admission, target, req, started: list, release: asyncio.Event):
    async with admission.slot(target, req):
        started.append(req.request_id)
        await release.wait()


class Clients:
    """Clients of one backend behind an Admission: each holds its admitted slot until
    `release` is set; `started` names them in the order they were admitted."""

    def __init__(self, config: SchedulerConfig, **backend_fields):
        self.admission, self.target = Admission(config), backend(**backend_fields)
        self.started: list[str] = []
        self.release = asyncio.Event()

    def send(self, rid: str, **request_fields) -> asyncio.Future:
        req = request(rid, **request_fields)
        return asyncio.ensure_future(hold(self.admission, self.target, req, self.started, self.release))

    def stats(self) -> dict:
        return self.admission.stats()["b"]


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_waiters_are_admitted_by_priority_when_a_slot_frees():
    async def main():
        clients = Clients(slot_config(), num_slots=1)
        first = clients.send("first")
        await settle()
        low = [clients.send(f"low{i}", priority=9) for i in range(2)]
        await settle()
        urgent = clients.send("urgent", priority=0)
        await settle()
        assert clients.started == ["first"]
        assert clients.stats()["num_waiting"] == 3
        clients.release.set()
        await asyncio.gather(first, urgent, *low)
        return clients.started, clients.stats()
    started, stats = run(main())
    assert started == ["first", "urgent", "low0", "low1"]
    assert stats["num_running"] == stats["num_waiting"] == 0 and stats["block_usage"] == 0


def test_by_default_one_request_per_slot_is_sent_ahead_to_wait_in_the_backend():
    async def main():
        clients = Clients(SchedulerConfig(), num_slots=2)
        tasks = [clients.send(f"r{i}") for i in range(5)]
        await settle()
        at_once, stats = list(clients.started), clients.stats()
        clients.release.set()
        await asyncio.gather(*tasks)
        return at_once, stats, clients.started
    at_once, stats, started = run(main())
    assert at_once == ["r0", "r1", "r2", "r3"]          # 2 slots + 1 ahead per slot
    assert stats["num_slots"] == 2 and stats["num_running"] == 4 and stats["num_waiting"] == 1
    assert started == ["r0", "r1", "r2", "r3", "r4"]


def test_full_queue_is_429_with_retry_after():
    async def main():
        clients = Clients(slot_config(max_queue=1))
        tasks = [clients.send(f"r{i}") for i in range(2)]
        await settle()
        with pytest.raises(RateLimited) as caught:
            async with clients.admission.slot(clients.target, request("r2")):
                pass
        clients.release.set()
        await asyncio.gather(*tasks)
        return caught.value, clients.stats()
    error, stats = run(main())
    assert error.status == 429 and int(error.headers["retry-after"]) >= 1
    assert stats["num_rejected"] == 1 and stats["num_admitted"] == 2


def test_waiting_past_queue_timeout_is_503():
    async def main():
        clients = Clients(slot_config(queue_timeout_s=0.05))
        holder = clients.send("holder")
        await settle()
        with pytest.raises(Unavailable) as caught:
            async with clients.admission.slot(clients.target, request("late")):
                pass
        clients.release.set()
        await holder
        return caught.value, clients.stats()
    error, stats = run(main())
    assert error.status == 503 and error.code == "queue_timeout"
    assert stats["num_timed_out"] == 1 and stats["num_waiting"] == 0


def test_a_prompt_larger_than_the_whole_budget_is_400():
    async def main():
        admission = Admission(slot_config(block_size=16))
        async with admission.slot(backend(num_slots=1, num_ctx=64), request("big", num_tokens=100)):
            pass
    with pytest.raises(BadRequest):
        run(main())


def test_cancelling_a_holder_or_a_waiter_frees_its_place():
    async def main():
        clients = Clients(slot_config(), num_slots=1)
        holder = clients.send("holder")
        await settle()
        waiter, last = clients.send("waiter"), clients.send("last")
        await settle()
        waiter.cancel()                       # a client that leaves while queued
        holder.cancel()                       # a client that leaves while running
        await settle()
        assert clients.started == ["holder", "last"]
        clients.release.set()
        await last
        return clients.stats(), holder.cancelled(), waiter.cancelled()
    stats, holder_cancelled, waiter_cancelled = run(main())
    assert holder_cancelled and waiter_cancelled
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0


def test_token_budget_holds_back_a_request_until_blocks_free():
    async def main():
        # 2 slots but 128 tokens in all: two 100-token requests cannot run together
        clients = Clients(slot_config(block_size=16), num_slots=2, num_ctx=64)
        tasks = [clients.send(f"r{i}", num_tokens=90) for i in range(2)]
        await settle()
        seen = list(clients.started)
        clients.release.set()
        await asyncio.gather(*tasks)
        return seen, clients.started
    seen, started = run(main())
    assert seen == ["r0"] and started == ["r0", "r1"]


def test_preempt_cancels_a_low_priority_non_streaming_request_and_requeues_it():
    async def main():
        admission = Admission(slot_config(preempt=True))
        target, log, release = backend(num_slots=1), [], asyncio.Event()

        async def victim():
            runs = 0
            while True:
                try:
                    async with admission.slot(target, req):
                        runs += 1
                        log.append(f"victim run {runs}")
                        await release.wait()
                        return runs
                except Preempted:
                    log.append("victim preempted")
        req = request("victim", priority=9)
        task = asyncio.ensure_future(victim())
        await settle()
        urgent = asyncio.ensure_future(hold(admission, target, request("urgent", priority=0), log, release))
        await settle()
        release.set()
        runs = await task
        await urgent
        return log, runs, admission.stats()["b"]
    log, runs, stats = run(main())
    assert log == ["victim run 1", "victim preempted", "urgent", "victim run 2"]
    assert runs == 2 and stats["num_preempted"] == 1


def test_streaming_requests_are_never_preempted():
    async def main():
        clients = Clients(slot_config(preempt=True), num_slots=1)
        streaming = clients.send("s", priority=9, stream=True)
        await settle()
        urgent = clients.send("urgent", priority=0)
        await settle()
        seen = list(clients.started)
        clients.release.set()
        await asyncio.gather(streaming, urgent)
        return seen, clients.stats()["num_preempted"]
    seen, num_preempted = run(main())
    assert seen == ["s"] and num_preempted == 0


def test_a_slot_ended_well_is_given_back_after_the_task_step_that_left_it():
    """The bookkeeping of a request that ended well waits for a callback of the same loop
    turn (its task writes the answer first); then the slot goes to the waiter. One that
    failed gives its slot back at once."""
    async def main():
        admission, target = Admission(slot_config()), backend(num_slots=1)
        async with admission.slot(target, request("r1")):
            pass
        left = admission.stats()["b"]["num_running"]
        await asyncio.sleep(0)
        after = admission.stats()["b"]["num_running"]
        with pytest.raises(ValueError):
            async with admission.slot(target, request("r2")):
                raise ValueError("backend answer unreadable")
        failed = admission.stats()["b"]["num_running"]
        first = asyncio.ensure_future(hold_until(admission, target, request("r3")))
        await settle()
        waiter = asyncio.ensure_future(hold_until(admission, target, request("r4")))
        await settle()
        waiting = admission.stats()["b"]["num_waiting"]
        first.cancel()                      # r3 leaves by cancel: r4 is admitted
        await settle()
        assert (left, after, failed, waiting) == (1, 0, 0, 1)
        assert admission.stats()["b"]["num_running"] == 1 and not waiter.done()
        waiter.cancel()
        await settle()
        await admission.drained(target)
    run(main())


async def hold_until(admission, target, req):
    async with admission.slot(target, req):
        await asyncio.Event().wait()


def test_a_request_that_finds_a_free_slot_is_admitted_without_a_loop_turn_or_a_grant():
    """Nothing waiting and room to start: the slot is taken in the first step of entering
    (no future to wait on); a request that must wait still queues for its grant."""
    async def main():
        admission, target = Admission(slot_config()), backend(num_slots=1)
        entering = admission.slot(target, request("r1"))
        step = entering.__aenter__()
        with pytest.raises(StopIteration) as entered:
            step.send(None)
        queue = admission.queues["b"]
        granted = (entered.value.value.request_id, entered.value.value.slot, dict(queue.grants))
        waiter = asyncio.ensure_future(hold_until(admission, target, request("r2")))
        await settle()
        waited = (list(queue.grants), admission.stats()["b"]["num_waiting"])
        await entering.__aexit__(None, None, None)
        await settle()
        admitted = admission.stats()["b"]["num_admitted"]
        waiter.cancel()
        await settle()
        return granted, waited, admitted
    granted, waited, admitted = run(main())
    assert granted == ("r1", 0, {}) and waited == (["r2"], 1) and admitted == 2


def test_on_admitted_gets_the_wait_and_a_failure_there_gives_the_slot_back():
    async def main():
        admission, target = Admission(slot_config()), backend(num_slots=1)
        waits = []
        async with admission.slot(target, request("r1"), lambda b, seconds: waits.append((b, seconds))):
            inside = list(waits)

        def broken(b, seconds):
            raise RuntimeError("metrics gone")
        with pytest.raises(RuntimeError):
            async with admission.slot(target, request("r2"), broken):
                pytest.fail("the block must not run")
        stats = admission.stats()["b"]
        return inside, stats["num_running"], stats["num_admitted"]
    inside, num_running, num_admitted = run(main())
    assert len(inside) == 1 and inside[0][0].name == "b" and inside[0][1] >= 0
    assert num_running == 0 and num_admitted == 2
