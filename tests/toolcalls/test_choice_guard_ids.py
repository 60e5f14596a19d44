import json

from tests.toolcalls.corpus import load_tools
from velollmd.config import ToolsConfig
from velollmd.toolcalls.assemble import process_output
from velollmd.toolcalls.choice import check_tool_choice, retry_messages
from velollmd.toolcalls.loopguard import detect_loop
from velollmd.wire.ids import ensure_call_id, new_call_id
from velollmd.wire.ollama import ollama_format
from velollmd.wire.tools import parse_tool_choice

TOOLS = load_tools()["default"]
CALL = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"query": "x"}'}}


def test_parse_tool_choice_shapes():
    assert parse_tool_choice(None) == ("auto", None)
    assert parse_tool_choice("any") == ("required", None)
    assert parse_tool_choice({"type": "function", "function": {"name": "f"}}) == ("named", "f")
    assert parse_tool_choice({"type": "function", "name": "f"}) == ("named", "f")


def test_check_tool_choice():
    assert check_tool_choice("auto", []) is None
    assert check_tool_choice("required", [CALL]) is None
    assert "required" in check_tool_choice("required", [])
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert check_tool_choice(named, [CALL]) == "the reply must call the function 'get_weather', but it called 'search'"


def test_retry_messages_tell_the_error_and_the_schema():
    messages = [{"role": "user", "content": "weather?"}]
    out = retry_messages(messages, "It is sunny", "a tool call is required", TOOLS,
                         {"type": "function", "function": {"name": "get_weather"}})
    assert out[:1] == messages and out[1] == {"role": "assistant", "content": "It is sunny"}
    assert out[2]["role"] == "user" and "a tool call is required" in out[2]["content"]
    assert '"get_weather"' in out[2]["content"] and '"search"' not in out[2]["content"]
    assert messages == [{"role": "user", "content": "weather?"}]  # input not mutated


def test_ollama_format_forces_a_call():
    assert ollama_format(TOOLS, "auto") is None
    schema = ollama_format(TOOLS, {"type": "function", "function": {"name": "search"}})
    assert schema["properties"]["name"]["enum"] == ["search"]
    assert schema["properties"]["arguments"]["required"] == ["query"]
    assert len(ollama_format(TOOLS, "required")["anyOf"]) == len(TOOLS)


def history(result="no results", arguments='{"query": "x"}'):
    return [{"role": "user", "content": "find"},
            {"role": "assistant", "tool_calls": [dict(CALL, function={"name": "search", "arguments": arguments})]},
            {"role": "tool", "tool_call_id": "call_1", "content": result}]


def test_loop_detected_for_the_same_answered_call():
    again = [{"function": {"name": "search", "arguments": '{"query":"x"}'}}]
    assert detect_loop(again, history()) is True
    assert detect_loop(again, history(arguments={"query": "x"})) is True  # Ollama-shaped history


def test_no_loop_for_new_arguments_unanswered_calls_or_no_history():
    assert detect_loop([{"function": {"name": "search", "arguments": '{"query": "y"}'}}], history()) is False
    assert detect_loop([CALL], history()[:2]) is False
    assert detect_loop([CALL], None) is False


def test_call_ids():
    ids = {new_call_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("call_") and len(i) == 29 and i[5:].isalnum() for i in ids)
    seen: set = set()
    assert ensure_call_id("abc", seen) == "abc"
    assert ensure_call_id("abc", seen) != "abc" and ensure_call_id("", seen).startswith("call_")
    assert json.dumps(sorted(seen))


def test_dedup_off_neither_collapses_calls_nor_flags_loops():
    """[tools] dedup = false: "collapse identical calls; flag loops" is off, both halves."""
    again = '<tool_call>{"name": "search", "arguments": {"query": "x", "max_results": 5}}</tool_call>'
    messages = history(arguments='{"query": "x", "max_results": 5}')   # the call as the client got it
    assert process_output(again, None, TOOLS, messages=messages).loop is True
    assert process_output(again, None, TOOLS, messages=messages, config=ToolsConfig(dedup=False)).loop is False
