"""vLLM's extra fields as users moving from vLLM send them (the openai client's extra_body), on
each backend kind: honoured (the engine by constrained sampling, llama-server as its own
`grammar` / `json_schema`, Ollama's `format` and options), or a 400 whose `param` names the
field, never an answer that ignored what was asked."""
from __future__ import annotations

import json

import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend, ollama_backend
from tests.rig.llama import make_tiny_model, token_id

ENGINE_MODEL = "tiny-engine"
CHOICES = ["yes", "no", "maybe so"]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
PROMPTS = ["is it raining?", "pick one", "what do you think of this?"]


@pytest.fixture(scope="module")
def engine_daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm-fields-models")
    make_tiny_model(folder / f"{ENGINE_MODEL}.gguf")
    with RunningDaemon({"backends": [engine_backend(folder)], "cache": {"enabled": False}}) as running:
        yield running


@pytest.fixture(scope="module")
def engine(engine_daemon):
    return openai.OpenAI(base_url=engine_daemon.url + "/v1", api_key="x", max_retries=0)


class Servers:
    """The real llama-server ("tiny") and the Ollama emulator ("llama3.2") behind one daemon, and
    llama-server again behind another as a generic OpenAI-compatible server ("generic-tiny")."""

    def __init__(self, daemon: RunningDaemon, generic: RunningDaemon):
        self.client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
        self.generic = openai.OpenAI(base_url=generic.url + "/v1", api_key="x", max_retries=0)

    @property
    def chat(self):
        return self.client.chat

    def for_model(self, model: str) -> tuple[openai.OpenAI, str]:
        return (self.generic, "tiny") if model == "generic-tiny" else (self.client, model)


@pytest.fixture
def servers(daemon_factory, llama_server, ollama_emulator):
    no_cache = {"cache": {"enabled": False}}
    daemon = daemon_factory({"backends": [llama_backend(llama_server), ollama_backend(ollama_emulator)], **no_cache})
    generic = {"name": "generic", "kind": "openai", "url": llama_server.url, "models": ["tiny*"]}
    return Servers(daemon, daemon_factory({"backends": [generic], **no_cache}))


def ask(client, model: str, prompt: str, seed: int, **extra_body):
    if isinstance(client, Servers):
        client, model = client.for_model(model)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=30, temperature=1.0, seed=seed, extra_body=extra_body)


def assert_refused(call, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    assert info.value.status_code == 400 and info.value.body["param"] == param, info.value.body


# ---- guided_choice ----

@pytest.mark.parametrize("spelling", ["guided_choice", "structured_outputs"])
@pytest.mark.parametrize("model", [ENGINE_MODEL, "tiny"])
def test_guided_choice_answers_one_of_the_choices(engine, servers, model, spelling):
    client = engine if model == ENGINE_MODEL else servers
    extra = {"guided_choice": CHOICES} if spelling == "guided_choice" else {"structured_outputs": {"choice": CHOICES}}
    answers = set()
    for seed, prompt in enumerate(PROMPTS * 2):
        choice = ask(client, model, prompt, seed, **extra).choices[0]
        assert choice.message.content in CHOICES and choice.finish_reason == "stop", choice
        answers.add(choice.message.content)
    assert len(answers) > 1            # sampled among them, not one fixed text


def test_guided_choice_on_a_completion_and_a_stream_of_the_engine(engine):
    text = engine.completions.create(model=ENGINE_MODEL, prompt="the answer:", max_tokens=20, seed=4,
                                     extra_body={"guided_choice": CHOICES}).choices[0].text
    assert text in CHOICES
    chunks = engine.chat.completions.create(model=ENGINE_MODEL, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=20, seed=5, stream=True,
                                            extra_body={"guided_choice": CHOICES})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) in CHOICES


# ---- guided_json ----

@pytest.mark.parametrize("model", [ENGINE_MODEL, "tiny"])
@pytest.mark.parametrize("seed", [1, 2])
def test_guided_json_answers_an_instance_of_the_schema(engine, servers, model, seed):
    client = engine if model == ENGINE_MODEL else servers
    for extra in ({"guided_json": SCHEMA}, {"structured_outputs": {"json": json.dumps(SCHEMA)}}):
        response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "who?"}],
                                                  max_tokens=200, temperature=1.0, seed=seed, extra_body=extra)
        value = json.loads(response.choices[0].message.content)
        assert set(value) == {"name", "age"} and isinstance(value["name"], str) and type(value["age"]) is int


def test_guided_json_reaches_ollama_as_its_format(servers, ollama_emulator):
    ask(servers, "llama3.2", "who?", 1, guided_json=SCHEMA, top_k=7, min_p=0.1, repetition_penalty=1.2)
    sent = ollama_emulator.last_request("/api/chat")
    assert sent["format"] == SCHEMA
    assert {"top_k": 7, "min_p": 0.1, "repeat_penalty": 1.2}.items() <= sent["options"].items()


# ---- min_tokens ----

def test_min_tokens_holds_on_the_engine_against_an_end_token_it_prefers(engine):
    """A logit bias makes the end token the model's pick at every step (the tiny model holds its
    control tokens 1000 down): without min_tokens the answer ends at once, with it not before
    min_tokens tokens (vLLM's rule)."""
    eos = {str(token_id("</s>")): 2000, str(token_id("<|im_end|>")): 2000}
    kwargs = dict(model=ENGINE_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=40, seed=1,
                  logit_bias=eos)
    assert engine.chat.completions.create(**kwargs).usage.completion_tokens <= 1
    for min_tokens in (3, 12):
        answer = engine.chat.completions.create(**kwargs, extra_body={"min_tokens": min_tokens})
        assert answer.usage.completion_tokens >= min_tokens and answer.choices[0].finish_reason == "stop"


def test_min_tokens_above_max_tokens_is_a_400(engine):
    assert_refused(lambda: ask(engine, ENGINE_MODEL, "hi", 1, min_tokens=31), "min_tokens")


def test_include_stop_str_in_output_on_the_engine(engine):
    kwargs = dict(model=ENGINE_MODEL, prompt="count:", max_tokens=40, seed=2, temperature=0)
    free = engine.completions.create(**kwargs).choices[0].text
    stop = free[5:7]
    assert stop and stop in free
    cut = engine.completions.create(**kwargs, stop=[stop]).choices[0].text
    kept = engine.completions.create(**kwargs, stop=[stop], extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].text == cut + stop and free.startswith(kept.choices[0].text)


# ---- refusals: a 400 naming the field ----

@pytest.mark.parametrize("model, extra, param", [
    (ENGINE_MODEL, {"guided_regex": "[a-z]+"}, "guided_regex"),
    (ENGINE_MODEL, {"guided_grammar": 'root ::= "a"'}, "guided_grammar"),
    (ENGINE_MODEL, {"structured_outputs": {"regex": "a"}}, "structured_outputs.regex"),
    (ENGINE_MODEL, {"guided_choice": []}, "guided_choice"),
    (ENGINE_MODEL, {"guided_choice": ["a"], "guided_json": SCHEMA}, "guided_choice"),
    (ENGINE_MODEL, {"guided_choice": ["a"], "response_format": {"type": "json_object"}}, "guided_choice"),
    (ENGINE_MODEL, {"guided_json": "not json"}, "guided_json"),
    (ENGINE_MODEL, {"min_tokens": -1}, "min_tokens"),
    (ENGINE_MODEL, {"stop_token_ids": ["a"]}, "stop_token_ids"),
    (ENGINE_MODEL, {"ignore_eos": "yes"}, "ignore_eos"),
    (ENGINE_MODEL, {"structured_outputs": "json"}, "structured_outputs"),
])
def test_bad_or_unservable_fields_on_the_engine_are_400s_naming_them(engine, model, extra, param):
    assert_refused(lambda: ask(engine, model, "hi", 1, **extra), param)
    assert ask(engine, model, "hi", 1).choices[0].message.content is not None       # still serving


@pytest.mark.parametrize("model, extra, param", [
    ("tiny", {"guided_regex": "[a-z]+"}, "guided_regex"),
    ("tiny", {"min_tokens": 5}, "min_tokens"),
    ("tiny", {"include_stop_str_in_output": True, "stop": ["x"]}, "include_stop_str_in_output"),
    ("tiny", {"stop_token_ids": [2]}, "stop_token_ids"),
    ("tiny", {"guided_choice": CHOICES, "ignore_eos": True}, "guided_choice"),       # llama-server: a 500
    ("tiny", {"structured_outputs": {"grammar": 'root ::= "a"'}, "ignore_eos": True}, "structured_outputs.grammar"),
    ("tiny", {"guided_json": SCHEMA, "ignore_eos": True}, "response_format"),
    ("tiny", {"response_format": {"type": "json_object"}, "ignore_eos": True}, "response_format"),
    ("tiny", {"guided_choice": ["yes", "a\x00b"]}, "guided_choice"),            # GBNF has no NUL: a 500
    ("llama3.2", {"guided_choice": CHOICES}, "guided_choice"),
    ("llama3.2", {"structured_outputs": {"grammar": 'root ::= "a"'}}, "structured_outputs.grammar"),
    ("llama3.2", {"min_tokens": 2}, "min_tokens"),
    ("llama3.2", {"ignore_eos": True}, "ignore_eos"),
    ("llama3.2", {"stop_token_ids": [2]}, "stop_token_ids"),
    ("generic-tiny", {"guided_choice": CHOICES}, "guided_choice"),
    ("generic-tiny", {"guided_regex": "a"}, "guided_regex"),
    ("generic-tiny", {"structural_tag": '{"type": "structural_tag"}'}, "structural_tag"),    # vLLM's before 0.10.2
    ("tiny", {"structural_tag": '{"type": "structural_tag"}'}, "structural_tag"),
])
def test_fields_a_backend_cannot_honour_are_400s_naming_them(servers, model, extra, param):
    assert_refused(lambda: ask(servers, model, "hi", 1, **extra), param)
    assert ask(servers, model, "hi", 1).choices[0].message.content is not None       # still serving


def test_defaults_ask_for_nothing_and_pass_everywhere(servers):
    """vLLM's defaults (min_tokens 0, ignore_eos false, ...) and skip_special_tokens, which a
    client such as LangChain's sends always, are no reason for a 400 on any backend."""
    extra = {"min_tokens": 0, "ignore_eos": False, "include_stop_str_in_output": False, "stop_token_ids": [],
             "skip_special_tokens": True}
    for model in ("tiny", "llama3.2", "generic-tiny"):
        assert ask(servers, model, "hi", 1, **extra).choices[0].message.content is not None


def test_guided_grammar_and_ignore_eos_reach_llama_server_as_its_own(servers):
    text = ask(servers, "tiny", "hi", 3, guided_grammar='root ::= "ab" | "cd"').choices[0].message.content
    assert text in ("ab", "cd")
    assert ask(servers, "tiny", "hi", 3, ignore_eos=True).usage.completion_tokens == 30


# ---- llama-server's own `json_schema` and `grammar` (its /completion and /v1 bodies) ----

@pytest.mark.parametrize("model", [ENGINE_MODEL, "tiny"])
def test_llama_servers_json_schema_field_is_a_json_schema_everywhere(engine, servers, model):
    """What a llama.cpp app sends on /v1: an instance of the schema on llama-server and on the
    engine alike (it was passed on as it came, which only llama-server read)."""
    client = engine if model == ENGINE_MODEL else servers
    for seed in (1, 2):
        response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "who?"}],
                                                  max_tokens=200, temperature=1.0, seed=seed,
                                                  extra_body={"json_schema": SCHEMA})
        value = json.loads(response.choices[0].message.content)
        assert set(value) == {"name", "age"} and type(value["age"]) is int


def test_llama_servers_json_schema_field_reaches_ollama_as_its_format(servers, ollama_emulator):
    ask(servers, "llama3.2", "who?", 1, json_schema=SCHEMA)
    assert ollama_emulator.last_request("/api/chat")["format"] == SCHEMA


def test_llama_servers_grammar_field_is_honoured_there_and_refused_elsewhere(engine, servers):
    assert ask(servers, "tiny", "hi", 3, grammar='root ::= "ab" | "cd"').choices[0].message.content in ("ab", "cd")
    for client, model in ((engine, ENGINE_MODEL), (servers, "llama3.2"), (servers, "generic-tiny")):
        assert_refused(lambda: ask(client, model, "hi", 1, grammar='root ::= "ab"'), "grammar")
    assert_refused(lambda: ask(servers, "tiny", "hi", 1, grammar='root ::= "ab"', json_schema=SCHEMA),
                   "grammar")
