"""What a reload applies in a running daemon: keys, scheduler, tool-call and metrics settings,
a changed cache that keeps its entries, backends added and taken out (App.reload, which SIGHUP
calls; tests/test_reload.py drives the signal on a real process)."""
import hashlib

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_rig import engine_backend, ollama_backend
from tests.rig.llama import make_tiny_model


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


def test_a_reload_mid_stream_that_revokes_its_key_and_renames_its_backend(daemon_factory, tmp_path):
    """The stream under way finishes with its usage; from then on the revoked key is a 401, the
    key that stays has its new limits, only the new backend is in /health, and /metrics parses."""
    make_tiny_model(tmp_path / "tiny.gguf")
    alice, bob = "sk-alice-reload-mid-stream", "sk-bob-reload-mid-stream"
    keys = [{"name": "alice", "key": alice}, {"name": "bob", "key": bob}]
    daemon = daemon_factory({"backends": [engine_backend(tmp_path)], "cache": {"enabled": False}, "keys": keys})
    stream = openai.OpenAI(base_url=daemon.url + "/v1", api_key=alice, max_retries=0).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=24, stream=True,
        stream_options={"include_usage": True})
    chunks = [next(stream)]
    changes = daemon.reload({"backends": [engine_backend(tmp_path, name="engine2")], "cache": {"enabled": False},
                             "keys": [{"name": "bob", "key": bob, "rpm": 1}]})
    chunks += list(stream)
    assert changes["added"] == ["engine2"] and changes["removed"] == ["engine"]
    assert chunks[-1].usage.completion_tokens == 24

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answers = [httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {key}"}) for key in (alice, bob, bob)]
    assert [a.status_code for a in answers] == [401, 200, 429]
    assert answers[1].headers["x-velollm-backend"] == "engine2"
    assert [b["name"] for b in httpx.get(daemon.url + "/health").json()["backends"]] == ["engine2"]
    text = httpx.get(daemon.url + "/metrics", headers={"authorization": f"Bearer {bob}"}).text
    keyed = {s.labels["key"] for f in text_string_to_metric_families(text) for s in f.samples if "key" in s.labels}
    assert keyed == {"bob"}
