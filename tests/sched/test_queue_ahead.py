"""Requests sent ahead into a backend's own queue are taken back for a more urgent request
that arrives later (priorities hold with queue-ahead on), and never once they started."""
import random
from collections import Counter

from tests.sched.test_scheduler import add, finish, make, started
from velollmd.config import SchedulerConfig
from velollmd.sched.kvblocks import BlockPool
from velollmd.sched.request import RequestStatus
from velollmd.sched.scheduler import Scheduler


def ahead_scheduler(num_backend_slots=1, max_running=2):
    config = SchedulerConfig(block_size=4)
    return Scheduler(config, max_running, BlockPool(64, 4), num_backend_slots=num_backend_slots)


def test_a_more_urgent_request_withdraws_the_lowest_priority_one_sent_ahead():
    sched = ahead_scheduler(num_backend_slots=1, max_running=3)
    add(sched, make("running", priority=5), make("ahead5", priority=5, arrival=1), make("ahead9", priority=9, arrival=2))
    assert [rid for rid, _ in started(sched.schedule(3.0))] == ["running", "ahead5", "ahead9"]
    add(sched, make("urgent", priority=0, arrival=4))
    output = sched.schedule(4.0)
    assert output.preempted == ("ahead9",)
    assert [rid for rid, _ in started(output)] == ["urgent"]
    assert sched.get_request("ahead9").status is RequestStatus.PREEMPTED


def test_streams_may_be_withdrawn_before_their_first_output_but_not_after():
    sched = ahead_scheduler()
    add(sched, make("running"), make("ahead", priority=9, arrival=1, stream=True))
    sched.schedule(1.0)
    sched.get_request("ahead").generating = True          # its first chunk arrived: it started
    add(sched, make("urgent", priority=0, arrival=2))
    assert sched.schedule(2.0).preempted == ()
    sched.get_request("ahead").generating = False
    assert sched.schedule(2.0).preempted == ("ahead",)


def test_equal_or_higher_priority_requests_sent_ahead_stay():
    sched = ahead_scheduler()
    add(sched, make("running", priority=9))
    sched.schedule(0.0)
    add(sched, make("ahead", priority=3, arrival=1))
    sched.schedule(1.0)
    add(sched, make("same", priority=3, arrival=2), make("lower", priority=6, arrival=3))
    output = sched.schedule(2.0)
    assert output.preempted == () and output.scheduled == ()


def test_the_requests_on_the_backends_slots_are_never_withdrawn():
    """The backend runs the first `num_backend_slots` sent, in order; only later ones wait."""
    sched = ahead_scheduler(num_backend_slots=2, max_running=2)
    add(sched, make("a", priority=9), make("b", priority=9, arrival=1))
    sched.schedule(1.0)
    add(sched, make("urgent", priority=0, arrival=2))
    assert sched.schedule(2.0).preempted == ()


def test_when_a_slot_frees_the_oldest_sent_ahead_has_started():
    sched = ahead_scheduler(num_backend_slots=1, max_running=2)
    add(sched, make("first", priority=5), make("second", priority=9, arrival=1))
    sched.schedule(1.0)
    finish(sched, "first", now=2.0)                        # the backend starts "second" now
    add(sched, make("third", priority=9, arrival=2), make("urgent", priority=0, arrival=3))
    output = sched.schedule(3.0)
    assert output.preempted == () and [rid for rid, _ in started(output)] == ["urgent"]


def test_the_running_priority_counts_follow_every_start_and_end():
    """Withdrawal asks the per-priority counts, not the running requests, whether anything
    running could be outranked: the counts must follow starts, forks, finishes, aborts and
    withdrawals exactly, or an urgent request would wait behind one sent ahead."""
    rng = random.Random(7)
    sched = ahead_scheduler(num_backend_slots=2, max_running=6)
    now, serial = 0.0, 0
    for _ in range(2000):
        now += 1.0
        action = rng.random()
        if action < 0.45:
            serial += 1
            add(sched, make(f"r{serial}", priority=rng.randrange(10), arrival=now))
        elif action < 0.6 and sched.running:
            parent = rng.choice(list(sched.running))
            sched.fork_request(parent, [make(f"{parent}-c{serial}", priority=sched.running[parent].priority)], now)
        elif action < 0.8 and sched.running:
            finish(sched, rng.choice(list(sched.running)), now=now)
        elif action < 0.9 and sched.running:
            sched.abort_request(rng.choice(list(sched.running)))
        sched.schedule(now)
        assert sched._running_priorities == Counter(r.priority for r in sched.running.values())
