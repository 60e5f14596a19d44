"""The Anthropic Messages API through the daemon in front of the real llama-server (the tiny
model), driven by the official `anthropic` SDK: text, streams, stop sequences, exact
count_tokens, prompt-cache usage, and a real tool call (forced by a server-wide logit bias on
`<tool_call>`) answered with a tool_result."""
import json

import anthropic
import pydantic
import pytest

from tests.daemon_rig import llama_backend
from tests.rig.llama import force_tool_call_bias

HI = [{"role": "user", "content": "Say something."}]
GREEDY = {"temperature": 0}
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {
               "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city"]}}


@pytest.fixture
def client(daemon):
    return anthropic.Anthropic(base_url=daemon.url, api_key="none", max_retries=0)


def text_of(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_text_whole_and_streamed_agree(client):
    whole = client.messages.create(model="tiny", max_tokens=12, messages=HI, extra_body=GREEDY)
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 12
    assert whole.usage.input_tokens + whole.usage.cache_read_input_tokens > 0
    with client.messages.stream(model="tiny", max_tokens=12, messages=HI, extra_body=GREEDY,
                                extra_headers={"x-velollm-cache": "bypass"}) as stream:
        streamed = stream.get_final_message()
    assert text_of(streamed) == text_of(whole) and text_of(whole)
    assert streamed.stop_reason == "max_tokens" and streamed.usage.output_tokens == 12


def test_stop_sequence_is_named(client):
    full = text_of(client.messages.create(model="tiny", max_tokens=16, messages=HI, extra_body=GREEDY))
    start = len(full) // 2
    stop = full[start:start + 3]
    start = full.index(stop)                              # its first occurrence ends the text
    assert start > 0, full
    message = client.messages.create(model="tiny", max_tokens=16, messages=HI, extra_body=GREEDY,
                                     stop_sequences=["never-there", stop])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", stop)
    assert text_of(message) == full[:start]
    with client.messages.stream(model="tiny", max_tokens=16, messages=HI, extra_body=GREEDY,
                                stop_sequences=[stop], extra_headers={"x-velollm-cache": "bypass"}) as stream:
        streamed = stream.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence, text_of(streamed)) == ("stop_sequence", stop, full[:start])
    args = dict(model="tiny", max_tokens=16, messages=HI, extra_body=GREEDY, stop_sequences=["never-there", stop])
    replayed = client.messages.with_raw_response.create(**args)      # the cache keeps the stop string
    assert replayed.headers["x-velollm-cache"] == "hit-exact"
    assert (replayed.parse().stop_reason, replayed.parse().stop_sequence) == ("stop_sequence", stop)
    with client.messages.stream(**args) as stream:
        assert stream.response.headers["x-velollm-cache"] == "hit-exact"
        assert stream.get_final_message().stop_sequence == stop


def test_count_tokens_is_exact_on_llama_server(client):
    args = dict(model="tiny", messages=HI, system="You are terse.", tools=[WEATHER])
    raw = client.messages.with_raw_response.count_tokens(**args)
    assert raw.headers["x-velollm-token-count"] == "exact"
    count = raw.parse().input_tokens
    served = client.messages.create(max_tokens=3, **args).usage
    assert count == served.input_tokens + served.cache_read_input_tokens
    assert count > client.messages.count_tokens(model="tiny", messages=HI).input_tokens


def test_reused_prompt_is_reported_as_cache_read(client):
    history = [{"role": "user", "content": "A long shared preamble. " * 40}]
    first = client.messages.create(model="tiny", max_tokens=4, messages=history).usage
    again = client.messages.create(model="tiny", max_tokens=5, messages=history).usage
    assert again.cache_read_input_tokens > 0
    assert again.input_tokens + again.cache_read_input_tokens == first.input_tokens + first.cache_read_input_tokens


@pytest.fixture
def tool_daemon(daemon_factory, llama_server, llama_server_factory):
    """"tiny-tools": a llama-server whose every answer opens a `<tool_call>` (server-wide bias);
    "tiny": the shared one, which answers in text."""
    [(token, bias)] = force_tool_call_bias().items()
    forced = llama_server_factory(alias="tiny-tools", extra_args=["--logit-bias", f"{token}+{bias:g}"])
    return daemon_factory({"backends": [llama_backend(forced, name="llama-tools", models=["tiny-tools"]),
                                        llama_backend(llama_server)]})


def test_real_tool_call_round_trip(tool_daemon):
    client = anthropic.Anthropic(base_url=tool_daemon.url, api_key="none", max_retries=0)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    for choice in (None, {"type": "any"}):
        extra = {"tool_choice": choice} if choice else {}
        first = client.messages.create(model="tiny-tools", max_tokens=100, tools=[WEATHER], messages=ask, **extra)
        [call] = [b for b in first.content if b.type == "tool_use"]
        assert first.stop_reason == "tool_use" and call.name == "get_weather"
        assert isinstance(call.input, dict) and call.input.get("unit") in ("celsius", "fahrenheit")
    with client.messages.stream(model="tiny-tools", max_tokens=100, tools=[WEATHER], messages=ask) as stream:
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content][-1] == "tool_use" and streamed.stop_reason == "tool_use"
    history = [*ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "12 C, rain"}]}]
    answer = client.messages.create(model="tiny", max_tokens=8, tools=[WEATHER], messages=history)
    assert answer.stop_reason == "max_tokens" and text_of(answer)


def test_output_config_format_is_enforced_by_llama_server(client):
    class Verdict(pydantic.BaseModel):
        ok: bool

    parsed = client.messages.parse(model="tiny", max_tokens=40, messages=HI, output_format=Verdict)
    assert parsed.stop_reason == "end_turn" and isinstance(parsed.parsed_output, Verdict)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    with client.messages.stream(model="tiny", max_tokens=40, messages=HI,
                                output_config={"format": {"type": "json_schema", "schema": schema}}) as stream:
        streamed = stream.get_final_message()
    assert isinstance(json.loads(text_of(streamed))["n"], int)
    beta = client.messages.create(model="tiny", max_tokens=40, messages=HI,     # the beta's top-level field
                                  extra_body={"output_format": {"type": "json_schema", "schema": schema}})
    assert isinstance(json.loads(text_of(beta))["n"], int)
    free = client.messages.create(model="tiny", max_tokens=40, messages=HI)
    with pytest.raises(ValueError):                           # without the schema: the tiny model's noise
        json.loads(text_of(free))


def test_a_prompt_over_llama_servers_context_is_worded_as_anthropic_words_it(client):
    """Claude Code compacts the conversation when the error says "prompt is too long"."""
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": "word " * 3000}])
    assert info.value.body["error"]["message"].startswith("prompt is too long: ")
