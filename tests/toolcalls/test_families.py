"""The families added from their own templates (DeepSeek, Harmony, Kimi K2, GLM, Command-R,
Functionary): what the corpus table cannot say — ids, reasoning order, and how soon a stream
releases text."""
from tests.toolcalls.corpus import load_tools
from velollmd.toolcalls.assemble import process_output
from velollmd.toolcalls.stream import ToolCallStream

TOOLS = load_tools()["default"]
K_CALL = "<|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>{{\"query\": \"{}\"}}<|tool_call_end|>"


def feed(stream: ToolCallStream, text: str) -> list:
    return [event for char in text for event in stream.feed(char)]


def test_kimi_ids_are_kept_and_a_repeated_one_is_replaced():
    raw = "<|tool_calls_section_begin|>" + K_CALL.format("a") + K_CALL.format("b") + "<|tool_calls_section_end|>"
    first, second = process_output(raw, None, TOOLS).tool_calls
    assert first["id"] == "functions.search:0"
    assert second["id"].startswith("call_") and second["function"]["arguments"] == '{"query": "b", "max_results": 5}'


def test_harmony_reasoning_comes_before_the_call_and_content_never_holds_channel_tokens():
    stream = ToolCallStream(TOOLS)
    events = feed(stream, "<|channel|>analysis<|message|>Need weather.<|end|>"
                          "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
                          '<|message|>{"city": "Paris"}<|call|>') + stream.finish()
    assert [(e.reasoning, e.name) for e in events] == [("Need weather.", None), (None, "get_weather")]
    assert stream.result.content is None and stream.result.reasoning == "Need weather."


def test_harmony_final_channel_streams_before_its_end_token():
    stream = ToolCallStream(TOOLS)
    events = feed(stream, "<|channel|>final<|message|>The answer is forty two")
    assert "".join(e.content for e in events if e.content) == "The answer is forty two"
    assert [e.content for e in stream.feed("!<|return|>") + stream.finish() if e.content] == ["!"]
    assert stream.result.content == "The answer is forty two!" and stream.result.tool_calls == []


def test_prose_markers_that_are_no_header_are_released_without_waiting_for_the_end():
    stream = ToolCallStream(TOOLS)
    released = "".join(e.content for e in feed(stream, ">>> print(1)\nAction: call Bob") if e.content)
    assert released == ">>> print(1)\nAction: call Bob"
    stream.finish()
    assert stream.result.content == ">>> print(1)\nAction: call Bob" and stream.result.fixes == []


def test_glm_values_are_coerced_by_the_schema_of_the_named_tool():
    raw = ("<tool_call>set_temperature\n<arg_key>value</arg_key>\n<arg_value>19</arg_value>\n"
           "<arg_key>room</arg_key>\n<arg_value>null</arg_value>\n</tool_call>")
    [call] = process_output(raw, None, TOOLS).tool_calls
    # value is a number; room may be a string, so GLM's text stays text (as vLLM's parser does)
    assert call["function"]["arguments"] == '{"value": 19, "room": "null"}'


def test_a_schema_error_in_a_new_family_is_reported_for_the_retry():
    result = process_output('>>>get_weather\n{"days": "seven"}', None, TOOLS)
    assert result.tool_calls and "missing required property 'city'" in result.error
    assert 'expected integer, got "seven"' in result.error


def test_command_r7b_thinking_is_reasoning_and_response_markers_are_dropped():
    result = process_output("<|START_THINKING|>Easy.<|END_THINKING|>\n<|START_RESPONSE|>Hi!<|END_RESPONSE|>",
                            None, TOOLS)
    assert (result.content, result.reasoning, result.tool_calls) == ("Hi!", "Easy.", [])


def test_without_tools_every_family_passes_through_untouched():
    raw = "<|channel|>analysis<|message|>x<|end|>>>>search\n{}"
    result = process_output(raw, None, [])
    assert result.content == raw and result.reasoning is None
