"""Per-key limits on a fake clock: exact Retry-After for rpm, rolling token windows, reloads."""
import pytest

from velollmd.errors import RateLimited
from velollmd.sched.keylimits import KeyLedger, KeyLimits, RequestWindow, TokenWindow


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def refusal(ledger: KeyLedger, name: str) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        ledger.admit(name)
    return info.value


def test_the_sixth_request_in_a_minute_waits_until_the_first_slot_frees():
    clock = Clock(1000.0)
    ledger = KeyLedger(clock)
    ledger.configure({"alice": KeyLimits(rpm=5), "bob": KeyLimits()})
    for t in (1000.0, 1010.0, 1020.0, 1030.0, 1040.0):
        clock.now = t
        ledger.admit("alice")
    clock.now = 1045.2
    error = refusal(ledger, "alice")
    assert (error.status, error.code, error.headers["retry-after"]) == (429, "rate_limit_exceeded", "15")
    assert "alice" in error.message and "requests per minute (limit 5)" in error.message
    ledger.admit("bob")                                   # other keys are unaffected
    clock.now = 1059.9
    assert refusal(ledger, "alice").headers["retry-after"] == "1"     # 0.1 s: rounded up
    clock.now = 1060.0
    ledger.admit("alice")
    clock.now = 1061.0
    assert refusal(ledger, "alice").headers["retry-after"] == "9"     # now 1010's slot is the oldest
    [alice] = [u for u in ledger.usage() if u["name"] == "alice"]
    assert alice["requests"] == 6 and alice["rate_limited"]["requests"] == 3


def test_a_request_window_keeps_only_what_its_limit_needs():
    window = RequestWindow(2)
    for t in (0.0, 1.0, 2.0, 3.0):
        window.add(t)
    assert list(window.times) == [2.0, 3.0]
    assert window.wait(30.0) == 32.0 and window.wait(62.0) == 0.0
    assert list(window.resized(1).times) == [3.0] and list(window.resized(5).times) == [2.0, 3.0]


def test_token_window_rolls_bucket_by_bucket():
    window = TokenWindow(60.0, 60)                        # 1 s buckets
    window.add(100.5, 40)
    window.add(130.0, 30)
    assert window.used(159.9) == 70
    assert window.wait(159.9, 50) == pytest.approx(0.1)   # 100's bucket leaves at 160
    assert window.wait(159.9, 80) == 0.0
    assert window.used(160.0) == 30 and window.wait(160.0, 50) == 0.0
    assert window.wait(160.0, 30) == pytest.approx(30.0)  # 130's bucket leaves at 190
    assert window.used(190.0) == 0
    window.add(10_000.0, 5)                               # a jump past the whole window
    assert window.used(10_000.0) == 5 and window.total == sum(window.buckets)


def test_token_budgets_count_usage_and_refuse_the_next_request():
    clock = Clock(0.0)
    ledger = KeyLedger(clock)
    ledger.configure({"alice": KeyLimits(tpm=100, tokens_per_day=250)})
    ledger.admit("alice")
    ledger.record_usage("alice", {"prompt_tokens": 70, "completion_tokens": 40, "total_tokens": 110})
    clock.now = 20.0
    error = refusal(ledger, "alice")                      # 110 >= 100: the next waits for the minute
    assert error.headers["retry-after"] == "40" and "tokens per minute (limit 100)" in error.message
    clock.now = 61.0
    ledger.admit("alice")
    ledger.record_usage("alice", {"prompt_tokens": 90, "completion_tokens": 40})
    clock.now = 200.0
    ledger.admit("alice")
    ledger.record_usage("alice", {"prompt_tokens": 10, "completion_tokens": 10})
    clock.now = 300.0
    error = refusal(ledger, "alice")                      # 260 tokens today >= 250
    assert "tokens per day (limit 250)" in error.message
    assert int(error.headers["retry-after"]) == 86400 - 300     # the first minute's 110 leave at 86400 s
    clock.now = 86400.0 + 120.0                           # the first two answers left the day
    ledger.admit("alice")
    [alice] = ledger.usage()
    assert (alice["prompt_tokens"], alice["completion_tokens"], alice["requests"]) == (170, 90, 4)
    assert alice["window"] == {"tokens_last_minute": 0, "tokens_last_day": 20}


def test_usage_ignores_junk_counts_and_unknown_names():
    ledger = KeyLedger(Clock())
    ledger.configure({"alice": KeyLimits()})
    ledger.record_usage("alice", {"prompt_tokens": -5, "completion_tokens": "7"})
    ledger.record_usage("alice", None)
    ledger.record_usage("", {"prompt_tokens": 5})
    ledger.admit("")                                      # no key: nothing to account
    ledger.record_cache_hit("nobody")
    assert [(u["prompt_tokens"], u["completion_tokens"]) for u in ledger.usage()] == [(0, 0)]


def test_reconfigure_keeps_accounts_of_names_that_stay():
    clock = Clock(0.0)
    ledger = KeyLedger(clock)
    ledger.configure({"alice": KeyLimits(rpm=3), "bob": KeyLimits()})
    for _ in range(3):
        ledger.admit("alice")
    ledger.record_usage("alice", {"prompt_tokens": 5, "completion_tokens": 5})
    ledger.configure({"alice": KeyLimits(rpm=3, tpm=1000), "carol": KeyLimits()})
    assert refusal(ledger, "alice").headers["retry-after"] == "60"   # its window came along
    ledger.configure({"alice": KeyLimits(rpm=4)})
    ledger.admit("alice")                                            # a higher limit: room at once
    ledger.configure({"alice": KeyLimits()})
    ledger.admit("alice")
    [alice] = ledger.usage()
    assert (alice["requests"], alice["prompt_tokens"], alice["limits"]["rpm"]) == (5, 5, 0)


def restarted(state: dict, limits: dict, monotonic: float, wall: float) -> KeyLedger:
    """A new ledger (another process: its monotonic clock elsewhere) that took `state` back."""
    ledger = KeyLedger(Clock(monotonic), Clock(wall))
    ledger.configure(limits)
    assert ledger.restore(state) == len(set(limits) & set(state["keys"]))
    return ledger


def test_windows_outlive_a_restart_aged_by_the_wall_clock():
    clock, wall = Clock(1000.0), Clock(1_700_000_000.0)
    limits = {"carol": KeyLimits(rpm=2, tpm=50, tokens_per_day=60), "gone": KeyLimits(rpm=1)}
    ledger = KeyLedger(clock, wall)
    ledger.configure(limits)
    generation = ledger.generation
    for tokens in (30, 35):
        ledger.admit("carol")
        ledger.record_usage("carol", {"prompt_tokens": tokens, "completion_tokens": 0})
        clock.now += 10
    assert ledger.generation == generation + 4                   # each request and each usage
    state = ledger.windows()
    # 5 s later, in a process whose monotonic clock restarted near 0; "gone" is no longer configured
    after = restarted(state, {"carol": limits["carol"]}, 3.0, wall.now + 5)
    message = refusal(after, "carol").message
    assert all(limit in message for limit in ("requests per minute (limit 2)", "tokens per minute (limit 50)",
                                              "tokens per day (limit 60)"))
    [usage] = after.usage()
    assert usage["window"] == {"tokens_last_minute": 65, "tokens_last_day": 65} and usage["requests"] == 0
    # the same file read a minute later: the minute windows are empty, the day's is still over
    later = restarted(state, {"carol": limits["carol"]}, 3.0, wall.now + 65)
    assert "tokens per day (limit 60)" in refusal(later, "carol").message
    assert later.usage()[0]["window"] == {"tokens_last_minute": 0, "tokens_last_day": 65}
    # and a day later nothing is left
    expired = restarted(state, {"carol": limits["carol"]}, 3.0, wall.now + 86400 + 61)
    expired.admit("carol")
    assert expired.usage()[0]["window"] == {"tokens_last_minute": 0, "tokens_last_day": 0}


def test_a_restored_token_bucket_lets_go_within_one_bucket_of_when_it_would_have():
    clock, wall = Clock(1000.5), Clock(5000.0)
    ledger = KeyLedger(clock, wall)
    ledger.configure({"k": KeyLimits(tokens_per_day=10)})
    ledger.record_usage("k", {"prompt_tokens": 10})
    state = ledger.windows()
    assert state["keys"]["k"]["tokens_day"] == [(40.5, 10)]          # its bucket started at 960
    until = 960.0 + 86400.0 - 1000.5      # here its minute bucket [960, 1020) would leave the day at 87360
    limits = {"k": KeyLimits(tokens_per_day=10)}
    assert "tokens per day" in refusal(restarted(state, limits, 7.25, wall.now + until - 60), "k").message
    restarted(state, limits, 7.25, wall.now + until).admit("k")


def test_windows_merged_into_a_running_ledger_keep_their_own_times():
    """A reload that turns persistence on: an earlier run's admissions go before this run's
    (the oldest is the one that frees a slot), its tokens into their own bucket (they leave the
    window when they would have, not with this run's newer ones)."""
    clock, wall = Clock(1000.0), Clock(5000.0)
    earlier = KeyLedger(clock, wall)
    earlier.configure({"k": KeyLimits(rpm=2, tpm=100)})
    earlier.admit("k")
    earlier.record_usage("k", {"prompt_tokens": 60})
    state = earlier.windows()
    clock.now, wall.now = 1030.0, 5030.0                   # 30 s later, this run starts...
    ledger = KeyLedger(clock, wall)
    ledger.configure({"k": KeyLimits(rpm=2, tpm=100)})
    ledger.admit("k")
    ledger.record_usage("k", {"prompt_tokens": 50})
    assert ledger.restore(state) == 1                      # ...and a reload takes the file back
    message = refusal(ledger, "k").message
    assert "requests per minute" in message and "tokens per minute" in message
    clock.now = 1061.0                                     # the earlier request and tokens are a minute old
    ledger.admit("k")
    assert ledger.usage()[0]["window"]["tokens_last_minute"] == 50
    assert ledger.restore(ledger.windows()) == 0           # its own file, saved since it counts: not taken
