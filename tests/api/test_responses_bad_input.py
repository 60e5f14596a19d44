"""Bad input on /v1/responses: a table of malformed bodies, each a 4xx in OpenAI's error
shape naming the field; random bodies and garbage backend answers never make a 500."""
import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.test_bad_input_fuzz import JSON_VALUES, make_app, make_garbage_app
from velollmd.http.message import Request

APP = make_app()
GARBAGE_APP, GARBAGE = make_garbage_app()
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object"}}


@pytest.fixture(scope="module")
def loop():
    with asyncio.Runner() as runner:
        for app in (APP, GARBAGE_APP):
            runner.run(app.start())
        try:
            yield runner
        finally:
            for app in (APP, GARBAGE_APP):
                runner.run(app.close())


def call(loop, raw: bytes, app=APP, method: str = "POST", path: str = "/v1/responses") -> tuple[int, bytes]:
    async def go():
        response = await app.handle(Request(method, path, [("host", "x")], raw))
        body = response.body
        if response.stream is not None:
            body = b"".join([frame async for frame in response.stream])
        return response.status, body
    return loop.run(go())


def item(**fields):
    return [{"type": "message", "role": "user", "content": "hi", **fields}]


BAD = [
    (b"", 400, None),
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"input": "hi"}, 400, "model"),
    ({"model": "tiny"}, 400, "input"),
    ({"model": "tiny", "input": 7}, 400, "input"),
    ({"model": "tiny", "input": []}, 400, "input"),
    ({"model": "tiny", "input": ["text"]}, 400, "input[0]"),
    ({"model": "tiny", "input": item(role="robot")}, 400, "input[0].role"),
    ({"model": "tiny", "input": item(content=5)}, 400, "input[0].content"),
    ({"model": "tiny", "input": item(content=[{"type": "input_audio", "data": "x"}])}, 400, "input[0].content[0].type"),
    ({"model": "tiny", "input": item(content=[{"type": "input_text", "text": 3}])}, 400, "input[0].content[0].text"),
    ({"model": "tiny", "input": item(role="assistant", content=[{"type": "input_image", "image_url": "data:x"}])},
     400, "input[0].content"),
    ({"model": "tiny", "input": [{"type": "item_reference", "id": "msg_1"}]}, 404, "input[0].id"),
    ({"model": "tiny", "input": [{"id": "msg_1"}]}, 404, "input[0].id"),
    ({"model": "tiny", "input": [{"type": "computer_call", "call_id": "c"}]}, 400, "input[0].type"),
    ({"model": "tiny", "input": [{"type": "custom_tool_call", "call_id": "c", "name": "p", "input": 3}]},
     400, "input[0].input"),
    ({"model": "tiny", "input": [{"type": "custom_tool_call", "name": "p", "input": "x"}]}, 400, "input[0].call_id"),
    ({"model": "tiny", "input": [{"type": "custom_tool_call_output", "output": "x"}]}, 400, "input[0].call_id"),
    ({"model": "tiny", "input": [{"type": "local_shell_call", "call_id": "c", "action": {"command": "ls"}}]},
     400, "input[0].action"),
    ({"model": "tiny", "input": [{"type": "local_shell_call_output", "output": "x"}]}, 400, "input[0].call_id"),
    ({"model": "tiny", "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}, 400, "input[0].name"),
    ({"model": "tiny", "input": [{"type": "function_call_output", "output": "x"}]}, 400, "input[0].call_id"),
    ({"model": "tiny", "input": "x", "instructions": ["a"]}, 400, "instructions"),
    ({"model": "tiny", "input": "x", "temperature": 3}, 400, "temperature"),
    ({"model": "tiny", "input": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "input": "x", "top_p": 1.5}, 400, "top_p"),
    ({"model": "tiny", "input": "x", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"model": "tiny", "input": "x", "max_output_tokens": 2.5}, 400, "max_output_tokens"),
    ({"model": "tiny", "input": "x", "stream": "yes"}, 400, "stream"),
    ({"model": "tiny", "input": "x", "store": 1}, 400, "store"),
    ({"model": "tiny", "input": "x", "parallel_tool_calls": "no"}, 400, "parallel_tool_calls"),
    ({"model": "tiny", "input": "x", "metadata": {"k": 1}}, 400, "metadata.k"),
    ({"model": "tiny", "input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ({"model": "tiny", "input": "x", "metadata": "k=v"}, 400, "metadata"),
    ({"model": "tiny", "input": "x", "previous_response_id": 5}, 400, "previous_response_id"),
    ({"model": "tiny", "input": "x", "tools": {"type": "function"}}, 400, "tools"),
    ({"model": "tiny", "input": "x", "tools": [{"type": "file_search"}]}, 400, "tools[0].type"),
    ({"model": "tiny", "input": "x", "tools": [{**TOOL, "parameters": "none"}]}, 400, "tools[0].parameters"),
    ({"model": "tiny", "input": "x", "tools": [{"type": "custom"}]}, 400, "tools[0].name"),
    ({"model": "tiny", "input": "x", "tools": [{"type": "custom", "name": "p", "format": {"type": "xml"}}]},
     400, "tools[0].format.type"),
    ({"model": "tiny", "input": "x", "tools": [{"type": "custom", "name": "p", "format": {
        "type": "grammar", "syntax": "ebnf", "definition": "x"}}]}, 400, "tools[0].format.syntax"),
    ({"model": "tiny", "input": "x", "tools": [{"type": "custom", "name": "p", "format": {
        "type": "grammar", "syntax": "lark"}}]}, 400, "tools[0].format.definition"),
    ({"model": "tiny", "input": "x", "tools": [TOOL, {"type": "custom", "name": TOOL["name"]}]}, 400, "tools[1].name"),
    ({"model": "tiny", "input": "x", "tools": [{"type": "mcp", "server_label": "s"}]}, 400, "tools[0].type"),
    ({"model": "tiny", "input": "x", "tools": [TOOL], "tool_choice": "always"}, 400, "tool_choice"),
    ({"model": "tiny", "input": "x", "tool_choice": "required"}, 400, "tool_choice"),
    ({"model": "tiny", "input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required"}, 400,
     "tool_choice"),
    ({"model": "tiny", "input": "x", "tools": [TOOL], "tool_choice": {"type": "function", "name": "g"}},
     400, "tool_choice"),
    ({"model": "tiny", "input": "x", "text": "json"}, 400, "text"),
    ({"model": "tiny", "input": "x", "text": {"format": {"type": "json_schema"}}}, 400, "text.format.schema"),
    ({"model": "tiny", "input": "x", "text": {"format": {"type": "xml"}}}, 400, "text.format.type"),
    ({"model": "tiny", "input": "x", "background": True}, 400, "background"),
    ({"model": "tiny", "input": "x", "conversation": "conv_1"}, 400, "conversation"),
    ({"model": "tiny", "input": "x", "top_k": "many"}, 400, "top_k"),
    ({"model": "tiny", "input": "x", "truncation": "middle"}, 400, "truncation"),
    ({"model": "tiny", "input": "x", "previous_response_id": "resp_missing"}, 404, "previous_response_id"),
    ({"model": "nope", "input": "x"}, 404, None),
    ({"model": "tiny", "input": "x", "top_logprobs": 21}, 400, "top_logprobs"),
    ({"model": "tiny", "input": "x", "top_logprobs": True}, 400, "top_logprobs"),
    ({"model": "tiny", "input": "x", "text": {"verbosity": "loud"}}, 400, "text.verbosity"),
    ({"model": "tiny", "input": "x", "reasoning": {"effort": "extreme"}}, 400, "reasoning.effort"),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_malformed_bodies_are_4xx_in_openai_shape(loop, body, status, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, answer = call(loop, raw)
    error = json.loads(answer)["error"]
    assert got == status
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/responses/resp_none", 404), ("DELETE", "/v1/responses/resp_none", 404),
    ("GET", "/v1/responses/resp_none?stream=true", 400),
    ("PUT", "/v1/responses", 405), ("GET", "/v1/responses", 405),
    ("POST", "/v1/responses/resp_none/cancel", 404), ("POST", "/v1/responses/input_tokens", 400)])
def test_unknown_ids_and_methods(loop, method, path, status):
    got, answer = call(loop, b"", method=method, path=path)
    assert got == status and set(json.loads(answer)["error"]) == {"message", "type", "param", "code"}


def test_a_well_formed_request_is_served(loop):
    got, answer = call(loop, json.dumps({"model": "tiny", "input": "hi"}).encode())
    assert got == 200 and json.loads(answer)["output"][0]["content"][0]["text"] == "ok"


ITEM = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"]) | JSON_VALUES,
    "role": st.sampled_from(["user", "assistant", "developer"]) | JSON_VALUES,
    "content": st.text(max_size=8) | st.lists(st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["input_text", "output_text", "input_image"]) | JSON_VALUES,
        "text": JSON_VALUES, "image_url": JSON_VALUES}), max_size=2) | JSON_VALUES,
    "call_id": st.text(max_size=4) | JSON_VALUES, "name": st.sampled_from(["f"]) | JSON_VALUES,
    "arguments": JSON_VALUES, "output": JSON_VALUES})
FIELDS = ["instructions", "tools", "tool_choice", "max_output_tokens", "temperature", "top_p", "text", "metadata",
          "store", "stream", "previous_response_id", "parallel_tool_calls", "user", "reasoning", "include",
          "top_k", "seed", "stop", "background", "truncation"]


def bodies():
    base = st.fixed_dictionaries({"model": st.sampled_from(["tiny", ""]) | JSON_VALUES,
                                  "input": st.text(max_size=8) | st.lists(ITEM, max_size=3) | JSON_VALUES})
    extra = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES | st.just([TOOL]), max_size=4)
    return st.builds(lambda b, e: {**b, **e}, base, extra)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_random_bodies_never_cause_a_500(loop, body):
    status, _ = call(loop, json.dumps(body).encode())
    assert status in (200, 400, 404)


CHOICE = st.fixed_dictionaries({}, optional={"message": JSON_VALUES, "delta": JSON_VALUES,
                                             "finish_reason": JSON_VALUES, "index": JSON_VALUES})
ANSWERS = JSON_VALUES | st.fixed_dictionaries({"choices": st.lists(CHOICE | JSON_VALUES, max_size=2) | JSON_VALUES},
                                              optional={"usage": JSON_VALUES})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), ANSWERS, st.lists(ANSWERS, max_size=3), st.booleans())
def test_garbage_backend_answers_are_502_or_failed_never_500(loop, stream, answer, chunks, with_tools):
    GARBAGE.answer, GARBAGE.chunks = answer, chunks
    GARBAGE_APP.service.breakers.clear()
    body = {"model": "tiny", "input": "hi", "stream": stream, "tools": [TOOL] if with_tools else []}
    status, raw = call(loop, json.dumps(body).encode(), app=GARBAGE_APP)
    assert status in (200, 502)
    if status == 200 and stream:
        last = raw.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        assert json.loads(last.removeprefix(b"data: "))["type"] in (
            "response.completed", "response.incomplete", "response.failed")
