"""Ollama-native requests (/api/chat, /api/generate passed through to Ollama) are routed as the
OpenAI routes are: a model served by two Ollama backends is balanced across them, and an
error status before any byte (Ollama's 500 when its runner crashed) is retried on the other
and counts against the failing backend's circuit breaker. Real daemon, two Ollama
emulators, the official ollama client."""
import httpx
import ollama

from tests.daemon_rig import RunningDaemon, ollama_backend
from tests.rig.ollama_emulator import OllamaEmulator

MODEL = "llama3.2:latest"
MESSAGES = [{"role": "user", "content": "hi"}]


def two_ollamas_daemon(a: OllamaEmulator, b: OllamaEmulator, **scheduler) -> RunningDaemon:
    return RunningDaemon({"backends": [ollama_backend(a, name="oa", health_interval_s=60),
                                       ollama_backend(b, name="ob", health_interval_s=60)],
                          "scheduler": scheduler, "cache": {"enabled": False}})


def test_native_requests_for_a_model_on_two_ollamas_are_balanced():
    with OllamaEmulator() as a, OllamaEmulator() as b, two_ollamas_daemon(a, b) as daemon:
        client = ollama.Client(host=daemon.url)
        for i in range(4):
            client.chat(model=MODEL, messages=[{"role": "user", "content": f"question {i}"}])
        for i in range(4):
            client.generate(model=MODEL, prompt=f"prompt {i}")
    assert a.count("/api/chat") >= 1 and b.count("/api/chat") >= 1
    assert a.count("/api/generate") >= 1 and b.count("/api/generate") >= 1


def test_an_ollama_error_status_fails_over_and_opens_its_circuit():
    with OllamaEmulator() as a, OllamaEmulator() as b, \
            two_ollamas_daemon(a, b, prefix_routing=False, breaker_failures=2, breaker_cooldown_s=600) as daemon:
        for _ in range(2):
            a.script(status=500, error="llama runner process has terminated")
        client = ollama.Client(host=daemon.url)
        answers = [client.chat(model=MODEL, messages=MESSAGES, stream=i % 2 == 1) for i in range(4)]
        for answer in answers[1::2]:
            assert "".join(part["message"]["content"] for part in answer)
        queue = httpx.get(daemon.url + "/v1/velollm/queue").json()
    assert all(answer["message"]["content"] for answer in answers[::2])
    assert a.count("/api/chat") == 2 and b.count("/api/chat") == 4
    assert queue["num_failovers"] == 2 and queue["backends"]["oa"]["breaker"] == "open"
