"""The adaptive concurrency limit, driven by a deterministic simulation (tests/sched/limit_sim.py)."""
import pytest

from tests.sched.limit_sim import degrades_past, queues_past, simulate
from velollmd.sched.limiter import AdaptiveLimit, per_token

SETTLED = 5000                # finished requests before the limit counts as settled


def settled(history: list[int]) -> list[int]:
    return history[SETTLED:]


@pytest.mark.parametrize("initial", [1, 4, 8, 16])
def test_settles_near_the_width_of_a_backend_that_degrades_past_it(initial):
    """Latency doubles past 8 in flight: the limit ends within 25 % of 8 and moves by at most
    +-2 around its settled value."""
    history = simulate(AdaptiveLimit(initial), degrades_past(8), num_clients=32, num_requests=20_000)
    tail = settled(history)
    assert 6 <= min(tail) and max(tail) <= 10
    assert max(tail) - min(tail) <= 4


def test_a_queueing_backend_gets_a_little_queue_ahead_not_the_whole_crowd():
    history = simulate(AdaptiveLimit(8), queues_past(8), num_clients=64, num_requests=20_000)
    assert all(9 <= limit <= 16 for limit in settled(history))


@pytest.mark.parametrize("num_clients", [16, 64, 256])
def test_a_wide_backend_is_never_the_bottleneck(num_clients):
    """20 ms at any concurrency, with 20 % jitter: the limit rises above the client count."""
    history = simulate(AdaptiveLimit(8, max_limit=512), lambda n: 0.020, num_clients=num_clients,
                       num_requests=20_000, jitter=0.2)
    assert min(settled(history)) >= num_clients


def test_an_idle_limit_does_not_drift_upward():
    """Two clients on a wide backend: the limit has no reason to grow past what is used."""
    history = simulate(AdaptiveLimit(8), lambda n: 0.020, num_clients=2, num_requests=5_000)
    assert max(history) == 8


def test_bounds_hold():
    limit = AdaptiveLimit(100, min_limit=2, max_limit=20)
    assert limit.limit == 20
    history = simulate(limit, degrades_past(1), num_clients=64, num_requests=5_000)
    assert min(history) >= 2 and max(history) <= 20


def test_a_backend_that_got_slower_for_good_is_relearnt_from_the_floor():
    """The unloaded latency is learnt again at the minimum limit, so a backend that became
    slower (a bigger model loaded) is not throttled forever."""
    limit = AdaptiveLimit(8)
    simulate(limit, degrades_past(8, base_s=0.020), num_clients=32, num_requests=5_000)
    history = simulate(limit, degrades_past(8, base_s=0.200), num_clients=32, num_requests=20_000)
    assert 6 <= min(settled(history)) and max(settled(history)) <= 10


def test_bad_samples_are_ignored_and_latency_is_per_token():
    limit = AdaptiveLimit(8)
    for value in (0.0, -1.0, float("nan"), float("inf")):
        limit.on_sample(value, 8)
    assert limit.window == []
    assert per_token(2.0, 100) == 0.02 and per_token(2.0, None) == 2.0 and per_token(2.0, 1) == 2.0
