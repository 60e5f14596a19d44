"""The response cache through the daemon: the backend's request count proves no call was made."""
import asyncio
import json

import httpx
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, ollama_backend
from tests.rig.llama import make_tiny_model

MODEL = "llama3.2:latest"


def ask(text: str, **extra) -> dict:
    return {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def cached(daemon_factory, ollama_emulator):
    return daemon_factory({"backends": [ollama_backend(ollama_emulator)]})


@pytest.fixture(scope="module")
def engine_cached(tmp_path_factory):
    """The in-process engine serving the tiny model as "eng", with the cache on."""
    folder = tmp_path_factory.mktemp("engine-models")
    make_tiny_model(folder / "eng.gguf")
    with RunningDaemon({"backends": [engine_backend(folder)]}) as daemon:
        yield daemon


def post(daemon, body, headers=None):
    return httpx.post(daemon.url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=30)


def test_exact_hit_makes_no_backend_call(cached, ollama_emulator):
    ollama_emulator.script("The capital of France is Paris.")
    first = post(cached, ask("What is the capital of France?"))
    second = post(cached, ask("What is the capital of France?", stream=False, user="someone"))
    assert first.headers["x-velollm-cache"] == "miss" and second.headers["x-velollm-cache"] == "hit-exact"
    assert second.json()["choices"][0]["message"]["content"] == "The capital of France is Paris."
    assert second.json()["usage"] == first.json()["usage"]
    assert ollama_emulator.count("/api/chat") == 1


def test_parameters_that_change_output_miss(cached, ollama_emulator):
    post(cached, ask("Name a colour."))
    for variant in (ask("Name a colour.", max_tokens=5), ask("Name a colour.", seed=3),
                    ask("Name a colour.", temperature=0.1, seed=1), ask("Name a color")):
        assert post(cached, variant).headers["x-velollm-cache"] in ("miss",)
    assert ollama_emulator.count("/api/chat") == 5


def test_explicit_neutral_values_hit_the_answer_cached_without_them(cached, ollama_emulator):
    post(cached, ask("Name a fruit."))
    neutral = dict(n=1, logprobs=False, stop=[], frequency_penalty=0, presence_penalty=0,
                   response_format={"type": "text"}, tool_choice="none", logit_bias={})
    assert post(cached, ask("Name a fruit.", **neutral)).headers["x-velollm-cache"] == "hit-exact"
    assert ollama_emulator.count("/api/chat") == 1


def test_the_exact_hit_memo_does_not_keep_request_bodies(cached, ollama_emulator):
    long_question = "Summarise this: " + "lorem ipsum " * 20_000         # ~240 kB
    for _ in range(2):
        assert post(cached, ask(long_question)).status_code == 200
    again = post(cached, ask(long_question))                              # the same bytes: from the memo
    assert again.headers["x-velollm-cache"] == "hit-exact" and again.json()["choices"][0]["message"]["content"]
    [(_, _, remembered)] = cached.app.pipeline.memo.values()
    assert len(json.dumps(remembered.body)) < 1000
    assert ollama_emulator.count("/api/chat") == 1


def test_semantic_hit_on_a_paraphrase(cached, ollama_emulator):
    ollama_emulator.script("Use the reset link on the login page.")
    post(cached, ask("How do I reset my password?"))
    hit = post(cached, ask("how do I reset my password"))
    assert hit.headers["x-velollm-cache"] == "hit-semantic"
    assert float(hit.headers["x-velollm-similarity"]) >= 0.95
    assert hit.json()["choices"][0]["message"]["content"] == "Use the reset link on the login page."
    assert ollama_emulator.count("/api/chat") == 1


@pytest.mark.parametrize("first,second", [
    ("Should I turn the heater on?", "Should I not turn the heater on?"),
    ("Is it safe to take 2 tablets?", "Is it safe to take 20 tablets?"),
    ("Translate 'yes' to French", "Translate 'no' to French"),
    ("What is 2+2?", "What is 2-2?"),
])
def test_negations_numbers_and_quotes_miss(cached, ollama_emulator, first, second):
    post(cached, ask(first))
    assert post(cached, ask(second)).headers["x-velollm-cache"] == "miss"
    assert ollama_emulator.count("/api/chat") == 2


def test_non_stream_entry_replays_as_sse_and_back(cached, ollama_emulator):
    ollama_emulator.script(chunks=["Hello", " there", " general", " Kenobi"])
    client = openai.OpenAI(base_url=cached.url + "/v1", api_key="x", max_retries=0)
    whole = client.chat.completions.create(**ask("Greet me."))
    stream = list(client.chat.completions.create(**ask("Greet me."), stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content == "Hello there general Kenobi"
    assert stream[0].choices[0].delta.role == "assistant"
    assert stream[-1].usage.completion_tokens == whole.usage.completion_tokens
    ollama_emulator.script(chunks=["Streamed", " first"])
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        **ask("Stream first."), stream=True) if c.choices)
    replayed = client.chat.completions.with_raw_response.create(**ask("Stream first."))
    assert replayed.headers["x-velollm-cache"] == "hit-exact"
    assert replayed.parse().choices[0].message.content == streamed == "Streamed first"
    assert ollama_emulator.count("/api/chat") == 2


def test_completions_are_cached_and_replayed_as_text_completions(cached, ollama_emulator):
    ollama_emulator.script(chunks=["Once", " upon", " a", " time"])
    client = openai.OpenAI(base_url=cached.url + "/v1", api_key="x", max_retries=0)
    args = dict(model=MODEL, prompt="Begin a story:", temperature=0, max_tokens=8)
    first = client.completions.with_raw_response.create(**args)
    again = client.completions.with_raw_response.create(**args)
    assert [first.headers["x-velollm-cache"], again.headers["x-velollm-cache"]] == ["miss", "hit-exact"]
    whole = again.parse()
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.choices[0].text == first.parse().choices[0].text == "Once upon a time"
    stream = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in stream if c.choices) == "Once upon a time"
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == whole.choices[0].finish_reason
    assert stream[-1].usage.completion_tokens == whole.usage.completion_tokens
    chat = post(cached, ask("Begin a story:", max_tokens=8))          # another endpoint, another key
    assert chat.headers["x-velollm-cache"] == "miss"
    assert ollama_emulator.count("/api/generate") == 1


def test_tool_calls_survive_the_cache(cached, ollama_emulator):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ollama_emulator.script(tool_calls=[{"name": "f", "arguments": {"x": 1}}])
    first = post(cached, ask("call f", tools=[tool])).json()
    second = post(cached, ask("call f", tools=[tool], stream=True))
    events = [json.loads(l[6:]) for l in second.text.splitlines() if l.startswith("data: {")]
    [fragment] = [tc for e in events for c in e["choices"] for tc in c["delta"].get("tool_calls", [])]
    assert json.loads(fragment["function"]["arguments"]) == {"x": 1}
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert ollama_emulator.count("/api/chat") == 1


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
BROKEN_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo",}}</tool_call>'   # trailing comma


def repair_report(events: list[dict]):
    """What the finish chunk of a stream says was repaired (None when nothing)."""
    reports = [e["velollm"] for e in events if "velollm" in e]
    return reports[-1]["tool_repair"] if reports else None


@pytest.mark.parametrize("first_stream", [False, True])
def test_a_repaired_answer_replayed_from_the_cache_still_says_so(cached, ollama_emulator, first_stream):
    """x-velollm-tool-repair (whole answers) and the finish chunk's report (streams) of a
    repaired answer come with its replays too, whole or streamed, however it was recorded."""
    ollama_emulator.script(BROKEN_CALL)
    body = ask("weather in Oslo?", tools=[WEATHER])
    first = post(cached, {**body, "stream": first_stream})
    if first_stream:
        fixes = repair_report([json.loads(l[6:]) for l in first.text.splitlines() if l.startswith("data: {")])
    else:
        fixes = first.headers["x-velollm-tool-repair"].split(",")
    assert fixes and first.headers["x-velollm-cache"] == "miss"
    whole, streamed = post(cached, body), post(cached, {**body, "stream": True})
    assert [whole.headers["x-velollm-cache"], streamed.headers["x-velollm-cache"]] == ["hit-exact"] * 2
    assert whole.headers.get("x-velollm-tool-repair") == ",".join(fixes)
    events = [json.loads(l[6:]) for l in streamed.text.splitlines() if l.startswith("data: {")]
    assert repair_report(events) == fixes
    assert ollama_emulator.count("/api/chat") == 1


def test_client_opt_outs(cached, ollama_emulator):
    post(cached, ask("Opt out?"))
    assert post(cached, ask("Opt out?"), {"Cache-Control": "no-store"}).headers["x-velollm-cache"] == "bypass"
    assert post(cached, ask("Opt out?"), {"x-velollm-cache": "bypass"}).headers["x-velollm-cache"] == "bypass"
    assert post(cached, ask("Opt out?")).headers["x-velollm-cache"] == "hit-exact"
    assert ollama_emulator.count("/api/chat") == 3


def test_no_cache_refreshes_the_stored_answer(cached, ollama_emulator):
    ollama_emulator.script("stale answer")
    post(cached, ask("Refresh me"))
    ollama_emulator.script("fresh answer")
    fresh = post(cached, ask("Refresh me"), {"Cache-Control": "no-cache"})
    assert fresh.headers["x-velollm-cache"] == "bypass"
    assert fresh.json()["choices"][0]["message"]["content"] == "fresh answer"
    again = post(cached, ask("Refresh me"))
    assert again.headers["x-velollm-cache"] == "hit-exact"
    assert again.json()["choices"][0]["message"]["content"] == "fresh answer"
    assert ollama_emulator.count("/api/chat") == 2


def test_no_cache_is_not_answered_from_the_shared_tier(ollama_emulator):
    from tests.rig.redis import RedisServer
    ollama_emulator.script("stale answer")
    with RedisServer() as redis:
        table = {"backends": [ollama_backend(ollama_emulator)], "cache": {"redis_url": redis.url}}
        with RunningDaemon(table) as a, RunningDaemon(table) as b:
            assert post(a, ask("Refresh everywhere")).headers["x-velollm-cache"] == "miss"
            ollama_emulator.script("fresh answer")
            fresh = post(b, ask("Refresh everywhere"), {"Cache-Control": "no-cache"})
            assert fresh.json()["choices"][0]["message"]["content"] == "fresh answer"
            assert ollama_emulator.count("/api/chat") == 2


def test_sampled_requests_are_not_cached(cached, ollama_emulator):
    body = {"model": MODEL, "temperature": 0.9, "messages": [{"role": "user", "content": "Poem?"}]}
    assert post(cached, body).headers["x-velollm-cache"] == "bypass"
    assert post(cached, body).headers["x-velollm-cache"] == "bypass"
    assert ollama_emulator.count("/api/chat") == 2


def test_errors_are_not_cached(cached, ollama_emulator):
    from tests.rig.ollama_replies import ScriptedReply
    ollama_emulator.push_reply(ScriptedReply(status=500, error="boom"))
    assert post(cached, ask("Fail once")).status_code == 502
    assert post(cached, ask("Fail once")).headers["x-velollm-cache"] == "miss"


def test_single_flight_20_concurrent_identical_requests_make_one_call(cached, ollama_emulator):
    ollama_emulator.script("one shared answer", delay_s=0.05)

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            async def one(i):
                body = ask("Shared question", stream=bool(i % 2))
                response = await client.post(cached.url + "/v1/chat/completions", json=body)
                if body["stream"]:
                    return "".join(json.loads(l[6:])["choices"][0]["delta"].get("content", "")
                                   for l in response.text.splitlines()
                                   if l.startswith("data: {") and json.loads(l[6:])["choices"])
                return response.json()["choices"][0]["message"]["content"]
            return await asyncio.gather(*(one(i) for i in range(20)))
    answers = asyncio.run(main())
    assert answers == ["one shared answer"] * 20
    assert ollama_emulator.count("/api/chat") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_coalesced_answers_have_ids_of_their_own(cached, ollama_emulator, stream):
    ollama_emulator.script(chunks=["one", " shared", " answer"], delay_s=0.2)

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            body = ask("Same question, same time", stream=stream)
            return await asyncio.gather(*(client.post(cached.url + "/v1/chat/completions", json=body)
                                          for _ in range(4)))
    responses = asyncio.run(main())
    assert sorted(r.headers.get("x-velollm-coalesced", "") for r in responses) == ["", "1", "1", "1"]
    ids = []
    for response in responses:
        if stream:
            [answer_id] = {json.loads(l[6:])["id"] for l in response.text.splitlines() if l.startswith("data: {")}
        else:
            answer_id = response.json()["id"]
        ids.append(answer_id)
    assert len(set(ids)) == 4 and all(i.startswith("chatcmpl-") for i in ids)
    assert ollama_emulator.count("/api/chat") == 1


def test_restart_keeps_the_hits(tmp_path, ollama_emulator):
    table = {"backends": [ollama_backend(ollama_emulator)], "cache": {"path": str(tmp_path / "cache")}}
    ollama_emulator.script("persisted answer")
    with RunningDaemon(table) as daemon:
        post(daemon, ask("Remember me?"))
    assert (tmp_path / "cache" / "cache.snap").exists()
    with RunningDaemon(table) as daemon:
        again = post(daemon, ask("Remember me?"))
    assert again.headers["x-velollm-cache"] == "hit-exact"
    assert again.json()["choices"][0]["message"]["content"] == "persisted answer"
    assert ollama_emulator.count("/api/chat") == 1


def test_corrupt_snapshot_is_set_aside_and_the_daemon_starts_empty(tmp_path, ollama_emulator):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache.snap").write_bytes(b"garbage, not a snapshot")
    table = {"backends": [ollama_backend(ollama_emulator)], "cache": {"path": str(tmp_path / "cache")}}
    with RunningDaemon(table) as daemon:
        assert post(daemon, ask("Anything")).headers["x-velollm-cache"] == "miss"
    assert [p.name for p in (tmp_path / "cache").iterdir() if "corrupt" in p.name]


def test_admin_stats_and_flush(cached, ollama_emulator):
    post(cached, ask("Stats?"))
    post(cached, ask("Stats?"))
    stats = httpx.get(cached.url + "/v1/velollm/cache").json()
    assert stats["entries"] == 1 and stats["hits"] == 1
    flushed = httpx.delete(cached.url + "/v1/velollm/cache").json()
    assert flushed["deleted"] == 1
    assert post(cached, ask("Stats?")).headers["x-velollm-cache"] == "miss"


def test_flush_needs_the_api_key_when_keys_are_set(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "server": {"api_keys": ["k1"]}})
    assert httpx.delete(daemon.url + "/v1/velollm/cache").status_code == 401
    ok = httpx.delete(daemon.url + "/v1/velollm/cache", headers={"Authorization": "Bearer k1"})
    assert ok.status_code == 200


def test_backend_embedder_finds_semantic_hits(daemon_factory, ollama_emulator):
    cache = {"embedder": "backend", "embed_backend": "ollama", "embed_model": "nomic-embed-text:latest",
             "embed_dim": 64, "semantic_threshold": 0.9}
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": cache})
    ollama_emulator.script("Use the reset link.")
    post(daemon, ask("How do I reset my password?"))
    hit = post(daemon, ask("how do i reset my password"))
    assert hit.headers["x-velollm-cache"] == "hit-semantic"
    assert ollama_emulator.count("/api/chat") == 1 and ollama_emulator.count("/api/embed") >= 2


def test_backend_embedder_failure_falls_back_to_the_exact_tier(daemon_factory, ollama_emulator):
    cache = {"embedder": "backend", "embed_backend": "ollama", "embed_model": "nomic-embed-text:latest",
             "embed_dim": 32}                       # wrong dimension: every embedding fails
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": cache})
    ollama_emulator.script("answer")
    assert post(daemon, ask("Question one?")).status_code == 200
    assert post(daemon, ask("Question one?")).headers["x-velollm-cache"] == "hit-exact"


def test_a_completion_asking_logprobs_0_is_not_answered_without_them(engine_cached):
    body = {"model": "eng", "prompt": "once upon", "temperature": 0, "max_tokens": 4, "logprobs": 0}
    for _ in range(2):
        answer = httpx.post(engine_cached.url + "/v1/completions", json=body, timeout=60)
        assert answer.headers["x-velollm-cache"] == "bypass"
        assert len(answer.json()["choices"][0]["logprobs"]["token_logprobs"]) == 4
