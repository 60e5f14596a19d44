"""A backend that does not say its width and refuses as busy past it (503 "no slot available",
tests/rig/fault_backend.py with a width, real sockets) in front of the real daemon and the
official openai client: the adaptive limit comes down to the width on the busy answers, clients
see few of them once it has, the circuit stays closed and /metrics shows the limit."""
import threading

import httpx
import openai

from tests.daemon_rig import RunningDaemon
from tests.rig.fault_backend import MODEL, FaultBackend

WIDTH = 3
NUM_CLIENTS = 8
NUM_REQUESTS = 40                 # per client


def chat_until_done(sdk: openai.OpenAI, outcomes: list[str], lock: threading.Lock) -> None:
    for _ in range(NUM_REQUESTS):
        try:
            sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            outcome = "ok"
        except openai.APIStatusError as exc:
            outcome = f"{exc.status_code} {exc.response.json()['error']['code']}"
        with lock:
            outcomes.append(outcome)


def test_busy_answers_bring_the_adaptive_limit_down_to_the_width():
    with FaultBackend(width=WIDTH, answer_s=0.02) as backend:
        table = {"backends": [{"name": "busy", "kind": "openai", "url": backend.url, "models": ["fault-*"],
                               "health_interval_s": 600}],
                 "scheduler": {"prefix_routing": False, "initial_concurrency": 8, "breaker_failures": 3},
                 "cache": {"enabled": False}}
        with RunningDaemon(table) as daemon:
            outcomes, lock, limits = [], threading.Lock(), []
            sdk = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=30)
            clients = [threading.Thread(target=chat_until_done, args=(sdk, outcomes, lock))
                       for _ in range(NUM_CLIENTS)]
            for client in clients:
                client.start()
            while any(client.is_alive() for client in clients):
                with lock:
                    num_done = len(outcomes)
                limits.append((num_done, sdk.get("/velollm/queue", cast_to=object)["backends"]["busy"]))
                clients[0].join(0.01)
            for client in clients:
                client.join()
            queue = sdk.get("/velollm/queue", cast_to=object)["backends"]["busy"]
            metrics = httpx.get(daemon.url + "/metrics").text
    total = NUM_CLIENTS * NUM_REQUESTS
    late = outcomes[total // 2:]
    late_limits = sorted(stats["concurrency_limit"] for done, stats in limits if done >= total // 2)
    assert set(outcomes) <= {"ok", "503 backend_busy"} and outcomes.count("503 backend_busy") == backend.num_busy
    assert backend.num_busy >= 1                                  # it did meet the width
    assert late_limits and late_limits[len(late_limits) // 2] <= WIDTH and late_limits[-1] <= WIDTH + 1
    assert late.count("503 backend_busy") <= len(late) // 20      # few busy answers once settled
    assert queue["breaker"] == "closed" and queue["concurrency_limit"] <= WIDTH + 1
    assert f'velollm_backend_concurrency_limit{{backend="busy"}} {queue["concurrency_limit"]}' in metrics
