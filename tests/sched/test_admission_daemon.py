"""Admission end to end: the real daemon in front of a one-slot backend whose answers wait
at a gate (real sockets). 429 + Retry-After, 503 on queue timeout, priority order, and a
client that goes away frees its slot."""
import json
import socket
import threading
import time

import httpx
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, ollama_backend
from tests.rig.llama import make_tiny_model
from tests.rig.waiting import wait_for
from tests.sched.gate_backend import GateBackend


@pytest.fixture
def gate():
    with GateBackend() as backend:
        yield backend


def start_daemon(gate, **scheduler):
    """One backend of one slot; queue-ahead off unless the test says (None: the default)."""
    return RunningDaemon(daemon_table(gate, **scheduler))


def daemon_table(gate, **scheduler) -> dict:
    scheduler = {"backend_queue_per_slot": 0, **scheduler}
    if scheduler["backend_queue_per_slot"] is None:
        del scheduler["backend_queue_per_slot"]
    return {"backends": [{"name": "gate", "kind": "openai", "url": gate.url, "models": ["gate"],
                          "slots": 1, "health_interval_s": 60}],
            "scheduler": {"prefix_routing": False, **scheduler}}


def post_chat(port, content, priority=None, timeout=30, key=None):
    """(status, headers, body) of a chat request sent over a raw socket."""
    body = json.dumps({"model": "gate", "messages": [{"role": "user", "content": content}]}).encode()
    extra = f"x-velollm-priority: {priority}\r\n" if priority is not None else ""
    extra += f"authorization: Bearer {key}\r\n" if key is not None else ""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(payload or b"{}")


def in_thread(fn, *args, **kwargs):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, result


def let_through_one_at_a_time(gate, threads) -> None:
    """With the first of `threads`' requests at the gate and the rest queued in the daemon:
    answer one at a time, each next request arriving before the one after it is let go, so
    gate.arrivals is the order the daemon sent them in; then wait for every thread."""
    for expected in range(2, len(threads) + 1):
        gate.open(1)
        gate.wait_arrivals(expected)
    gate.open(1)
    for thread, _ in threads:
        thread.join(10)


def wait_stats(daemon, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = daemon.app.service.stats()
        if predicate(stats):
            return stats
        time.sleep(0.01)
    raise AssertionError(f"stats never matched: {daemon.app.service.stats()}")


def test_full_queue_is_429_with_retry_after(gate):
    with start_daemon(gate, max_queue=1) as daemon:
        holder = in_thread(post_chat, daemon.port, "holder")
        gate.wait_arrivals(1)
        waiter = in_thread(post_chat, daemon.port, "waiter")
        wait_stats(daemon, lambda s: s["num_waiting"] == 1)
        status, headers, body = post_chat(daemon.port, "rejected")
        gate.open(2)
        for thread, _ in (holder, waiter):
            thread.join(10)
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert body["error"]["type"] == "rate_limit_error"
    assert holder[1]["value"][0] == waiter[1]["value"][0] == 200
    assert gate.arrivals == ["holder", "waiter"]


def test_max_queue_zero_serves_a_free_slot_and_refuses_only_what_would_wait(gate):
    """max_queue = 0: no waiting, so a request that finds the slot free runs (it was a 429)
    and one that finds it busy is a 429 at once."""
    with start_daemon(gate, max_queue=0) as daemon:
        holder = in_thread(post_chat, daemon.port, "holder")
        gate.wait_arrivals(1)
        status, headers, body = post_chat(daemon.port, "rejected")
        gate.open(1)
        holder[0].join(10)
    assert holder[1]["value"][0] == 200
    assert status == 429 and body["error"]["type"] == "rate_limit_error"
    assert gate.arrivals == ["holder"]


def test_max_queue_zero_serves_the_engine_too(tmp_path):
    """The engine's own scheduler took max_queue = 0 as its own limit and refused every
    request the daemon admitted to it: only the daemon's queue applies."""
    make_tiny_model(tmp_path / "tiny-engine.gguf")
    table = {"backends": [engine_backend(tmp_path, max_running=1)], "cache": {"enabled": False},
             "scheduler": {"max_queue": 0, "prefix_routing": False}}
    body = {"model": "tiny-engine", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with RunningDaemon(table) as daemon:
        replies = [httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60) for _ in range(2)]
    assert [reply.status_code for reply in replies] == [200, 200]
    assert replies[0].json()["usage"]["completion_tokens"] == 4


def test_a_reload_raises_max_queue_at_once_while_requests_wait(gate):
    """An operator who sees 429s raises max_queue and reloads: it applies to the busy queue
    now, not once the queue has emptied (at saturation, never)."""
    with start_daemon(gate, max_queue=1) as daemon:
        threads = [in_thread(post_chat, daemon.port, "holder")]
        gate.wait_arrivals(1)
        threads.append(in_thread(post_chat, daemon.port, "waiter"))
        wait_stats(daemon, lambda s: s["num_waiting"] == 1)
        daemon.reload(daemon_table(gate, max_queue=3))
        threads.append(in_thread(post_chat, daemon.port, "after reload"))
        stats = wait_stats(daemon, lambda s: s["num_waiting"] + s["num_rejected"] == 2)
        gate.open(3)
        for thread, _ in threads:
            thread.join(10)
    assert stats["num_rejected"] == 0
    assert [result["value"][0] for _, result in threads] == [200, 200, 200]
    assert gate.arrivals == ["holder", "waiter", "after reload"]


def test_waiting_past_queue_timeout_is_503(gate):
    with start_daemon(gate, queue_timeout_s=0.3) as daemon:
        holder = in_thread(post_chat, daemon.port, "holder")
        gate.wait_arrivals(1)
        status, headers, body = post_chat(daemon.port, "late")
        gate.open(1)
        holder[0].join(10)
        stats = daemon.app.service.stats()
    assert status == 503 and body["error"]["code"] == "queue_timeout"
    assert stats["num_timed_out"] == 1 and gate.arrivals == ["holder"]


@pytest.mark.parametrize("queue_ahead", [0, None])       # None: the default configuration
def test_priority_zero_runs_before_earlier_priority_nine_requests(gate, queue_ahead):
    """With queue-ahead (the default) the first priority-9 request is sent ahead into the
    backend's queue; the urgent one withdraws it (the backend drops it unstarted) and takes
    its place, so the backend runs them in priority order all the same."""
    with start_daemon(gate, backend_queue_per_slot=queue_ahead) as daemon:
        threads = [in_thread(post_chat, daemon.port, "holder")]
        gate.wait_arrivals(1)
        for i in range(2):
            threads.append(in_thread(post_chat, daemon.port, f"batch{i}", priority=9))
            wait_stats(daemon, lambda s, n=i + 1: s["num_waiting"] + s["num_running"] == n + 1)
        threads.append(in_thread(post_chat, daemon.port, "urgent", priority=0))
        wait_stats(daemon, lambda s: s["num_waiting"] + s["num_running"] == 4 and (
            queue_ahead == 0 or s["backends"]["gate"]["num_preempted"] == 1))
        let_through_one_at_a_time(gate, threads)
    assert gate.arrivals == ["holder", "urgent", "batch0", "batch1"]
    assert all(result["value"][0] == 200 for _, result in threads)
    assert gate.num_dropped == (0 if queue_ahead == 0 else 1)


PRIORITY_KEYS = [{"name": "batch", "key": "sk-batch", "priority": 7}, {"name": "plain", "key": "sk-plain"}]


def test_a_keys_configured_priority_is_a_ceiling_for_the_header(gate):
    """The batch key (priority 7) asks for 0 and still waits behind a key without a configured
    priority that asks for 6; asking for 9 lowers it below a plain 8. A bad header is a 400."""
    table = {**daemon_table(gate, aging_s=1000.0), "keys": PRIORITY_KEYS}
    with RunningDaemon(table) as daemon:
        status, _, body = post_chat(daemon.port, "bad", priority="x", key="sk-batch")
        threads = [in_thread(post_chat, daemon.port, "holder", key="sk-plain")]
        gate.wait_arrivals(1)
        sent = [("batch9", 9, "sk-batch"), ("plain8", 8, "sk-plain"), ("batch0", 0, "sk-batch"),
                ("plain6", 6, "sk-plain")]
        for i, (content, priority, key) in enumerate(sent):
            threads.append(in_thread(post_chat, daemon.port, content, priority=priority, key=key))
            wait_stats(daemon, lambda s, n=i + 1: s["num_waiting"] == n)
        let_through_one_at_a_time(gate, threads)
    assert status == 400 and body["error"]["param"] == "x-velollm-priority"
    assert gate.arrivals == ["holder", "plain6", "batch0", "plain8", "batch9"]
    assert all(result["value"][0] == 200 for _, result in threads)


def test_a_client_that_goes_away_frees_its_slot(gate):
    with start_daemon(gate) as daemon:
        body = json.dumps({"model": "gate", "messages": [{"role": "user", "content": "leaver"}]}).encode()
        sock = socket.create_connection(("127.0.0.1", daemon.port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        gate.wait_arrivals(1)
        waiter = in_thread(post_chat, daemon.port, "next")
        wait_stats(daemon, lambda s: s["num_waiting"] == 1)
        sock.close()                                  # the running request's client leaves
        arrivals = gate.wait_arrivals(2)
        gate.open(2)
        waiter[0].join(10)
        stats = wait_stats(daemon, lambda s: s["num_running"] == 0)
    assert arrivals == ["leaver", "next"]
    assert waiter[1]["value"][0] == 200 and stats["num_waiting"] == 0


def test_a_backend_whose_own_queue_is_full_is_busy_not_failing(ollama_emulator):
    """Ollama answers 503 "server busy" when its own queue (OLLAMA_MAX_QUEUE) is full: each
    such request is a 503 backend_busy, but the backend is not failing, so its circuit stays
    closed and the next request is served (three busy answers opened it for everyone)."""
    table = {"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False},
             "scheduler": {"breaker_failures": 3}}
    body = {"model": "llama3.2:latest", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    busy = "server busy, please try again.  maximum pending requests exceeded"
    with RunningDaemon(table) as daemon:
        for _ in range(3):
            ollama_emulator.script(status=503, error=busy)
        refused = [httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30) for _ in range(3)]
        served = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30)
        stats = daemon.app.service.stats()["backends"]["ollama"]
    assert [r.status_code for r in refused] == [503] * 3
    assert {r.json()["error"]["code"] for r in refused} == {"backend_busy"}
    assert served.status_code == 200 and stats["breaker"] == "closed"


def test_a_reload_gives_the_engines_own_queue_the_new_queue_timeout(tmp_path):
    """A request sent ahead into the engine's queue waits there under [scheduler]
    queue_timeout_s: a reload that raises it applies there too (the loaded model's queue kept
    the value it was loaded with, and timed the request out at the old one)."""
    make_tiny_model(tmp_path / "tiny-engine.gguf")
    table = {"backends": [engine_backend(tmp_path, max_running=1)], "cache": {"enabled": False},
             "scheduler": {"queue_timeout_s": 0.2, "backend_queue_per_slot": 1, "prefix_routing": False}}
    body = {"model": "tiny-engine", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with RunningDaemon(table) as daemon:
        assert httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
        daemon.reload({**table, "scheduler": {**table["scheduler"], "queue_timeout_s": 60.0}})
        runner = daemon.app.registry.backends[0].loaded["tiny-engine"].runner
        with runner._model_lock:            # the engine's step waits: one runs, one queues there
            running = in_thread(httpx.post, daemon.url + "/v1/chat/completions", json=body, timeout=60)
            assert wait_for(lambda: len(runner.scheduler.running) == 1, 30)
            waiting = in_thread(httpx.post, daemon.url + "/v1/chat/completions", json=body, timeout=60)
            assert wait_for(lambda: len(runner.scheduler.waiting) == 1, 30)
            time.sleep(0.4)                 # past the old queue_timeout_s, waiting in the engine's queue
        for thread, _ in (running, waiting):
            thread.join(60)
    assert running[1]["value"].status_code == 200
    assert waiting[1]["value"].status_code == 200


def test_the_engines_own_queue_gets_what_the_daemons_queue_left_of_queue_timeout_s(tmp_path):
    """A request that waited in the daemon's queue for the engine enters the engine's own queue
    with that wait counted (SchedRequest.waited_s, the very seconds the daemon measured): its
    queue_timeout_s there is what is left, not as much again (a client waited up to twice
    queue_timeout_s before its 503). The test tests/sched/test_scheduler.py expires it by that."""
    make_tiny_model(tmp_path / "tiny-engine.gguf")
    table = {"backends": [engine_backend(tmp_path, max_running=1)], "cache": {"enabled": False},
             "scheduler": {"queue_timeout_s": 60.0, "backend_queue_per_slot": 1, "prefix_routing": False}}
    body = {"model": "tiny-engine", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with RunningDaemon(table) as daemon:
        assert httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
        runner = daemon.app.registry.backends[0].loaded["tiny-engine"].runner
        daemon_queue = daemon.app.service.admission.queues["engine"].scheduler
        with runner._model_lock:            # the engine's step waits: one runs, one queues there
            running = in_thread(httpx.post, daemon.url + "/v1/chat/completions", json=body, timeout=60)
            assert wait_for(lambda: len(runner.scheduler.running) == 1, 30)
            ahead = send_raw_chat(daemon.port, body)                       # sent ahead into the engine's queue
            assert wait_for(lambda: len(runner.scheduler.waiting) == 1, 30)
            late = in_thread(httpx.post, daemon.url + "/v1/chat/completions", json=body, timeout=60)
            assert wait_for(lambda: len(daemon_queue.waiting) == 1, 30)   # waits in the daemon's queue
            ahead.close()                   # its client left: the daemon admits the late one
            assert wait_for(lambda: any(r.waited_s for r in list(runner.scheduler.waiting)), 30)
            in_engine = next(r for r in list(runner.scheduler.waiting) if r.waited_s)
            in_daemon = next(r for r in list(daemon_queue.running.values()) if r.started_at > r.queued_at)
        for thread, _ in (running, late):
            thread.join(60)
    assert in_engine.waited_s == in_daemon.started_at - in_daemon.queued_at > 0
    assert in_engine.wait_began < in_engine.queued_at
    assert running[1]["value"].status_code == 200 and late[1]["value"].status_code == 200


def send_raw_chat(port: int, body: dict) -> socket.socket:
    """A chat request over a raw socket, its answer left unread (close it to leave)."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
    return sock
