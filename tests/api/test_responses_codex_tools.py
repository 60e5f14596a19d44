"""Codex CLI's tools on the Responses API through velollmd, driven by the official openai SDK
against the Ollama emulator: custom (freeform apply_patch) and local_shell calls and their round
trips, item_reference, GET /v1/responses/{id}/input_items and the dropped-tools header."""
import json

import httpx
import openai
import pytest

from tests.daemon_rig import ollama_backend

MODEL = "llama3.2:latest"
GRAMMAR = 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\nend_patch: "*** End Patch" LF?'
APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Use apply_patch to edit files.",
               "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR}}
SHELL = {"type": "function", "name": "shell", "description": "Runs a shell command.", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                        "required": ["command"], "additionalProperties": False}}
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\n"


@pytest.fixture
def daemon(daemon_factory, ollama_emulator):
    return daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})


@pytest.fixture
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def sent_messages(emulator) -> list[dict]:
    return [{k: v for k, v in m.items() if k in ("role", "content", "tool_calls", "tool_name")}
            for m in emulator.last_request("/api/chat")["messages"]]


def test_a_custom_tool_call_round_trip(client, ollama_emulator):
    ollama_emulator.script(tool_calls=[{"name": "apply_patch", "arguments": {"input": PATCH}}])
    first = client.responses.create(model=MODEL, input="Add hello.txt", tools=[SHELL, APPLY_PATCH])
    [call] = first.output
    assert call.type == "custom_tool_call" and call.name == "apply_patch" and call.input == PATCH
    assert call.id.startswith("ctc_") and call.call_id and call.status == "completed"
    offered = {t["function"]["name"]: t["function"] for t in ollama_emulator.last_request("/api/chat")["tools"]}
    assert offered["apply_patch"]["parameters"]["required"] == ["input"]
    assert GRAMMAR in offered["apply_patch"]["description"] and "shell" in offered

    ollama_emulator.script("Added hello.txt.")
    output = {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Success. Updated: A hello.txt"}
    answer = client.responses.create(model=MODEL, input=[output], previous_response_id=first.id,
                                     tools=[SHELL, APPLY_PATCH])
    assert answer.output_text == "Added hello.txt."
    assert sent_messages(ollama_emulator) == [
        {"role": "user", "content": "Add hello.txt"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "apply_patch", "arguments": {"input": PATCH}}}]},
        {"role": "tool", "content": "Success. Updated: A hello.txt", "tool_name": "apply_patch"}]


def test_a_streamed_custom_tool_call_sends_its_input_events(client, ollama_emulator):
    ollama_emulator.script(tool_calls=[{"name": "apply_patch", "arguments": {"input": PATCH}}])
    with client.responses.stream(model=MODEL, input="Add hello.txt", tools=[SHELL, APPLY_PATCH]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[2:6] == ["response.output_item.added", "response.custom_tool_call_input.delta",
                          "response.custom_tool_call_input.done", "response.output_item.done"]
    delta, done = events[3], events[4]
    assert "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta") == PATCH
    assert done.input == PATCH and delta.item_id == done.item_id == final.output[0].id
    assert final.output[0].type == "custom_tool_call" and final.output[0].input == PATCH


def test_a_local_shell_call_round_trip_by_items(client, ollama_emulator):
    ollama_emulator.script(tool_calls=[{"name": "local_shell", "arguments": {
        "command": ["ls", "-1"], "workdir": "/repo", "timeout_ms": 10000}}])
    first = client.responses.create(model=MODEL, input="List files.", tools=[{"type": "local_shell"}], store=False)
    [call] = first.output
    assert call.type == "local_shell_call" and call.action.type == "exec"
    assert (call.action.command, call.action.working_directory, call.action.timeout_ms) == (["ls", "-1"], "/repo", 10000)
    offered = ollama_emulator.last_request("/api/chat")["tools"][0]["function"]
    assert offered["name"] == "local_shell" and offered["parameters"]["required"] == ["command"]

    ollama_emulator.script("Two files.")
    items = [{"role": "user", "content": "List files."}, call.model_dump(exclude_none=True),
             {"type": "local_shell_call_output", "id": call.call_id, "output": '{"output": "a\\nb"}'}]
    answer = client.responses.create(model=MODEL, input=items, tools=[{"type": "local_shell"}], store=False)
    assert answer.output_text == "Two files."
    [_, assistant, tool] = sent_messages(ollama_emulator)
    assert assistant["tool_calls"][0]["function"] == {"name": "local_shell", "arguments": {
        "command": ["ls", "-1"], "workdir": "/repo", "timeout_ms": 10000}}
    assert tool == {"role": "tool", "content": '{"output": "a\\nb"}', "tool_name": "local_shell"}


def test_item_references_name_stored_items(client, ollama_emulator):
    ollama_emulator.script(tool_calls=[{"name": "shell", "arguments": {"command": ["pwd"]}}])
    first = client.responses.create(model=MODEL, input="Where am I?", tools=[SHELL])
    [call] = first.output
    [question] = client.responses.input_items.list(first.id).data
    ollama_emulator.script("In /repo.")
    client.responses.create(model=MODEL, tools=[SHELL], input=[
        {"type": "item_reference", "id": question.id}, {"type": "item_reference", "id": call.id},
        {"type": "function_call_output", "call_id": call.call_id, "output": "/repo"}])
    assert sent_messages(ollama_emulator) == [
        {"role": "user", "content": "Where am I?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "shell", "arguments": {"command": ["pwd"]}}}]},
        {"role": "tool", "content": "/repo", "tool_name": "shell"}]
    with pytest.raises(openai.NotFoundError) as error:
        client.responses.create(model=MODEL, input=[{"type": "item_reference", "id": "msg_unknown"}])
    assert error.value.body["param"] == "input[0].id" and "msg_unknown" in error.value.body["message"]


def test_input_items_are_listed_and_paged(client, ollama_emulator, daemon):
    ollama_emulator.script("One.")
    first = client.responses.create(model=MODEL, input="First question.", instructions="Be brief.")
    ollama_emulator.script("Two.")
    second = client.responses.create(model=MODEL, previous_response_id=first.id, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Second question."}]}])
    page = client.responses.input_items.list(second.id)
    texts = [item.content[0].text for item in page.data]
    assert texts == ["Second question.", "One.", "First question."]      # newest first
    assert [item.type for item in page.data] == ["message"] * 3 and all(item.id for item in page.data)
    assert page.first_id == page.data[0].id and page.last_id == page.data[-1].id and page.has_more is False
    ids = [item.id for item in client.responses.input_items.list(second.id, order="asc", limit=1)]   # auto-paged
    assert ids == [item.id for item in reversed(page.data)]
    assert client.responses.input_items.list(second.id, order="asc", after=ids[0]).data[0].id == ids[1]
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_nope")
    for query in ("limit=0", "limit=101", "limit=x", "order=up"):
        answer = httpx.get(f"{daemon.url}/v1/responses/{second.id}/input_items?{query}", timeout=30,
                           headers={"Authorization": "Bearer x"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] in ("limit", "order")


def test_dropped_hosted_tools_are_named_in_a_header(client, ollama_emulator):
    ollama_emulator.script("Answer.")
    raw = client.responses.with_raw_response.create(model=MODEL, input="x", tools=[SHELL, {"type": "web_search"}])
    assert raw.headers["x-velollm-dropped-tools"] == "web_search"
    assert [t["function"]["name"] for t in ollama_emulator.last_request("/api/chat")["tools"]] == ["shell"]
    ollama_emulator.script("Answer.")
    with client.responses.with_streaming_response.create(model=MODEL, input="x", stream=True,
                                                         tools=[{"type": "web_search_preview"}]) as streamed:
        assert streamed.headers["x-velollm-dropped-tools"] == "web_search_preview"
        assert json.loads(list(streamed.iter_lines())[1][6:])["type"] == "response.created"
    ollama_emulator.script("Answer.")
    plain = client.responses.with_raw_response.create(model=MODEL, input="x", tools=[SHELL])
    assert "x-velollm-dropped-tools" not in plain.headers
