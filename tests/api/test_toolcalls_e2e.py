"""Tool-call repair through the daemon: the corpus replayed by the Ollama emulator and read
back with the openai SDK (whole and streamed), plus real calls from llama-server."""
import json

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.daemon_rig import llama_backend, ollama_backend
from tests.rig.llama import force_tool_call_bias
from tests.toolcalls.corpus import load_cases

CASES = load_cases()
MODEL = "llama3.2:latest"


@pytest.fixture
def tool_daemon(daemon_factory, ollama_emulator):
    return daemon_factory({"backends": [ollama_backend(ollama_emulator)],
                           "cache": {"enabled": False}, "tools": {"max_retries": 0}})


def request_args(case: dict) -> dict:
    args = {"model": MODEL, "tools": case["tools"],
            "messages": case.get("messages") or [{"role": "user", "content": "Help me."}]}
    if "tool_choice" in case:
        args["tool_choice"] = case["tool_choice"]
    return args


def expected_content(case):
    return case["content"] or None


def script_case(ollama_emulator, case) -> None:
    """The case's text as the model's reply; a `cut` case's ends by max_tokens."""
    ollama_emulator.script(case["raw"], **({"done_reason": "length"} if case.get("cut") else {}))


def expected_finish(case) -> str:
    if case.get("cut"):
        return "length"
    return "tool_calls" if case["calls"] else "stop"


def calls_of(tool_calls) -> list[dict]:
    return [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
            for c in tool_calls or []]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_whole_and_streamed_through_the_daemon(tool_daemon, ollama_emulator, case):
    client = openai.OpenAI(base_url=tool_daemon.url + "/v1", api_key="x", max_retries=0)
    script_case(ollama_emulator, case)
    raw = client.chat.completions.with_raw_response.create(**request_args(case))
    reply = raw.parse().choices[0]
    assert (reply.message.content or None) == expected_content(case)
    assert calls_of([c.model_dump() for c in reply.message.tool_calls or []]) == case["calls"]
    assert reply.finish_reason == expected_finish(case)
    ids = [c.id for c in reply.message.tool_calls or []]
    assert all(ids) and len(set(ids)) == len(ids)
    if "ids" in case:                                   # ids the model gave are kept
        assert ids == case["ids"]
    else:
        assert all(i.startswith("call_") for i in ids)
    assert (reply.message.model_extra or {}).get("reasoning_content") == case.get("reasoning")
    if case.get("loop"):
        assert raw.headers.get("x-velollm-tool-loop") == "1"
    if set(case["fixes"]) - {"dedup"}:
        assert set(case["fixes"]) <= set(raw.headers["x-velollm-tool-repair"].split(","))

    script_case(ollama_emulator, case)
    chunks = list(client.chat.completions.create(**request_args(case), stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    fragments = [tc.model_dump() for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    assert (content or None) == expected_content(case)
    assert (reasoning or None) == case.get("reasoning")
    assert calls_of(fragments) == case["calls"]
    assert [f["index"] for f in fragments] == list(range(len(fragments)))
    finishes = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishes] == [expected_finish(case)]
    report = (finishes[0].model_extra or {}).get("velollm", {})   # a stream's "headers"
    assert report.get("tool_loop", False) == bool(case.get("loop"))
    if set(case["fixes"]) - {"dedup"}:
        assert set(case["fixes"]) <= set(report["tool_repair"])


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"},
                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]}}}


def test_real_llama_server_calls_come_out_clean(daemon_factory, llama_server):
    daemon = daemon_factory({"backends": [llama_backend(llama_server)]})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    for stream in (False, True):
        result = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Weather?"}],
                                                tools=[WEATHER], max_tokens=100, logit_bias=force_tool_call_bias(),
                                                stream=stream)
        if stream:
            fragments = [tc.model_dump() for c in result if c.choices for tc in c.choices[0].delta.tool_calls or []]
        else:
            fragments = [tc.model_dump() for tc in result.choices[0].message.tool_calls]
        [call] = calls_of(fragments)
        assert call["name"] == "get_weather" and call["arguments"]["unit"] in ("celsius", "fahrenheit")


def test_free_text_from_llama_server_with_tools_stays_content(daemon_factory, llama_server):
    daemon = daemon_factory({"backends": [llama_backend(llama_server)]})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                           tools=[WEATHER], max_tokens=12)
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "length"


def test_tool_choice_named_on_ollama_uses_a_format_schema(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "weather"}],
                                           tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    sent = ollama_emulator.last_request("/api/chat")
    assert sent["format"]["properties"]["name"]["const"] == "get_weather"
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"


def test_tool_choice_required_retries_once_with_the_error(daemon_factory, ollama_emulator):
    backend = {"name": "compat", "kind": "openai", "url": ollama_emulator.url, "models": ["llama3*"]}
    daemon = daemon_factory({"backends": [backend], "cache": {"enabled": False}})
    ollama_emulator.script("I would rather just answer: it is sunny.")
    ollama_emulator.script('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')
    raw = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "weather"}], tools=[WEATHER], tool_choice="required")
    [call] = raw.parse().choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert ollama_emulator.count("/v1/chat/completions") == 2
    retry = ollama_emulator.last_request("/v1/chat/completions")["messages"]
    assert "a tool call is required" in retry[-1]["content"]


def test_tool_choice_none_strips_calls(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})
    ollama_emulator.script('Sure.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    reply = httpx.post(daemon.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": "none"}).json()
    assert "tool_calls" not in reply["choices"][0]["message"]
    assert "tools" not in ollama_emulator.last_request("/api/chat")


def test_tool_loop_is_counted_in_metrics(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})
    messages = [{"role": "user", "content": "weather"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "call_a", "content": "sunny"}]
    ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    raw = httpx.post(daemon.url + "/v1/chat/completions", timeout=30,
                     json={"model": MODEL, "messages": messages, "tools": [WEATHER]})
    assert raw.headers["x-velollm-tool-loop"] == "1"
    assert "velollm_tool_call_loops_total 1" in httpx.get(daemon.url + "/metrics").text


TWO_CALLS = ('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
             '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')


def test_parallel_tool_calls_false_gives_one_call_on_every_api(tool_daemon, ollama_emulator):
    client = openai.OpenAI(base_url=tool_daemon.url + "/v1", api_key="x", max_retries=0)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "weather"}], "tools": [WEATHER],
            "parallel_tool_calls": False}
    ollama_emulator.script(TWO_CALLS)
    [call] = client.chat.completions.create(**chat).choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    ollama_emulator.script(TWO_CALLS)
    fragments = [tc.model_dump() for c in client.chat.completions.create(**chat, stream=True) if c.choices
                 for tc in c.choices[0].delta.tool_calls or []]
    assert calls_of(fragments) == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]

    ollama_emulator.script(TWO_CALLS)
    message = anthropic.Anthropic(base_url=tool_daemon.url, api_key="x", max_retries=0).messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "weather"}],
        tools=[{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert [(b.type, b.input) for b in message.content] == [("tool_use", {"city": "Oslo"})]

    ollama_emulator.script(TWO_CALLS)
    response = client.responses.create(model=MODEL, input="weather", parallel_tool_calls=False, tools=[
        {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}])
    assert [(item.type, item.arguments) for item in response.output] == [("function_call", '{"city": "Oslo"}')]


def test_backend_calls_in_the_role_chunk_reach_a_stream_once(daemon_factory, ollama_emulator):
    """Ollama's OpenAI endpoint sends its calls, and its finish_reason, in chunks that carry the
    role: the client must get each call once, cleaned, and one finish_reason after them."""
    backend = {"name": "compat", "kind": "openai", "url": ollama_emulator.url, "models": ["llama3*"]}
    daemon = daemon_factory({"backends": [backend], "cache": {"enabled": False}})
    ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Rome", "unit": "Celsius"}},
                                       {"name": "get_weather", "arguments": {"city": "Oslo"}}])
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "weather"}],
                                                 tools=[WEATHER], stream=True))
    fragments = [tc.model_dump() for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls_of(fragments) == [{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}},
                                   {"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert [f["index"] for f in fragments] == [0, 1]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_a_call_with_arguments_that_are_no_json_is_not_an_empty_answer(tool_daemon, ollama_emulator):
    client = openai.OpenAI(base_url=tool_daemon.url + "/v1", api_key="x", max_retries=0)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "weather"}], "tools": [WEATHER]}
    raw_text = '<tool_call>{"name": "get_weather", "arguments": "city=Oslo"}</tool_call>'
    ollama_emulator.script(raw_text)
    raw = client.chat.completions.with_raw_response.create(**chat)
    reply = raw.parse().choices[0]
    assert [(c.function.name, c.function.arguments) for c in reply.message.tool_calls] == [("get_weather", "city=Oslo")]
    assert reply.finish_reason == "tool_calls" and "invalid-arguments" in raw.headers["x-velollm-tool-repair"]
    ollama_emulator.script(raw_text)
    chunks = list(client.chat.completions.create(**chat, stream=True))
    fragments = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [(f.function.name, f.function.arguments) for f in fragments] == [("get_weather", "city=Oslo")]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    messages = anthropic.Anthropic(base_url=tool_daemon.url, api_key="x", max_retries=0).messages
    anthropic_args = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "weather"}],
                      "tools": [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]}
    ollama_emulator.script(raw_text)                    # a tool_use's input is an object: {} as whole
    assert [(b.name, b.input) for b in messages.create(**anthropic_args).content] == [("get_weather", {})]
    ollama_emulator.script(raw_text)
    with messages.stream(**anthropic_args) as stream:
        assert [(b.name, b.input) for b in stream.get_final_message().content] == [("get_weather", {})]


def test_parallel_tool_calls_that_is_no_boolean_is_a_400_naming_it(tool_daemon):
    reply = httpx.post(tool_daemon.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "parallel_tool_calls": "no"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "parallel_tool_calls"


def test_a_call_cut_by_max_tokens_keeps_finish_reason_length(tool_daemon, ollama_emulator):
    """The repaired call goes out, but 'length' tells the client it was cut ({"city": "Os"}
    is not what the model meant): as OpenAI answers, and as an agent checks."""
    client = openai.OpenAI(base_url=tool_daemon.url + "/v1", api_key="x", max_retries=0)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "weather"}], "tools": [WEATHER], "max_tokens": 9}
    cut = '<tool_call>{"name": "get_weather", "arguments": {"city": "Os'
    ollama_emulator.script(cut, done_reason="length")
    reply = client.chat.completions.create(**chat).choices[0]
    assert [c.function.arguments for c in reply.message.tool_calls] == ['{"city": "Os"}']
    assert reply.finish_reason == "length"
    ollama_emulator.script(cut, done_reason="length")
    chunks = list(client.chat.completions.create(**chat, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    ollama_emulator.script(cut, done_reason="length")
    message = anthropic.Anthropic(base_url=tool_daemon.url, api_key="x", max_retries=0).messages.create(
        model=MODEL, max_tokens=9, messages=[{"role": "user", "content": "weather"}],
        tools=[{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}])
    assert message.stop_reason == "max_tokens" and message.content[0].type == "tool_use"


CHATTY_CALL = 'Sure, let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
WEATHER_TOOL = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
FLAT_WEATHER = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("anthropic_choice, responses_choice", [
    ({"type": "any"}, "required"), ({"type": "tool", "name": "get_weather"}, {"type": "function", "name": "get_weather"}),
], ids=["required", "named"])
def test_a_forced_call_comes_without_the_text_before_it_on_every_api(tool_daemon, ollama_emulator, stream,
                                                                      anthropic_choice, responses_choice):
    """tool_choice any / tool (Anthropic), required / a function (Responses, Ollama's /api/chat
    on a backend that is no Ollama): the answer is the call alone, as Anthropic and OpenAI give
    it; the model's chatter before it is not an answer the client asked for."""
    ollama_emulator.script(CHATTY_CALL)
    messages = anthropic.Anthropic(base_url=tool_daemon.url, api_key="x", max_retries=0).messages
    args = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "weather"}],
            "tools": [WEATHER_TOOL], "tool_choice": anthropic_choice}
    if stream:
        with messages.stream(**args) as events:
            message = events.get_final_message()
    else:
        message = messages.create(**args)
    assert [(b.type, b.input) for b in message.content] == [("tool_use", {"city": "Oslo"})]

    ollama_emulator.script(CHATTY_CALL)
    client = openai.OpenAI(base_url=tool_daemon.url + "/v1", api_key="x", max_retries=0)
    args = {"model": MODEL, "input": "weather", "tools": [FLAT_WEATHER], "tool_choice": responses_choice}
    response = ([e for e in client.responses.create(**args, stream=True)][-1].response if stream
                else client.responses.create(**args))
    assert [(item.type, item.arguments) for item in response.output] == [("function_call", '{"city": "Oslo"}')]
    assert response.output_text == ""


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_ollama_chat_keeps_the_text_before_a_call_as_its_api_forces_none(daemon_factory, ollama_emulator, stream):
    """Ollama's /api/chat has no tool_choice: every call is the model's own choice ("auto"),
    so the text before it stays, on a backend that is no Ollama too."""
    backend = {"name": "compat", "kind": "openai", "url": ollama_emulator.url, "models": ["llama3*"]}
    daemon = daemon_factory({"backends": [backend], "cache": {"enabled": False}})
    ollama_emulator.script(CHATTY_CALL)
    reply = ollama.Client(host=daemon.url).chat(model=MODEL, messages=[{"role": "user", "content": "weather"}],
                                                tools=[WEATHER], stream=stream)
    parts = list(reply) if stream else [reply]
    assert "".join(p.message.content or "" for p in parts) == "Sure, let me check."
    calls = [(c.function.name, dict(c.function.arguments)) for p in parts for c in p.message.tool_calls or []]
    assert calls == [("get_weather", {"city": "Oslo"})] and parts[-1].done
