"""Admission: the asyncio wrapper of a backend's Scheduler, with a plain object as backend."""
import asyncio
from types import SimpleNamespace

import pytest

from tests.aio import run
from velollmd.config import SchedulerConfig
from velollmd.errors import BadRequest, RateLimited, Unavailable
from velollmd.sched.admission import Admission, Preempted
from velollmd.sched.request import Request


def slot_config(**fields) -> SchedulerConfig:
    """Exactly num_slots requests at a backend at once (no requests queued ahead in it)."""
    return SchedulerConfig(backend_queue_per_slot=0, **fields)


def backend(num_slots=1, num_ctx=4096, name="b"):
    return SimpleNamespace(name=name, num_slots=num_slots, slots_source="config", loaded_models=None,
                           context_size=lambda: num_ctx)


def request(rid, priority=5, num_tokens=8, max_tokens=8, stream=False):
    start = sum(map(ord, rid)) * 1000
    return Request(rid, "m", list(range(start, start + num_tokens)), max_tokens,
                   arrival_time=0.0, priority=priority, stream=stream)


async def hold(admission, target, req, started: list, release: asyncio.Event):
    async with admission.slot(target, req):
        started.append(req.request_id)
        await release.wait()


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_waiters_are_admitted_by_priority_when_a_slot_frees():
    async def main():
        admission, target = Admission(slot_config()), backend(num_slots=1)
        started, release = [], asyncio.Event()
        first = asyncio.ensure_future(hold(admission, target, request("first"), started, release))
        await settle()
        low = [asyncio.ensure_future(hold(admission, target, request(f"low{i}", priority=9), started, release))
               for i in range(2)]
        await settle()
        urgent = asyncio.ensure_future(hold(admission, target, request("urgent", priority=0), started, release))
        await settle()
        assert started == ["first"]
        assert admission.stats()["b"]["num_waiting"] == 3
        release.set()
        await asyncio.gather(first, urgent, *low)
        return started, admission.stats()["b"]
    started, stats = run(main())
    assert started == ["first", "urgent", "low0", "low1"]
    assert stats["num_running"] == stats["num_waiting"] == 0 and stats["block_usage"] == 0


def test_by_default_one_request_per_slot_is_sent_ahead_to_wait_in_the_backend():
    async def main():
        admission, target = Admission(SchedulerConfig()), backend(num_slots=2)
        started, release = [], asyncio.Event()
        tasks = [asyncio.ensure_future(hold(admission, target, request(f"r{i}"), started, release))
                 for i in range(5)]
        await settle()
        at_once, stats = list(started), admission.stats()["b"]
        release.set()
        await asyncio.gather(*tasks)
        return at_once, stats, started
    at_once, stats, started = run(main())
    assert at_once == ["r0", "r1", "r2", "r3"]          # 2 slots + 1 ahead per slot
    assert stats["num_slots"] == 2 and stats["num_running"] == 4 and stats["num_waiting"] == 1
    assert started == ["r0", "r1", "r2", "r3", "r4"]


def test_full_queue_is_429_with_retry_after():
    async def main():
        admission = Admission(slot_config(max_queue=1))
        target, started, release = backend(), [], asyncio.Event()
        tasks = [asyncio.ensure_future(hold(admission, target, request(f"r{i}"), started, release))
                 for i in range(2)]
        await settle()
        with pytest.raises(RateLimited) as caught:
            async with admission.slot(target, request("r2")):
                pass
        release.set()
        await asyncio.gather(*tasks)
        return caught.value, admission.stats()["b"]
    error, stats = run(main())
    assert error.status == 429 and int(error.headers["retry-after"]) >= 1
    assert stats["num_rejected"] == 1 and stats["num_admitted"] == 2


def test_waiting_past_queue_timeout_is_503():
    async def main():
        admission = Admission(slot_config(queue_timeout_s=0.05))
        target, started, release = backend(), [], asyncio.Event()
        holder = asyncio.ensure_future(hold(admission, target, request("holder"), started, release))
        await settle()
        with pytest.raises(Unavailable) as caught:
            async with admission.slot(target, request("late")):
                pass
        release.set()
        await holder
        return caught.value, admission.stats()["b"]
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
        admission, target = Admission(slot_config()), backend(num_slots=1)
        started, release = [], asyncio.Event()
        holder = asyncio.ensure_future(hold(admission, target, request("holder"), started, release))
        await settle()
        waiter = asyncio.ensure_future(hold(admission, target, request("waiter"), started, release))
        last = asyncio.ensure_future(hold(admission, target, request("last"), started, release))
        await settle()
        waiter.cancel()                       # a client that leaves while queued
        holder.cancel()                       # a client that leaves while running
        await settle()
        assert started == ["holder", "last"]
        release.set()
        await last
        return admission.stats()["b"], holder.cancelled(), waiter.cancelled()
    stats, holder_cancelled, waiter_cancelled = run(main())
    assert holder_cancelled and waiter_cancelled
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0


def test_token_budget_holds_back_a_request_until_blocks_free():
    async def main():
        # 2 slots but 128 tokens in all: two 100-token requests cannot run together
        admission = Admission(slot_config(block_size=16))
        target, started, release = backend(num_slots=2, num_ctx=64), [], asyncio.Event()
        tasks = [asyncio.ensure_future(hold(admission, target, request(f"r{i}", num_tokens=90), started, release))
                 for i in range(2)]
        await settle()
        seen = list(started)
        release.set()
        await asyncio.gather(*tasks)
        return seen, started
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
        admission = Admission(slot_config(preempt=True))
        target, started, release = backend(num_slots=1), [], asyncio.Event()
        streaming = asyncio.ensure_future(hold(admission, target, request("s", priority=9, stream=True),
                                               started, release))
        await settle()
        urgent = asyncio.ensure_future(hold(admission, target, request("urgent", priority=0), started, release))
        await settle()
        seen = list(started)
        release.set()
        await asyncio.gather(streaming, urgent)
        return seen, admission.stats()["b"]["num_preempted"]
    seen, num_preempted = run(main())
    assert seen == ["s"] and num_preempted == 0
