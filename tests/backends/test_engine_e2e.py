"""The engine behind the real daemon, driven by the official openai and ollama clients.

One daemon per module serves the tiny model (tools/make_tiny_gguf.py) from a models_dir,
beside a broken file and a truncated one, so the catalogue, the errors and every API route are
checked against one real engine.
"""
from __future__ import annotations

import json
import time
import urllib.request

import ollama
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend
from tests.rig.llama import make_tiny_model, tiny_gguf_tool

MODEL = "tiny-engine"
CALLER = "tiny-caller"        # its vocab holds a whole Hermes call that a logit_bias opens


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine-models")
    make_tiny_model(folder / f"{MODEL}.gguf")
    tiny_gguf_tool().build_tiny_gguf(folder / f"{CALLER}.gguf", vocab="spm-call")
    (folder / "broken.gguf").write_bytes(b"not a gguf at all")
    whole = (folder / f"{MODEL}.gguf").read_bytes()
    (folder / "truncated.gguf").write_bytes(whole[: len(whole) // 2])
    return folder


@pytest.fixture(scope="module")
def daemon(models_dir):
    table = {"backends": [engine_backend(models_dir, max_running=4)], "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_models_list_the_good_file_and_health_names_the_bad_ones(daemon, client, models_dir):
    assert sorted(m.id for m in client.models.list().data) == sorted([MODEL, CALLER])
    engine = get_json(daemon.url + "/health")["backends"][0]["engine"]
    assert "bad magic" in engine["unavailable"]["broken"] or "not a GGUF" in engine["unavailable"]["broken"]
    assert "truncated" in engine["unavailable"]["truncated"]
    assert engine["unavailable"]["broken"].count(str(models_dir / "broken.gguf")) == 1   # named once


def test_a_broken_model_is_a_503_naming_the_file(client, models_dir):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="truncated", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
    assert info.value.message.count(str(models_dir / "truncated.gguf")) == 1 and "truncated file" in info.value.message


def test_an_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])


def test_chat_answers_with_usage_and_exactly_max_tokens(client):
    answer = client.chat.completions.create(model=MODEL, max_tokens=12, temperature=0,
                                            messages=[{"role": "user", "content": "hello there"}])
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 12 and answer.usage.prompt_tokens > 5
    assert answer.choices[0].message.content.strip()
    assert answer.model_extra["timings"]["predicted_n"] == 12


def test_greedy_is_deterministic_and_stream_equals_whole(client):
    messages = [{"role": "user", "content": "the water is"}]
    whole = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, messages=messages)
    again = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, messages=messages)
    chunks = list(client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, messages=messages,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content == again.choices[0].message.content == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_same_seed_same_text_and_n_choices(client):
    kwargs = dict(model=MODEL, max_tokens=10, temperature=1.0, seed=7,
                  messages=[{"role": "user", "content": "tell me a story"}])
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert first.choices[0].message.content == second.choices[0].message.content
    several = client.chat.completions.create(n=3, **kwargs)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert several.choices[0].message.content == first.choices[0].message.content   # choice i: seed + i
    assert several.usage.completion_tokens == 30


def test_logprobs_and_stop_strings(client):
    answer = client.chat.completions.create(model=MODEL, max_tokens=5, temperature=0, logprobs=True,
                                            top_logprobs=3, messages=[{"role": "user", "content": "hi"}])
    content = answer.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob for t in content)
    text = answer.choices[0].message.content
    word = text.split()[1] if len(text.split()) > 1 else text.split()[0]
    stopped = client.chat.completions.create(model=MODEL, max_tokens=5, temperature=0, stop=[word],
                                             messages=[{"role": "user", "content": "hi"}])
    assert stopped.choices[0].finish_reason == "stop"
    assert word not in stopped.choices[0].message.content
    assert text.startswith(stopped.choices[0].message.content)


def test_completions_endpoint(client):
    answer = client.completions.create(model=MODEL, prompt="the sun", max_tokens=8, temperature=0)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="the sun", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == answer.choices[0].text


PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_gives_an_object_of_the_schema(client, stream):
    kwargs = dict(model=MODEL, max_tokens=200, temperature=1.0, seed=2, messages=[{"role": "user", "content": "who?"}],
                  response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    if stream:
        text, reason = streamed_text(client.chat.completions.create(stream=True, **kwargs))
    else:
        answer = client.chat.completions.create(**kwargs)
        text, reason = answer.choices[0].message.content, answer.choices[0].finish_reason
    value = json.loads(text)
    assert reason == "stop" and list(value) == ["name", "age", "tags"]
    assert isinstance(value["name"], str) and type(value["age"]) is int and set(value["tags"]) <= {"a", "b"}


def test_response_format_with_a_schema_outside_the_subset_is_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_schema", "json_schema": {
                                           "name": "x", "schema": {"type": "object", "properties": {
                                               "a": {"type": "string", "pattern": "^x+$"}}}}})
    assert info.value.body["param"] == "response_format" and "'pattern'" in info.value.message


JSON = {"type": "json_object"}
NO_CLOSE = {"359": -4}     # the tiny model's "}" made unlikely: it writes {"paris":true,"paris":... on


def streamed_text(chunks) -> tuple[str, str]:
    chunks = list(chunks)
    return ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
            [c.choices[0].finish_reason for c in chunks if c.choices][-1])


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, seed=3)])
def test_json_object_answers_parse_streamed_or_not(client, sampling):
    kwargs = dict(model=MODEL, max_tokens=60, response_format=JSON, messages=[{"role": "user", "content": "hi"}],
                  **sampling)
    answer = client.chat.completions.create(**kwargs)
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content), dict)
    assert streamed_text(client.chat.completions.create(stream=True, **kwargs)) == \
        (answer.choices[0].message.content, "stop")
    free = client.chat.completions.create(**{**kwargs, "response_format": {"type": "text"}})
    assert free.choices[0].finish_reason == "length"                  # unconstrained: no JSON, no end


def test_json_object_cut_by_max_tokens_is_length_and_a_json_prefix(client):
    kwargs = dict(model=MODEL, max_tokens=9, temperature=0, response_format=JSON, logit_bias=NO_CLOSE,
                  messages=[{"role": "user", "content": "hi"}])
    answer = client.chat.completions.create(**kwargs)
    text = answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 9
    assert text.startswith('{"') and '":' in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert streamed_text(client.chat.completions.create(stream=True, **kwargs)) == (text, "length")


def test_json_object_with_n_choices_and_on_completions(client):
    several = client.chat.completions.create(model=MODEL, max_tokens=60, temperature=0.8, seed=4, n=3,
                                             response_format=JSON, messages=[{"role": "user", "content": "hi"}])
    assert [c.finish_reason for c in several.choices] == ["stop"] * 3
    assert all(isinstance(json.loads(c.message.content), dict) for c in several.choices)
    completion = client.completions.create(model=MODEL, prompt="the sun", max_tokens=60, temperature=0,
                                           extra_body={"response_format": JSON})
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].text), dict)


def test_json_object_with_ignore_eos_is_a_400_naming_response_format(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       response_format=JSON, extra_body={"ignore_eos": True})
    assert info.value.body["param"] == "response_format"


def test_tool_calls_come_back_as_openai_tool_calls(client):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    bias = tiny_gguf_tool().force_tool_call_bias()
    answer = client.chat.completions.create(model=CALLER, max_tokens=40, temperature=0, tools=[tool],
                                            messages=[{"role": "user", "content": "weather?"}],
                                            extra_body={"logit_bias": bias})
    calls = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [("get_weather", {"city": "paris"})]
    assert calls[0].id.startswith("call_") and not answer.choices[0].message.content
    streamed = list(client.chat.completions.create(model=CALLER, max_tokens=40, temperature=0, tools=[tool],
                                                   messages=[{"role": "user", "content": "weather?"}],
                                                   extra_body={"logit_bias": bias}, stream=True))
    fragments = [t for c in streamed if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert fragments and fragments[0].function.name == "get_weather"
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"


def test_embeddings_are_normalised(client):
    result = client.embeddings.create(model=MODEL, input=["the sun", "the moon"])
    vectors = [d.embedding for d in result.data]
    assert len(vectors) == 2 and len(vectors[0]) == tiny_gguf_tool().N_EMBD
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-4 and vectors[0] != vectors[1]


def test_ollama_client_chat_and_tags(daemon):
    client = ollama.Client(host=daemon.url)
    assert MODEL in [m.model for m in client.list().models]
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                        options={"num_predict": 6, "temperature": 0})
    assert reply.message.content and reply.eval_count == 6
    parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                             options={"num_predict": 6, "temperature": 0}))
    assert "".join(p.message.content for p in parts) == reply.message.content


def test_tags_give_each_models_quantization_loaded_or_not(daemon):
    """Open WebUI shows /api/tags' quantization_level: read from the file's header, the same
    before the model is first used as after."""
    client = ollama.Client(host=daemon.url)
    details = {m.model: m.details.quantization_level for m in client.list().models}
    assert details == {MODEL: "F16", CALLER: "F16"}


def test_ps_lists_the_loaded_model_alone_with_its_keep_alive_expiry(daemon):
    """Ollama's /api/ps: only what is in memory (not every file the engine could load), and
    expires_at its last use plus its keep_alive (`ollama ps` shows "Forever" for -1)."""
    client = ollama.Client(host=daemon.url)
    before = time.time()
    client.generate(model=MODEL, prompt="hi", keep_alive="10m", options={"num_predict": 1})
    after = time.time()
    running = client.ps().models
    client.generate(model=MODEL, prompt="hi", keep_alive=-1, options={"num_predict": 1})
    for_good = client.ps().models
    client.generate(model=MODEL, prompt="hi", options={"num_predict": 1})     # the default again
    assert [m.model for m in running] == [MODEL] and [m.model for m in for_good] == [MODEL]
    assert before + 600 - 1 <= running[0].expires_at.timestamp() <= after + 600 + 1
    assert for_good[0].expires_at.year > 2200


def test_ollama_durations_come_from_the_engines_timings(daemon):
    reply = ollama.Client(host=daemon.url).chat(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                options={"num_predict": 3})
    assert reply.prompt_eval_duration > 0 and 0 < reply.eval_duration < reply.total_duration


def test_show_gives_the_context_the_model_gets(daemon):
    """Open WebUI and Continue size prompts by `<arch>.context_length`: the model's own (the
    tiny model's is far below the 4096 default), as loaded, before and after its load."""
    engine = next(b for b in daemon.app.registry.backends if b.name == "engine")
    client = ollama.Client(host=daemon.url)
    before = client.show(MODEL)
    client.generate(model=MODEL, prompt="hi", options={"num_predict": 1})
    after = client.show(MODEL)
    num_ctx = engine.loaded[MODEL].num_ctx
    assert num_ctx < 4096
    assert before.modelinfo["llama.context_length"] == after.modelinfo["llama.context_length"] == num_ctx
    assert after.parameters == f"num_ctx {num_ctx}"


def test_tags_give_each_files_modification_time(daemon, models_dir):
    tags = {m.model: m for m in ollama.Client(host=daemon.url).list().models}
    assert tags[MODEL].modified_at.timestamp() == int((models_dir / f"{MODEL}.gguf").stat().st_mtime)


def test_keep_alive_zero_answers_on_the_loaded_model_then_unloads_it(daemon):
    """As in Ollama: a request with keep_alive 0 runs on the model already in memory (not a
    fresh load of it) and the model goes when it ends; an empty prompt with 0 unloads at once."""
    engine = next(b for b in daemon.app.registry.backends if b.name == "engine")
    client = ollama.Client(host=daemon.url)
    client.generate(model=MODEL, prompt="hi", options={"num_predict": 1})
    loaded = engine.loaded[MODEL]
    stream = client.generate(model=MODEL, prompt="hi", keep_alive=0, stream=True, options={"num_predict": 40})
    next(stream)
    during = engine.loaded.get(MODEL)
    assert list(stream)[-1].done
    after = set(engine.loaded)
    client.generate(model=MODEL, prompt="hi", options={"num_predict": 1})
    assert client.generate(model=MODEL, prompt="", keep_alive=0).done_reason == "unload"
    assert during is loaded and MODEL not in after and MODEL not in engine.loaded


def test_after_an_ollama_unload_an_openai_request_keeps_its_model_loaded(daemon, client):
    """`keep_alive: 0` is that request's: an OpenAI-route request after it (no keep_alive there)
    runs its model with the default keep-alive, as Ollama does, where every later request
    loaded the model and unloaded it again."""
    ollama_client = ollama.Client(host=daemon.url)
    assert ollama_client.generate(model=MODEL, prompt="", keep_alive=0).done_reason == "unload"
    for _ in range(2):
        client.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert [m.model for m in ollama_client.ps().models] == [MODEL]


def test_concurrent_requests_equal_each_alone(client):
    import concurrent.futures
    prompts = [f"story number {i} about the sea" for i in range(6)]

    def ask(prompt, max_tokens):
        return client.chat.completions.create(model=MODEL, max_tokens=max_tokens, temperature=0,
                                              messages=[{"role": "user", "content": prompt}]
                                              ).choices[0].message.content
    alone = [ask(p, 8 + i) for i, p in enumerate(prompts)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(ask, prompts, [8 + i for i in range(6)]))
    assert together == alone


def test_models_in_ollamas_store_are_served_under_ollamas_names(tmp_path, monkeypatch):
    """A user with Ollama models serves them without Ollama running: the manifest's model layer
    is the GGUF blob, the name is Ollama's own."""
    from tests.engine.test_store import write_ollama_model
    store = tmp_path / "ollama-models"
    model = make_tiny_model(tmp_path / "blob.gguf")
    write_ollama_model(store, ("registry.ollama.ai", "library", "tinyllama", "1b"), model.read_bytes())
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    table = {"backends": [{"name": "engine", "kind": "engine", "num_ctx": 256}], "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        client = ollama.Client(host=running.url)
        assert "tinyllama:1b" in [m.model for m in client.list().models]
        reply = client.generate(model="tinyllama:1b", prompt="the sun", options={"num_predict": 4, "temperature": 0})
        assert reply.eval_count == 4 and reply.response


def test_a_name_without_a_tag_is_its_latest_as_in_ollama(tmp_path, monkeypatch):
    """`ollama run llama3.2` means llama3.2:latest: the engine serves it under the bare name too,
    and a bare name whose :latest manifest is broken is a 503 naming the problem, not a 404."""
    from tests.engine.test_store import write_ollama_model
    store = tmp_path / "ollama-models"
    model = make_tiny_model(tmp_path / "blob.gguf")
    write_ollama_model(store, ("registry.ollama.ai", "library", "tinyllama", "latest"), model.read_bytes())
    ghost = store / "manifests" / "registry.ollama.ai" / "library" / "ghost" / "latest"
    ghost.parent.mkdir(parents=True)
    ghost.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                             "digest": "sha256:" + "0" * 64}]}))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    table = {"backends": [{"name": "engine", "kind": "engine", "num_ctx": 256}], "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        reply = ollama.Client(host=running.url).generate(model="tinyllama", prompt="the sun",
                                                         options={"num_predict": 4, "temperature": 0})
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        answer = client.chat.completions.create(model="tinyllama", max_tokens=3,
                                                messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "hi"}])
    assert reply.eval_count == 4 and reply.response
    assert answer.usage.completion_tokens == 3 and answer.model == "tinyllama"
    assert info.value.status_code == 503 and "missing blob" in info.value.message
