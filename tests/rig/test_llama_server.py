"""The real llama-server on the tiny model, driven by the official openai SDK."""
import json
import urllib.request

import openai
import pytest

from tests.rig.llama import force_tool_call_bias

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "required": ["city", "unit"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}


@pytest.fixture(scope="module")
def client(llama_server):
    return openai.OpenAI(base_url=llama_server.url + "/v1", api_key="unused", max_retries=0)


def tokenize(server, text):
    request = urllib.request.Request(server.url + "/tokenize", json.dumps({"content": text}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as resp:
        return json.load(resp)["tokens"]


@pytest.mark.parametrize("max_tokens", [1, 17, 64])
def test_chat_returns_exactly_max_tokens(client, max_tokens):
    resp = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello there"}], max_tokens=max_tokens)
    choice = resp.choices[0]
    assert resp.usage.completion_tokens == max_tokens
    assert choice.finish_reason == "length"
    assert choice.message.content and "<|" not in choice.message.content
    choice.message.content.encode("utf-8")  # valid text (str from valid UTF-8)


def test_seed_makes_output_repeatable(client):
    def ask():
        return client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "repeat"}], max_tokens=12,
            seed=42, temperature=0).choices[0].message.content
    assert ask() == ask()


def test_stream_yields_one_chunk_per_token_then_usage(client):
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "stream please"}], max_tokens=20,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(pieces) == 20
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 20


def test_tools_without_bias_give_plain_text(client):
    resp = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "weather?"}], max_tokens=10,
        tools=[WEATHER_TOOL])
    assert resp.choices[0].message.tool_calls is None
    assert resp.usage.completion_tokens == 10


def test_logit_bias_triggers_one_real_tool_call(client):
    resp = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "weather in paris?"}], max_tokens=100,
        tools=[WEATHER_TOOL], logit_bias=force_tool_call_bias())
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert args["city"] == "paris" and args["unit"] in ("celsius", "fahrenheit")


def test_streamed_tool_call(client):
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "weather?"}], max_tokens=100,
        tools=[WEATHER_TOOL], logit_bias=force_tool_call_bias(), stream=True)
    fragments, finishes = [], []
    for chunk in stream:
        delta = chunk.choices[0].delta
        fragments += [tc.function.arguments or "" for tc in delta.tool_calls or []]
        finishes += [chunk.choices[0].finish_reason] if chunk.choices[0].finish_reason else []
    assert finishes == ["tool_calls"]
    assert json.loads("".join(fragments))["city"] == "paris"


def test_bad_request_maps_to_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x " * 3000}],
                                       max_tokens=4)


def test_factory_server_with_own_args_kill_and_restart(llama_server_factory):
    server = llama_server_factory(parallel=2, ctx_size=1024)
    with urllib.request.urlopen(server.url + "/props") as resp:
        assert json.load(resp)["total_slots"] == 2
    server.kill()
    assert server.health() is None and not server.is_running()
    server.restart()
    assert server.health() == "ok"
    assert len(tokenize(server, "hello world")) >= 2
