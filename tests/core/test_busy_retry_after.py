"""A busy backend (Ollama's 503 "server busy", any backend's 429) reaches the client as a 503
backend_busy with a Retry-After on every route: the backend's own when it gave one, else one
second, so that clients back off instead of hammering or giving up. Real daemon, the Ollama
emulator on real sockets, the official openai, ollama and anthropic clients."""
import anthropic
import httpx
import ollama
import openai
import pytest

from tests.daemon_rig import RunningDaemon, ollama_backend

MODEL = "llama3.2:latest"
MESSAGES = [{"role": "user", "content": "hi"}]
OLLAMA_BUSY = "server busy, please try again.  maximum pending requests exceeded"


@pytest.fixture
def daemon(ollama_emulator):
    table = {"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False},
             "scheduler": {"prefix_routing": False}}
    with RunningDaemon(table) as running:
        yield running


@pytest.mark.parametrize("status", [503, 429])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_openai_route_gets_503_backend_busy_with_retry_after(daemon, ollama_emulator, status, stream):
    ollama_emulator.script(status=status, error=OLLAMA_BUSY)
    sdk = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "1"
    error = caught.value.response.json()["error"]
    assert error["code"] == "backend_busy" and error["type"] == "api_error" and "busy" in error["message"]
    assert sdk.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content


@pytest.mark.parametrize("status", [503, 429])
def test_ollama_native_route_gets_503_with_retry_after(daemon, ollama_emulator, status):
    """The native /api/chat passes Ollama's answer through; a busy one (a 429 passed through
    as it was, without Retry-After) is our 503 in Ollama's error shape with a Retry-After."""
    ollama_emulator.script(status=status, error=OLLAMA_BUSY)
    raw = httpx.post(daemon.url + "/api/chat", json={"model": MODEL, "messages": MESSAGES, "stream": False},
                     timeout=30)
    assert raw.status_code == 503 and raw.headers["retry-after"] == "1"
    assert "busy" in raw.json()["error"]
    ollama_emulator.script(status=status, error=OLLAMA_BUSY)
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=daemon.url).chat(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 503 and "busy" in caught.value.error
    assert ollama.Client(host=daemon.url).chat(model=MODEL, messages=MESSAGES).message.content


def test_anthropic_route_gets_503_with_retry_after(daemon, ollama_emulator):
    ollama_emulator.script(status=503, error=OLLAMA_BUSY)
    client = anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES)
    assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.json()["type"] == "error"


def test_the_backends_own_retry_after_is_passed_on(daemon, ollama_emulator):
    ollama_emulator.script(status=503, error=OLLAMA_BUSY, headers={"Retry-After": "12"})
    raw = httpx.post(daemon.url + "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES}, timeout=30)
    assert raw.status_code == 503 and raw.headers["retry-after"] == "12"
