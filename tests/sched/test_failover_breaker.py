"""CircuitBreaker states, and Service failover / breaker use with plain fake backends."""

import pytest

from tests.aio import run
from velollmd.backends.base import Backend
from velollmd.config import BackendConfig, SchedulerConfig
from velollmd.core.service import Service
from velollmd.errors import BackendError, BadRequest, Unavailable
from velollmd.sched.breaker import BreakerState, CircuitBreaker
from velollmd.sched.fingerprint import fingerprint_of
from velollmd.wire.request import GenerateRequest


def test_breaker_opens_after_n_consecutive_failures_and_probes_once_after_cooldown():
    breaker = CircuitBreaker(num_failures=2, cooldown_s=10)
    assert not breaker.record_failure(now=0)
    breaker.record_success()                       # resets the count
    assert not breaker.record_failure(now=1)
    assert breaker.record_failure(now=2)           # second in a row: open
    assert breaker.state is BreakerState.OPEN and not breaker.allow(now=5)
    assert breaker.would_allow(now=12)
    assert breaker.allow(now=12) and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(now=12)               # only one probe
    assert breaker.record_failure(now=13)          # probe failed: open again
    assert not breaker.allow(now=20) and breaker.allow(now=23)
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow(now=23)
    assert breaker.num_opens == 2


class FakeBackend(Backend):
    """A backend answering in-process: its name as the content, or `fail_with` raised."""
    kind = "fake"

    def __init__(self, name, fail_with=None):
        super().__init__(BackendConfig(name=name, kind="openai", url="http://127.0.0.1:9"))
        self.fail_with, self.healthy, self.calls = fail_with, True, 0

    async def chat(self, request):
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        return {"choices": [{"message": {"content": self.name}}]}


class FakeRegistry:
    def __init__(self, *backends):
        self.backends, self.listeners = list(backends), []

    def candidates(self, model):
        return [b for b in self.backends if b.healthy is not False]


def chat(content="hi"):
    return GenerateRequest("chat", {"model": "m", "messages": [{"role": "user", "content": content}]})


def service(*backends, **config):
    return Service(FakeRegistry(*backends), SchedulerConfig(prefix_routing=False, **config))


def test_a_backend_error_is_retried_once_on_another_backend():
    broken, good = FakeBackend("broken", BackendError("connection refused")), FakeBackend("good")
    svc = service(broken, good)
    bodies = [run(svc.generate(chat())).body for _ in range(2)]
    assert [b["choices"][0]["message"]["content"] for b in bodies] == ["good", "good"]
    assert broken.calls >= 1 and svc.num_failovers == broken.calls
    assert svc.stats()["backends"]["broken"]["breaker"] == "closed"


def test_client_errors_are_not_retried():
    bad = FakeBackend("bad", BadRequest("nope"))
    other = FakeBackend("other")
    svc = service(bad, other)
    svc.router.prefix_routing = False
    with pytest.raises(BadRequest):
        for _ in range(2):                        # round-robin reaches "bad" within two
            run(svc.generate(chat()))
    assert svc.num_failovers == 0


def test_only_one_retry_then_the_error_reaches_the_client():
    backends = [FakeBackend(f"b{i}", BackendError(f"down {i}")) for i in range(3)]
    svc = service(*backends)
    with pytest.raises(BackendError):
        run(svc.generate(chat()))
    assert sum(b.calls for b in backends) == 2


def test_open_circuit_takes_a_backend_out_of_rotation_until_cooldown():
    broken, good = FakeBackend("broken", BackendError("refused")), FakeBackend("good")
    now = [0.0]
    svc = Service(FakeRegistry(broken, good), SchedulerConfig(prefix_routing=False, breaker_failures=2,
                                                              breaker_cooldown_s=30), clock=lambda: now[0])
    for _ in range(6):
        run(svc.generate(chat()))
    assert broken.calls == 2                       # then its circuit is open
    assert svc.breaker(broken).state is BreakerState.OPEN
    now[0] = 31.0
    broken.fail_with = None
    for _ in range(3):
        run(svc.generate(chat()))
    assert broken.calls >= 3 and svc.breaker(broken).state is BreakerState.CLOSED


def test_every_circuit_open_is_503_with_retry_after():
    only = FakeBackend("only", BackendError("refused"))
    svc = service(only, breaker_failures=1, breaker_cooldown_s=60)
    with pytest.raises(BackendError):
        run(svc.generate(chat()))
    with pytest.raises(Unavailable) as caught:
        run(svc.generate(chat()))
    assert caught.value.status == 503 and int(caught.value.headers["retry-after"]) >= 1


def test_health_checks_feed_the_breaker_and_a_health_change_drops_affinity():
    a, b = FakeBackend("a"), FakeBackend("b")
    svc = Service(FakeRegistry(a, b), SchedulerConfig(breaker_failures=1))
    long_chat = chat("history " * 200)
    svc.router.claim(a, fingerprint_of(long_chat), now=0)
    assert svc.router._recent["a"].entries
    a.healthy = False
    svc.on_health(a, was_healthy=True)
    assert svc.breaker(a).state is BreakerState.OPEN and not svc.router._recent["a"].entries
    a.healthy = True
    svc.on_health(a, was_healthy=False)
    assert svc.breaker(a).state is BreakerState.CLOSED


def test_stats_report_queue_depth_routing_and_breakers():
    svc = service(FakeBackend("a"))
    run(svc.generate(chat()))
    stats = svc.stats()
    assert stats["num_waiting"] == 0 and stats["num_running"] == 0
    assert stats["backends"]["a"]["num_admitted"] == 1
    assert stats["routing"]["num_routed"] == 1
