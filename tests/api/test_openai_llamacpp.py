"""The OpenAI API through velollmd in front of the real llama-server, driven by the openai SDK."""
import asyncio
import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.rig.llama import force_tool_call_bias

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
MESSAGES = [{"role": "user", "content": "Say something."}]
# `<tool_call>`, "\n" and `{"name":"get_weather` take 13 tokens at the fewest (the tiny vocab's
# longest pieces); the grammar may sample them so, and a call cut after its whole name is
# repaired, not dropped. 15 did that in some samples (a get_weather call with {}).
CUT_BEFORE_THE_NAME = 12


@pytest.fixture
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="none", max_retries=0)


def test_models_list_and_get(client):
    ids = [m.id for m in client.models.list()]
    assert "tiny" in ids and "llama3.2:latest" in ids      # merged: llama-server + Ollama
    model = client.models.retrieve("tiny")
    assert model.id == "tiny" and model.owned_by == "llama"


def test_chat_non_stream_yields_exactly_max_tokens(client):
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    assert reply.object == "chat.completion" and reply.model == "tiny"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12
    assert reply.model_extra["timings"]["predicted_n"] == 12         # llama.cpp timings kept


def test_chat_stream_follows_openai_exactly(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 8
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert all(c.model == "tiny" for c in chunks)


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_completions_stream_and_not(client):
    reply = client.completions.create(model="tiny", prompt="Once upon", max_tokens=6)
    assert reply.choices[0].text and reply.usage.completion_tokens == 6
    pieces = [c.choices[0].text for c in client.completions.create(model="tiny", prompt="Once", max_tokens=5,
                                                                   stream=True) if c.choices]
    assert len([p for p in pieces if p]) == 5


def test_completions_stream_usage_comes_in_a_chunk_of_its_own(client):
    """llama-server puts a completion stream's usage on its last text chunk; OpenAI clients get
    it in a final chunk with no choices, as OpenAI sends it."""
    chunks = list(client.completions.create(model="tiny", prompt="Once", max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1]) and all(c.model == "tiny" for c in chunks)
    assert len([c for c in chunks[:-1] if c.choices[0].text]) == 5
    assert chunks[-2].choices[0].finish_reason == "length"


def test_async_client_concurrent_requests(daemon):
    async def main():
        client = openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key="none", max_retries=0)
        replies = await asyncio.gather(*(client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=5) for _ in range(6)))
        await client.close()
        return [r.usage.completion_tokens for r in replies]
    assert asyncio.run(main()) == [5] * 6


def test_real_tool_call_from_llama_server(client):
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Weather?"}],
                                           tools=[WEATHER], max_tokens=100, logit_bias=force_tool_call_bias())
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id
    assert "city" in json.loads(call.function.arguments)


def test_streamed_tool_call(client):
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], max_tokens=100,
        logit_bias=force_tool_call_bias(), stream=True))
    fragments = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert fragments and fragments[0].index == 0 and fragments[0].id and fragments[0].function.name == "get_weather"
    arguments = "".join(f.function.arguments or "" for f in fragments)
    assert "city" in json.loads(arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


@pytest.mark.parametrize("kwargs,param", [
    ({"temperature": 5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER]}, "tool_choice"),
    ({"stop": [1, 2]}, "stop"),
])
def test_bad_fields_are_400_naming_the_field(client, kwargs, param):
    args = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**args)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-imaginary", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"


def test_over_long_prompt_is_400_from_backend(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 3000}],
                                       max_tokens=4)
    assert "context" in info.value.message
    assert (info.value.body["code"], info.value.body["param"]) == ("context_length_exceeded", "messages")


def test_embeddings_bad_input_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny", input=[])
    assert info.value.body["param"] == "input"


def test_completion_ids_are_cmpl_as_openai_gives_them(client):
    """llama-server names its /v1/completions answers `chatcmpl-...`; OpenAI's are `cmpl-...`."""
    whole = client.completions.create(model="tiny", prompt="Once upon", max_tokens=3)
    chunks = list(client.completions.create(model="tiny", prompt="Once", max_tokens=3, stream=True))
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("cmpl-")
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert chat.id.startswith("chatcmpl-")


@pytest.mark.parametrize("arguments", ["city=Oslo", "{\"city\": \"Os", "[1, 2]", "42", ""])
def test_a_history_call_whose_arguments_are_no_json_object_is_served(client, arguments):
    """A call the model wrote badly goes to the client as written (as OpenAI's do), and an
    agent sends it back in the next turn's history: llama-server refuses arguments it cannot
    parse (a 500, so a 502 here), which would wedge the conversation."""
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "error: arguments are not JSON"}]
    reply = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER], max_tokens=3)
    assert reply.choices[0].finish_reason in ("length", "stop", "tool_calls")


@pytest.mark.parametrize("max_tokens", [1, 2, 6, CUT_BEFORE_THE_NAME])
def test_a_call_max_tokens_cuts_before_its_name_is_no_content(client, max_tokens):
    """llama-server gives the cut call's raw text as content in a whole answer (it withholds it
    in a stream): markup, dropped as the stream has it, not shown to a user. max_tokens 1 and 2
    cut at the marker (`<tool_call>`, `<tool_call>\n`); any sample fits, so no seed."""
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Weather?"}],
                                           tools=[WEATHER], max_tokens=max_tokens, logit_bias=force_tool_call_bias())
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    assert "<tool_call>" not in (choice.message.content or "")


def test_vllms_repetition_penalty_reaches_llama_server(client):
    """`repetition_penalty` (vLLM's name, accepted here) is llama-server's `repeat_penalty`: it
    ignored the other name without a word."""
    def text(**penalty):
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0,
                                               extra_body=penalty)
        return reply.choices[0].message.content
    plain, llama_name = text(), text(repeat_penalty=1.8)
    assert llama_name != plain                        # the penalty shows in a greedy answer
    assert text(repetition_penalty=1.8) == llama_name


@pytest.mark.parametrize("logprobs", [None, 1])
def test_several_prompts_are_answered_and_counted_in_full(daemon, client, logprobs):
    """llama-server answers `prompt: [a, b]` with a choice for each but the usage of the first
    alone (a stream: a usage chunk for each, mid-stream): the usage is both prompts', once, last,
    and so are the tokens in velollm_tokens_total."""
    prompts = ["Once upon", "Hello there my friend"]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=3, temperature=0).usage for p in prompts]
    before = tokens_counted(daemon)
    whole = client.completions.create(model="tiny", prompt=prompts, max_tokens=3, temperature=0, logprobs=logprobs)
    chunks = list(client.completions.create(model="tiny", prompt=prompts, max_tokens=3, stream=True,
                                            logprobs=logprobs, stream_options={"include_usage": True}))
    after = tokens_counted(daemon)
    assert [c.index for c in whole.choices] == [0, 1] and all(c.finish_reason == "length" for c in whole.choices)
    prompt_tokens = sum(u.prompt_tokens for u in alone)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (prompt_tokens, 6)
    assert [c.usage is not None for c in chunks].count(True) == 1 and chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (prompt_tokens, 6)
    assert {c.choices[0].index for c in chunks[:-1]} == {0, 1}
    assert (after["prompt"] - before["prompt"], after["completion"] - before["completion"]) == (2 * prompt_tokens, 12)


def tokens_counted(daemon) -> dict:
    """velollm_tokens_total of the model "tiny", by kind."""
    text = httpx.get(daemon.url + "/metrics", timeout=30).text
    return {s.labels["kind"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "velollm_tokens_total" and s.labels["model"] == "tiny"}
