"""The operator routes (/health, /metrics, /v1/velollm/queue, the dashboard's feed) when a part
of what they gather raises: what is known, the broken part named, never a 500 or a traceback."""
from __future__ import annotations

import json
import logging

import httpx
import pytest

from tests.ctl.bench.scripted_server import ScriptedServer
from tests.daemon_rig import RunningDaemon
from velollmd.api import admin
from velollmd.api.dashboard import FEED_PATH

GARBAGE_PROPS = {"default_generation_settings": {"n_ctx": "lots"}, "total_slots": 2}


@pytest.fixture
def garbage_props_daemon(monkeypatch):
    """A daemon whose llama-server answers /props with an n_ctx that is not a number."""
    monkeypatch.setattr(admin, "_part_logged_at", {}, raising=False)   # the rate limit starts afresh
    routes = {"/props": (200, "application/json", json.dumps(GARBAGE_PROPS).encode())}
    with ScriptedServer(routes) as server:
        backend = {"name": "garbage", "kind": "llamacpp", "url": server.url, "models": ["*"]}
        with RunningDaemon({"backends": [backend]}) as daemon:
            yield daemon


def test_health_answers_what_it_knows_and_names_the_part_that_broke(garbage_props_daemon, caplog):
    with caplog.at_level(logging.ERROR, logger="velollmd.api.admin"):
        answers = [httpx.get(garbage_props_daemon.url + "/health", timeout=30) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    body = answers[0].json()
    assert body["status"] == "ok" and [b["name"] for b in body["backends"]] == ["garbage"]
    assert body["errors"]["queues"].startswith("ValueError: ") and "lots" in body["errors"]["queues"]
    logged = [r for r in caplog.records if "queues could not be gathered" in r.getMessage()]
    assert len(logged) == 1                                        # three polls, one line


def test_queue_metrics_and_the_dashboard_feed_never_answer_500(garbage_props_daemon):
    url = garbage_props_daemon.url
    queue = httpx.get(url + "/v1/velollm/queue", timeout=30)
    assert queue.status_code == 503 and queue.json()["error"]["code"] == "stats_unavailable"
    assert "ValueError" in queue.json()["error"]["message"]
    metrics = httpx.get(url + "/metrics", timeout=30)
    assert metrics.status_code == 200 and "velollm_backend_healthy{backend=\"garbage\"} 1" in metrics.text
    assert "# velollm: queues left out: ValueError: " in metrics.text
    feed = httpx.get(url + FEED_PATH, timeout=30)
    assert feed.status_code == 200 and feed.json()["errors"]["queues"].startswith("ValueError: ")
    assert [b["name"] for b in feed.json()["backends"]] == ["garbage"]
