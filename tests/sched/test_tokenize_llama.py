"""Prefix routing on real token ids, end to end: the daemon in front of a real llama-server
(tiny model, --parallel 2, host prompt cache off) and, for the fallback, the Ollama emulator.

Two conversations of long messages, interleaved over three turns. Every request's token
count in the Scheduler is what llama-server's own /tokenize says for its messages (plus the
role overhead per message), each message text is tokenized once across all turns, and each
conversation keeps landing on the slot that holds its KV cache."""
import json
import urllib.request

import openai
import pytest

from tests.daemon_rig import RunningDaemon, llama_backend, ollama_backend
from velollmd.sched.fingerprint import MESSAGE_OVERHEAD_TOKENS, fingerprint_of
from velollmd.wire.request import GenerateRequest

NUM_TURNS = 3


@pytest.fixture
def server(llama_server_factory):
    return llama_server_factory(parallel=2, ctx_size=8192, extra_args=["--cache-ram", "0"])


def long_text(conversation: int, turn: int, role: str) -> str:
    """A message of 300+ characters, different for every conversation, turn and role."""
    return " ".join(f"{role}{conversation} turn{turn} line{i} alpha beta gamma" for i in range(10))


def server_tokenize(server, text: str) -> list[int]:
    body = json.dumps({"content": text, "add_special": False}).encode()
    request = urllib.request.Request(server.url + "/tokenize", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)["tokens"]


def record_scheduled(service) -> list:
    """(messages, prompt token ids) of every request the Service hands to its Scheduler."""
    seen = []
    make = service._sched_request

    def recording(backend, request, fingerprint):
        scheduled = make(backend, request, fingerprint)
        seen.append((request.body.get("messages"), list(scheduled.prompt_token_ids)))
        return scheduled
    service._sched_request = recording
    return seen


def run_conversations(daemon, model: str, num_conversations: int = 2):
    """Interleaved turns; each turn adds a long user message, then a long assistant message
    (written here, so that every message is long). Returns the timings per (conversation, turn)."""
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    histories = [[] for _ in range(num_conversations)]
    timings = {}
    for turn in range(NUM_TURNS):
        for index, messages in enumerate(histories):
            messages.append({"role": "user", "content": long_text(index, turn, "user")})
            completion = client.chat.completions.create(model=model, messages=messages, max_tokens=4)
            timings[index, turn] = (completion.model_extra or {}).get("timings")
            messages.append({"role": "assistant", "content": long_text(index, turn, "assistant")})
    return timings


def test_scheduler_counts_real_tokens_each_text_is_tokenized_once_and_slots_hold(server):
    with RunningDaemon({"backends": [llama_backend(server)]}) as daemon:
        scheduled = record_scheduled(daemon.app.service)
        timings = run_conversations(daemon, "tiny")
        with urllib.request.urlopen(daemon.url + "/v1/velollm/queue", timeout=5) as response:
            stats = json.load(response)
    assert len(scheduled) == 2 * NUM_TURNS
    for messages, token_ids in scheduled:
        real = [server_tokenize(server, m["content"]) for m in messages]
        assert len(token_ids) == sum(map(len, real)) + MESSAGE_OVERHEAD_TOKENS * len(messages)
        start = MESSAGE_OVERHEAD_TOKENS
        for ids in real:                           # the real ids, each after its role marker
            assert token_ids[start:start + len(ids)] == ids
            start += len(ids) + MESSAGE_OVERHEAD_TOKENS
    num_texts = 2 * (2 * NUM_TURNS - 1)           # distinct messages sent: user + assistant
    assert stats["tokenize"]["num_tokenized"] == num_texts and stats["tokenize"]["num_failed"] == 0
    assert stats["tokenize"]["num_hits"] == 2 * sum(2 * turn - 1 for turn in range(1, NUM_TURNS))
    assert stats["routing"]["num_slot_hits"] == 2 * (NUM_TURNS - 1)
    for (index, turn), t in timings.items():       # the slot still held the previous prompt
        if turn > 0:
            previous = timings[index, turn - 1]
            assert t["cache_n"] >= 0.9 * (previous["cache_n"] + previous["prompt_n"]), (index, turn, t)


def estimated_counts(scheduled, model: str) -> list[tuple[int, int]]:
    """(count the Scheduler got, the text estimate) per request."""
    return [(len(ids), fingerprint_of(GenerateRequest("chat", {"model": model, "messages": messages})).total_tokens)
            for messages, ids in scheduled]


def test_an_ollama_backend_routes_on_the_estimate(ollama_emulator):
    with RunningDaemon({"backends": [ollama_backend(ollama_emulator)]}) as daemon:
        scheduled = record_scheduled(daemon.app.service)
        run_conversations(daemon, "llama3.2")
        stats = daemon.app.service.stats()["tokenize"]
    counts = estimated_counts(scheduled, "llama3.2")
    assert len(counts) == 2 * NUM_TURNS and all(got == estimate for got, estimate in counts)
    assert stats["num_tokenized"] == stats["num_failed"] == stats["num_hits"] == 0
    assert ollama_emulator.count("/tokenize") == 0


def test_a_llamacpp_backend_without_tokenize_falls_back_to_the_estimate(ollama_emulator):
    """A llama.cpp-kind backend whose server has no /tokenize (the emulator's OpenAI layer):
    the first call fails (404), every request still succeeds on the estimate, and the backend
    rests instead of being asked again on every request."""
    table = {"backends": [{"name": "plain", "kind": "llamacpp", "url": ollama_emulator.url,
                           "models": ["llama3*"]}]}
    with RunningDaemon(table) as daemon:
        scheduled = record_scheduled(daemon.app.service)
        run_conversations(daemon, "llama3.2")
        stats = daemon.app.service.stats()["tokenize"]
    assert all(got == estimate for got, estimate in estimated_counts(scheduled, "llama3.2"))
    assert len(scheduled) == 2 * NUM_TURNS
    assert stats["num_failed"] >= 1 and stats["num_tokenized"] == 0
    assert ollama_emulator.count("/tokenize") == stats["num_failed"] < 2 * NUM_TURNS
