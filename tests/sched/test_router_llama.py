"""Prefix-aware routing end to end: the daemon in front of two real llama-servers (tiny
model, --parallel 2 each, host prompt cache off so that only the slot's own KV can serve a
cached prefix). Conversations keep landing on their backend and slot: later turns find their
prompt cached (timings.cache_n), and llama-server's /slots shows one conversation per slot."""
import json
import urllib.request

import openai
import pytest

from tests.daemon_rig import RunningDaemon, llama_backend

NO_HOST_CACHE = ["--cache-ram", "0"]


@pytest.fixture
def two_servers(llama_server_factory):
    return [llama_server_factory(parallel=2, ctx_size=8192, extra_args=NO_HOST_CACHE) for _ in range(2)]


def conversation_text(index: int) -> str:
    return " ".join(f"topic{index} line{i} alpha beta gamma" for i in range(60))


def chat_turn(client, messages):
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=messages, max_tokens=8)
    completion = raw.parse()
    return raw.headers["x-velollm-backend"], completion.model_extra["timings"], completion


def run_conversations(daemon, num_conversations=4, num_turns=3):
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    histories = [[{"role": "user", "content": conversation_text(i)}] for i in range(num_conversations)]
    turns = []                                   # (conversation, turn, backend, timings)
    for turn in range(num_turns):
        for index, messages in enumerate(histories):
            backend, timings, completion = chat_turn(client, messages)
            turns.append((index, turn, backend, timings))
            messages += [{"role": "assistant", "content": completion.choices[0].message.content},
                         {"role": "user", "content": f"question {turn} about topic{index}"}]
    return turns


def slots_of(server):
    with urllib.request.urlopen(server.url + "/slots", timeout=5) as response:
        return json.load(response)


def test_multi_turn_conversations_keep_landing_on_their_slot(two_servers):
    table = {"backends": [llama_backend(s, name=f"llama{i}") for i, s in enumerate(two_servers)]}
    with RunningDaemon(table) as daemon:
        turns = run_conversations(daemon)
        stats = daemon.app.service.stats()
    backends = {}
    for index, turn, backend, timings in turns:
        backends.setdefault(index, set()).add(backend)
        if turn > 0:                             # later turns: the prompt is mostly cached
            assert timings["cache_n"] >= 0.9 * (timings["cache_n"] + timings["prompt_n"]), (index, turn, timings)
    assert all(len(names) == 1 for names in backends.values())
    assert {next(iter(names)) for names in backends.values()} == {"llama0", "llama1"}
    assert stats["routing"]["num_slot_hits"] == 8          # every later turn was pinned to its slot
    for server in two_servers:                   # each slot holds one conversation's KV
        held = [s["n_prompt_tokens"] if "n_prompt_tokens" in s else s.get("n_past", 0) for s in slots_of(server)]
        assert len(held) == 2 and all(n > 100 for n in held), held


def test_without_prefix_routing_later_turns_miss_the_cache(two_servers):
    """The control: round-robin / least load spreads each conversation over both backends."""
    table = {"backends": [llama_backend(s, name=f"llama{i}") for i, s in enumerate(two_servers)],
             "scheduler": {"prefix_routing": False}}
    with RunningDaemon(table) as daemon:
        turns = run_conversations(daemon, num_conversations=3)   # odd: turns alternate backends
    backends = {}
    for index, _, backend, _ in turns:
        backends.setdefault(index, set()).add(backend)
    later = [t for (_, turn, _, t) in turns if turn > 0]
    num_mostly_cached = sum(t["cache_n"] >= 0.9 * (t["cache_n"] + t["prompt_n"]) for t in later)
    assert any(len(names) == 2 for names in backends.values())
    assert num_mostly_cached < len(later)
