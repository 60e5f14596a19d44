"""Errors raised before an Ollama route's handler runs (no key, a refused origin, no such
route, a body over the limit) come in Ollama's `{"error": "..."}` shape like the handlers'
own, so the official `ollama` client shows their message, not a dict."""
import httpx
import ollama
import pytest

from tests.daemon_rig import ollama_backend

MODEL = "llama3.2:latest"
HI = [{"role": "user", "content": "hi"}]


def test_errors_before_the_handler_have_ollamas_shape(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"server": {"api_keys": ["sk-native"], "max_body_bytes": 4096},
                             "backends": [ollama_backend(ollama_emulator)]})
    with pytest.raises(ollama.ResponseError) as no_key:
        ollama.Client(host=daemon.url).chat(model=MODEL, messages=HI, stream=False)
    assert no_key.value.status_code == 401 and no_key.value.error == "invalid or missing API key"

    keyed = {"authorization": "Bearer sk-native"}
    with pytest.raises(ollama.ResponseError) as too_large:
        ollama.Client(host=daemon.url, headers=keyed).chat(
            model=MODEL, messages=[{"role": "user", "content": "x" * 8192}], stream=False)
    assert too_large.value.status_code == 413 and isinstance(too_large.value.error, str)

    origin = httpx.post(daemon.url + "/api/chat", json={"model": MODEL, "messages": HI},
                        headers={**keyed, "origin": "https://evil.example"})
    assert origin.status_code == 403 and "allowed_origins" in origin.json()["error"]
    missing = httpx.post(daemon.url + "/api/nothing", json={}, headers=keyed)
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    # the OpenAI routes keep OpenAI's shape
    openai_shape = httpx.post(daemon.url + "/v1/chat/completions", json={"model": MODEL, "messages": HI})
    assert openai_shape.status_code == 401 and openai_shape.json()["error"]["code"] == "invalid_api_key"
