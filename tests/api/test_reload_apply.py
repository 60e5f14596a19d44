"""What a reload applies in a running daemon: keys, scheduler, tool-call and metrics settings,
a changed cache that keeps its entries, backends added and taken out (App.reload, which SIGHUP
calls; tests/test_reload.py drives the signal on a real process)."""
import hashlib

import httpx

from tests.daemon_rig import ollama_backend


def ask(text):
    return {"model": "llama3.2", "messages": [{"role": "user", "content": text}], "temperature": 0}


def test_reload_applies_keys_scheduler_tools_metrics_and_keeps_cache_entries(daemon_factory, ollama_emulator):
    table = {"backends": [ollama_backend(ollama_emulator)], "server": {"api_keys": ["k1"]}}
    daemon = daemon_factory(table)
    auth, other = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
    first = httpx.post(daemon.url + "/v1/chat/completions", json=ask("Remember me"), headers=auth)
    assert first.headers["x-velollm-cache"] == "miss"
    assert httpx.get(daemon.url + "/v1/models", headers=other).status_code == 401

    digest = "sha256:" + hashlib.sha256(b"k1").hexdigest()
    changes = daemon.reload({**table, "server": {"api_keys": [digest, "k2"]}, "scheduler": {"default_priority": 8},
                             "tools": {"repair": False}, "metrics": {"enabled": False},
                             "cache": {"max_entries": 50}})

    assert changes == {"added": [], "removed": [], "changed": []}
    assert httpx.get(daemon.url + "/v1/models", headers=other).status_code == 200
    assert httpx.get(daemon.url + "/v1/models").status_code == 401
    again = httpx.post(daemon.url + "/v1/chat/completions", json=ask("Remember me"), headers=auth)
    assert again.headers["x-velollm-cache"] == "hit-exact"        # the new cache took the entry over
    assert again.json()["choices"] == first.json()["choices"]
    assert daemon.app.pipeline.cache.config.max_entries == 50
    assert daemon.app.service.config.default_priority == 8
    assert daemon.app.pipeline.tools.config.repair is False
    assert httpx.get(daemon.url + "/metrics", headers=auth).status_code == 404
    assert httpx.get(daemon.url + "/health").status_code == 200


def test_reload_changes_a_backend_in_place(daemon_factory, ollama_emulator):
    table = {"backends": [ollama_backend(ollama_emulator)]}
    daemon = daemon_factory(table)
    before = daemon.app.registry.backends[0]

    changes = daemon.reload({"backends": [ollama_backend(ollama_emulator, models=["llama3*"])]})

    assert changes == {"added": [], "removed": [], "changed": ["ollama"]}
    after = daemon.app.registry.backends[0]
    assert after is not before and before.retired and not after.retired
    answer = httpx.post(daemon.url + "/v1/chat/completions", json=ask("Changed"))
    assert answer.status_code == 200 and answer.headers["x-velollm-backend"] == "ollama"
    assert httpx.post(daemon.url + "/v1/chat/completions",
                      json={**ask("x"), "model": "nomic-embed-text"}).status_code == 404


def test_reload_applies_aliases(daemon_factory, ollama_emulator):
    table = {"backends": [ollama_backend(ollama_emulator)]}
    daemon = daemon_factory(table)
    before = httpx.post(daemon.url + "/v1/chat/completions", json={**ask("hi"), "model": "gpt-4o"})
    assert before.status_code == 404
    daemon.reload({**table, "aliases": {"gpt-4o": "llama3.2"}})
    after = httpx.post(daemon.url + "/v1/chat/completions", json={**ask("hi"), "model": "gpt-4o"})
    assert after.status_code == 200 and after.json()["model"] == "gpt-4o"
    assert "gpt-4o" in [m["id"] for m in httpx.get(daemon.url + "/v1/models").json()["data"]]


def counter_samples(text: str, prefix: str) -> dict[str, float]:
    """The samples of the metrics whose names start with `prefix`, by series."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def test_queue_counters_stay_monotonic_across_reloads(daemon_factory, ollama_emulator):
    table = {"backends": [ollama_backend(ollama_emulator)]}
    daemon = daemon_factory(table)
    for text in ("one", "two", "three"):
        assert httpx.post(daemon.url + "/v1/chat/completions", json=ask(text)).status_code == 200
    before = counter_samples(httpx.get(daemon.url + "/metrics").text, "velollm_queue_admitted_total")
    assert before == {'velollm_queue_admitted_total{backend="ollama"}': 3}

    daemon.reload({**table, "scheduler": {"aging_s": 5}})                         # settings only
    after_settings = counter_samples(httpx.get(daemon.url + "/metrics").text, "velollm_queue_admitted_total")
    daemon.reload({"backends": [ollama_backend(ollama_emulator, models=["llama3*"])]})   # the backend changed
    assert httpx.post(daemon.url + "/v1/chat/completions", json=ask("four")).status_code == 200
    after_change = counter_samples(httpx.get(daemon.url + "/metrics").text, "velollm_queue_admitted_total")

    assert after_settings == before
    assert after_change == {'velollm_queue_admitted_total{backend="ollama"}': 4}
    assert httpx.get(daemon.url + "/v1/velollm/queue").json()["backends"]["ollama"]["num_admitted"] == 4


def test_cache_stats_go_on_counting_across_a_reload_that_changes_the_cache(daemon_factory, ollama_emulator):
    """GET /v1/velollm/cache (and velollmctl status) counts since the start, as /metrics does;
    a reload that changed [cache] made a new cache whose hits, misses and stores began at 0."""
    table = {"backends": [ollama_backend(ollama_emulator)]}
    daemon = daemon_factory(table)
    for _ in range(2):
        assert httpx.post(daemon.url + "/v1/chat/completions", json=ask("Count me")).status_code == 200
    before = httpx.get(daemon.url + "/v1/velollm/cache").json()
    assert (before["hits"], before["misses"], before["stores"]) == (1, 1, 1)

    daemon.reload({**table, "cache": {"max_entries": 50}})
    assert httpx.post(daemon.url + "/v1/chat/completions", json=ask("Count me")).status_code == 200
    after = httpx.get(daemon.url + "/v1/velollm/cache").json()

    assert daemon.app.pipeline.cache.config.max_entries == 50
    assert (after["hits"], after["misses"], after["stores"]) == (2, 1, 1)
