"""Anthropic Messages <-> OpenAI chat translation (wire/anthropic*.py, wire/billing.py), pure."""
import json

import pytest

from velollmd.cache.keys import exact_key
from velollmd.cache.replay import from_json_response, from_stream_chunks, to_json, to_sse_chunks
from velollmd.sched.fingerprint import fingerprint_of
from velollmd.wire.anthropic import anthropic_to_chat
from velollmd.wire.anthropic_reply import MessageEvents, chat_to_message, error_body
from velollmd.wire.billing import strip_billing_line, without_billing_header
from velollmd.wire.request import GenerateRequest

BILLING = "x-anthropic-billing-header: cc_version=2.1.119.47e; cc_entrypoint=cli; cch={};"
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_request_fields_and_blocks_become_an_openai_chat_body():
    body = {"model": "m", "max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "top_k": 7,
            "stop_sequences": ["END"], "metadata": {"user_id": "u"}, "stream": True, "unknown": 1,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            "tools": [WEATHER], "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Look: "},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "rain"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": True},
                    {"type": "text", "text": "And tomorrow?"}]}]}
    chat = anthropic_to_chat(body)
    assert chat["model"] == "m" and chat["max_tokens"] == 50 and chat["stop"] == ["END"]
    assert (chat["temperature"], chat["top_p"], chat["top_k"]) == (0.5, 0.9, 7)
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "metadata" not in chat and "unknown" not in chat
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "Weather in a city"}}]
    system, user, assistant, result1, result2, user2 = chat["messages"]
    assert system == {"role": "system", "content": "Be brief.\nBe kind."}
    assert user["content"] == [{"type": "text", "text": "Look: "},
                               {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                               {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    assert assistant["content"] == "Checking." and assistant["reasoning_content"] == "hmm"
    [call] = assistant["tool_calls"]
    assert call["id"] == "toolu_1" and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert result1 == {"role": "tool", "tool_call_id": "toolu_1", "content": "rain"}
    assert result2 == {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"}
    assert user2 == {"role": "user", "content": "And tomorrow?"}


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, "auto"), ({"type": "none"}, "none"), ({"type": "any"}, "required"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}})])
def test_tool_choice(choice, expected):
    chat = anthropic_to_chat({"model": "m", "max_tokens": 1, "tools": [WEATHER], "tool_choice": choice,
                              "messages": [{"role": "user", "content": "hi"}]})
    assert chat["tool_choice"] == expected


def test_billing_line_leaves_the_prompt_the_cache_key_and_the_fingerprint():
    def body(nonce, system):
        return {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "system": system(nonce)}
    as_blocks = lambda n: [{"type": "text", "text": BILLING.format(n)}, {"type": "text", "text": "You are X."}]  # noqa: E731
    as_string = lambda n: BILLING.format(n) + "\nYou are X."  # noqa: E731
    for system in (as_blocks, as_string):
        chats = [anthropic_to_chat(body(n, system)) for n in ("a7754", "0aaa9")]
        assert chats[0]["messages"][0] == {"role": "system", "content": "You are X."} == chats[1]["messages"][0]
    # the same line reaching the OpenAI door: one cache key, one fingerprint
    chats = [{"model": "m", "messages": [{"role": "system", "content": BILLING.format(n) + "\nYou are X."},
                                         {"role": "user", "content": "hi"}]} for n in ("a7754", "0aaa9")]
    keys = {exact_key(c, endpoint="chat", model_identity="m") for c in chats}
    prints = {fingerprint_of(GenerateRequest("chat", c)).prefix_keys for c in chats}
    assert len(keys) == 1 and len(prints) == 1
    other = {"model": "m", "messages": [{"role": "system", "content": "You are Y."}, {"role": "user", "content": "hi"}]}
    assert exact_key(other, endpoint="chat", model_identity="m") not in keys


def test_billing_helpers_leave_other_text_alone():
    assert strip_billing_line("You are X.\nx-anthropic-billing-header: a") == "You are X.\nx-anthropic-billing-header: a"
    messages = [{"role": "user", "content": BILLING}]
    assert without_billing_header(messages) is messages          # only a leading system message
    parts = [{"role": "system", "content": [{"type": "text", "text": BILLING}, {"type": "text", "text": "Hi"}]}]
    assert without_billing_header(parts)[0]["content"] == [{"type": "text", "text": "Hi"}]


def answer(message: dict, finish: str, usage=None, **extra) -> dict:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 3,
                               "prompt_tokens_details": {"cached_tokens": 4}}, **extra}


def test_whole_answer_becomes_a_message():
    msg = chat_to_message(answer({"role": "assistant", "content": "Sure.", "reasoning_content": "think",
                                  "tool_calls": [{"id": "call_1", "type": "function", "function": {
                                      "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}, "tool_calls"), "claude")
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["model"] == "claude"
    assert msg["id"].startswith("msg_")
    thinking, text, tool = msg["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "think" and thinking["signature"]
    assert text == {"type": "text", "text": "Sure."}
    assert tool == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("tool_use", None)
    assert msg["usage"] == {"input_tokens": 6, "output_tokens": 3, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 4}


@pytest.mark.parametrize("finish, extra, expected", [
    ("length", {}, ("max_tokens", None)),
    ("stop", {}, ("end_turn", None)),
    ("stop", {"__verbose": {"stopping_word": "END"}}, ("stop_sequence", "END")),
    ("stop", {"__verbose": {"stopping_word": ""}}, ("end_turn", None)),
    ("stop", {"__verbose": {"stopping_word": "other"}}, ("end_turn", None))])
def test_stop_reasons(finish, extra, expected):
    msg = chat_to_message(answer({"role": "assistant", "content": "x"}, finish, **extra), "m", ["END"])
    assert (msg["stop_reason"], msg["stop_sequence"]) == expected


def chunk(delta=None, finish=None, usage=None, **extra) -> dict:
    out = {"id": "c", "object": "chat.completion.chunk",
           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    if usage:
        out["usage"] = usage
    return out


def run_events(chunks, stops=None) -> list[tuple[str, dict]]:
    events = MessageEvents("claude", input_tokens=42, stop_sequences=stops)
    out = events.start()
    for c in chunks:
        out += events.feed(c)
    return out + events.finish()


def check_stream_rules(events):
    """message_start first, message_stop last, blocks one at a time, indexes from 0 without
    gaps, deltas only inside their started block, a thinking block signed before it stops."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    open_index, next_index, kinds, signed = None, 0, {}, set()
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index, next_index = data["index"], next_index + 1
            kinds[open_index] = data["content_block"]["type"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
            if data["delta"]["type"] == "signature_delta":
                signed.add(open_index)
        elif name == "content_block_stop":
            assert data["index"] == open_index
            assert kinds[open_index] != "thinking" or open_index in signed
            open_index = None
    assert open_index is None


def test_stream_events_follow_anthropic_order():
    events = run_events([
        chunk({"role": "assistant", "content": None}),
        chunk({"reasoning_content": "Let me"}), chunk({"reasoning_content": " think."}),
        chunk({"content": "Hello"}), chunk({"content": " there"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"name": "noop"}}]}),
        chunk({}, "tool_calls"),
        chunk(usage={"prompt_tokens": 20, "completion_tokens": 9})])
    check_stream_rules(events)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["thinking", "text", "tool_use", "tool_use"]
    assert (starts[2]["id"], starts[2]["name"], starts[3]["name"]) == ("call_a", "get_weather", "noop")
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert "".join(d.get("partial_json", "") for d in deltas) == '{"city": "Oslo"}{}'
    assert events[0][1]["message"]["usage"]["input_tokens"] == 42
    _, delta = events[-2]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["input_tokens"] == 20 and delta["usage"]["output_tokens"] == 9


def test_stream_stop_sequence_and_empty_answer():
    events = run_events([chunk({"content": "a"}), chunk({}, "stop", __verbose={"stopping_word": "END"})], ["END"])
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    empty = run_events([chunk({}, "length")])
    check_stream_rules(empty)
    assert [n for n, _ in empty] == ["message_start", "message_delta", "message_stop"]


@pytest.mark.parametrize("status, kind", [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (405, "invalid_request_error"), (413, "request_too_large"),
    (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "overloaded_error"),
    (504, "timeout_error"), (529, "overloaded_error")])
def test_error_types(status, kind):
    assert error_body(status, "m") == {"type": "error", "error": {"type": kind, "message": "m"}}


def test_the_cache_keeps_the_stop_string():
    whole = answer({"role": "assistant", "content": "a"}, "stop", __verbose={"stopping_word": "END"})
    entry = from_json_response(whole)
    assert chat_to_message(to_json(entry, "id"), "m", ["END"])["stop_sequence"] == "END"
    replay = to_sse_chunks(entry, "id", include_usage=True)
    assert from_stream_chunks(replay).stop_word == "END"
    events = run_events(replay, ["END"])
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    plain = from_json_response(answer({"role": "assistant", "content": "a"}, "stop"))
    assert "stop_reason" not in to_json(plain, "id")["choices"][0]


def test_system_turns_and_images_in_tool_results():
    chat = anthropic_to_chat({"model": "m", "max_tokens": 5, "messages": [
        {"role": "system", "content": "Rules."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "see"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="}}]}]}]})
    system, call, result = chat["messages"]
    assert system == {"role": "system", "content": "Rules."}
    assert call["content"] == "" and call["tool_calls"][0]["function"] == {"name": "shot", "arguments": "{}"}
    assert result["role"] == "tool" and result["content"][1]["image_url"]["url"] == "data:image/png;base64,QQ=="


def test_documents_are_read_as_their_text():
    """Claude Code and the SDK send plain-text documents; they were refused, and since a
    refused block stays in the history every later turn failed too."""
    chat = anthropic_to_chat({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "title": "notes.txt", "source": {"type": "text", "media_type": "text/plain",
                                                              "data": "The sky is green."}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "Part two."}]}},
        {"type": "text", "text": "What colour is the sky?"}]}]})
    assert chat["messages"] == [{"role": "user", "content": "notes.txt\n\nThe sky is green.\n\nPart two.\n\n"
                                                            "What colour is the sky?"}]
