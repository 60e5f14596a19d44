"""GET /v1/velollm/runtime: the daemon's tasks, fds, threads, RSS and pooled backend connections
(what the soak watches for leaks); a key is needed when keys are configured."""
import httpx

from tests.daemon_rig import ollama_backend


def test_runtime_numbers_on_loopback(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})
    body = httpx.get(daemon.url + "/v1/velollm/runtime", timeout=10).json()
    assert body["object"] == "runtime"
    assert body["tasks"] >= 1 and body["open_fds"] >= 3 and body["threads"] >= 1
    assert body["rss_bytes"] > 10 * 1024 * 1024 and body["backend_idle_connections"] >= 0


def test_runtime_needs_the_key_when_keys_are_set(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"server": {"api_keys": ["sk-runtime"]}, "backends": [ollama_backend(ollama_emulator)]})
    refused = httpx.get(daemon.url + "/v1/velollm/runtime", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["type"]
    allowed = httpx.get(daemon.url + "/v1/velollm/runtime", headers={"authorization": "Bearer sk-runtime"},
                        timeout=10)
    assert allowed.status_code == 200 and allowed.json()["object"] == "runtime"
