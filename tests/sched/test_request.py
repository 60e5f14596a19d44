"""Request ordering, aging and the status transition table."""
import heapq

import pytest

from velollmd.sched.request import FINISHED, TRANSITIONS, RequestStatus, SchedRequest

S = RequestStatus


def make(request_id, priority=5, arrival=0.0):
    return SchedRequest(request_id, "m", [1, 2, 3], max_tokens=4, arrival_time=arrival,
                        priority=priority)


def test_heap_orders_by_priority_then_arrival_then_id():
    requests = [make("c", 5, 1.0), make("b", 1, 2.0), make("a", 1, 2.0), make("d", 5, 0.5)]
    heap = []
    for r in requests:
        heapq.heappush(heap, r)
    assert [heapq.heappop(heap).request_id for _ in requests] == ["a", "b", "d", "c"]


def test_aging_gains_one_level_per_aging_s_down_to_zero():
    r = make("a", priority=3, arrival=100.0)
    assert [(r.age(100.0 + t, 10.0), r.effective_priority) for t in (5, 10, 29.9, 30, 99)] == \
        [(False, 3), (True, 2), (True, 1), (True, 0), (False, 0)]


def test_aging_counts_the_wait_in_a_queue_before_this_one():
    r = make("a", priority=5, arrival=100.0)
    r.waited_s = 25.0                            # 25 s in the daemon's queue: two levels already
    assert r.next_aging_at(10.0) == 85.0
    assert [(r.age(100.0 + t, 10.0), r.effective_priority) for t in (0, 4.9, 5, 15)] == \
        [(True, 3), (False, 3), (True, 2), (True, 1)]
    assert r.next_aging_at(10.0) == 125.0


def test_priority_out_of_range_is_rejected():
    with pytest.raises(ValueError):
        make("a", priority=10)


@pytest.mark.parametrize("old, new", [
    (S.WAITING, S.RUNNING), (S.RUNNING, S.PREEMPTED), (S.PREEMPTED, S.RUNNING),
    (S.RUNNING, S.FINISHED_STOPPED), (S.RUNNING, S.FINISHED_LENGTH), (S.RUNNING, S.FINISHED_ERROR),
    (S.WAITING, S.FINISHED_TIMED_OUT), (S.PREEMPTED, S.FINISHED_ABORTED)])
def test_legal_transitions(old, new):
    r = make("a")
    r.status = old
    r.set_status(new)
    assert r.status is new


@pytest.mark.parametrize("old, new", [
    (S.WAITING, S.PREEMPTED), (S.WAITING, S.FINISHED_STOPPED), (S.RUNNING, S.WAITING),
    (S.RUNNING, S.FINISHED_TIMED_OUT), (S.FINISHED_STOPPED, S.RUNNING),
    (S.FINISHED_ABORTED, S.FINISHED_ABORTED), (S.PREEMPTED, S.WAITING)])
def test_illegal_transitions_assert(old, new):
    r = make("a")
    r.status = old
    with pytest.raises(AssertionError):
        r.set_status(new)


def test_table_covers_every_status_and_finished_is_terminal():
    assert set(TRANSITIONS) == set(RequestStatus)
    assert all(not TRANSITIONS[s] for s in FINISHED)
    assert S.FINISHED_LENGTH.finish_reason == "length" and S.RUNNING.finish_reason is None
