"""Failure behaviour: disconnects, dead and slow backends, health-based routing."""

import os
import signal

import httpx
import openai
import pytest

from tests.daemon_rig import llama_backend, ollama_backend
from tests.rig.net import free_port
from tests.rig.waiting import wait_for

MESSAGES = [{"role": "user", "content": "hi"}]


def test_client_disconnect_mid_stream_cancels_the_upstream_request(daemon, ollama_emulator):
    ollama_emulator.script(" ".join(["word"] * 200), delay_s=0.05)
    body = {"model": "llama3.2:latest", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if '"content":"word"' in line:
                break
    assert wait_for(lambda: ollama_emulator.disconnects == 1)


def test_unreachable_backend_is_503_no_healthy_backend(daemon_factory):
    daemon = daemon_factory({"backends": [{"name": "dead", "kind": "llamacpp",
                                           "url": f"http://127.0.0.1:{free_port()}", "models": ["*"]}]})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="anything", messages=MESSAGES)
    assert info.value.status_code == 503 and info.value.body["code"] == "no_healthy_backend"
    health = httpx.get(daemon.url + "/health").json()
    assert health["backends"][0]["healthy"] is False and "cannot connect" in health["backends"][0]["error"]


def test_backend_dying_after_health_check_is_502(daemon_factory, llama_server_factory):
    server = llama_server_factory()
    daemon = daemon_factory({"backends": [llama_backend(server, health_interval_s=600)]})
    server.kill()
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    assert info.value.status_code == 502


def test_upstream_timeout_is_504(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator, timeout_s=0.3)]})
    ollama_emulator.script("late answer", delay_s=1.5)
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES)
    assert info.value.status_code == 504
    metrics = httpx.get(daemon.url + "/metrics").text
    assert 'velollm_backend_errors_total{backend="ollama",kind="timeout"} 1' in metrics


def test_a_hung_backend_is_marked_down_by_its_health_check_and_up_again(daemon_factory, llama_server_factory):
    """A llama-server that accepts connections but answers nothing (stopped, deadlocked) fails
    its health check in seconds, not after the long read timeout meant for generations."""
    server = llama_server_factory()
    daemon = daemon_factory({"backends": [llama_backend(server, health_interval_s=0.2, timeout_s=600)]})

    def health() -> dict:
        return httpx.get(daemon.url + "/health", timeout=10).json()["backends"][0]
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        assert wait_for(lambda: health()["healthy"] is False, limit_s=30), health()
        assert "health check" in health()["error"]
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert wait_for(lambda: health()["healthy"] is True, limit_s=30), health()


def test_unhealthy_backend_is_skipped(daemon_factory, llama_server):
    dead = {"name": "dead", "kind": "llamacpp", "url": f"http://127.0.0.1:{free_port()}", "models": ["tiny*"]}
    daemon = daemon_factory({"backends": [dead, llama_backend(llama_server)]})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    response = client.chat.completions.with_raw_response.create(model="tiny", messages=MESSAGES, max_tokens=2)
    assert response.headers["x-velollm-backend"] == "llama"


def test_invalid_json_is_400_and_the_daemon_keeps_serving(daemon):
    bad = httpx.post(daemon.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    wrong_type = httpx.post(daemon.url + "/v1/chat/completions", json=[1, 2], timeout=10)
    assert wrong_type.status_code == 400
    ok = httpx.post(daemon.url + "/v1/chat/completions", timeout=30,
                    json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2})
    assert ok.status_code == 200


def test_embeddings_fail_over_to_another_backend(daemon_factory, ollama_emulator):
    dead = {"name": "dead", "kind": "ollama", "url": f"http://127.0.0.1:{free_port()}",
            "models": ["nomic*"], "health_interval_s": 600}
    daemon = daemon_factory({"backends": [dead, ollama_backend(ollama_emulator)]})
    dead_backend, live_backend = daemon.app.registry.backends
    dead_backend.healthy, dead_backend.models = None, list(live_backend.models)   # looks fine: tried first
    failures_before = daemon.app.service.breaker(dead_backend).consecutive_failures
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    response = client.embeddings.with_raw_response.create(model="nomic-embed-text:latest", input="hi")
    assert response.headers["x-velollm-backend"] == "ollama"
    assert len(response.parse().data[0].embedding) == 64
    assert daemon.app.service.breaker(dead_backend).consecutive_failures == failures_before + 1