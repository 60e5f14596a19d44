"""OpenAI's legacy function calling (`functions`, `function_call`, `role: "function"`), as
older SDK code and LangChain send it, through the official `openai` client: served as tools on
the engine and the real llama-server, answered in the legacy shape, cached without mixing the
two shapes up."""
from __future__ import annotations

import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend
from tests.rig.llama import tiny_gguf_tool

CALLER = "tiny-caller"        # its vocab holds a whole Hermes call that a logit_bias opens
LLAMA = "tiny"
FUNCTION = {"name": "get_weather", "description": "weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
ASK = [{"role": "user", "content": "weather?"}]


@pytest.fixture(scope="module")
def daemon(llama_server, tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("legacy-functions-models")
    tiny_gguf_tool().build_tiny_gguf(models_dir / f"{CALLER}.gguf", vocab="spm-call")
    table = {"backends": [llama_backend(llama_server, models=[LLAMA]), engine_backend(models_dir)],
             "cache": {"enabled": True, "semantic": False}}
    with RunningDaemon(table) as running:
        yield running


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def call_kwargs(model: str, **extra) -> dict:
    return dict(model=model, messages=ASK, max_tokens=40, temperature=0,
                extra_body={"logit_bias": tiny_gguf_tool().force_tool_call_bias()}, **extra)


@pytest.mark.parametrize("model", [CALLER, LLAMA])
def test_functions_are_called_and_answered_in_the_function_call_shape(client, model):
    answer = client.chat.completions.create(functions=[FUNCTION], function_call="auto",
                                            **call_kwargs(model, seed=11))
    choice = answer.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call.name == "get_weather"
    assert isinstance(choice.message.function_call.arguments, str)
    assert choice.message.tool_calls is None


@pytest.mark.parametrize("model", [CALLER, LLAMA])
def test_a_streamed_function_call_comes_as_delta_function_call(client, model):
    chunks = list(client.chat.completions.create(functions=[FUNCTION], stream=True, **call_kwargs(model, seed=12)))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    names = [d.function_call.name for d in deltas if d.function_call and d.function_call.name]
    assert names == ["get_weather"]
    assert all(d.tool_calls is None for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] \
        == ["function_call"]


def test_function_call_none_and_a_named_function_become_tool_choice(client):
    """function_call "none" keeps the model from calling (llama-server's grammar then stays off);
    a name it does not list is a 400 naming function_call."""
    answer = client.chat.completions.create(model=LLAMA, messages=ASK, max_tokens=5, temperature=0,
                                            functions=[FUNCTION], function_call="none")
    assert answer.choices[0].message.function_call is None and answer.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=LLAMA, messages=ASK, max_tokens=5, functions=[FUNCTION],
                                       function_call={"name": "no_such_function"})
    assert info.value.body["param"] == "function_call"


@pytest.mark.parametrize("bad, param", [
    ({"functions": [{"description": "no name"}]}, "functions[0].name"),
    ({"functions": [FUNCTION], "tools": [{"type": "function", "function": FUNCTION}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"messages": [*ASK, {"role": "assistant", "content": None, "function_call": "get_weather"}]},
     "messages[1].function_call"),
])
def test_bad_legacy_fields_are_a_400_naming_them(client, bad, param):
    kwargs = {"model": CALLER, "messages": ASK, "max_tokens": 2, **bad}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**kwargs)
    assert info.value.body["param"] == param


def test_a_conversation_with_a_function_result_is_the_same_prompt_as_with_a_tool_result(client):
    """An assistant `function_call` and a `role: "function"` answer are a tool call and its tool
    result: the engine renders both histories alike (the same prompt tokens)."""
    legacy = [*ASK, {"role": "assistant", "content": None,
                     "function_call": {"name": "get_weather", "arguments": '{"city": "paris"}'}},
              {"role": "function", "name": "get_weather", "content": "sunny"}]
    tools = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_fn1", "type": "function",
                  "function": {"name": "get_weather", "arguments": '{"city": "paris"}'}}]},
             {"role": "tool", "tool_call_id": "call_fn1", "name": "get_weather", "content": "sunny"}]
    kwargs = dict(model=CALLER, max_tokens=3, temperature=0)
    with_functions = client.chat.completions.create(messages=legacy, functions=[FUNCTION], **kwargs)
    with_tools = client.chat.completions.create(messages=tools, tools=[{"type": "function", "function": FUNCTION}],
                                                **kwargs)
    assert with_functions.usage.prompt_tokens == with_tools.usage.prompt_tokens
    assert with_functions.choices[0].message.content == with_tools.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_a_cached_tools_answer_is_replayed_to_functions_in_their_shape_and_back(client, stream):
    """The same question as tools and as functions is one cache entry: each is answered in its
    own shape, from the cache and from the replay memo (the same request bytes again)."""
    tools = dict(tools=[{"type": "function", "function": FUNCTION}], **call_kwargs(CALLER, seed=20 + stream))
    functions = dict(functions=[FUNCTION], **call_kwargs(CALLER, seed=20 + stream))

    def ask(kwargs) -> tuple[str, str, str]:
        raw = client.chat.completions.with_raw_response.create(stream=stream, **kwargs)
        cache = raw.headers.get("x-velollm-cache")
        answer = raw.parse()
        if not stream:
            choice = answer.choices[0]
            call = choice.message.function_call or (choice.message.tool_calls or [None])[0]
            assert (call.name if choice.message.function_call else call.function.name) == "get_weather"
            shape = "function_call" if choice.message.function_call else "tool_calls"
            return cache, shape, choice.finish_reason
        deltas = [(c.choices[0].delta, c.choices[0].finish_reason) for c in answer if c.choices]
        shape = "function_call" if any(d.function_call for d, _ in deltas) else \
            "tool_calls" if any(d.tool_calls for d, _ in deltas) else "text"
        return cache, shape, [f for _, f in deltas if f][-1]

    assert ask(tools) == ("miss", "tool_calls", "tool_calls")
    assert ask(functions) == ("hit-exact", "function_call", "function_call")
    assert ask(functions) == ("hit-exact", "function_call", "function_call")
    assert ask(tools) == ("hit-exact", "tool_calls", "tool_calls")
