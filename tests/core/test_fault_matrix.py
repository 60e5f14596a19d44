"""The backend fault matrix: each way a backend can break, through the real daemon, with the
official openai client.

For each fault: the client gets the documented status (or, once bytes flowed, an SSE error
event); failover to a second backend happens exactly when no byte reached the client; the
circuit breaker opens and closes; nothing leaks (backend connections, admission slots, asyncio
tasks); and the next request succeeds. The faulty backend is tests/rig/fault_backend.py.
"""
import asyncio
import json

import httpx
import openai
import pytest

from tests.daemon_rig import RunningDaemon
from tests.rig.fault_backend import MODEL, FaultBackend
from tests.rig.waiting import wait_for

MESSAGES = [{"role": "user", "content": "hi"}]
READ_TIMEOUT_S = 0.3           # the daemon's backend read timeout here: silence ends quickly

# fault -> (status without stream, status with stream; "event" = 200 then an SSE error event)
MATRIX = {
    "reset_before_head": (502, 502),
    "reset_mid_body": (502, "event"),
    "silent_after_head": (504, 504),
    "silent_mid_stream": (504, "event"),
    "trickle": (504, 504),
    "garbage": (502, 502),
    "short_content_length": (502, 502),
    "long_content_length": (502, 502),
    "bad_chunked": (502, 502),
    "not_json": (502, 502),
    "wrong_shape": (502, 502),
    "deep_json": (502, 502),
    "status_429": (503, 503),
    "status_429_retry_after": (503, 503),
    "status_500": (502, 502),
    "status_500_retry_after": (502, 502),
    "status_503": (503, 503),
    "status_503_retry_after": (503, 503),
}


def backend_entry(backend: FaultBackend, name: str) -> dict:
    return {"name": name, "kind": "openai", "url": backend.url, "models": ["fault-*"],
            "timeout_s": READ_TIMEOUT_S, "connect_timeout_s": 1, "health_interval_s": 600}


def start_daemon(*named: tuple[str, FaultBackend], **scheduler) -> RunningDaemon:
    return RunningDaemon({"backends": [backend_entry(b, name) for name, b in named],
                          "scheduler": {"prefix_routing": False, "breaker_failures": 1000, **scheduler},
                          "cache": {"enabled": False}}).start()


@pytest.fixture(scope="module")
def backends():
    with FaultBackend() as a, FaultBackend() as b:
        yield a, b


@pytest.fixture(scope="module")
def solo(backends):
    daemon = start_daemon(("a", backends[0]))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def pair(backends):
    daemon = start_daemon(("a", backends[0]), ("b", backends[1]))
    yield daemon
    daemon.stop()


@pytest.fixture(autouse=True)
def no_leftover_faults(backends):
    yield
    for backend in backends:
        backend._faults.clear()


def client(daemon: RunningDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=10)


def ask(daemon: RunningDaemon, stream: bool):
    """(status, response headers, content, error event) of one chat request, on a connection
    of its own that is closed after it (so that open connections count as leaks)."""
    with client(daemon) as sdk:
        try:
            raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, stream=stream)
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers, None, None
        if not stream:
            return raw.status_code, raw.headers, raw.parse().choices[0].message.content, None
        content = []
        try:
            for chunk in raw.parse():
                content += [c.delta.content or "" for c in chunk.choices]
        except openai.APIError as exc:             # the SDK raises on an `{"error": ...}` event
            return raw.status_code, raw.headers, "".join(content), exc.message
        return raw.status_code, raw.headers, "".join(content), None


def num_tasks(daemon: RunningDaemon) -> int:
    async def count():
        return len(asyncio.all_tasks())
    return daemon.call(count)


def task_names(daemon):
    async def names():
        return [t.get_coro().__qualname__ for t in asyncio.all_tasks()]
    return daemon.call(names)


def queue(daemon: RunningDaemon) -> dict:
    with client(daemon) as sdk:
        return sdk.get("/velollm/queue", cast_to=object)


def assert_nothing_leaked(daemon: RunningDaemon, backend: FaultBackend, tasks_before: int) -> None:
    assert wait_for(lambda: backend.num_open <= 1), backend.num_open   # at most the pooled one
    stats = queue(daemon)
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert all(b["block_usage"] == 0 for b in stats["backends"].values())     # KV budget given back
    assert wait_for(lambda: num_tasks(daemon) <= tasks_before), (sorted(task_names(daemon)), tasks_before)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("fault", sorted(MATRIX))
def test_each_fault_gets_its_status_leaks_nothing_and_the_next_request_succeeds(solo, backends, fault, stream):
    backend = backends[0]
    assert ask(solo, stream)[0] == 200                     # warm: one pooled connection
    tasks_before = num_tasks(solo)
    backend.fault(fault, fault)                            # twice: a stale pooled connection is retried once
    status, headers, content, event = ask(solo, stream)
    expected = MATRIX[fault][stream]
    if expected == "event":
        assert status == 200 and content == "alpha" and event and "backend" in event
    else:
        assert status == expected
    if expected == 503:                                    # busy: the backend's own advice passed on, else 1 s
        assert headers["retry-after"] == ("7" if fault.endswith("retry_after") else "1")
    backend._faults.clear()
    assert ask(solo, stream)[:3:2] == (200, "alpha beta gamma")
    assert_nothing_leaked(solo, backend, tasks_before)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("fault", sorted(MATRIX))
def test_failover_happens_exactly_when_no_byte_reached_the_client(pair, backends, fault, stream):
    a, b = backends
    ask(pair, stream)
    last = ask(pair, stream)[1]["x-velollm-backend"]      # both warm; round robin: the other is next
    first = "b" if last == "a" else "a"
    faulty = a if first == "a" else b
    before = queue(pair)["num_failovers"]
    faulty.fault(fault, fault)
    status, headers, content, event = ask(pair, stream)
    reached_client = MATRIX[fault][stream] == "event"
    if reached_client:
        assert status == 200 and event is not None and content == "alpha"
        assert queue(pair)["num_failovers"] == before
    else:
        assert (status, content, event) == (200, "alpha beta gamma", None)
        assert headers["x-velollm-backend"] != first
        assert queue(pair)["num_failovers"] == before + 1
    faulty._faults.clear()
    assert ask(pair, stream)[0] == 200


def test_a_refused_backend_is_502_then_a_restarted_one_serves_again():
    with FaultBackend() as backend:
        daemon = start_daemon(("a", backend))
        try:
            assert ask(daemon, False)[0] == 200
            backend.refuse()
            assert ask(daemon, False)[0] == 502
            assert ask(daemon, True)[0] == 502
            backend.restart()
            assert ask(daemon, False)[:3:2] == (200, "alpha beta gamma")
        finally:
            daemon.stop()


def test_a_backend_restart_between_requests_is_invisible(solo, backends):
    backend = backends[0]
    assert ask(solo, False)[0] == 200
    before = queue(solo)["num_failovers"]
    backend.restart()                                      # the pooled connection is dead now
    assert ask(solo, False)[:3:2] == (200, "alpha beta gamma")
    assert ask(solo, True)[:3:2] == (200, "alpha beta gamma")
    assert queue(solo)["num_failovers"] == before


def test_the_circuit_opens_after_failures_then_a_probe_closes_it():
    with FaultBackend() as backend:
        daemon = start_daemon(("a", backend), breaker_failures=2, breaker_cooldown_s=2)
        try:
            backend.fault(*["status_500"] * 4)
            assert [ask(daemon, False)[0] for _ in range(2)] == [502, 502]
            assert queue(daemon)["backends"]["a"]["breaker"] == "open"
            status, headers, _, _ = ask(daemon, False)            # open: not even tried
            assert status == 503 and int(headers["retry-after"]) >= 1
            assert backend.num_generations == 2
            backend._faults.clear()
            assert wait_for(lambda: ask(daemon, False)[0] == 200, limit_s=10)  # the probe, after the cooldown
            assert queue(daemon)["backends"]["a"]["breaker"] == "closed"
        finally:
            daemon.stop()


def test_a_probe_whose_client_leaves_lets_the_next_request_probe():
    """The half-open circuit's one probe ends with no verdict on the backend (its client went
    away): the next request is the probe, not a 503 until the next health check."""
    with FaultBackend() as backend:
        entry = {**backend_entry(backend, "a"), "timeout_s": 30}
        daemon = RunningDaemon({"backends": [entry], "cache": {"enabled": False},
                                "scheduler": {"prefix_routing": False, "breaker_failures": 1,
                                              "breaker_cooldown_s": 0}}).start()
        try:
            backend.fault("status_500", "silent_after_head")
            assert ask(daemon, False)[0] == 502                   # the circuit opens
            with openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=0.5) as sdk:
                with pytest.raises(openai.APITimeoutError):       # the probe: its client leaves
                    sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert wait_for(lambda: backend.num_open == 0)
            assert wait_for(lambda: ask(daemon, False)[0] == 200)
            assert queue(daemon)["backends"]["a"]["breaker"] == "closed"
        finally:
            daemon.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "ndjson"])
@pytest.mark.parametrize("fault", sorted(MATRIX))
def test_the_ollama_route_gets_the_same_statuses_in_its_own_error_shape(solo, backends, fault, stream):
    backends[0].fault(fault, fault)
    body = {"model": MODEL, "messages": MESSAGES, "stream": stream}
    with httpx.Client(base_url=solo.url, timeout=10) as http:
        response = http.post("/api/chat", json=body)
        expected = MATRIX[fault][stream]
        if expected == "event":                             # bytes flowed: a last NDJSON line says why
            lines = [json.loads(line) for line in response.text.splitlines()]
            assert response.status_code == 200 and isinstance(lines[-1]["error"], str)
        else:
            assert response.status_code == expected and isinstance(response.json()["error"], str)
        backends[0]._faults.clear()
        assert http.post("/api/chat", json={**body, "stream": False}).json()["message"]["content"] == "alpha beta gamma"
