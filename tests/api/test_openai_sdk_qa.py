"""The OpenAI API as a demanding user of the official `openai` SDK drives it: the in-process
engine (a tiny GGUF) and the real llama-server behind one daemon, each case on both where the
backend can answer it."""
from __future__ import annotations

import http.server
import json
import threading

import openai
import pytest

from tests.daemon_rig import llama_and_engine_daemon, ollama_backend
from tests.rig.llama import make_tiny_model, tiny_gguf_tool

ENGINE = "tiny-engine"
CALLER = "tiny-caller"        # its vocab holds a whole Hermes call that a logit_bias opens
LLAMA = "tiny"
MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def daemon(llama_server, tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("qa-engine-models")
    make_tiny_model(models_dir / f"{ENGINE}.gguf")
    tiny_gguf_tool().build_tiny_gguf(models_dir / f"{CALLER}.gguf", vocab="spm-call")
    with llama_and_engine_daemon(llama_server, models_dir, LLAMA, max_running=4) as running:
        yield running


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def test_an_unknown_model_id_is_a_404_in_openais_error_shape(client):
    """GET /v1/models/{id} is shared with Anthropic's API; an OpenAI client (no
    anthropic-version header) gets OpenAI's error object, with its code and param."""
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"


def test_the_engine_answers_several_prompts_each_on_its_own(client):
    """Each prompt of a list is a completion of its own (a choice per prompt, in order), never
    one joined text: each choice equals its prompt asked alone."""
    alone = [client.completions.create(model=ENGINE, prompt=p, max_tokens=3, temperature=0).choices[0].text
             for p in ("the sun", "the moon")]
    listed = client.completions.create(model=ENGINE, prompt=["the sun", "the moon"], max_tokens=3, temperature=0)
    assert [c.index for c in listed.choices] == [0, 1]
    assert [c.text for c in listed.choices] == alone


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
def test_top_logprobs_without_logprobs_is_a_400_naming_top_logprobs(client, model):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, top_logprobs=2)
    assert info.value.body["param"] == "top_logprobs"


def test_a_prompt_of_token_id_arrays_is_served(client):
    """OpenAI's prompt may be an array of token arrays: llama-server answers a choice each, the
    engine the one it is given."""
    both = client.completions.create(model=LLAMA, prompt=[[5, 6, 7], [8, 9]], max_tokens=2, temperature=0)
    assert sorted(c.index for c in both.choices) == [0, 1]
    one = client.completions.create(model=ENGINE, prompt=[[5, 6, 7]], max_tokens=2, temperature=0)
    assert one.usage.prompt_tokens == 3 and one.usage.completion_tokens == 2


def test_a_developer_message_is_the_engines_system_message(client):
    """OpenAI's "developer" role replaces "system": the engine renders it as the system turn."""
    def answer(role: str):
        return client.chat.completions.create(model=ENGINE, max_tokens=4, temperature=0, messages=[
            {"role": role, "content": "be brief"}, *MESSAGES])
    developer, system = answer("developer"), answer("system")
    assert developer.usage.prompt_tokens == system.usage.prompt_tokens
    assert developer.choices[0].message.content == system.choices[0].message.content


def test_embeddings_dimensions_shortens_and_normalises_each_vector(client):
    """OpenAI's `dimensions`: the vector's first numbers, of length 1 again; float and base64
    (the SDK's default) alike."""
    full = client.embeddings.create(model=ENGINE, input="the sun", encoding_format="float").data[0].embedding
    for encoding in ("float", openai.NOT_GIVEN):         # not given: the SDK asks for base64, decodes it
        short = client.embeddings.create(model=ENGINE, input="the sun", dimensions=8,
                                         encoding_format=encoding).data[0].embedding
        norm = sum(x * x for x in full[:8]) ** 0.5
        assert len(short) == 8
        assert short == pytest.approx([x / norm for x in full[:8]], abs=1e-5)


@pytest.mark.parametrize("dimensions", [0, 100_000, "8"])
def test_embeddings_dimensions_out_of_range_is_a_400_naming_it(client, dimensions):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=ENGINE, input="the sun", dimensions=dimensions)
    assert info.value.body["param"] == "dimensions"


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_have_openais_completion_shape(client, model, stream):
    """llama-server answers a completion's logprobs in the chat shape ({"content": [...]}), the
    engine had no text_offset; the SDK reads tokens, token_logprobs, top_logprobs, text_offset."""
    kwargs = dict(model=model, prompt="the sun", max_tokens=3, logprobs=2, temperature=0)
    if stream:
        chunks = [c for c in client.completions.create(stream=True, **kwargs) if c.choices and c.choices[0].logprobs]
        text = "".join(c.choices[0].text for c in chunks)
        logprobs = [c.choices[0].logprobs for c in chunks]
        tokens = [t for lp in logprobs for t in lp.tokens]
        offsets = [o for lp in logprobs for o in lp.text_offset]
        tops = [top for lp in logprobs for top in lp.top_logprobs]
    else:
        answer = client.completions.create(**kwargs)
        text, logprobs = answer.choices[0].text, answer.choices[0].logprobs
        tokens, offsets, tops = logprobs.tokens, logprobs.text_offset, logprobs.top_logprobs
    assert "".join(tokens) == text and len(tokens) == 3
    assert offsets == [0, len(tokens[0]), len(tokens[0]) + len(tokens[1])]
    assert all(len(top) == 2 and all(lp <= 0 for lp in top.values()) for top in tops)


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
def test_a_suffix_the_backend_cannot_honour_is_a_400_naming_it(client, model):
    """Fill-in-the-middle needs the model's FIM tokens, which the tiny model has not (see
    test_fill_in_middle.py for one that has): a plain completion would never meet the suffix."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="def add(a, b):", suffix="\n\nprint(add(1, 2))", max_tokens=3)
    assert info.value.body["param"] == "suffix"


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
def test_echo_puts_the_prompt_before_the_completion(client, model):
    kwargs = dict(model=model, prompt="the sun", max_tokens=3, temperature=0)
    plain = client.completions.create(**kwargs).choices[0].text
    assert client.completions.create(echo=True, **kwargs).choices[0].text == "the sun" + plain
    streamed = [c.choices[0].text for c in client.completions.create(echo=True, stream=True, **kwargs) if c.choices]
    assert streamed[0].startswith("the sun") and "".join(streamed) == "the sun" + plain


def test_echo_numbers_its_prompts_as_openai_numbers_the_choices(client):
    answer = client.completions.create(model=LLAMA, prompt=["the sun", "the moon"], max_tokens=2, echo=True)
    texts = {c.index: c.text for c in answer.choices}
    assert texts[0].startswith("the sun") and texts[1].startswith("the moon")
    several = client.completions.create(model=ENGINE, prompt="the sea", n=2, max_tokens=2, echo=True, seed=1)
    assert [c.text.startswith("the sea") for c in several.choices] == [True, True]


@pytest.mark.parametrize("kwargs", [{"logprobs": 1}, {"prompt": [5, 6, 7]}])
def test_echo_it_cannot_honour_is_a_400_naming_echo(client, kwargs):
    """llama-server computes no prompt logprobs (the engine does: tests/api/test_echo_logprobs.py)."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**{"model": LLAMA, "prompt": "the sun", "max_tokens": 2, "echo": True, **kwargs})
    assert info.value.body["param"] == "echo"


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
def test_best_of_over_n_is_a_400_naming_it_and_equal_to_n_is_served(client, model):
    """No backend ranks candidate completions: best_of > n is refused rather than ignored."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="the sun", max_tokens=2, best_of=3)
    assert info.value.body["param"] == "best_of"
    answer = client.completions.create(model=model, prompt="the sun", max_tokens=2, best_of=1)
    assert answer.usage.completion_tokens == 2


@pytest.mark.parametrize("token_id", [1 << 30, -1])
def test_token_ids_outside_the_engines_vocabulary_are_a_400_naming_the_field(client, token_id):
    """Never the engine's failed batch (a 503 that fails the requests decoded beside it, or a 500)."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=ENGINE, prompt=[5, token_id], max_tokens=2)
    assert info.value.body["param"] == "prompt"
    for embedding_input in ([5, token_id], [[5, token_id]]):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=ENGINE, input=embedding_input)
        assert info.value.body["param"] == "input"


def test_an_array_of_token_ids_is_one_embedding_input(client):
    """OpenAI: `input` as an array of integers is one input, tokens of one text."""
    result = client.embeddings.create(model=ENGINE, input=[5, 6, 7], encoding_format="float")
    assert len(result.data) == 1 and result.usage.prompt_tokens == 3
    same = client.embeddings.create(model=ENGINE, input=[[5, 6, 7]], encoding_format="float")
    assert same.data[0].embedding == pytest.approx(result.data[0].embedding)


@pytest.mark.parametrize("tokens", [[True], [5, False], [[5, True]], [[5, "x"]], [[5, 1.5]]])
def test_a_boolean_or_other_non_integer_is_no_token_id(client, tokens):
    """`true` was embedded (and completed) as token 1; a text or a float inside a token array
    reached the engine, whose 400 called it a token outside the vocabulary."""
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=ENGINE, input=tokens)
    assert info.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=ENGINE, prompt=tokens, max_tokens=2)
    assert info.value.body["param"] == "prompt"


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
@pytest.mark.parametrize("part", [{"type": "text"}, {"type": "text", "text": 7}])
def test_a_text_part_without_text_is_a_400_naming_it(client, model, part):
    """llama-server answered it with a 500 (a 502 here); the engine with a 400 naming only messages."""
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, max_tokens=2, messages=[{"role": "user", "content": [part]}])
    assert info.value.body["param"] == "messages[0].content[0].text"


def test_a_stream_of_several_prompts_from_llama_server_is_relayed(client):
    """llama-server opens such a stream with a `data: null` event; the client gets each
    prompt's choice, not a stream broken by an error event."""
    chunks = list(client.completions.create(model=LLAMA, prompt=["the sun", "the moon"], max_tokens=2, stream=True))
    texts = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert sorted(texts) == [0, 1] and all(texts.values())
    assert sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason) == [0, 1]


@pytest.mark.parametrize("prompt", [["the sun", "the moon"], [5, 6, 7], [[5, 6]]])
def test_the_ollama_backend_refuses_prompts_it_cannot_take_instead_of_joining_them(daemon_factory, ollama_emulator,
                                                                                    prompt):
    """Ollama's /api/generate takes one text: several prompts were joined into one, token ids
    sent as their digits ("567")."""
    running = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="llama3.2:latest", prompt=prompt, max_tokens=2)
    assert info.value.body["param"] == "prompt"
    listed = client.completions.create(model="llama3.2:latest", prompt=["the sun"], max_tokens=2)
    assert listed.choices[0].text


@pytest.mark.parametrize("tokens", [[5, 6], [[5, 6]], ["the sun", [5, 6]]])
def test_token_ids_ollama_cannot_embed_are_a_400_naming_input(daemon_factory, ollama_emulator, tokens):
    """They went to /api/embed, which takes texts: a failed request (a 502 here) that counted
    against the backend's breaker, so a few of them shut the model off for everyone."""
    running = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    for _ in range(4):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="llama3.2:latest", input=tokens, encoding_format="float")
        assert info.value.body["param"] == "input"
    texts = client.embeddings.create(model="llama3.2:latest", input=["the sun", "the moon"], encoding_format="float")
    assert [item.index for item in texts.data] == [0, 1]


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_a_backend_cannot_give_are_a_400_naming_n_on_every_backend(daemon, daemon_factory,
                                                                            ollama_emulator, stream):
    """Ollama has no n: it answered one choice where two were asked, without a word; llama-server
    was refused. The engine gives every choice."""
    ollama = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})
    for url, model in ((ollama.url, "llama3.2:latest"), (daemon.url, LLAMA)):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, n=2, stream=stream)
        assert info.value.body["param"] == "n" and info.value.status_code == 400
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=model, prompt="the sun", max_tokens=2, n=2, stream=stream)
        assert info.value.body["param"] == "n"
    engine = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    answer = engine.chat.completions.create(model=ENGINE, messages=MESSAGES, max_tokens=2, n=2)
    assert [c.index for c in answer.choices] == [0, 1]


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
@pytest.mark.parametrize("tools", [None, []])
def test_tool_choice_required_without_tools_is_a_400_naming_it(client, model, tools):
    """A call that must be made with no tool to call: both backends answered plain text."""
    extra = {} if tools is None else {"tools": tools}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, tool_choice="required", **extra)
    assert info.value.body["param"] == "tool_choice"


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
def test_top_logprobs_zero_without_logprobs_is_served(client, model):
    """top_logprobs 0 asks for nothing; llama-server refused it unless logprobs is true."""
    answer = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, logprobs=False,
                                            top_logprobs=0)
    assert answer.usage.completion_tokens == 2 and answer.choices[0].logprobs is None


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("top", [None, 0, 2])
def test_chat_logprobs_have_as_many_alternatives_as_asked(client, model, stream, top):
    """OpenAI: logprobs without top_logprobs (or 0) gives each token with no alternatives.
    llama-server gave 20 a token without top_logprobs, and no logprobs at all with 0."""
    extra = {} if top is None else {"top_logprobs": top}
    args = dict(model=model, messages=MESSAGES, max_tokens=3, logprobs=True, **extra)
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **args))
        entries = [e for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs.content or []]
    else:
        entries = client.chat.completions.create(**args).choices[0].logprobs.content
    assert len(entries) == 3
    assert all(len(e.top_logprobs) == (top or 0) and e.logprob <= 0 for e in entries)


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
@pytest.mark.parametrize("bias", [{"5": "x"}, {"5": None}, {"5": [1]}])
def test_a_logit_bias_no_backend_can_read_is_a_400_on_every_backend(client, model, bias):
    """llama-server skipped a bias it could not read (a 200 as if none), the engine refused it.
    (A text key is no such case: llama-server biases its tokens.)"""
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, logit_bias=bias)
    assert info.value.body["param"] == "logit_bias"


def test_a_model_whose_name_has_a_slash_is_retrieved(daemon_factory, tmp_path):
    """The SDK percent-encodes the id in /v1/models/{id} (Ollama names such as
    hf.co/org/model:tag hold slashes)."""
    model_path = make_tiny_model(tmp_path / "tiny.gguf")
    running = daemon_factory({"backends": [{"name": "engine", "kind": "engine", "model": str(model_path),
                                            "alias": "acme/tiny model:1b", "ollama_store": False}],
                              "cache": {"enabled": False}})
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    assert client.models.retrieve("acme/tiny model:1b").id == "acme/tiny model:1b"


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_n_choices_with_tools_stream_each_under_its_own_index(client):
    """The tool-call layer reads a stream with tools: each choice keeps its index, its text and
    its finish_reason (choice 1's text came under index 0, with one finish_reason in all)."""
    kwargs = dict(model=ENGINE, messages=MESSAGES, max_tokens=3, n=2, seed=1, tools=[WEATHER])
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    texts, finishes = {}, {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = finishes.get(choice.index, []) + [choice.finish_reason]
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finishes == {0: ["length"], 1: ["length"]}


def _answered_call(arguments) -> list[dict]:
    return [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
def test_tool_call_arguments_that_are_not_json_are_served_and_keep_the_model_serving(client, model):
    """A call the model wrote badly reaches the client as written (as OpenAI's can) and comes
    back in the history: served, as OpenAI serves it. llama-server answered such arguments
    with a 500 (a 502 here) that counted against its breaker: the fourth request, any request,
    got 503. An empty string is no arguments, as "{}"."""
    for arguments in ("not json", "not json", "not json", "not json", "", '{"city": "Paris"}', {"city": "Paris"}):
        answer = client.chat.completions.create(model=model, messages=_answered_call(arguments), tools=[WEATHER],
                                                max_tokens=2)
        assert answer.usage.completion_tokens == 2


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
def test_an_assistant_refusal_sent_back_is_read_as_its_text(client, model):
    """OpenAI answers a refusal as a `refusal` content part, and clients send it back in the
    history: OpenAI takes it; llama-server and the engine refused the whole request."""
    history = [{"role": "user", "content": "Do the bad thing."},
               {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
               {"role": "user", "content": "Then say hello."}]
    answer = client.chat.completions.create(model=model, messages=history, max_tokens=2)
    assert answer.usage.completion_tokens == 2


@pytest.mark.parametrize("stream", [False, True])
def test_every_choice_of_n_makes_its_tool_call(client, stream):
    """Each of n choices is read for tool calls, not only the first (choice 1's call was left
    as raw text)."""
    answer = client.chat.completions.create(model=CALLER, max_tokens=40, temperature=0, n=2, tools=[WEATHER],
                                            messages=[{"role": "user", "content": "weather?"}], stream=stream,
                                            extra_body={"logit_bias": tiny_gguf_tool().force_tool_call_bias()})
    if stream:
        calls, finishes = {}, {}
        for chunk in answer:
            for choice in chunk.choices:
                calls.setdefault(choice.index, []).extend(choice.delta.tool_calls or [])
                finishes[choice.index] = choice.finish_reason or finishes.get(choice.index)
        names = {index: [c.function.name for c in found] for index, found in calls.items()}
    else:
        names = {c.index: [t.function.name for t in c.message.tool_calls or []] for c in answer.choices}
        finishes = {c.index: c.finish_reason for c in answer.choices}
    assert names == {0: ["get_weather"], 1: ["get_weather"]}
    assert finishes == {0: "tool_calls", 1: "tool_calls"}


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_cut_at_its_marker_is_no_content(client, stream):
    """max_tokens 1 leaves the engine's answer `<tool_call>` alone, streamed as raw text (llama-
    server withholds it): markup that the cut left without a body, not content to show."""
    answer = client.chat.completions.create(model=CALLER, max_tokens=1, tools=[WEATHER], stream=stream,
                                            messages=[{"role": "user", "content": "weather?"}],
                                            extra_body={"logit_bias": tiny_gguf_tool().force_tool_call_bias()})
    if stream:
        chunks = [c for c in answer if c.choices]
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
        finish = chunks[-1].choices[0].finish_reason
    else:
        message, finish = answer.choices[0].message, answer.choices[0].finish_reason
        content, calls = message.content or "", message.tool_calls or []
    assert (content, calls, finish) == ("", [], "length")


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("num_words", [2000, 5000])
def test_a_prompt_over_the_context_is_context_length_exceeded_naming_it(client, model, stream, num_words):
    """As OpenAI answers it: code context_length_exceeded, param messages or prompt
    (llama-server's own exceed_context_size_error came with neither; a prompt over all the
    engine's slots together was refused by the admission as 'prompt plus max_tokens', naming
    max_tokens)."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="word " * num_words, max_tokens=2, stream=stream)
    assert info.value.code == "context_length_exceeded" and info.value.body["param"] == "prompt"
    assert num_words > 2000 or "2001 tokens" in info.value.body["message"]    # (the admission's is estimated)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * num_words}],
                                       max_tokens=2, stream=stream)
    assert info.value.code == "context_length_exceeded" and info.value.body["param"] == "messages"


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
@pytest.mark.parametrize("stop", ["", [""], ["", "zzqq"]])
def test_an_empty_stop_string_stops_nothing_on_every_backend(client, model, stop):
    """An empty stop string matches nowhere: llama-server stopped at once on it (an empty
    answer) while the engine ignored it; it is dropped before any backend sees it."""
    kwargs = dict(model=model, max_tokens=4, temperature=0)
    plain = client.chat.completions.create(messages=MESSAGES, **kwargs)
    stopped = client.chat.completions.create(messages=MESSAGES, stop=stop, **kwargs)
    assert stopped.choices[0].message.content == plain.choices[0].message.content
    assert stopped.usage.completion_tokens == 4 and stopped.choices[0].finish_reason == "length"
    text = client.completions.create(prompt="the sun", stop=stop, **kwargs)
    assert text.usage.completion_tokens == 4 and text.choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
def test_an_audio_answer_no_backend_makes_is_a_400_naming_the_field(client, model):
    """modalities ["text", "audio"] with an audio voice was answered in text, message.audio
    null, without a word."""
    kwargs = dict(model=model, messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
                                       **kwargs)
    assert info.value.body["param"] == "modalities"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(audio={"voice": "alloy", "format": "wav"}, **kwargs)
    assert info.value.body["param"] == "audio"
    assert client.chat.completions.create(modalities=["text"], **kwargs).usage.completion_tokens == 2


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
def test_an_empty_prompt_array_is_a_400_naming_prompt(client, model):
    """llama-server's own 400 had param null; the engine called it 'got 0' prompts."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=[], max_tokens=2)
    assert info.value.body["param"] == "prompt"


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
@pytest.mark.parametrize("logprobs", [-1, 21, 100])
def test_completion_logprobs_out_of_range_are_a_400_on_every_backend(client, model, logprobs):
    """llama-server answered -1 with no logprobs and 100 with 100 alternatives a token, where
    the engine refused them."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="the sun", max_tokens=2, logprobs=logprobs)
    assert info.value.body["param"] == "logprobs"


def _streamed_text_and_tokens(chunks, chat: bool) -> tuple[str, list[str]]:
    text, tokens = "", []
    for chunk in chunks:
        for choice in chunk.choices:
            text += (choice.delta.content or "") if chat else choice.text
            if choice.logprobs is not None:
                tokens += [t.token for t in choice.logprobs.content or []] if chat else choice.logprobs.tokens
    return text, tokens


@pytest.mark.parametrize("model", [ENGINE, LLAMA])
@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_end_where_a_stop_string_ends_the_text(client, model, stream):
    """The stop string is cut from the text and its tokens from the logprobs, as llama-server
    does: the engine gave the stop token's logprob (and a text_offset past the text's end)."""
    kwargs = dict(model=model, max_tokens=8, temperature=0)
    chat_tokens = [t.token for t in client.chat.completions.create(
        messages=MESSAGES, logprobs=True, **kwargs).choices[0].logprobs.content]
    text_tokens = client.completions.create(prompt="the sun", logprobs=1, **kwargs).choices[0].logprobs.tokens
    for tokens in (chat_tokens, text_tokens):
        assert tokens[3] not in "".join(tokens[:3])           # it stops after three tokens
    chat = client.chat.completions.create(messages=MESSAGES, logprobs=True, stop=[chat_tokens[3]], stream=stream,
                                          **kwargs)
    text = client.completions.create(prompt="the sun", logprobs=1, stop=[text_tokens[3]], stream=stream, **kwargs)
    if stream:
        assert _streamed_text_and_tokens(chat, True) == ("".join(chat_tokens[:3]), chat_tokens[:3])
        assert _streamed_text_and_tokens(text, False) == ("".join(text_tokens[:3]), text_tokens[:3])
    else:
        assert [t.token for t in chat.choices[0].logprobs.content] == chat_tokens[:3]
        assert chat.choices[0].message.content == "".join(chat_tokens[:3])
        assert text.choices[0].logprobs.tokens == text_tokens[:3] and text.choices[0].text == "".join(text_tokens[:3])
        assert max(text.choices[0].logprobs.text_offset) < len(text.choices[0].text)


@pytest.fixture
def embeddings_server():
    """An OpenAI-compatible server whose /v1/embeddings answers `server.answer` as it is."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, value):
            body = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": "emb", "object": "model"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self._send(server.answer)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("answer", [{"data": [1, 2]}, {"data": [{"index": 0, "embedding": "abc"}]},
                                    {"data": [{"index": 0}]}, {"data": [{"index": 0, "embedding": [1.0, "x"]}]}])
def test_embeddings_a_backend_garbles_are_a_502_never_a_500(daemon_factory, embeddings_server, answer):
    """dimensions and base64 (the SDK's default) read each vector: a traceback and a 500."""
    embeddings_server.answer = answer
    running = daemon_factory({"backends": [{"name": "odd", "kind": "openai", "models": ["emb"],
                                            "url": f"http://127.0.0.1:{embeddings_server.server_port}"}],
                              "cache": {"enabled": False}})
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
    for kwargs in ({}, {"encoding_format": "float"}, {"dimensions": 1, "encoding_format": "float"}):
        with pytest.raises(openai.APIStatusError) as info:
            client.embeddings.create(model="emb", input="hi", **kwargs)
        assert info.value.status_code == 502 and info.value.body["code"] == "bad_backend_response"
