"""The Responses API translation, pure: items -> chat messages, chat answers -> response
objects, chat chunks -> stream events (the SDK's own types parse what comes out)."""
import pytest
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from velollmd.errors import BadRequest
from velollmd.wire.responses import ResponseDraft, response_from_chat, usage_of
from velollmd.wire.responses_input import chat_body, input_items, items_to_messages
from velollmd.wire.responses_stream import ResponseEvents

EVENT = TypeAdapter(ResponseStreamEvent)
TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
REQUEST = {"model": "tiny", "input": "hi"}


def messages_of(items):
    return items_to_messages(input_items(items), "input", [])


def test_a_string_input_is_one_user_message():
    assert messages_of("Hello") == [{"role": "user", "content": "Hello"}]


def test_items_become_chat_messages_with_calls_joined_to_the_assistant_turn():
    items = [{"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                                             {"type": "input_text", "text": "in Oslo?"}]},
             {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
             {"type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
             {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": '{"city":"Bergen"}'},
             {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
             {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "rain"}]}]
    assert messages_of(items) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Bergen"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny", "name": "get_weather"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain", "name": "get_weather"}]


def test_reasoning_sent_back_joins_the_assistant_turn_after_it():
    """A model's thoughts go back as the reasoning_content of the turn they led to (templates
    such as gpt-oss's and Qwen3's render them); thoughts that led to no answer are left out."""
    thought = {"type": "reasoning", "id": "rs_1", "summary": [],
               "content": [{"type": "reasoning_text", "text": "Call the tool."}]}
    items = [{"role": "user", "content": "Weather?"}, thought,
             {"type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
             {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Answer."}]},
             {"role": "assistant", "content": "Sunny."},
             {**thought, "id": "rs_3"}, {"role": "user", "content": "Thanks."}]
    assistant = [m for m in messages_of(items) if m["role"] == "assistant"]
    assert [m.get("reasoning_content") for m in assistant] == ["Call the tool.", "Answer."]
    assert "reasoning_content" not in messages_of(items)[-1]


def test_an_image_part_stays_a_part_list():
    [message] = messages_of([{"role": "user", "content": [
        {"type": "input_text", "text": "What is it?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])
    assert message["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                        "detail": "auto"}}


@pytest.mark.parametrize("items,param", [
    ([{"type": "computer_call", "id": "x"}], "input[0].type"),
    ([{"role": "robot", "content": "x"}], "input[0].role"),
    ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}], "input[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}], "input[0].content[0].image_url"),
    ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
    ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}], "input[0].arguments"),
    ([{"type": "function_call_output", "call_id": "c", "output": 3}], "input[0].output"),
    ([], "input"),
])
def test_bad_items_are_400s_naming_the_item(items, param):
    with pytest.raises(BadRequest) as error:
        messages_of(items)
    assert error.value.param == param


def test_chat_body_maps_tools_sampling_and_text_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {"model": "m", "input": "x", "tools": [TOOL, {"type": "web_search"}], "tool_choice": {
        "type": "function", "name": "get_weather"}, "max_output_tokens": 20, "temperature": 0.5, "top_p": 0.9,
        "parallel_tool_calls": False, "user": "u1", "stream": True,
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}}
    chat = chat_body(body, [{"role": "user", "content": "x"}])
    assert chat["tools"] == [{"type": "function", "function": {"name": "get_weather",
                                                               "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"]) == (20, 0.5, 0.9)
    assert chat["parallel_tool_calls"] is False and chat["user"] == "u1"
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": schema, "strict": True}}


@pytest.mark.parametrize("field,value,param,named", [
    ("tools", [{"type": "file_search", "vector_store_ids": ["v"]}], "tools[0].type", "file_search"),
    ("tools", [{"type": "function"}], "tools[0].name", ""),
    ("tool_choice", {"type": "function", "name": "nope"}, "tool_choice", "nope"),
    ("tool_choice", {"type": "file_search"}, "tool_choice", "file_search"),
    ("text", {"format": {"type": "json_schema", "name": "x"}}, "text.format.schema", ""),
    ("text", {"format": {"type": "yaml"}}, "text.format.type", ""),
])
def test_bad_tools_and_formats_are_400s_naming_them(field, value, param, named):
    with pytest.raises(BadRequest) as error:
        chat_body({"model": "m", "input": "x", "tools": [TOOL], field: value}, [])
    assert error.value.param == param and named in error.value.message


ANSWER = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
    "role": "assistant", "content": "Let me check.", "reasoning_content": "The user wants weather.",
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city":"Oslo"}'}}]}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}}


def test_a_chat_answer_becomes_reasoning_message_and_call_items():
    response = response_from_chat(ResponseDraft("resp_1", {**REQUEST, "metadata": {"k": "v"}}), ANSWER)
    parsed = SDKResponse.model_validate(response)
    assert [item.type for item in parsed.output] == ["reasoning", "message", "function_call"]
    assert parsed.output[0].content[0].text == "The user wants weather."
    assert parsed.output_text == "Let me check."
    assert (parsed.output[2].call_id, parsed.output[2].arguments) == ("call_1", '{"city":"Oslo"}')
    assert parsed.status == "completed" and parsed.metadata == {"k": "v"}
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (7, 5, 12)
    assert parsed.usage.input_tokens_details.cached_tokens == 3


def test_max_tokens_makes_the_response_incomplete():
    answer = {"choices": [{"message": {"content": "cut"}, "finish_reason": "length"}]}
    response = response_from_chat(ResponseDraft("resp_2", REQUEST), answer)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete" and response["usage"] is None


def chunk(delta=None, finish=None, usage=None):
    if usage is not None:
        return {"choices": [], "usage": usage}
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def stream_events(chunks):
    events = ResponseEvents(ResponseDraft("resp_3", REQUEST))
    out = events.start()
    for c in chunks:
        out += events.feed(c)
    return out + events.finish(), events


def test_stream_events_open_and_close_each_item_in_order():
    out, events = stream_events([
        chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "Hmm"}),
        chunk({"reasoning_content": "."}), chunk({"content": "Let "}), chunk({"content": "me."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chunk({}, "tool_calls"), chunk(usage={"prompt_tokens": 4, "completion_tokens": 6})])
    for event in out:
        EVENT.validate_python(event)                      # each is an event the SDK knows
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert [e["type"] for e in out] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e["output_index"] for e in out if e["type"] == "response.output_item.done"] == [0, 1, 2]
    final = out[-1]["response"]
    assert final["output"][1]["content"][0]["text"] == "Let me."
    assert final["output"][2]["arguments"] == '{"city":"Oslo"}' and final["output"][2]["call_id"] == "call_1"
    assert final["usage"]["total_tokens"] == 10 and events.response is final


def test_an_empty_stream_still_has_one_message_and_ends_incomplete_on_length():
    out, _ = stream_events([chunk({}, "length")])
    assert out[-1]["type"] == "response.incomplete"
    assert out[-1]["response"]["output"][0]["content"][0]["text"] == ""
    assert out[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failure_midway_closes_the_open_item_and_fails_the_response():
    events = ResponseEvents(ResponseDraft("resp_4", REQUEST))
    out = events.start() + events.feed(chunk({"content": "par"}))
    out += events.fail("connection reset", 502)
    EVENT.validate_python(out[-1])
    assert out[-1]["type"] == "response.failed"
    assert out[-1]["response"]["error"] == {"code": "server_error", "message": "connection reset"}
    assert out[-1]["response"]["output"][0]["status"] == "incomplete"


def test_usage_details_default_to_zero():
    assert usage_of({"prompt_tokens": 2, "completion_tokens": 1}) == {
        "input_tokens": 2, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 1, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 3}
    assert usage_of(None) is None
