"""The Ollama-native API as the official `ollama` client uses it, against the in-process engine
and the real llama-server: the documented corners (empty inputs, the older endpoints, the
deprecated fields) that the main tests in test_ollama_api.py do not reach."""
import asyncio
import json

import ollama
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend
from tests.rig.llama import make_tiny_model
from tests.rig.waiting import wait_for
from velollmd.http.message import Request

ENGINE_MODEL = "tiny-engine"


@pytest.fixture(scope="module")
def engine_daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ollama-qa-models")
    make_tiny_model(folder / f"{ENGINE_MODEL}.gguf")
    table = {"backends": [engine_backend(folder, num_ctx=256)],
             "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


@pytest.fixture(scope="module")
def engine(engine_daemon):
    return ollama.Client(host=engine_daemon.url)


@pytest.mark.parametrize("bad_input", [5, True, {"a": 1}, [None], [[1, 2]], ["ok", 3]])
def test_embed_input_of_the_wrong_type_is_a_400(engine, bad_input):
    with pytest.raises(ollama.ResponseError) as info:
        engine._request_raw("POST", "/api/embed", json={"model": ENGINE_MODEL, "input": bad_input})
    assert info.value.status_code == 400 and "input" in info.value.error


def test_embed_with_no_input_answers_no_vectors_as_ollama_does(engine):
    assert engine.embed(model=ENGINE_MODEL, input="").embeddings == []
    assert engine.embed(model=ENGINE_MODEL, input=[]).embeddings == []
    reply = engine.embed(model=ENGINE_MODEL, input=["a cat", "a dog"])
    assert len(reply.embeddings) == 2 and reply.embeddings[0] != reply.embeddings[1]


def test_embed_truncates_an_input_over_the_context_unless_told_not_to(engine):
    """Ollama's `truncate` (default true) cuts an input to the model's context (num_ctx 256
    here); `truncate: false` keeps the 400 for an input that does not fit."""
    long_text = "word " * 400
    reply = engine.embed(model=ENGINE_MODEL, input=["a cat", long_text])
    assert len(reply.embeddings) == 2 and reply.prompt_eval_count < 2 * 256
    assert reply.embeddings[1] == engine.embed(model=ENGINE_MODEL, input="word " * 300).embeddings[0]
    with pytest.raises(ollama.ResponseError) as info:
        engine.embed(model=ENGINE_MODEL, input=long_text, truncate=False)
    assert info.value.status_code == 400 and "input" in info.value.error
    assert engine.embed(model=ENGINE_MODEL, input="a cat", truncate=False).embeddings


def test_embed_dimensions_shortens_and_normalises_each_vector(engine):
    whole = engine.embed(model=ENGINE_MODEL, input=["a cat", "a dog"]).embeddings
    short = engine.embed(model=ENGINE_MODEL, input=["a cat", "a dog"], dimensions=8).embeddings
    for full, cut in zip(whole, short):
        norm = sum(x * x for x in full[:8]) ** 0.5
        assert cut == pytest.approx([x / norm for x in full[:8]])
        assert sum(x * x for x in cut) == pytest.approx(1.0)
    for bad in (0, len(whole[0]) + 1, "8", True):
        with pytest.raises(ollama.ResponseError) as info:
            engine._request_raw("POST", "/api/embed", json={"model": ENGINE_MODEL, "input": "a cat", "dimensions": bad})
        assert info.value.status_code == 400 and "dimensions" in info.value.error


def test_the_older_embeddings_endpoint_answers_one_vector(engine):
    vector = engine.embeddings(model=ENGINE_MODEL, prompt="a cat").embedding
    assert vector == engine.embed(model=ENGINE_MODEL, input="a cat").embeddings[0]
    assert engine.embeddings(model=ENGINE_MODEL, prompt="").embedding == []
    with pytest.raises(ollama.ResponseError) as info:
        engine.embeddings(model="no-such-model", prompt="x")
    assert info.value.status_code == 404


def test_the_older_embeddings_endpoint_passes_through_to_ollama(daemon, ollama_emulator):
    client = ollama.Client(host=daemon.url)
    assert len(client.embeddings(model="nomic-embed-text:latest", prompt="a cat").embedding) == 64
    assert ollama_emulator.count("/api/embeddings") == 1


def test_chat_without_messages_loads_the_model_as_ollama_documents(engine, daemon):
    for client, model in ((engine, ENGINE_MODEL), (ollama.Client(host=daemon.url), "tiny")):
        reply = client.chat(model=model, messages=[])
        assert reply.done and reply.done_reason == "load" and reply.message.role == "assistant"
        assert reply.message.content == ""
        assert client.generate(model=model, prompt="").done_reason == "load"


@pytest.mark.parametrize("endpoint", ["chat", "generate"])
def test_format_json_on_the_engine_answers_one_json_object(engine, endpoint):
    """Open WebUI's title and tag tasks send format "json": the engine constrains its sampling
    (greedy or seeded), streamed or not, and a num_predict cut is done_reason "length"."""
    def ask(stream: bool, **options):
        kwargs = dict(model=ENGINE_MODEL, format="json", stream=stream, options={"num_predict": 60, **options})
        if endpoint == "chat":
            reply = engine.chat(messages=[{"role": "user", "content": "a title?"}], **kwargs)
            return ([p.message.content for p in reply], reply) if stream else (reply.message.content, reply)
        reply = engine.generate(prompt="a title?", **kwargs)
        return ([p.response for p in reply], reply) if stream else (reply.response, reply)

    for options in ({"temperature": 0}, {"temperature": 0.9, "seed": 7}):
        text, reply = ask(False, **options)
        assert reply.done_reason == "stop" and isinstance(json.loads(text), dict)
        parts, _ = ask(True, **options)
        assert "".join(parts) == text
    text, reply = ask(False, temperature=0, num_predict=1)
    assert reply.done_reason == "length" and text.strip() == "{"


def test_format_schema_on_the_engine_shapes_the_answer_or_is_a_clear_400(engine):
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "done": {"type": "boolean"}},
              "required": ["title", "done"]}
    reply = engine.chat(model=ENGINE_MODEL, messages=[{"role": "user", "content": "a title?"}], format=schema,
                        options={"temperature": 0.8, "seed": 1, "num_predict": 120})
    value = json.loads(reply.message.content)
    assert reply.done_reason == "stop" and list(value) == ["title", "done"] and isinstance(value["done"], bool)
    with pytest.raises(ollama.ResponseError) as info:
        engine.chat(model=ENGINE_MODEL, messages=[{"role": "user", "content": "hi"}],
                    format={"type": "object", "properties": {"a": {"type": "string", "minLength": 3}}})
    assert info.value.status_code == 400 and "minLength" in info.value.error


def test_pull_of_a_served_model_succeeds_and_of_any_other_is_a_clear_501(engine):
    assert engine.pull(ENGINE_MODEL).status == "success"
    assert [p.status for p in engine.pull(ENGINE_MODEL, stream=True)] == ["success"]
    with pytest.raises(ollama.ResponseError) as info:
        engine.pull("llama3.2:latest")
    assert info.value.status_code == 501 and "llama3.2:latest" in info.value.error


@pytest.mark.parametrize("call", [lambda c: c.delete(ENGINE_MODEL), lambda c: c.copy(ENGINE_MODEL, "other"),
                                  lambda c: c.create(model="other", from_=ENGINE_MODEL),
                                  lambda c: c.push(ENGINE_MODEL)])
def test_model_management_is_a_501_in_ollamas_error_shape(engine, call):
    with pytest.raises(ollama.ResponseError) as info:
        call(engine)
    assert info.value.status_code == 501
    assert isinstance(info.value.error, str) and "does not manage models" in info.value.error


def test_blob_check_is_a_501(engine):
    with pytest.raises(ollama.ResponseError) as info:
        engine._request_raw("HEAD", "/api/blobs/sha256:" + "0" * 64)
    assert info.value.status_code == 501


def reasoning_chunk(delta, finish=None):
    return {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


REASONING_ANSWER = {"id": "x", "object": "chat.completion", "created": 1, "model": "tiny", "choices": [
    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "42.",
                                                      "reasoning_content": "Six times seven."}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
REASONING_CHUNKS = [reasoning_chunk({"role": "assistant", "content": None}),
                    reasoning_chunk({"reasoning_content": "Six times "}), reasoning_chunk({"reasoning_content": "seven."}),
                    reasoning_chunk({"content": "42."}), reasoning_chunk({}, "stop")]


@pytest.fixture(scope="module")
def reasoning_app():
    """The whole App before a backend that reasons (none of the real parts here can): the
    scripted backend of the fuzz tests."""
    from tests.api.test_bad_input_fuzz import make_garbage_app
    app, backend = make_garbage_app()
    backend.answer, backend.chunks = REASONING_ANSWER, REASONING_CHUNKS
    with asyncio.Runner() as runner:
        runner.run(app.start())
        try:
            yield lambda path, body: runner.run(_ndjson_objects(app, path, body))
        finally:
            runner.run(app.close())


async def _ndjson_objects(app, path: str, body: dict) -> list[dict]:
    response = await app.handle(Request("POST", path, [("host", "x")], json.dumps(body).encode()))
    assert response.status == 200
    data = response.body if response.stream is None else b"".join([part async for part in response.stream])
    return [json.loads(line) for line in data.splitlines()]


@pytest.mark.parametrize("stream", [False, True])
def test_backend_reasoning_reaches_chat_clients_as_message_thinking(reasoning_app, stream):
    objects = reasoning_app("/api/chat", {"model": "tiny", "stream": stream, "messages": [{"role": "user", "content": "6*7?"}]})
    replies = [ollama.ChatResponse.model_validate(o) for o in objects]
    assert "".join(r.message.thinking or "" for r in replies) == "Six times seven."
    assert "".join(r.message.content for r in replies) == "42." and replies[-1].done


@pytest.mark.parametrize("stream", [False, True])
def test_backend_reasoning_reaches_generate_clients_as_thinking(reasoning_app, stream):
    objects = reasoning_app("/api/generate", {"model": "tiny", "stream": stream, "prompt": "6*7?"})
    replies = [ollama.GenerateResponse.model_validate(o) for o in objects]
    assert "".join(r.thinking or "" for r in replies) == "Six times seven."
    assert "".join(r.response for r in replies) == "42." and replies[-1].done


IMAGE = "aGVsbG8="            # base64 of "hello": any image; the models here have no vision


def test_images_to_a_model_without_vision_are_a_400_that_leaves_the_backend_serving(daemon):
    client = ollama.Client(host=daemon.url)
    for _ in range(4):                     # a backend's failures open its breaker after three
        with pytest.raises(ollama.ResponseError) as info:
            client.chat(model="tiny", messages=[{"role": "user", "content": "see?", "images": [IMAGE]}])
        assert info.value.status_code == 400 and "does not support images" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="tiny", prompt="see?", images=[IMAGE])
    assert info.value.status_code == 400
    assert client.generate(model="tiny", prompt="hi", options={"num_predict": 2}).eval_count == 2


def test_images_to_the_engine_are_a_400_naming_images(engine):
    with pytest.raises(ollama.ResponseError) as info:
        engine.generate(model=ENGINE_MODEL, prompt="see?", images=[IMAGE])
    assert info.value.status_code == 400 and "does not support images" in info.value.error


def test_suffix_is_refused_clearly_rather_than_ignored(engine, daemon):
    """The tiny model has no FIM tokens, so neither the engine nor llama-server's /infill fills in
    its middle: Ollama's own answer for a model without the insert capability, not an answer
    that ignores the suffix."""
    for client, model in ((engine, ENGINE_MODEL), (ollama.Client(host=daemon.url), "tiny")):
        with pytest.raises(ollama.ResponseError) as info:
            client.generate(model=model, prompt="def add(a, b):", suffix="    return c")
        assert info.value.status_code == 400 and "does not support insert" in info.value.error


@pytest.mark.parametrize("field, value, refusers", [("context", [1, 2, 3], ("tiny",)),
                                                    ("template", "{{ .Prompt }}", (ENGINE_MODEL, "tiny"))])
def test_generates_context_and_template_are_refused_clearly_rather_than_ignored(engine, daemon, ollama_emulator,
                                                                                field, value, refusers):
    """The deprecated `context` (an earlier answer's tokens; the engine takes it, see
    test_ollama_context.py) and a `template` override: llama-server behind velollmd takes neither,
    so a 400 naming the field, never an answer that ignored them; empty ones ask for nothing, and
    Ollama itself gets them as sent."""
    for client, model in ((engine, ENGINE_MODEL), (ollama.Client(host=daemon.url), "tiny")):
        if model not in refusers:
            continue
        with pytest.raises(ollama.ResponseError) as info:
            client.generate(model=model, prompt="hello", options={"num_predict": 2}, **{field: value})
        assert info.value.status_code == 400 and repr(field) in info.value.error
    assert engine.generate(model=ENGINE_MODEL, prompt="hello", options={"num_predict": 2}, context=[], template="").done
    ollama.Client(host=daemon.url).generate(model="llama3.2", prompt="hello", **{field: value})
    assert ollama_emulator.last_request("/api/generate")[field] == value


def test_show_and_pull_take_the_deprecated_name_field(engine):
    shown = engine._request_raw("POST", "/api/show", json={"name": ENGINE_MODEL}).json()
    assert shown["details"]["format"] == "gguf"
    assert engine._request_raw("POST", "/api/pull", json={"name": ENGINE_MODEL, "stream": False}).json() == \
        {"status": "success"}
    with pytest.raises(ollama.ResponseError) as info:
        engine._request_raw("POST", "/api/show", json={})
    assert info.value.status_code == 400 and "model is required" in info.value.error


def loaded_models(daemon) -> set[str]:
    engine = next(b for b in daemon.app.registry.backends if b.name == "engine")
    return set(engine.loaded)


def test_keep_alive_zero_unloads_and_an_empty_request_loads_as_in_ollama(engine, engine_daemon):
    assert engine.generate(model=ENGINE_MODEL, prompt="", keep_alive=0).done_reason == "unload"
    assert ENGINE_MODEL not in loaded_models(engine_daemon)
    assert engine.generate(model=ENGINE_MODEL, prompt="").done_reason == "load"     # preloads it
    assert ENGINE_MODEL in loaded_models(engine_daemon)
    assert engine.chat(model=ENGINE_MODEL, messages=[], keep_alive="0s").done_reason == "unload"
    assert ENGINE_MODEL not in loaded_models(engine_daemon)
    assert engine.chat(model=ENGINE_MODEL, messages=[], keep_alive="10m").done_reason == "load"
    assert ENGINE_MODEL in loaded_models(engine_daemon)
    with pytest.raises(ollama.ResponseError) as info:
        engine.generate(model=ENGINE_MODEL, prompt="hi", keep_alive="5 fortnights")
    assert info.value.status_code == 400 and "keep_alive" in info.value.error


def test_a_requests_keep_alive_holds_the_model_that_long(engine, engine_daemon):
    """keep_alive on a request sets how long the engine keeps the model idle (its own
    keep_alive_s otherwise); negative keeps it for good, 0 lets it go once idle."""
    backend = next(b for b in engine_daemon.app.registry.backends if b.name == "engine")
    engine.generate(model=ENGINE_MODEL, prompt="hi", keep_alive=-1, options={"num_predict": 1})
    backend.loaded[ENGINE_MODEL].last_used -= 10 ** 6                # idle for ages
    engine_daemon.call(backend.list_models)                          # the catalogue refresh unloads the idle
    assert ENGINE_MODEL in loaded_models(engine_daemon)
    engine.generate(model=ENGINE_MODEL, prompt="hi", keep_alive="1h", options={"num_predict": 1})
    backend.loaded[ENGINE_MODEL].last_used -= 3599
    engine_daemon.call(backend.list_models)
    assert ENGINE_MODEL in loaded_models(engine_daemon)
    backend.loaded[ENGINE_MODEL].last_used -= 2
    engine_daemon.call(backend.list_models)
    assert ENGINE_MODEL not in loaded_models(engine_daemon)
    engine.generate(model=ENGINE_MODEL, prompt="hi", keep_alive=0, options={"num_predict": 1})
    engine_daemon.call(backend.list_models)
    assert ENGINE_MODEL not in loaded_models(engine_daemon)
    engine.generate(model=ENGINE_MODEL, prompt="hi", options={"num_predict": 1})   # the default again: 300 s
    backend.loaded[ENGINE_MODEL].last_used -= 299
    engine_daemon.call(backend.list_models)
    assert ENGINE_MODEL in loaded_models(engine_daemon)


def test_show_tells_the_context_a_request_gets(engine, daemon):
    """Continue and Open WebUI size prompts by `num_ctx` in `parameters` or by
    `<architecture>.context_length` in model_info; without them they guess (2,048)."""
    shown = engine.show(ENGINE_MODEL)
    assert shown.parameters == "num_ctx 256"
    assert shown.modified_at == {m.model: m.modified_at for m in engine.list().models}[ENGINE_MODEL]   # the file's
    engine.generate(model=ENGINE_MODEL, prompt="")                  # loaded: listed by /api/ps
    assert {m.model: m.context_length for m in engine.ps().models} == {ENGINE_MODEL: 256}
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["llama.context_length"] == 256
    assert "vision" not in shown.capabilities and "completion" in shown.capabilities
    llama = ollama.Client(host=daemon.url).show("tiny")
    assert llama.parameters.startswith("num_ctx ") and int(llama.parameters.split()[1]) >= 256
    assert "vision" not in llama.capabilities


@pytest.mark.parametrize("option,value,kind", [("num_predict", "3", "integer"), ("num_predict", 2.5, "integer"),
                                               ("top_k", True, "integer"), ("temperature", "hot", "number"),
                                               ("seed", [1], "integer"), ("min_p", {}, "number"),
                                               ("stop", "\n", "array"), ("stop", ["a", 1], "array")])
def test_an_option_of_the_wrong_type_is_a_400_naming_the_option(engine, option, value, kind):
    with pytest.raises(ollama.ResponseError) as info:
        engine.generate(model=ENGINE_MODEL, prompt="hi", options={option: value})
    assert info.value.status_code == 400
    assert info.value.error.startswith(f"option '{option}' must be of type {kind}")


def test_think_takes_a_bool_or_a_level_as_ollama_does(engine):
    """Ollama's `think` is true, false or "high" / "medium" / "low"; another string was taken
    (and dropped on the way to a backend) where Ollama answers 400."""
    with pytest.raises(ollama.ResponseError) as info:
        engine.chat(model=ENGINE_MODEL, messages=[{"role": "user", "content": "hi"}], think="bogus")
    assert info.value.status_code == 400 and "invalid think value" in info.value.error
    assert engine.chat(model=ENGINE_MODEL, messages=[{"role": "user", "content": "hi"}], think=False,
                       options={"num_predict": 1}).done


def test_num_predict_zero_or_negative_means_no_limit_as_in_ollama(engine):
    for num_predict in (0, -1, -2):
        reply = engine.generate(model=ENGINE_MODEL, prompt="hi", options={"num_predict": num_predict, "stop": [" "],
                                                                     "temperature": 0})
        assert reply.done and reply.done_reason == "stop"
    assert engine.generate(model=ENGINE_MODEL, prompt="hi", options={"num_predict": 3.0}).eval_count == 3
    huge = engine.generate(model=ENGINE_MODEL, prompt="hi", options={"num_predict": 10 ** 20, "num_ctx": 24})
    assert huge.done_reason == "length" and huge.prompt_eval_count + huge.eval_count <= 24     # as good as none


def assert_logprobs(replies, num_tokens: int, num_top: int):
    entries = [e for r in replies for e in (r.logprobs or [])]
    assert len(entries) == num_tokens and all(e.logprob <= 0 and e.token for e in entries)
    assert all(len(e.top_logprobs or []) >= num_top for e in entries)


@pytest.mark.parametrize("raw", [False, True], ids=["templated", "raw"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_logprobs_are_answered_by_the_engine_and_llama_server(engine, daemon, raw, stream):
    for client, model in ((engine, ENGINE_MODEL), (ollama.Client(host=daemon.url), "tiny")):
        reply = client.generate(model=model, prompt="hi", raw=raw, stream=stream, logprobs=True, top_logprobs=2,
                                options={"num_predict": 3})
        assert_logprobs(list(reply) if stream else [reply], 3, 2)
        reply = client.generate(model=model, prompt="hi", raw=raw, stream=stream, logprobs=True,
                                options={"num_predict": 2})
        assert_logprobs(list(reply) if stream else [reply], 2, 0)
        reply = client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=stream, logprobs=True,
                            top_logprobs=1, options={"num_predict": 2})
        assert_logprobs(list(reply) if stream else [reply], 2, 1)


@pytest.mark.parametrize("options", [{"temperature": 3.5}, {"temperature": -1}, {"top_p": 1.5},
                                     {"presence_penalty": 5}, {"frequency_penalty": -5}])
def test_sampling_values_ollama_serves_are_served_not_refused_with_openais_ranges(engine, daemon, options):
    """Ollama takes any temperature and penalty (llama.cpp's samplers do: a negative temperature
    is greedy, a top_p above 1 keeps every token); OpenAI's narrower ranges were a 400 here."""
    for client, model in ((engine, ENGINE_MODEL), (ollama.Client(host=daemon.url), "tiny")):
        assert client.generate(model=model, prompt="hi", options={**options, "num_predict": 2}).eval_count == 2
        reply = client.chat(model=model, messages=[{"role": "user", "content": "hi"}],
                            options={**options, "num_predict": 2})
        assert reply.done and reply.eval_count == 2
        assert client.generate(model=model, prompt="hi", raw=True, options={**options, "num_predict": 2}).done


def test_embed_keep_alive_is_honoured_as_on_generate(engine, engine_daemon):
    """/api/embed and /api/embeddings take keep_alive as Ollama does: 0 unloads the model once
    the vectors are made, a bad duration is a 400 naming it; both were ignored."""
    assert engine.embed(model=ENGINE_MODEL, input="a cat", keep_alive=-1).embeddings
    assert ENGINE_MODEL in loaded_models(engine_daemon)
    assert engine.embed(model=ENGINE_MODEL, input="a cat", keep_alive=0).embeddings
    # unloaded once idle: an earlier test's stream may still be ending in the engine
    assert wait_for(lambda: ENGINE_MODEL not in loaded_models(engine_daemon))
    assert engine.embeddings(model=ENGINE_MODEL, prompt="a cat", keep_alive="10m").embedding
    assert ENGINE_MODEL in loaded_models(engine_daemon)
    assert engine.embeddings(model=ENGINE_MODEL, prompt="a cat", keep_alive="0s").embedding
    assert wait_for(lambda: ENGINE_MODEL not in loaded_models(engine_daemon))
    for call in (lambda: engine.embed(model=ENGINE_MODEL, input="a cat", keep_alive="5 fortnights"),
                 lambda: engine.embeddings(model=ENGINE_MODEL, prompt="a cat", keep_alive="5 fortnights")):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 400 and "keep_alive" in info.value.error


def test_repeat_last_n_minus_one_looks_back_over_the_whole_context_as_in_ollama(engine, daemon):
    """Ollama documents repeat_last_n -1 as num_ctx; llama-server refuses -1 (a 400 here)."""
    for client, model in ((engine, ENGINE_MODEL), (ollama.Client(host=daemon.url), "tiny")):
        options = {"repeat_last_n": -1, "repeat_penalty": 1.3, "num_predict": 2}
        assert client.generate(model=model, prompt="hi", options=options).eval_count == 2
        assert client.generate(model=model, prompt="hi", raw=True, options=options).eval_count == 2
        assert client.chat(model=model, messages=[{"role": "user", "content": "hi"}], options=options).eval_count == 2


@pytest.mark.parametrize("raw", [False, True], ids=["templated", "raw"])
def test_format_constrains_generate_on_llama_server_raw_or_not(daemon, raw):
    """format "json" or a schema shapes the answer; a raw prompt goes to llama-server's
    /v1/completions, which ignores response_format (it reads json_schema): it came out free."""
    client = ollama.Client(host=daemon.url)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    reply = client.generate(model="tiny", prompt="x", raw=raw, format=schema, options={"num_predict": 20, "temperature": 0})
    assert list(json.loads(reply.response)) == ["ok"]
    reply = client.generate(model="tiny", prompt="x", raw=raw, format="json", options={"num_predict": 20, "temperature": 0})
    assert isinstance(json.loads(reply.response), dict)


LONG_TEXT = "word " * 400          # over the engine's 256-token context here


def test_num_ctx_sizes_a_requests_context_on_the_engine_as_in_ollama(engine):
    """Ollama's num_ctx: a larger one than the default takes a longer prompt (up to the model's
    trained context, 8192 for the tiny model), a smaller one gives a shorter context."""
    whole = engine.generate(model=ENGINE_MODEL, prompt=LONG_TEXT, options={"num_ctx": 1024, "num_predict": 3})
    assert whole.done and whole.eval_count == 3 and whole.prompt_eval_count > 256
    short = engine.generate(model=ENGINE_MODEL, prompt="hi", options={"num_ctx": 16})
    assert short.done_reason == "length" and 16 - 2 <= short.prompt_eval_count + short.eval_count <= 16
    huge = engine.generate(model=ENGINE_MODEL, prompt=LONG_TEXT, options={"num_ctx": 1 << 20, "num_predict": 2})
    assert huge.prompt_eval_count == whole.prompt_eval_count


def test_ps_shows_the_context_the_model_last_ran_with_as_in_ollama(engine):
    """Ollama reloads a model with a request's num_ctx; `ollama ps` shows that context (up to the
    model's trained one), and the default again after a request without it."""
    def context_length():
        return next(m for m in engine.ps().models if m.model == ENGINE_MODEL).context_length
    engine.generate(model=ENGINE_MODEL, prompt="hi", options={"num_ctx": 1024, "num_predict": 1})
    assert context_length() == 1024
    engine.embed(model=ENGINE_MODEL, input="hi", options={"num_ctx": 512})
    assert context_length() == 512
    engine.chat(model=ENGINE_MODEL, messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 1 << 20,
                                                                                          "num_predict": 1})
    assert context_length() == 8192                # the tiny model's trained context
    engine.generate(model=ENGINE_MODEL, prompt="hi", options={"num_predict": 1})
    assert context_length() == 256


def test_embed_takes_num_ctx_as_in_ollama(engine):
    """options.num_ctx sizes the context an input is embedded in: an input over the default
    (256 here) fits in a larger one, whole, with `truncate: false` too."""
    whole = engine.embed(model=ENGINE_MODEL, input=LONG_TEXT, truncate=False, options={"num_ctx": 1024})
    assert whole.prompt_eval_count > 256
    assert engine.embed(model=ENGINE_MODEL, input=LONG_TEXT, options={"num_ctx": 1024}).embeddings == whole.embeddings
    cut = engine.embed(model=ENGINE_MODEL, input=LONG_TEXT, options={"num_ctx": 64})
    assert cut.prompt_eval_count == 64
    with pytest.raises(ollama.ResponseError) as info:
        engine.embed(model=ENGINE_MODEL, input=LONG_TEXT, truncate=False, options={"num_ctx": 300})
    assert info.value.status_code == 400 and "input" in info.value.error
    reply = engine._request_raw("POST", "/api/embeddings", json={"model": ENGINE_MODEL, "prompt": LONG_TEXT,
                                                                "options": {"num_ctx": 1024}}).json()
    assert reply["embedding"] == whole.embeddings[0]


def first_token_alternatives(client, model: str, prompt: str, **options) -> list[str]:
    """The first answer token's top alternatives for a raw prompt, greedy (their tokens: the
    logprobs themselves move a little between llama-server's runs)."""
    reply = client._request_raw("POST", "/api/generate", json={
        "model": model, "prompt": prompt, "raw": True, "stream": False, "logprobs": True, "top_logprobs": 3,
        "options": {"num_predict": 1, "temperature": 0, **options}}).json()
    return [top["token"] for top in reply["logprobs"][0]["top_logprobs"]]


HEAD = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma " * 12


def test_a_cut_prompt_keeps_its_first_num_keep_tokens_as_in_ollama(engine):
    """options.num_keep: the first tokens a cut prompt keeps (Ollama's default 4; -1 as many as
    fit); it was dropped, every cut kept 4."""
    prompt = HEAD + LONG_TEXT
    default = first_token_alternatives(engine, ENGINE_MODEL, prompt)
    assert first_token_alternatives(engine, ENGINE_MODEL, prompt, num_keep=4) == default
    assert first_token_alternatives(engine, ENGINE_MODEL, prompt, num_keep=4.0) == default     # was a 500
    assert first_token_alternatives(engine, ENGINE_MODEL, prompt, num_keep=-1) != default


def test_a_prompt_over_the_context_is_truncated_on_generate_as_in_ollama(engine):
    """Ollama keeps the prompt's first num_keep tokens and its latest ones; `truncate: false` is
    its 400. The OpenAI route keeps its 400 context_length_exceeded."""
    reply = engine.generate(model=ENGINE_MODEL, prompt=LONG_TEXT, options={"num_predict": 3})
    assert reply.done and reply.eval_count == 3 and reply.prompt_eval_count == 256 - 3
    streamed = list(engine.generate(model=ENGINE_MODEL, prompt=LONG_TEXT, raw=True, stream=True,
                                    options={"num_predict": 2}))
    assert streamed[-1].done and streamed[-1].prompt_eval_count == 256 - 2
    with pytest.raises(ollama.ResponseError) as info:
        engine._request_raw("POST", "/api/generate", json={"model": ENGINE_MODEL, "prompt": LONG_TEXT,
                                                           "truncate": False, "stream": False})
    assert info.value.status_code == 400
    import httpx
    answer = httpx.post(f"{engine._client.base_url}/v1/completions",
                        json={"model": ENGINE_MODEL, "prompt": LONG_TEXT, "max_tokens": 2})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "context_length_exceeded"


def test_a_prompt_over_all_the_engines_kv_room_is_truncated_too(engine):
    """A prompt longer than the whole KV pool (num_ctx x max_running) was refused by admission
    (400, context exceeded) before the engine could cut it to its context."""
    for reply in (engine.generate(model=ENGINE_MODEL, prompt=LONG_TEXT * 5, options={"num_predict": 3}),
                  engine.chat(model=ENGINE_MODEL, messages=[{"role": "user", "content": LONG_TEXT * 5}],
                              options={"num_predict": 3})):
        assert reply.done and reply.eval_count == 3 and reply.prompt_eval_count == 256 - 3


def test_a_chat_over_the_context_drops_its_oldest_turns_as_in_ollama(engine):
    """Ollama keeps the system messages and the latest message, and drops the oldest others
    until the prompt fits."""
    system = {"role": "system", "content": "Be brief."}
    latest = {"role": "user", "content": "And now?"}
    old = [{"role": "user", "content": "word " * 150}, {"role": "assistant", "content": "word " * 150}]
    reply = engine.chat(model=ENGINE_MODEL, messages=[system, *old, latest], options={"num_predict": 3})
    assert reply.done and reply.eval_count == 3
    kept = engine.chat(model=ENGINE_MODEL, messages=[system, latest], options={"num_predict": 3})
    assert reply.prompt_eval_count == kept.prompt_eval_count
    recent = engine.chat(model=ENGINE_MODEL, messages=[system, *old, {"role": "user", "content": "word"}, latest],
                         options={"num_predict": 3, "num_ctx": 512})
    assert recent.prompt_eval_count > 256          # what fits stays
    alone = engine.chat(model=ENGINE_MODEL, messages=[system, {"role": "user", "content": LONG_TEXT}],
                        options={"num_predict": 3})
    assert alone.eval_count == 3 and alone.prompt_eval_count == 256 - 3     # cut as a generate prompt is
    with pytest.raises(ollama.ResponseError) as info:
        engine._request_raw("POST", "/api/chat", json={"model": ENGINE_MODEL, "messages": [system, *old, latest],
                                                       "truncate": False, "stream": False})
    assert info.value.status_code == 400


def test_think_for_a_model_that_cannot_think_is_ollamas_400(engine):
    """The tiny model's ChatML template has no thinking: Ollama's 400; `think: false` is fine."""
    for call in (lambda think: engine.chat(model=ENGINE_MODEL, messages=[{"role": "user", "content": "hi"}],
                                           think=think, options={"num_predict": 2}),
                 lambda think: engine.generate(model=ENGINE_MODEL, prompt="hi", think=think,
                                               options={"num_predict": 2})):
        with pytest.raises(ollama.ResponseError) as info:
            call(True)
        assert info.value.status_code == 400 and info.value.error == f'"{ENGINE_MODEL}" does not support thinking'
        assert call(False).done
    assert "thinking" not in engine.show(ENGINE_MODEL).capabilities


def test_think_is_taken_by_a_model_whose_template_thinks(tmp_path):
    from tests.daemon_rig import tiny_engine_daemon
    with tiny_engine_daemon(tmp_path, "thinker", chat_template="qwen3") as running:
        client = ollama.Client(host=running.url)
        assert "thinking" in client.show("thinker").capabilities
        assert client.chat(model="thinker", messages=[{"role": "user", "content": "hi"}], think=True,
                           options={"num_predict": 2}).eval_count == 2


def test_any_number_of_stop_strings_as_in_ollama(engine, daemon):
    """Ollama takes any number of stop strings (OpenAI's 16 is OpenAI's)."""
    stops = [f"zz{i}" for i in range(20)]
    for client, model in ((engine, ENGINE_MODEL), (ollama.Client(host=daemon.url), "tiny")):
        assert client.generate(model=model, prompt="hi", options={"stop": stops, "num_predict": 2}).eval_count == 2
        assert client.chat(model=model, messages=[{"role": "user", "content": "hi"}],
                           options={"stop": stops, "num_predict": 2}).eval_count == 2
    import httpx
    answer = httpx.post(f"{engine._client.base_url}/v1/completions",
                        json={"model": ENGINE_MODEL, "prompt": "hi", "max_tokens": 2, "stop": stops})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "stop"      # OpenAI's own limit


@pytest.fixture
def strict_openai_server():
    """An OpenAI-compatible server that, like OpenAI's own, refuses a field it does not know
    (a 400 for Ollama's truncate and num_ctx), and answers a chat otherwise."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, value):
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send(200, {"object": "list", "data": [{"id": "strict", "object": "model"}]})

        def do_POST(self):
            asked = json.loads(self.rfile.read(int(self.headers["content-length"])))
            unknown = sorted({"truncate", "num_ctx"} & set(asked))
            if unknown:
                return self._send(400, {"error": {"message": f"Unrecognized request argument supplied: {unknown[0]}",
                                                  "type": "invalid_request_error", "param": None, "code": None}})
            self._send(200, {"id": "c", "object": "chat.completion", "created": 1, "model": "strict", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_ollamas_own_fields_do_not_reach_an_openai_server(daemon_factory, strict_openai_server):
    """truncate and num_ctx size the engine's context; an OpenAI server would refuse them."""
    running = daemon_factory({"backends": [{"name": "strict", "kind": "openai", "models": ["strict"],
                                            "url": f"http://127.0.0.1:{strict_openai_server.server_port}"}],
                              "cache": {"enabled": False}})
    client = ollama.Client(host=running.url)
    reply = client.chat(model="strict", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 4096})
    assert reply.message.content == "fine"
