"""Codex CLI's tool types over chat function tools, pure: custom (freeform) and local_shell
tools offered as functions, their calls as custom_tool_call / local_shell_call items (whole
and streamed; the SDK's own types parse them), earlier calls in the input mapped back, and
stored items with ids, references and pages."""
import json

import pytest
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from velollmd.errors import BadRequest, NotFound
from velollmd.wire.responses import ResponseDraft, response_from_chat
from velollmd.wire.responses_input import (
    chat_body,
    chat_tools,
    dropped_tool_types,
    input_items,
    items_to_messages,
    resolve_references,
)
from velollmd.wire.responses_items import item_page, stored_item
from velollmd.wire.responses_stream import ResponseEvents
from velollmd.wire.responses_tools import custom_input, exec_action

EVENT = TypeAdapter(ResponseStreamEvent)
ITEM = TypeAdapter(ResponseItem)
GRAMMAR = 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\nend_patch: "*** End Patch" LF?'
APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
               "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR}}
SHELL = {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {
    "command": {"type": "array", "items": {"type": "string"}}}, "required": ["command"]}}
TOOLS = [SHELL, APPLY_PATCH, {"type": "local_shell"}, {"type": "web_search"}]
REQUEST = {"model": "tiny", "input": "x", "tools": TOOLS}
PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"


def call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def test_custom_and_local_shell_tools_are_offered_as_functions():
    tools = chat_tools(TOOLS)
    assert [t["function"]["name"] for t in tools] == ["shell", "apply_patch", "local_shell"]
    patch = tools[1]["function"]
    assert patch["parameters"] == {"type": "object", "properties": {"input": {"type": "string"}},
                                   "required": ["input"]}
    assert patch["description"].startswith("Edit files with a patch.")
    assert "lark grammar" in patch["description"] and GRAMMAR in patch["description"]
    text_tool = chat_tools([{"type": "custom", "name": "note", "format": {"type": "text"}}])[0]["function"]
    assert "free-form text" in text_tool["description"]
    shell = tools[2]["function"]["parameters"]
    assert set(shell["properties"]) == {"command", "workdir", "timeout_ms", "env"}
    assert shell["properties"]["command"]["type"] == "array" and shell["required"] == ["command"]
    assert dropped_tool_types(TOOLS) == ["web_search"] and dropped_tool_types([SHELL]) == []


def test_tool_choice_may_name_a_custom_tool():
    chat = chat_body({**REQUEST, "tool_choice": {"type": "custom", "name": "apply_patch"}}, [])
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}


def test_calls_to_codex_tools_come_back_as_their_own_items():
    answer = {"choices": [{"finish_reason": "tool_calls", "message": {"content": None, "tool_calls": [
        call("call_p", "apply_patch", {"input": PATCH}),
        call("call_s", "local_shell", {"command": ["ls", "-la"], "workdir": "/repo", "timeout_ms": 5000}),
        call("call_f", "shell", {"command": ["pwd"]})]}}]}
    response = response_from_chat(ResponseDraft("resp_1", REQUEST), answer)
    parsed = SDKResponse.model_validate(response)
    assert [item.type for item in parsed.output] == ["custom_tool_call", "local_shell_call", "function_call"]
    patch, shell, function = parsed.output
    assert (patch.call_id, patch.name, patch.input, patch.status) == ("call_p", "apply_patch", PATCH, "completed")
    assert patch.id.startswith("ctc_") and shell.id.startswith("lsh_")
    assert shell.call_id == "call_s" and shell.action.type == "exec"
    assert (shell.action.command, shell.action.working_directory, shell.action.timeout_ms) == (
        ["ls", "-la"], "/repo", 5000)
    assert shell.action.env == {} and json.loads(function.arguments) == {"command": ["pwd"]}


@pytest.mark.parametrize("arguments,expected", [
    ('{"input": "x"}', "x"), ('{"patch": "x"}', '{"patch": "x"}'), ("raw text", "raw text"), ("", "")])
def test_custom_input_is_the_input_string_or_the_raw_arguments(arguments, expected):
    assert custom_input(arguments) == expected


def test_exec_action_keeps_only_well_typed_fields():
    assert exec_action('{"command": "ls", "timeout_ms": true, "env": {"A": 1}, "workdir": 3}') == {
        "type": "exec", "command": ["ls"], "env": {"A": "1"}, "timeout_ms": None, "working_directory": None,
        "user": None}
    assert exec_action("not json")["command"] == []


def stream_events(chunks):
    events = ResponseEvents(ResponseDraft("resp_2", REQUEST))
    out = events.start()
    for c in chunks:
        out += events.feed(c)
    return out + events.finish()


def tool_chunk(index: int, tool_call: dict) -> dict:
    return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, **tool_call}]},
                         "finish_reason": None}]}


def test_streamed_codex_calls_send_openais_events():
    out = stream_events([
        tool_chunk(0, call("call_p", "apply_patch", {"input": PATCH})),
        tool_chunk(1, call("call_s", "local_shell", {"command": ["make", "test"]})),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}])
    for event in out:
        EVENT.validate_python(event)
    assert [e["type"] for e in out] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done", "response.output_item.done",
        "response.output_item.added", "response.output_item.done", "response.completed"]
    added, delta, done = out[2:5]
    assert added["item"]["type"] == "custom_tool_call" and added["item"]["input"] == ""
    assert delta["delta"] == done["input"] == PATCH and delta["item_id"] == added["item"]["id"]
    final = out[-1]["response"]["output"]
    assert final[0]["input"] == PATCH and final[0]["call_id"] == "call_p"
    assert final[1]["type"] == "local_shell_call" and final[1]["action"]["command"] == ["make", "test"]


def test_earlier_codex_calls_in_the_input_become_chat_tool_calls():
    items = [{"type": "message", "role": "user", "content": "add a.txt"},
             {"type": "custom_tool_call", "id": "ctc_1", "status": "completed", "call_id": "call_p",
              "name": "apply_patch", "input": PATCH},
             {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Success."},
             {"type": "local_shell_call", "id": "lsh_1", "call_id": "call_s", "status": "completed",
              "action": {"type": "exec", "command": ["cat", "a.txt"], "env": {}, "working_directory": "/r"}},
             {"type": "local_shell_call_output", "id": "call_s", "output": '{"output": "hi"}'}]
    messages = items_to_messages(input_items(items), "input", [])
    assert messages == [
        {"role": "user", "content": "add a.txt"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_p", "type": "function", "function": {"name": "apply_patch",
                                                              "arguments": json.dumps({"input": PATCH})}}]},
        {"role": "tool", "tool_call_id": "call_p", "content": "Success.", "name": "apply_patch"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_s", "type": "function", "function": {
                "name": "local_shell", "arguments": json.dumps({"command": ["cat", "a.txt"], "workdir": "/r"})}}]},
        {"role": "tool", "tool_call_id": "call_s", "content": '{"output": "hi"}', "name": "local_shell"}]


def test_item_references_resolve_or_are_404s():
    stored = {"msg_1": {"type": "message", "role": "user", "content": "hi"}}
    items = [{"type": "item_reference", "id": "msg_1"}, {"id": "msg_1"}, {"role": "user", "content": "x"}]
    assert resolve_references(items, stored.get) == [stored["msg_1"], stored["msg_1"], items[2]]
    with pytest.raises(NotFound) as error:
        resolve_references([items[2], {"type": "item_reference", "id": "msg_9"}], stored.get)
    assert error.value.param == "input[1].id" and "msg_9" in error.value.message


def test_stored_items_get_ids_and_content_parts_the_sdk_lists():
    items = [stored_item(i) for i in [
        {"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "c", "output": "ok"},
        {"type": "custom_tool_call_output", "call_id": "p", "output": "done"},
        {"type": "local_shell_call_output", "call_id": "s", "output": "{}"},
        {"type": "message", "id": "msg_keep", "role": "assistant", "content": "yes"}]]
    assert items[0]["content"] == [{"type": "input_text", "text": "hi"}] and items[0]["id"].startswith("msg_")
    assert items[1]["id"].startswith("fco_") and items[2]["id"].startswith("ctco_") and items[3]["id"] == "s"
    assert items[4]["id"] == "msg_keep" and items[4]["content"][0]["type"] == "output_text"
    for item in items:
        ITEM.validate_python(item)
    assert items_to_messages(items[:1], "input", []) == [{"role": "user", "content": "hi"}]   # same prompt


def test_item_pages_follow_openais_list_shape():
    items = [{"id": f"i{n}"} for n in range(5)]
    page = item_page(items, limit=2)
    assert [i["id"] for i in page["data"]] == ["i4", "i3"] and page["has_more"] is True
    assert (page["object"], page["first_id"], page["last_id"]) == ("list", "i4", "i3")
    page = item_page(items, order="asc", after="i1", limit=10)
    assert [i["id"] for i in page["data"]] == ["i2", "i3", "i4"] and page["has_more"] is False
    assert item_page(items, after="nope")["data"] == [] and item_page([])["first_id"] is None


def test_bad_custom_tools_name_the_field():
    with pytest.raises(BadRequest) as error:
        chat_tools([{"type": "custom", "name": "p", "description": 5}])
    assert error.value.param == "tools[0].description"
