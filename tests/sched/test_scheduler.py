"""Scheduler: ordering, slots and blocks, aging, model grouping, 429, 503, preemption."""
import zlib

import pytest

from velollmd.config import SchedulerConfig
from velollmd.errors import BadRequest, RateLimited
from velollmd.sched.kvblocks import BlockPool
from velollmd.sched.request import RequestStatus, SchedRequest
from velollmd.sched.scheduler import MAX_BUDGET_BLOCKS, RunnerOutput, Scheduler, queue_timeout_error

S = RequestStatus


def make(request_id, priority=5, arrival=0.0, model="m", num_tokens=4, max_tokens=4,
         stream=False, first_token=None):
    start = zlib.crc32(request_id.encode()) % 10_000 * 100 if first_token is None else first_token
    return SchedRequest(request_id, model, list(range(start, start + num_tokens)), max_tokens,
                        arrival_time=arrival, priority=priority, stream=stream)


def scheduler(num_slots=4, num_blocks=64, **config):
    config = SchedulerConfig(block_size=4, **config)
    return Scheduler(config, num_slots, BlockPool(num_blocks, config.block_size))


def add(sched, *requests):
    for r in requests:
        sched.add_request(r, now=r.arrival_time)


def started(output):
    return [(s.request_id, s.slot) for s in output.scheduled]


def finish(sched, *request_ids, now=0.0):
    return sched.update_from_output(
        RunnerOutput(finished={r: S.FINISHED_STOPPED for r in request_ids}), now)


def test_schedules_in_priority_arrival_id_order_on_lowest_slots():
    sched = scheduler(num_slots=3)
    add(sched, make("c", 5, 1.0), make("b", 1, 2.0), make("a", 1, 2.0), make("d", 5, 0.5))
    out = sched.schedule(now=3.0)
    assert started(out) == [("a", 0), ("b", 1), ("d", 2)]
    assert out.running == ("a", "b", "d")
    assert [r.request_id for r in sched.waiting] == ["c"]


def test_waits_for_a_free_slot_and_reuses_it():
    sched = scheduler(num_slots=2)
    add(sched, make("a", arrival=0), make("b", arrival=1), make("c", arrival=2))
    assert started(sched.schedule(3.0)) == [("a", 0), ("b", 1)]
    assert started(sched.schedule(4.0)) == []
    assert [r.request_id for r in finish(sched, "a")] == ["a"]
    assert sched.get_request("a") is None and sched.num_free_slots == 1
    assert started(sched.schedule(5.0)) == [("c", 0)]


def test_finish_request_retires_one_as_update_from_output_does():
    sched = scheduler(num_slots=1)
    add(sched, make("a", arrival=0), make("b", arrival=1))
    assert started(sched.schedule(2.0)) == [("a", 0)]
    assert sched.finish_request("b", S.FINISHED_STOPPED, 3.0) is None     # waiting, not running
    done = sched.finish_request("a", S.FINISHED_LENGTH, 3.0)
    assert done.request_id == "a" and done.status is S.FINISHED_LENGTH and done.slot is None
    assert sched.get_request("a") is None and "a" not in sched.pool
    assert started(sched.schedule(4.0)) == [("b", 0)]


def test_start_at_once_admits_as_add_request_then_schedule_does():
    queued, at_once = scheduler(num_slots=2, num_blocks=8), scheduler(num_slots=2, num_blocks=8)
    for sched in (queued, at_once):                 # a cached prefix of 8 tokens, slot 1 busy
        add(sched, make("a", num_tokens=9, first_token=0), make("busy", num_tokens=4))
        sched.schedule(0.0)
        finish(sched, "a")
    add(queued, make("b", num_tokens=9, first_token=0))
    expected = queued.schedule(1.0).scheduled[0]
    got = at_once.start_at_once(make("b", num_tokens=9, first_token=0), 1.0)
    assert got == expected and got.slot == 0 and got.num_cached_tokens == 8
    b = at_once.get_request("b")
    assert b.status is S.RUNNING and b.queued_at == b.started_at == 1.0 and not at_once.waiting
    assert list(at_once.running) == list(queued.running)
    assert at_once.start_at_once(make("c"), 2.0) is None          # no free slot
    finish(at_once, "busy")
    assert at_once.start_at_once(make("d", num_tokens=12, max_tokens=8), 2.0) is None  # 5 blocks of 4
    add(at_once, make("e"))
    assert at_once.start_at_once(make("f"), 2.0) is None          # "e" waits ahead of it
    assert [at_once.get_request(r) for r in "cdf"] == [None, None, None]
    assert "d" not in at_once.pool and "f" not in at_once.pool
    with pytest.raises(BadRequest):
        scheduler(num_blocks=4).start_at_once(make("g", num_tokens=12, max_tokens=8), 0.0)


def test_max_queue_zero_starts_a_request_on_a_free_slot_and_refuses_one_that_would_wait():
    """max_queue = 0 means no waiting (as vLLM/TGI users read a queue size), not no requests."""
    sched = scheduler(num_slots=1, max_queue=0)
    assert sched.start_at_once(make("a"), 0.0).slot == 0
    assert sched.start_at_once(make("b"), 0.0) is None            # no free slot: it would wait
    with pytest.raises(RateLimited):
        sched.add_request(make("b"), 0.0)
    assert sched.get_request("b") is None and list(sched.running) == ["a"]


def test_a_backends_scheduler_accounts_blocks_without_reading_back_block_tables():
    sched = Scheduler.for_backend(SchedulerConfig(block_size=4), 2, num_ctx=8)    # 4 blocks
    add(sched, make("a", num_tokens=9, max_tokens=3), make("b", num_tokens=4, max_tokens=4))
    out = sched.schedule(0.0)
    assert started(out) == [("a", 0)] and out.scheduled[0].block_table == ()
    assert sched.pool.block_table("a") == [0, 1, 2]      # held: "b" (2 blocks) waits for them
    finish(sched, "a")
    assert started(sched.schedule(1.0)) == [("b", 0)]


def test_a_backend_with_a_huge_context_and_a_wide_limit_gets_a_capped_budget():
    """An OpenAI-compatible backend with num_ctx = 10M tokens and its adaptive limit up to 256:
    160M blocks of accounting arrays (GBs) before the cap; past 2**31 an OverflowError on every
    request and on /health (tests/test_config.py: num_ctx = 10**12)."""
    sched = Scheduler.for_backend(SchedulerConfig(), 8, num_ctx=10_000_000, max_limit=256)
    assert sched.pool.num_blocks == MAX_BUDGET_BLOCKS
    add(sched, make("a", num_tokens=100_000, max_tokens=10))
    assert started(sched.schedule(0.0)) == [("a", 0)]


def test_statuses_hash_by_identity_and_keep_their_transitions():
    assert {status: status.value for status in S}[S.RUNNING] == "running"
    assert S.FINISHED_STOPPED.is_finished and not S.WAITING.is_finished
    request = make("a")
    request.set_status(S.RUNNING)
    with pytest.raises(AssertionError):
        request.set_status(S.WAITING)


def test_waits_for_blocks_and_the_head_is_not_overtaken():
    sched = scheduler(num_slots=4, num_blocks=5)  # 20 token slots
    add(sched, make("a", num_tokens=8, max_tokens=4, arrival=0),    # 3 blocks
        make("b", num_tokens=8, max_tokens=4, arrival=1),           # 3 blocks: no fit
        make("c", num_tokens=2, max_tokens=2, arrival=2))           # 1 block: would fit
    out = sched.schedule(3.0)
    assert started(out) == [("a", 0)]
    assert out.scheduled[0].block_table == (0, 1, 2)
    finish(sched, "a")
    assert started(sched.schedule(4.0)) == [("b", 0), ("c", 1)]


def test_a_repeated_prompt_is_admitted_with_its_cached_prefix():
    sched = scheduler()
    add(sched, make("a", num_tokens=9, first_token=0))
    sched.schedule(0.0)
    sched.update_from_output(RunnerOutput(new_token_ids={"a": [7, 7, 7]}), 1.0)
    assert sched.pool.num_tokens("a") == 12
    finish(sched, "a", now=1.0)
    add(sched, make("b", num_tokens=9, first_token=0, arrival=2.0))
    assert sched.schedule(2.0).scheduled[0].num_cached_tokens == 8


@pytest.mark.parametrize("now,first,low_priority", [
    (40.0, "low", 5),          # low: 9 - 4 levels = 5, ties high, arrived first
    (39.0, "high", 6),         # without enough waiting low is only at 9 - 3 = 6: high goes first
])
def test_aging_raises_a_waiting_request_one_level_per_aging_s(now, first, low_priority):
    sched = scheduler(num_slots=1, aging_s=10.0)
    add(sched, make("busy", 0, 0.0))
    sched.schedule(0.0)
    add(sched, make("low", 9, 0.0), make("high", 5, 39.0))
    finish(sched, "busy", now=now)
    assert started(sched.schedule(now)) == [(first, 0)]
    assert sched.get_request("low").effective_priority == low_priority
    assert sched.get_request("high").effective_priority == 5


def test_equal_priority_prefers_the_loaded_model():
    sched = scheduler(num_slots=1)
    add(sched, make("first", model="llama", arrival=0.0))
    sched.schedule(0.0)
    add(sched, make("other", model="qwen", arrival=1.0), make("same", model="llama", arrival=2.0),
        make("urgent", 4, 3.0, model="qwen"))
    finish(sched, "first", now=4.0)
    assert started(sched.schedule(4.0)) == [("urgent", 0)]    # priority beats grouping
    finish(sched, "urgent", now=5.0)                          # qwen is now the loaded model
    sched.set_loaded_models(["llama"])
    assert sched.loaded_models == {"llama", "qwen"}
    assert started(sched.schedule(5.0)) == [("other", 0)]     # qwen, the last model, and first


def test_grouping_picks_the_loaded_model_over_an_earlier_arrival():
    sched = scheduler(num_slots=1)
    sched.set_loaded_models(["llama"])
    add(sched, make("qwen-1", model="qwen", arrival=0.0), make("llama-1", model="llama",
                                                                arrival=1.0))
    assert started(sched.schedule(2.0)) == [("llama-1", 0)]


def test_full_queue_raises_429_with_retry_after():
    sched = scheduler(max_queue=2)
    add(sched, make("a"), make("b"))
    with pytest.raises(RateLimited) as info:
        sched.add_request(make("c"), now=0.0)
    assert info.value.status == 429
    assert int(info.value.headers["retry-after"]) >= 1
    assert sched.get_request("c") is None


def test_a_request_larger_than_the_budget_is_a_400():
    sched = scheduler(num_blocks=4)
    with pytest.raises(BadRequest):
        sched.add_request(make("a", num_tokens=12, max_tokens=8), now=0.0)


def test_requests_waiting_past_queue_timeout_are_returned_as_timed_out():
    sched = scheduler(num_slots=1, queue_timeout_s=5.0)
    add(sched, make("busy", arrival=0.0), make("a", arrival=1.0), make("b", arrival=3.0))
    sched.schedule(1.0)
    out = sched.schedule(6.5)
    assert out.timed_out == ("a",) and out.scheduled == ()
    request_a = sched.get_request("a")
    assert request_a is None and [r.request_id for r in sched.waiting] == ["b"]
    assert queue_timeout_error(make("a")).status == 503


def test_a_request_that_waited_in_a_queue_before_gets_what_queue_timeout_s_has_left():
    """The engine's own queue: a request that waited 4 of 5 s in the daemon's queue expires 1 s
    after it came, before one that came earlier with nothing waited (the expiry order is when
    each wait began, not when it came here); a preemption starts a new wait of 5 s."""
    sched = scheduler(num_slots=1, queue_timeout_s=5.0)
    waited = make("waited", arrival=1.0)
    waited.waited_s = 4.0
    add(sched, make("busy", arrival=0.0), make("fresh", arrival=0.5), waited)
    assert started(sched.schedule(1.0)) == [("busy", 0)]
    assert sched.schedule(2.0).timed_out == ()
    assert sched.schedule(2.01).timed_out == ("waited",)
    assert sched.schedule(5.5).timed_out == () and sched.schedule(5.51).timed_out == ("fresh",)


def test_a_preempted_request_that_had_waited_before_waits_queue_timeout_s_again():
    sched = scheduler(num_slots=1, preempt=True, queue_timeout_s=5.0)
    first = make("a", 7, 0.0)
    first.waited_s = 4.5
    add(sched, first)
    sched.schedule(0.0)
    add(sched, make("vip", 0, 1.0))
    assert sched.schedule(1.0).preempted == ("a",)
    assert sched.schedule(6.0).timed_out == () and sched.schedule(6.01).timed_out == ("a",)


def test_a_request_that_waited_in_a_queue_before_is_aged_by_that_wait_too():
    """The engine's queue after the daemon's: a priority-9 request that waited 30 s there ranks
    as 6 on arrival, ahead of a priority-7 request that just came (aging_s 10 s)."""
    sched = scheduler(num_slots=1, aging_s=10.0)
    waited = make("waited", 9, 1.0)
    waited.waited_s = 30.0
    add(sched, make("busy", 0, 0.0), make("fresh", 7, 0.5), waited)
    sched.schedule(1.0)
    assert sched.get_request("waited").effective_priority == 6
    finish(sched, "busy", now=1.5)
    assert started(sched.schedule(1.5)) == [("waited", 0)]


def test_aging_is_applied_when_due_even_after_many_quiet_schedules():
    sched = scheduler(num_slots=1, aging_s=10.0)
    add(sched, make("busy", 0, 0.0), make("low", 9, 0.0))
    for tick in range(0, 40):                  # nothing is due before 10 s, then every 10 s
        sched.schedule(float(tick))
    assert sched.get_request("low").effective_priority == 6
    sched.schedule(45.0)
    assert sched.get_request("low").effective_priority == 5


def test_a_preempted_request_times_out_from_its_requeue_once():
    sched = scheduler(num_slots=1, preempt=True, queue_timeout_s=5.0)
    add(sched, make("a", 7, 0.0))
    sched.schedule(0.0)                         # a runs, so its first wait is over
    add(sched, make("vip", 0, 4.0))
    assert sched.schedule(4.0).preempted == ("a",)  # a waits again from 4.0
    assert sched.schedule(8.0).timed_out == ()
    out = sched.schedule(9.5)
    assert out.timed_out == ("a",) and sched.get_request("a") is None
    assert sched.schedule(20.0).timed_out == ()


def test_abort_waiting_and_running_requests():
    sched = scheduler(num_slots=1)
    add(sched, make("run"), make("wait", arrival=1.0))
    sched.schedule(1.0)
    running, waiting = sched.abort_request("run"), sched.abort_request("wait")
    assert running.status is waiting.status is S.FINISHED_ABORTED
    assert sched.num_free_slots == 1 and sched.pool.num_free_blocks == 64
    assert sched.abort_request("run") is None and sched.waiting == []


def preempt_setup(preempt=True, stream=(False, False), priorities=(3, 7)):
    sched = scheduler(num_slots=2, preempt=preempt)
    add(sched, make("a", priorities[0], 0.0, stream=stream[0]),
        make("b", priorities[1], 1.0, stream=stream[1]))
    sched.schedule(1.0)
    sched.update_from_output(RunnerOutput(new_token_ids={"a": [1], "b": [2]}), 2.0)
    add(sched, make("vip", 0, 3.0))
    return sched


def test_priority_zero_preempts_the_lowest_priority_non_streaming_request():
    sched = preempt_setup()
    out = sched.schedule(3.0)
    assert out.preempted == ("b",) and started(out) == [("vip", 1)]
    victim = sched.get_request("b")
    assert victim.status is S.PREEMPTED and victim.output_token_ids == []
    assert victim.num_preemptions == 1 and victim.slot is None
    finish(sched, "vip", now=4.0)
    assert started(sched.schedule(4.0)) == [("b", 1)]
    assert sched.get_request("b").status is S.RUNNING


def test_streaming_requests_are_never_preempted():
    sched = preempt_setup(stream=(False, True))
    assert sched.schedule(3.0).preempted == ("a",)
    sched = preempt_setup(stream=(True, True))
    out = sched.schedule(3.0)
    assert out.preempted == () and out.scheduled == ()


def test_no_preemption_unless_enabled_or_for_priority_zero():
    assert preempt_setup(preempt=False).schedule(3.0).preempted == ()
    sched = scheduler(num_slots=1, preempt=True)
    add(sched, make("a", 7, 0.0), make("b", 1, 1.0))
    out = sched.schedule(1.0)
    assert out.preempted == () and started(out) == [("b", 0)]  # b came first by priority
    assert sched.schedule(2.0).preempted == ()


def test_engine_mode_grows_blocks_and_preempts_when_they_run_out():
    config = SchedulerConfig(block_size=4)
    sched = Scheduler(config, 2, BlockPool(2, 4), reserve_output=False)
    add(sched, make("a", num_tokens=4, max_tokens=100))
    assert sched.schedule(0.0).scheduled[0].block_table == (0,)
    sched.update_from_output(RunnerOutput(new_token_ids={"a": [1, 2, 3, 4]}), 1.0)
    assert sched.pool.block_table("a") == [0, 1]
    sched.update_from_output(RunnerOutput(new_token_ids={"a": [5]}), 2.0)
    request = sched.get_request("a")
    assert request.status is S.PREEMPTED and request.output_token_ids == [1, 2, 3, 4, 5]


def test_fork_request_shares_the_parents_blocks_one_free_slot_per_child():
    sched = Scheduler(SchedulerConfig(block_size=4), 3, BlockPool(16, 4), reserve_output=False)
    parent = make("p", num_tokens=6, max_tokens=8, stream=True)
    add(sched, parent)
    sched.schedule(now=0.0)
    table = sched.pool.block_table("p")
    children = [SchedRequest(f"p/{i}", "m", parent.prompt_token_ids, 8, 0.0, stream=True) for i in range(3)]
    started_children = sched.fork_request("p", children, now=1.0)
    assert [c.request_id for c in started_children] == ["p/0", "p/1"]      # two slots were free
    assert sorted(c.slot for c in started_children) == [1, 2] and sched.num_free_slots == 0
    assert all(sched.pool.block_table(c.request_id) == table for c in started_children)
    assert [sched.pool.ref_cnt(b) for b in table] == [3, 3]
    assert children[2].status is S.WAITING and "p/2" not in sched.pool
    sched.update_from_output(RunnerOutput({"p": [1], "p/0": [2], "p/1": [3]}), now=2.0)
    assert len(sched.pool.pop_copies()) == 2                               # the shared partial block
    finish(sched, "p", "p/0", "p/1")
    assert sched.pool.num_free_blocks == 16 and not sched.running
