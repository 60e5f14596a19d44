"""What /health, /v1/velollm/queue, /metrics and `velollmctl status` say of a backend's width
and limit, in front of the real daemon: a backend of unknown width (tests/rig/fault_backend.py,
refusing as busy past 3) shows no slots, "adaptive", and the limit it moved to, the same number
everywhere; a TGI-like server that states its width (/info) shows that width and its source."""
import json
import re
import threading

import httpx
import openai

from tests.backends.test_discovery import ScriptedServer
from tests.ctl.bench.helpers import run_ctl
from tests.daemon_rig import RunningDaemon
from tests.rig.fault_backend import MODEL, FaultBackend

WIDTH = 3
INITIAL = 8
NUM_CLIENTS = 8


def chat_until_refused(sdk: openai.OpenAI, backend: FaultBackend) -> None:
    """Chat until the backend refused some request as busy (the limit then moved), 100 at most."""
    for _ in range(100):
        if backend.num_busy:
            return
        try:
            sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        except openai.APIStatusError:
            pass


def metric(text: str, name: str, backend: str) -> list[str]:
    return re.findall(r'^%s\{([^}]*backend="%s"[^}]*)\} (\S+)$' % (name, backend), text, re.M)


def ctl_row(capsys, url: str, backend: str) -> list[str]:
    rc, out, _ = run_ctl(capsys, "status", "--url", url)
    assert rc == 0
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [backend])


def test_an_adaptive_backend_reports_the_limit_it_moved_to_and_a_stated_width_its_source(capsys):
    info = {"model_id": "m", "max_concurrent_requests": 4}
    stated = ScriptedServer({"/info": (200, json.dumps(info).encode())})
    try:
        with FaultBackend(width=WIDTH, answer_s=0.02) as backend:
            table = {"backends": [{"name": "busy", "kind": "openai", "url": backend.url, "models": ["fault-*"],
                                   "health_interval_s": 600},
                                  {"name": "tgi", "kind": "openai", "url": stated.url, "models": ["m"],
                                   "health_interval_s": 600}],
                     "scheduler": {"prefix_routing": False, "initial_concurrency": INITIAL, "breaker_failures": 3,
                                   "backend_queue_per_slot": 1},
                     "cache": {"enabled": False}}
            with RunningDaemon(table) as daemon:
                sdk = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=30)
                clients = [threading.Thread(target=chat_until_refused, args=(sdk, backend))
                           for _ in range(NUM_CLIENTS)]
                for client in clients:
                    client.start()
                for client in clients:
                    client.join()
                health = {b["name"]: b for b in httpx.get(daemon.url + "/health").json()["backends"]}
                queue = httpx.get(daemon.url + "/v1/velollm/queue").json()["backends"]
                metrics = httpx.get(daemon.url + "/metrics").text
                rows = {name: ctl_row(capsys, daemon.url, name) for name in ("busy", "tgi")}
    finally:
        stated.close()
    assert backend.num_busy >= 1                                   # it met the width: the limit moved
    busy, tgi = health["busy"], health["tgi"]
    limit = busy["concurrency_limit"]
    assert limit < INITIAL and queue["busy"]["concurrency_limit"] == limit
    assert busy["slots"] is None and busy["slots_source"] is None and busy["adaptive"] is True
    assert metric(metrics, "velollm_backend_concurrency_limit", "busy") == [('backend="busy"', str(limit))]
    assert metric(metrics, "velollm_backend_slots", "busy") == []        # no width to state
    assert rows["busy"][:6] == ["busy", "openai", "yes", "-", "adaptive", str(limit)]
    assert tgi["slots"] == 4 and tgi["slots_source"] == "/info" and tgi["adaptive"] is False
    assert tgi["concurrency_limit"] == 8 == queue["tgi"]["concurrency_limit"]   # 4 slots + 4 sent ahead
    assert metric(metrics, "velollm_backend_slots", "tgi") == [('backend="tgi",source="/info"', "4")]
    assert metric(metrics, "velollm_backend_concurrency_limit", "tgi") == [('backend="tgi"', "8")]
    assert rows["tgi"][:6] == ["tgi", "openai:TGI", "yes", "4", "/info", "8"]
