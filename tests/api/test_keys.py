"""Named keys on a real daemon in front of the Ollama emulator: limits (429 rate_limit_exceeded
with an exact Retry-After, on a fake clock), token budgets from the answers' real usage,
`models` globs, usage in GET /v1/velollm/usage and /metrics, SHA-256 keys, flat api_keys, and
a reload that keeps the counters of keys that stay."""
import hashlib

import anthropic
import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_rig import ollama_backend
from tests.rig.ollama_replies import count_tokens, prompt_text
from tests.rig.waiting import wait_for
from velollmd.http.message import Request

KEYS = [
    {"name": "alice", "key": "sk-alice", "rpm": 5},
    {"name": "bob", "key_sha256": hashlib.sha256(b"sk-bob").hexdigest(), "priority": 1},
    {"name": "carol", "key": "sk-carol", "tpm": 20, "tokens_per_day": 60},
    {"name": "dave", "key": "sk-dave", "models": ["llama3*"]},
]
FLAT = "sk-flat"
FLAT_NAME = "sha256:" + hashlib.sha256(FLAT.encode()).hexdigest()[:8]
MAX_TOKENS = 8                                 # the emulator answers exactly this many tokens


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def table(emulator, keys=KEYS, **extra) -> dict:
    return {"backends": [ollama_backend(emulator, models=["llama3*", "tiny*", "nomic*"])],
            "server": {"api_keys": [FLAT]}, "scheduler": {"key_priorities": {FLAT: 7}},
            "keys": keys, **extra}


@pytest.fixture
def keyed(daemon_factory, ollama_emulator):
    """A daemon with the keys above, its limits on a fake clock."""
    daemon = daemon_factory(table(ollama_emulator))
    clock = Clock()
    daemon.app.ledger.clock = clock
    return daemon, clock


def client(daemon, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=key, max_retries=0)


def chat(openai_client, text="Say hello", model="llama3.2:latest", **extra):
    return openai_client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                 max_tokens=MAX_TOKENS, **extra)


def usage_of_all(daemon, key: str = "sk-alice") -> list[dict]:
    reply = httpx.get(daemon.url + "/v1/velollm/usage", headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 200
    return reply.json()["keys"]


def usage_of(daemon, name: str, key="sk-alice") -> dict:
    return {u["name"]: u for u in usage_of_all(daemon, key)}.get(name)


def prompt_tokens_sent(emulator) -> int:
    """What the emulator counted as prompt tokens over every generation request it got."""
    return sum(count_tokens(prompt_text(r.body)) for r in emulator.requests if r.path == "/api/chat")


def test_the_sixth_request_in_a_minute_gets_429_with_retry_after(keyed):
    daemon, clock = keyed
    alice = client(daemon, "sk-alice")
    for t in (0.0, 10.0, 20.0, 30.0, 40.0):
        clock.now = t
        chat(alice, f"Request at {t}")
    clock.now = 45.5
    with pytest.raises(openai.RateLimitError) as info:
        chat(alice, "One too many")
    assert info.value.status_code == 429 and info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after"] == "15"          # the 0 s slot frees at 60 s
    assert "'alice'" in info.value.message and "requests per minute (limit 5)" in info.value.message

    chat(client(daemon, "sk-bob"), "Bob is not limited")                # other keys unaffected
    chat(client(daemon, FLAT), "Nor is a flat key")
    with pytest.raises(ollama.ResponseError) as native:                 # the Ollama route: its own shape
        ollama.Client(host=daemon.url, headers={"Authorization": "Bearer sk-alice"}).chat(
            model="llama3.2:latest", messages=[{"role": "user", "content": "native"}], stream=False)
    assert native.value.status_code == 429 and "rate limit reached" in native.value.error
    clock.now = 60.0
    chat(alice, "A slot is free again")
    alice_usage = usage_of(daemon, "alice")
    assert alice_usage["requests"] == 6 and alice_usage["rate_limited"]["requests"] == 2


def test_token_counts_count_against_the_keys_request_limit(keyed):
    """Counting a prompt's tokens is a request of the key (as Anthropic counts it against a
    rate limit): past the limit it is a 429 in the route's own error shape, and /v1/velollm/usage
    counts it."""
    daemon, clock = keyed
    anthropic_client = anthropic.Anthropic(base_url=daemon.url, api_key="sk-alice", max_retries=0)
    count = dict(model="llama3.2:latest", messages=[{"role": "user", "content": "count me"}])
    for t in (0.0, 10.0, 20.0):
        clock.now = t
        assert anthropic_client.messages.count_tokens(**count).input_tokens > 0
    clock.now = 30.0
    responses = httpx.post(daemon.url + "/v1/responses/input_tokens", headers={"Authorization": "Bearer sk-alice"},
                           json={"model": "llama3.2:latest", "input": "count me"})
    assert responses.status_code == 200
    chat(client(daemon, "sk-alice"))                                   # the fifth request
    clock.now = 40.0
    with pytest.raises(anthropic.RateLimitError) as info:
        anthropic_client.messages.count_tokens(**count)
    assert info.value.body["error"]["type"] == "rate_limit_error" and int(info.value.response.headers["retry-after"]) > 0
    refused = httpx.post(daemon.url + "/v1/responses/input_tokens", headers={"Authorization": "Bearer sk-alice"},
                         json={"model": "llama3.2:latest", "input": "count me"})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    alice_usage = usage_of(daemon, "alice")
    assert alice_usage["requests"] == 5 and alice_usage["rate_limited"]["requests"] == 2


def test_token_budgets_count_real_usage_of_answers_and_streams(keyed, ollama_emulator):
    daemon, clock = keyed
    carol = client(daemon, "sk-carol")
    first = chat(carol, "one two three")
    assert first.usage.completion_tokens == MAX_TOKENS
    chunks = list(chat(carol, "four five", stream=True))                # no usage asked: the client sees
    assert chunks and all(chunk.usage is None for chunk in chunks)      # none, the budget counts it
    spent = usage_of(daemon, "carol")
    assert spent["prompt_tokens"] == prompt_tokens_sent(ollama_emulator) == 5
    assert spent["completion_tokens"] == 2 * MAX_TOKENS
    assert spent["window"]["tokens_last_minute"] == 21
    clock.now = 30.0
    with pytest.raises(openai.RateLimitError) as info:
        chat(carol, "over the minute's budget")
    assert info.value.code == "rate_limit_exceeded" and info.value.response.headers["retry-after"] == "30"
    assert "tokens per minute (limit 20)" in info.value.message

    while True:                                                          # spend the day's 60 tokens
        clock.now += 60.0
        try:
            chat(carol, f"minute {clock.now}")
        except openai.RateLimitError as exc:
            assert "tokens per day (limit 60)" in exc.message
            assert int(exc.response.headers["retry-after"]) == 86400 - int(clock.now)
            break
    clock.now = 86400.0 + 3600.0
    chat(carol, "a new day")
    spent = usage_of(daemon, "carol")
    assert spent["prompt_tokens"] == prompt_tokens_sent(ollama_emulator)
    assert spent["rate_limited"] == {"requests": 0, "tokens": 1, "tokens_per_day": 1}


def test_a_stream_the_client_leaves_before_its_usage_is_charged_as_estimated(keyed, ollama_emulator):
    """A client that reads a stream and hangs up before the usage chunk used to be charged
    nothing, so token limits could be dodged; what was relayed is charged, estimated."""
    daemon, _ = keyed
    ollama_emulator.script(" ".join(f"w{i}" for i in range(40)), delay_s=0.05)
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-carol"},
                      json={"model": "llama3.2:latest", "stream": True,
                            "messages": [{"role": "user", "content": "a long answer please"}]}) as answer:
        lines = answer.iter_lines()
        assert [next(lines) for _ in range(6)]              # three events and their blank lines
    assert wait_for(lambda: (usage_of(daemon, "carol") or {}).get("completion_tokens", 0) > 0)
    spent = usage_of(daemon, "carol")
    assert 3 <= spent["completion_tokens"] < 40 and spent["prompt_tokens"] > 0


def test_native_ollama_answers_count_too(keyed, ollama_emulator):
    daemon, _ = keyed
    native = ollama.Client(host=daemon.url, headers={"Authorization": "Bearer sk-bob"})
    whole = native.chat(model="llama3.2:latest", messages=[{"role": "user", "content": "Hi there"}],
                        stream=False, options={"num_predict": 5})
    parts = list(native.generate(model="llama3.2:latest", prompt="Tell me more", stream=True,
                                 options={"num_predict": 3}))
    spent = usage_of(daemon, "bob")
    assert spent["prompt_tokens"] == whole.prompt_eval_count + parts[-1].prompt_eval_count
    assert spent["completion_tokens"] == whole.eval_count + parts[-1].eval_count == 8
    assert spent["requests"] == 2


def test_models_globs_hide_and_refuse_other_models(keyed):
    daemon, _ = keyed
    dave = client(daemon, "sk-dave")
    assert [m.id for m in dave.models.list().data] == ["llama3.2:latest"]
    assert chat(dave).choices[0].message.content
    with pytest.raises(openai.NotFoundError) as info:
        chat(dave, model="tiny:latest")
    assert info.value.code == "model_not_found" and "tiny:latest" in info.value.message
    with pytest.raises(openai.NotFoundError):
        dave.models.retrieve("tiny:latest")
    with pytest.raises(openai.NotFoundError):
        dave.embeddings.create(model="nomic-embed-text:latest", input="x")
    native = ollama.Client(host=daemon.url, headers={"Authorization": "Bearer sk-dave"})
    assert [m.model for m in native.list().models] == ["llama3.2:latest"]
    with pytest.raises(ollama.ResponseError) as refused:
        native.chat(model="tiny:latest", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert refused.value.status_code == 404
    assert len(client(daemon, "sk-alice").models.list().data) == 3     # "*" by default
    assert usage_of(daemon, "dave")["requests"] == 1                   # refusals are not requests


def test_a_flat_key_that_is_also_a_named_key_is_listed_once_by_its_name(daemon_factory, ollama_emulator):
    daemon = daemon_factory(table(ollama_emulator, keys=[{"name": "erin", "key": FLAT}]))
    chat(client(daemon, FLAT), "Counted once")
    usage = {u["name"]: u for u in usage_of_all(daemon, FLAT)}
    assert set(usage) == {"erin"} and usage["erin"]["requests"] == 1


def test_usage_route_and_metrics_per_key(keyed):
    daemon, _ = keyed
    alice = client(daemon, "sk-alice")
    first = chat(alice, "Cache me", temperature=0)                      # greedy: cacheable
    for _ in range(2):                                                  # a lookup, then the replay memo
        again = alice.chat.completions.with_raw_response.create(
            model="llama3.2:latest", messages=[{"role": "user", "content": "Cache me"}],
            max_tokens=MAX_TOKENS, temperature=0)
        assert again.headers["x-velollm-cache"] == "hit-exact"
    assert daemon.app.pipeline.memo                                    # the second hit came from it
    chat(client(daemon, "sk-bob"), "Bob pays")
    chat(client(daemon, FLAT), "Flat key")

    reply = httpx.get(daemon.url + "/v1/velollm/usage", headers={"Authorization": "Bearer sk-bob"})
    assert reply.json()["object"] == "usage" and "sk-" not in reply.text
    usage = {u["name"]: u for u in reply.json()["keys"]}
    assert set(usage) == {"alice", "bob", "carol", "dave", FLAT_NAME}
    assert (usage["alice"]["requests"], usage["alice"]["cache_hits"]) == (3, 2)
    assert usage["alice"]["prompt_tokens"] == first.usage.prompt_tokens      # the hit cost nothing
    assert usage["alice"]["completion_tokens"] == MAX_TOKENS
    assert usage["alice"]["limits"] == {"rpm": 5, "tpm": 0, "tokens_per_day": 0}
    assert usage[FLAT_NAME]["requests"] == 1 and usage["carol"]["requests"] == 0

    metrics = httpx.get(daemon.url + "/metrics", headers={"Authorization": "Bearer sk-alice"}).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    assert samples[("velollm_key_requests_total", (("key", "alice"),))] == 3
    assert samples[("velollm_key_cache_hits_total", (("key", "alice"),))] == 2
    prompt_tokens = samples[("velollm_key_tokens_total", (("key", "alice"), ("kind", "prompt")))]
    assert prompt_tokens == first.usage.prompt_tokens
    assert samples[("velollm_key_tokens_total", (("key", "bob"), ("kind", "completion")))] == MAX_TOKENS
    assert samples[("velollm_key_requests_total", (("key", FLAT_NAME),))] == 1
    assert samples[("velollm_key_rate_limited_total", (("key", "alice"), ("limit", "requests")))] == 0


def test_a_cache_hit_the_keys_limit_refuses_is_not_counted_as_a_hit(keyed):
    """Past its rpm, a repeat of a cached chat is a 429 whether the lookup or the replay
    memo finds it: /v1/velollm/cache, velollm_cache_lookups_total and the key's cache_hits
    count only the hits that were served (the memo's were counted before the key's check)."""
    daemon, clock = keyed
    alice = client(daemon, "sk-alice")
    for _ in range(5):                                                  # a miss, a lookup hit, 3 memo hits
        chat(alice, "Cache me", temperature=0)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            chat(alice, "Cache me", temperature=0)
    auth = {"Authorization": "Bearer sk-bob"}
    cache = httpx.get(daemon.url + "/v1/velollm/cache", headers=auth).json()
    metrics = httpx.get(daemon.url + "/metrics", headers=auth).text
    lookups = {s.labels["result"]: s.value for family in text_string_to_metric_families(metrics)
               for s in family.samples if s.name == "velollm_cache_lookups_total"}
    assert cache["hits"] == 4 and lookups["hit-exact"] == 4
    assert usage_of(daemon, "alice", key="sk-bob")["cache_hits"] == 4


def test_priorities_from_keys_key_priorities_and_the_header(keyed):
    daemon, _ = keyed
    access = daemon.app.access

    def priority(key, *headers):
        return access.priority_of(Request("POST", "/v1/chat/completions",
                                          [("authorization", f"Bearer {key}"), *headers]))
    assert (priority("sk-bob"), priority(FLAT), priority("sk-alice")) == (1, 7, 5)
    assert priority("sk-bob", ("x-velollm-priority", "3")) == 3      # lower than its own: taken
    assert priority(FLAT, ("x-velollm-priority", "0")) == 7           # higher: the key's is the ceiling
    assert priority("sk-alice", ("x-velollm-priority", "0")) == 0     # no configured priority: the header's


def test_reload_applies_keys_and_keeps_the_counters_of_keys_that_stay(keyed, ollama_emulator):
    daemon, clock = keyed
    alice = client(daemon, "sk-alice")
    for i in range(3):
        chat(alice, f"before reload {i}")
    chat(client(daemon, "sk-carol"), "carol goes")
    before = usage_of(daemon, "alice")

    keys = [{**KEYS[0], "rpm": 3}, KEYS[1], {"name": "erin", "key": "sk-erin", "models": ["tiny*"]}]
    daemon.reload(table(ollama_emulator, keys=keys))

    after = usage_of(daemon, "alice")
    assert {k: after[k] for k in ("requests", "prompt_tokens", "completion_tokens")} == \
        {k: before[k] for k in ("requests", "prompt_tokens", "completion_tokens")}
    assert after["limits"]["rpm"] == 3
    with pytest.raises(openai.RateLimitError) as info:                  # its window came along
        chat(alice, "a fourth in the minute")
    assert info.value.response.headers["retry-after"] == "60"
    assert usage_of(daemon, "carol") is None and usage_of(daemon, "erin")["requests"] == 0
    with pytest.raises(openai.AuthenticationError):
        chat(client(daemon, "sk-carol"))
    erin = client(daemon, "sk-erin")
    with pytest.raises(openai.NotFoundError):
        chat(erin)
    assert chat(erin, model="tiny:latest").usage.completion_tokens == MAX_TOKENS
    clock.now = 60.0
    chat(alice, "a new minute")
