"""The operator routes (/health, /metrics, /v1/velollm/queue, the dashboard's feed) when a part
of what they gather raises: what is known, the broken part named, never a 500 or a traceback;
and a llama-server answering garbage in /props, the real way such a part used to raise."""
from __future__ import annotations

import json
import logging

import httpx
import pytest

from tests.ctl.bench.scripted_server import ScriptedServer
from tests.daemon_rig import RunningDaemon
from velollmd.api import admin
from velollmd.api.dashboard import FEED_PATH
from velollmd.backends.base import DEFAULT_NUM_CTX
from velollmd.config import MAX_SLOTS


def scripted_llama(props) -> ScriptedServer:
    return ScriptedServer({"/props": (200, "application/json", json.dumps(props).encode())})


def garbage_backend(server: ScriptedServer) -> dict:
    return {"name": "garbage", "kind": "llamacpp", "url": server.url, "models": ["*"]}


@pytest.fixture
def broken_stats_daemon(monkeypatch):
    """A daemon whose queue stats raise. The real way found (a llama-server's garbage /props
    n_ctx) is fixed at its root (the tests below): here Service.stats is made to raise."""
    monkeypatch.setattr(admin, "_part_logged_at", {}, raising=False)   # the rate limit starts afresh
    with scripted_llama({"total_slots": 2}) as server, RunningDaemon({"backends": [garbage_backend(server)]}) as daemon:
        def broken_stats():
            raise RuntimeError("queue stats\nbroke")
        monkeypatch.setattr(daemon.app.service, "stats", broken_stats)
        yield daemon


def test_health_answers_what_it_knows_and_names_the_part_that_broke(broken_stats_daemon, caplog):
    with caplog.at_level(logging.ERROR, logger="velollmd.api.admin"):
        answers = [httpx.get(broken_stats_daemon.url + "/health", timeout=30) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    body = answers[0].json()
    assert body["status"] == "ok" and [b["name"] for b in body["backends"]] == ["garbage"]
    assert body["backends"][0]["slots"] == 2 and body["errors"] == {"queues": "RuntimeError: queue stats broke"}
    logged = [r for r in caplog.records if "queues could not be gathered" in r.getMessage()]
    assert len(logged) == 1                                        # three polls, one line


def test_queue_metrics_and_the_dashboard_feed_never_answer_500(broken_stats_daemon):
    url = broken_stats_daemon.url
    queue = httpx.get(url + "/v1/velollm/queue", timeout=30)
    assert queue.status_code == 503 and queue.json()["error"]["code"] == "stats_unavailable"
    assert "RuntimeError: queue stats broke" in queue.json()["error"]["message"]
    metrics = httpx.get(url + "/metrics", timeout=30)
    assert metrics.status_code == 200 and "velollm_backend_healthy{backend=\"garbage\"} 1" in metrics.text
    assert "# velollm: queues left out: RuntimeError: queue stats broke\n" in metrics.text
    feed = httpx.get(url + FEED_PATH, timeout=30)
    assert feed.status_code == 200 and feed.json()["errors"] == {"queues": "RuntimeError: queue stats broke"}
    assert [b["name"] for b in feed.json()["backends"]] == ["garbage"]


@pytest.mark.parametrize("props", [
    {"default_generation_settings": {"n_ctx": "lots"}, "total_slots": "many"},
    {"default_generation_settings": [], "total_slots": -3},
    {"default_generation_settings": {"n_ctx": 1.5}, "total_slots": True},
    [1, 2],
])
def test_a_llama_server_with_garbage_props_reads_as_one_that_does_not_say(props):
    """The configured context and an adaptive width hold; admission, /health and the queue
    stats go on (each answered 500 before: int("lots") in every queue built)."""
    with scripted_llama(props) as server, RunningDaemon({"backends": [garbage_backend(server)]}) as daemon:
        health = httpx.get(daemon.url + "/health", timeout=30)
        queue = httpx.get(daemon.url + "/v1/velollm/queue", timeout=30)
        chat = httpx.post(daemon.url + "/v1/chat/completions", timeout=30, json={
            "model": "scripted", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        context = daemon.app.registry.backends[0].context_size()
    [row] = health.json()["backends"]
    assert health.status_code == 200 and "errors" not in health.json()
    assert row["healthy"] is True and row["slots"] is None and row["slots_source"] is None
    assert queue.status_code == 200 and queue.json()["backends"]["garbage"]["adaptive"] is True
    assert chat.status_code == 200 and " w0" in chat.text and context == DEFAULT_NUM_CTX


def test_a_llama_server_that_says_a_billion_slots_is_taken_at_the_most_slots():
    """Its slot table and scheduler were built a billion entries long: the daemon hung."""
    with scripted_llama({"total_slots": 10**12}) as server, \
            RunningDaemon({"backends": [garbage_backend(server)]}) as daemon:
        health = httpx.get(daemon.url + "/health", timeout=30)
        chat = httpx.post(daemon.url + "/v1/chat/completions", timeout=30, json={
            "model": "scripted", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    [row] = health.json()["backends"]
    assert (row["slots"], row["slots_source"]) == (MAX_SLOTS, "/props")
    assert chat.status_code == 200 and " w0" in chat.text


@pytest.mark.parametrize("kind, route, listing", [
    ("openai", "/v1/models", {"data": [{"id": 7}, {"id": None}, 5, {"id": "ok", "created": "yesterday"}]}),
    ("llamacpp", "/v1/models", {"data": [{"id": ["x"]}, {"id": "ok"}]}),
    ("ollama", "/api/tags", {"models": [{"name": None}, {"name": "ok", "details": 5, "size": "big"}]}),
])
def test_a_model_list_with_garbage_entries_lists_the_good_ones(kind, route, listing):
    """A model whose name is not text is left out, a size or time that is no number reads as
    none: the listings answered 500 for each (a regex or .encode on an int), /health stayed up."""
    with ScriptedServer({route: (200, "application/json", json.dumps(listing).encode())}) as server:
        backend = {"name": "garbage", "kind": kind, "url": server.url, "models": ["*"]}
        with RunningDaemon({"backends": [backend]}) as daemon:
            answers = {path: httpx.get(daemon.url + path, timeout=30) for path in ("/v1/models", "/api/tags", "/api/ps")}
            health = httpx.get(daemon.url + "/health", timeout=30).json()
    assert {path: a.status_code for path, a in answers.items()} == dict.fromkeys(answers, 200)
    assert [m["id"] for m in answers["/v1/models"].json()["data"]] == ["ok"]
    assert [m["name"] for m in answers["/api/tags"].json()["models"]] == ["ok"]
    assert health["backends"][0]["healthy"] is True and health["backends"][0]["models"] == ["ok"]
