"""The Anthropic Messages API through the daemon, driven by the official `anthropic` SDK
against the Ollama emulator: text, streams (the SDK's accumulator rebuilds the message),
thinking, tool round trips and repair, tool_choice, cache hits and their stream replays,
count_tokens, /v1/models, errors and auth."""
import json

import anthropic
import httpx
import pytest

from tests.daemon_rig import ollama_backend
from tests.toolcalls.corpus import load_cases

MODEL = "llama3.2:latest"
HI = [{"role": "user", "content": "Say hi."}]
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
BILLING = "x-anthropic-billing-header: cc_version=2.1.119.47e; cc_entrypoint=cli; cch={};"


@pytest.fixture
def emu_daemon(daemon_factory, ollama_emulator):
    return daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})


def client_of(daemon, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=daemon.url, api_key=kwargs.pop("api_key", "none"), max_retries=0, **kwargs)


def raw_events(daemon, body: dict, headers=None) -> list[tuple[str, str]]:
    """(event name, data) of an SSE answer, read without the SDK."""
    with httpx.stream("POST", daemon.url + "/v1/messages", json={**body, "stream": True}, timeout=30,
                      headers=headers or {}) as response:
        text = response.read().decode()
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines.get("event"), lines.get("data")))
    return events


def test_text_answer(emu_daemon, ollama_emulator):
    ollama_emulator.script("Hello from the emulator.")
    message = client_of(emu_daemon).messages.create(model=MODEL, max_tokens=50, messages=HI,
                                                    system="Be brief.", metadata={"user_id": "u1"},
                                                    extra_body={"temperature": 0.2, "top_k": 5})
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Hello from the emulator."
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == 4 and message.usage.input_tokens > 0
    assert message.usage.cache_read_input_tokens == 0 and message.usage.cache_creation_input_tokens == 0
    sent = ollama_emulator.last_request("/api/chat")
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["options"]["temperature"] == 0.2 and sent["options"]["top_k"] == 5
    assert sent["options"]["num_predict"] == 50


def test_stream_rebuilds_the_message_and_follows_the_event_order(emu_daemon, ollama_emulator):
    ollama_emulator.script("One two three.", thinking="Let me think.")
    with client_of(emu_daemon).messages.stream(model=MODEL, max_tokens=50, messages=HI) as stream:
        names = [event.type for event in stream]
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think." and final.content[0].signature
    assert final.content[1].text == "One two three."
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    assert names[0] == "message_start" and names[-1] == "message_stop"
    events = raw_events(emu_daemon, {"model": MODEL, "max_tokens": 5, "messages": HI})
    assert [name for name, _ in events][:2] == ["message_start", "content_block_start"]
    assert events[-1] == ("message_stop", '{"type":"message_stop"}')


def test_whole_thinking_answer(emu_daemon, ollama_emulator):
    ollama_emulator.script("Yes.", thinking="Hmm.")
    message = client_of(emu_daemon).messages.create(model=MODEL, max_tokens=50, messages=HI)
    assert [(b.type, getattr(b, "thinking", None)) for b in message.content] == [("thinking", "Hmm."), ("text", None)]


def test_thinking_sent_back_reaches_ollama_as_the_turns_thinking(emu_daemon, ollama_emulator):
    """Claude Code sends earlier thinking blocks back; Ollama renders an assistant message's
    `thinking` where the template keeps it (gpt-oss, Qwen3)."""
    ollama_emulator.script("Done.")
    client_of(emu_daemon).messages.create(model=MODEL, max_tokens=50, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Ask the tool.", "signature": "s"},
                                          {"type": "tool_use", "id": "t1", "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]}])
    turn = ollama_emulator.last_request("/api/chat")["messages"][1]
    assert (turn["role"], turn["thinking"], turn["tool_calls"][0]["function"]["name"]) == (
        "assistant", "Ask the tool.", "get_weather")


def test_the_thinking_switch_reaches_the_backend(emu_daemon, ollama_emulator):
    """`thinking` turns a thinking model's reasoning on or off, as chat's
    chat_template_kwargs.enable_thinking does (Ollama's `think`); left out, the model's default."""
    client = client_of(emu_daemon)
    for thinking, think in (({"type": "disabled"}, False), ({"type": "enabled", "budget_tokens": 2048}, True)):
        client.messages.create(model=MODEL, max_tokens=4096, messages=HI, thinking=thinking)
        assert ollama_emulator.last_request("/api/chat")["think"] is think
        with client.messages.stream(model=MODEL, max_tokens=4096, messages=HI, thinking=thinking) as stream:
            stream.get_final_message()
        assert ollama_emulator.last_request("/api/chat")["think"] is think
    client.messages.create(model=MODEL, max_tokens=50, messages=HI)
    assert "think" not in ollama_emulator.last_request("/api/chat")


def test_tool_round_trip(emu_daemon, ollama_emulator):
    client = client_of(emu_daemon)
    ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    first = client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER],
                                   messages=[{"role": "user", "content": "Weather in Oslo?"}])
    [call] = first.content
    assert first.stop_reason == "tool_use"
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"city": "Oslo"})
    ollama_emulator.script("It rains in Oslo.")
    history = [{"role": "user", "content": "Weather in Oslo?"},
               {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                             "content": [{"type": "text", "text": "rain, 4 C"}]}]}]
    second = client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER], messages=history)
    assert second.content[0].text == "It rains in Oslo." and second.stop_reason == "end_turn"
    sent = ollama_emulator.last_request("/api/chat")["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert sent[2]["role"] == "tool" and sent[2]["content"] == "rain, 4 C"


def test_streamed_tool_call(emu_daemon, ollama_emulator):
    ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    with client_of(emu_daemon).messages.stream(model=MODEL, max_tokens=100, tools=[WEATHER], messages=HI,
                                               tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    [call] = final.content
    assert (call.type, call.name, call.input, final.stop_reason) == ("tool_use", "get_weather", {"city": "Oslo"},
                                                                     "tool_use")


def test_disable_parallel_tool_use_keeps_one_call_whole_and_streamed(emu_daemon, ollama_emulator):
    """Ollama has no parallel_tool_calls switch: a second call the model makes anyway is dropped."""
    two = [{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]
    client = client_of(emu_daemon)
    args = dict(model=MODEL, max_tokens=100, tools=[WEATHER], messages=HI,
                tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    ollama_emulator.script(tool_calls=two)
    message = client.messages.create(**args)
    assert [(b.type, b.input) for b in message.content] == [("tool_use", {"city": "Oslo"})]
    assert message.stop_reason == "tool_use"
    ollama_emulator.script(tool_calls=two)
    with client.messages.stream(**args) as stream:
        final = stream.get_final_message()
    assert [(b.type, b.input) for b in final.content] == [("tool_use", {"city": "Oslo"})]
    ollama_emulator.script(tool_calls=two)                 # allowed: both come back
    assert len(client.messages.create(**{**args, "tool_choice": {"type": "auto"}}).content) == 2


def test_tool_choice_any_and_tool_reach_the_backend(daemon_factory, ollama_emulator):
    backend = {"name": "compat", "kind": "openai", "url": ollama_emulator.url, "models": ["llama3*"]}
    daemon = daemon_factory({"backends": [backend], "cache": {"enabled": False}, "tools": {"max_retries": 0}})
    client = client_of(daemon)
    for choice, sent_choice in (({"type": "any"}, "required"),
                                ({"type": "tool", "name": "get_weather"},
                                 {"type": "function", "function": {"name": "get_weather"}})):
        ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Rome"}}])
        message = client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER], messages=HI,
                                         tool_choice=choice)
        assert message.content[0].input == {"city": "Rome"} and message.stop_reason == "tool_use"
        assert ollama_emulator.last_request("/v1/chat/completions")["tool_choice"] == sent_choice


BROKEN = {c["name"]: c for c in load_cases() if c["name"] in ("hermes-trailing-comma", "hermes-unclosed-truncated")}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_tool_call_reaches_the_client_as_a_valid_tool_use(emu_daemon, ollama_emulator, name):
    case = BROKEN[name]
    tools = [{"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in case["tools"]]
    client = client_of(emu_daemon)
    ollama_emulator.script(case["raw"])
    whole = client.messages.create(model=MODEL, max_tokens=100, tools=tools, messages=HI)
    ollama_emulator.script(case["raw"])
    with client.messages.stream(model=MODEL, max_tokens=100, tools=tools, messages=HI) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        calls = [{"name": b.name, "arguments": b.input} for b in message.content if b.type == "tool_use"]
        assert calls == case["calls"] and message.stop_reason == "tool_use"


def test_stop_sequences_reach_the_backend(emu_daemon, ollama_emulator):
    ollama_emulator.script("alpha beta STOP gamma")
    message = client_of(emu_daemon).messages.create(model=MODEL, max_tokens=50, messages=HI, stop_sequences=["STOP"])
    assert message.content[0].text.strip() == "alpha beta"
    assert ollama_emulator.last_request("/api/chat")["options"]["stop"] == ["STOP"]


def test_repeated_request_is_an_exact_hit_and_replays_as_a_stream(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})
    client = client_of(daemon)
    ollama_emulator.script("Cached words here.")
    args = dict(model=MODEL, max_tokens=50, extra_body={"temperature": 0}, messages=HI,
                system=[{"type": "text", "text": BILLING.format("a7754")}, {"type": "text", "text": "You are X."}])
    first = client.messages.with_raw_response.create(**args)
    assert first.headers["x-velollm-cache"] == "miss"
    again = client.messages.with_raw_response.create(**args)
    assert again.headers["x-velollm-cache"] == "hit-exact"
    assert again.parse().content[0].text == "Cached words here." == first.parse().content[0].text
    args["system"][0]["text"] = BILLING.format("0aaa9")                 # Claude Code's next request
    with client.messages.stream(**args) as stream:
        assert stream.response.headers["x-velollm-cache"] == "hit-exact"
        final = stream.get_final_message()
    assert final.content[0].text == "Cached words here." and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == first.parse().usage.output_tokens
    assert ollama_emulator.count("/api/chat") == 1
    assert ollama_emulator.last_request("/api/chat")["messages"][0] == {"role": "system", "content": "You are X."}


def test_count_tokens_estimates_where_the_backend_cannot_tokenize(emu_daemon):
    client = client_of(emu_daemon)
    short = client.messages.with_raw_response.count_tokens(model=MODEL, messages=HI)
    long = client.messages.count_tokens(model=MODEL, messages=HI, system="x " * 400, tools=[WEATHER])
    assert short.headers["x-velollm-token-count"] == "estimate"
    assert 0 < short.parse().input_tokens < long.input_tokens


def test_models_in_anthropic_shape_for_anthropic_clients(emu_daemon):
    everything = [m["id"] for m in httpx.get(emu_daemon.url + "/v1/models").json()["data"]]
    page = client_of(emu_daemon).models.list(limit=2)
    assert [m.id for m in page.data] == everything[:2] and page.has_more == (len(everything) > 2)
    assert all(m.type == "model" and m.display_name and m.created_at for m in page.data)
    rest = client_of(emu_daemon).models.list(limit=2, after_id=page.last_id)
    assert [m.id for m in rest.data] == everything[2:4]
    assert client_of(emu_daemon).models.retrieve(MODEL).id == MODEL
    plain = httpx.get(emu_daemon.url + "/v1/models").json()           # OpenAI clients: unchanged
    assert plain["object"] == "list" and "has_more" not in plain


def test_beta_query_and_headers_are_accepted(emu_daemon, ollama_emulator):
    ollama_emulator.script("Fine.")
    reply = httpx.post(emu_daemon.url + "/v1/messages?beta=true", timeout=30,
                       headers={"anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14"},
                       json={"model": MODEL, "max_tokens": 20, "messages": HI, "unknown_field": {"x": 1}})
    assert reply.status_code == 200 and reply.json()["content"][0]["text"] == "Fine."


def test_errors_in_anthropic_shape(emu_daemon, ollama_emulator):
    client = client_of(emu_daemon)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=5, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"
    ollama_emulator.script(status=500, error="model crashed")
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert failed.value.status_code == 502 and failed.value.body["type"] == "error"
    assert failed.value.body["error"]["type"] == "api_error" and "model crashed" in failed.value.body["error"]["message"]
    emu_daemon.app.draining = True
    try:
        reply = httpx.post(emu_daemon.url + "/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": HI})
    finally:
        emu_daemon.app.draining = False
    assert reply.status_code == 503 and reply.json()["error"]["type"] == "overloaded_error"
    wrong_method = httpx.get(emu_daemon.url + "/v1/messages")
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error"


def test_mid_stream_failure_is_an_error_event(emu_daemon, ollama_emulator):
    ollama_emulator.script("one two three four five", error_after=2, error="out of memory")
    events = raw_events(emu_daemon, {"model": MODEL, "max_tokens": 50, "messages": HI})
    name, data = events[-1]
    assert name == "error" and '"type":"error"' in data and "out of memory" in data
    assert "message_stop" not in [n for n, _ in events]
    ollama_emulator.script("one two three four five", error_after=2, error="out of memory")
    with pytest.raises(anthropic.APIStatusError):
        with client_of(emu_daemon).messages.stream(model=MODEL, max_tokens=50, messages=HI) as stream:
            stream.get_final_message()


def test_auth_by_x_api_key_or_bearer(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "server": {"api_keys": ["sekret"]}})
    ollama_emulator.script("ok")
    assert client_of(daemon, api_key="sekret").messages.create(model=MODEL, max_tokens=5, messages=HI).content
    ollama_emulator.script("ok")
    bearer = anthropic.Anthropic(base_url=daemon.url, auth_token="sekret", max_retries=0)
    assert bearer.messages.create(model=MODEL, max_tokens=5, messages=HI).content
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client_of(daemon, api_key="wrong").messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert refused.value.body == {"type": "error", "request_id": refused.value.response.headers["x-request-id"],
                                  "error": {"type": "authentication_error", "message": "invalid or missing API key"}}
    with pytest.raises(anthropic.AuthenticationError):
        client_of(daemon, api_key="wrong").messages.count_tokens(model=MODEL, messages=HI)


def test_ping_while_the_backend_is_silent(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False},
                             "server": {"sse_ping_s": 0.05}})
    ollama_emulator.script("slow words", delay_s=0.3)
    events = raw_events(daemon, {"model": MODEL, "max_tokens": 50, "messages": HI})
    names = [name for name, _ in events]
    assert ("ping", '{"type":"ping"}') in events
    assert names[0] == "message_start" and names[-1] == "message_stop"
    text = "".join(json.loads(data)["delta"].get("text", "") for name, data in events if name == "content_block_delta")
    assert text == "slow words"


def test_body_over_the_limit_is_request_too_large(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "server": {"max_body_bytes": 4096}})
    huge = [{"role": "user", "content": "x" * 8192}]
    with pytest.raises(anthropic.APIStatusError) as refused:
        client_of(daemon).messages.create(model=MODEL, max_tokens=5, messages=huge)
    assert refused.value.status_code == 413
    assert refused.value.body["error"]["type"] == "request_too_large"
    openai_shape = httpx.post(daemon.url + "/v1/chat/completions", json={"model": MODEL, "messages": huge})
    assert openai_shape.status_code == 413 and openai_shape.json()["error"]["type"] == "invalid_request_error"


def test_claude_model_names_served_by_an_alias(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "aliases": {"claude-*": MODEL}})
    client = client_of(daemon)
    ollama_emulator.script("Served locally.")
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=HI)
    assert message.model == "claude-sonnet-4-5" and message.content[0].text == "Served locally."
    assert ollama_emulator.last_request("/api/chat")["model"] == MODEL
    ollama_emulator.script("Streamed locally.")
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=20, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.model == "claude-haiku-4-5" and final.content[0].text == "Streamed locally."
    assert client.messages.count_tokens(model="claude-opus-4-1", messages=HI).input_tokens > 0


def test_named_keys_limit_and_scope_anthropic_clients(daemon_factory, ollama_emulator):
    keys = [{"name": "cc", "key": "sk-cc", "rpm": 2, "models": ["llama3*"]}]
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "keys": keys, "cache": {"enabled": False}})
    client = client_of(daemon, api_key="sk-cc")
    assert [m.id for m in client.models.list().data] == [MODEL]                 # only what the key may use
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nomic-embed-text:latest", messages=HI)
    for _ in range(2):
        ollama_emulator.script("ok")
        client.messages.create(model=MODEL, max_tokens=5, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert int(limited.value.response.headers["retry-after"]) >= 1
