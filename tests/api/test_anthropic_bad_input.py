"""Malformed Anthropic Messages bodies: each a 4xx in Anthropic's error shape, never a 500,
never a traceback (the whole App, an in-memory backend, no sockets)."""
import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.test_bad_input_fuzz import JSON_VALUES, make_app
from velollmd.http.message import Request

OK_MESSAGES = [{"role": "user", "content": "hi"}]
BASE = {"model": "tiny", "max_tokens": 10, "messages": OK_MESSAGES}
TOOL = {"name": "f", "input_schema": {"type": "object"}}


def with_(**fields) -> dict:
    return {**BASE, **fields}


def without(name: str) -> dict:
    return {k: v for k, v in BASE.items() if k != name}


def message(*blocks) -> list[dict]:
    return [{"role": "user", "content": list(blocks)}]


MALFORMED = [   # (name, body or raw bytes, expected status)
    ("empty body", b"", 400),
    ("not json", b"{model: tiny", 400),
    ("json array", b"[1, 2]", 400),
    ("no model", without("model"), 400),
    ("model not a string", with_(model=7), 400),
    ("empty model", with_(model=""), 400),
    ("unknown model", with_(model="nope"), 404),
    ("no max_tokens", without("max_tokens"), 400),
    ("max_tokens zero", with_(max_tokens=0), 400),
    ("max_tokens a string", with_(max_tokens="10"), 400),
    ("max_tokens a boolean", with_(max_tokens=True), 400),
    ("no messages", without("messages"), 400),
    ("messages an object", with_(messages={"role": "user"}), 400),
    ("empty messages", with_(messages=[]), 400),
    ("message not an object", with_(messages=["hi"]), 400),
    ("bad role", with_(messages=[{"role": "tool", "content": "x"}]), 400),
    ("content a number", with_(messages=[{"role": "user", "content": 3}]), 400),
    ("content missing", with_(messages=[{"role": "user"}]), 400),
    ("block without type", with_(messages=message({"text": "x"})), 400),
    ("unknown block type", with_(messages=message({"type": "video", "url": "x"})), 400),
    ("pdf document", with_(messages=message({"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}})), 400),
    ("text document without data", with_(messages=message({"type": "document", "source": {"type": "text"}})), 400),
    ("document title a number", with_(messages=message({"type": "document", "title": 3,
                                                        "source": {"type": "text", "data": "x"}})), 400),
    ("text block without text", with_(messages=message({"type": "text"})), 400),
    ("image without source", with_(messages=message({"type": "image"})), 400),
    ("image with a bad source", with_(messages=message({"type": "image", "source": {"type": "file"}})), 400),
    ("base64 image without data", with_(messages=message(
        {"type": "image", "source": {"type": "base64", "media_type": "image/png"}})), 400),
    ("tool_use without id", with_(messages=message({"type": "tool_use", "name": "f", "input": {}})), 400),
    ("tool_use input a string", with_(messages=message(
        {"type": "tool_use", "id": "t", "name": "f", "input": "{}"})), 400),
    ("tool_result without id", with_(messages=message({"type": "tool_result", "content": "x"})), 400),
    ("tool_result content a number", with_(messages=message(
        {"type": "tool_result", "tool_use_id": "t", "content": 5})), 400),
    ("tool_result is_error a string", with_(messages=message(
        {"type": "tool_result", "tool_use_id": "t", "is_error": "yes"})), 400),
    ("tool_result with a tool_use inside", with_(messages=message(
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_use"}]})), 400),
    ("thinking without text", with_(messages=[{"role": "assistant", "content": [{"type": "thinking"}]}]), 400),
    ("thinking type unknown", with_(thinking={"type": "on"}), 400),
    ("thinking budget_tokens a string", with_(thinking={"type": "enabled", "budget_tokens": "many"}), 400),
    ("system a number", with_(system=5), 400),
    ("system block not text", with_(system=[{"type": "image"}]), 400),
    ("temperature above 1", with_(temperature=1.5), 400),
    ("temperature a string", with_(temperature="hot"), 400),
    ("top_p negative", with_(top_p=-0.1), 400),
    ("top_k a float", with_(top_k=1.5), 400),
    ("stream a string", with_(stream="yes"), 400),
    ("stop_sequences a string", with_(stop_sequences="END"), 400),
    ("stop_sequences with an empty string", with_(stop_sequences=[""]), 400),
    ("metadata a list", with_(metadata=[]), 400),
    ("tools an object", with_(tools={"name": "f"}), 400),
    ("tool without input_schema", with_(tools=[{"name": "f"}]), 400),
    ("tool input_schema a string", with_(tools=[{"name": "f", "input_schema": "object"}]), 400),
    ("server tool type", with_(tools=[{"type": "web_search_20250305", "name": "web_search"}]), 400),
    ("tool_choice a string", with_(tools=[TOOL], tool_choice="auto"), 400),
    ("tool_choice unknown type", with_(tools=[TOOL], tool_choice={"type": "required"}), 400),
    ("tool_choice names a missing tool", with_(tools=[TOOL], tool_choice={"type": "tool", "name": "g"}), 400),
    ("tool_choice tool without name", with_(tools=[TOOL], tool_choice={"type": "tool"}), 400),
    ("output_config a list", with_(output_config=[]), 400),
    ("output_config.format not json_schema", with_(output_config={"format": {"type": "json_object"}}), 400),
    ("output_config.format without schema", with_(output_config={"format": {"type": "json_schema"}}), 400),
    ("output_format schema a string", with_(output_format={"type": "json_schema", "schema": "x"}), 400),
]


@pytest.fixture(scope="module")
def app_loop():
    app = make_app()
    with asyncio.Runner() as runner:
        runner.run(app.start())
        try:
            yield app, runner
        finally:
            runner.run(app.close())


def call(app_loop, path: str, body, headers=()):
    app, runner = app_loop
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = Request("POST", path, [("content-type", "application/json"), *headers], raw)
    return runner.run(app.handle(request))


def anthropic_error_of(response) -> dict:
    body = json.loads(response.body)
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("name, body, status", MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages?beta=true"])
def test_malformed_body_is_a_4xx_in_anthropic_shape(app_loop, path, name, body, status):
    response = call(app_loop, path, body)
    assert response.status == status
    error = anthropic_error_of(response)
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


COUNT_MALFORMED = [m for m in MALFORMED if "max_tokens" not in m[0]]     # count_tokens takes no max_tokens


@pytest.mark.parametrize("name, body, status", COUNT_MALFORMED, ids=[m[0] for m in COUNT_MALFORMED])
def test_malformed_count_tokens_body(app_loop, name, body, status):
    response = call(app_loop, "/v1/messages/count_tokens", body)
    assert response.status == status
    anthropic_error_of(response)


@pytest.mark.parametrize("body, message", [
    (with_(tool_choice={"type": "any"}), "tool_choice: 'any' needs at least one tool in 'tools'"),
    (with_(tool_choice={"type": "any"}, tools=[]), "tool_choice: 'any' needs at least one tool in 'tools'"),
    (with_(tools=[TOOL, TOOL]), f"tools.1.name: the tool name {TOOL['name']!r} is used twice"),
    (with_(stop_sequences=[f"s{i}" for i in range(17)]), "stop_sequences: at most 16 stop sequences"),
], ids=["any without tools", "any with no tools", "a tool name twice", "17 stop sequences"])
def test_errors_name_anthropics_own_fields(app_loop, body, message):
    """Not chat's ('required', a duplicate passed on to the backend), as Anthropic answers."""
    response = call(app_loop, "/v1/messages", body)
    assert response.status == 400 and anthropic_error_of(response)["message"] == message


def test_the_valid_base_body_is_served(app_loop):
    response = call(app_loop, "/v1/messages", BASE)
    assert response.status == 200 and json.loads(response.body)["content"][0]["text"] == "ok"


FIELDS = ["model", "max_tokens", "messages", "system", "tools", "tool_choice", "stop_sequences",
          "temperature", "top_p", "top_k", "stream", "metadata", "thinking"]
BLOCK = st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking",
                                                        "redacted_thinking"]) | JSON_VALUES},
                              optional={"text": JSON_VALUES, "source": JSON_VALUES, "id": JSON_VALUES,
                                        "name": JSON_VALUES, "input": JSON_VALUES, "content": JSON_VALUES,
                                        "tool_use_id": JSON_VALUES, "is_error": JSON_VALUES})
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]) | JSON_VALUES},
                                          optional={"content": st.text(max_size=8) | st.lists(BLOCK, max_size=3)}),
                    max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=4), messages=MESSAGES)
def test_random_bodies_never_500(app_loop, base, messages):
    body = {"model": "tiny", "max_tokens": 5, "messages": messages, **base}
    response = call(app_loop, "/v1/messages", body)
    assert response.status < 500, response.body
    if response.status >= 400:
        anthropic_error_of(response)
