"""Pathological JSON bodies on every POST route, over real sockets, through the daemon in front
of a real OpenAI-compatible backend (tests/rig/fault_backend.py) and the Ollama emulator: never
a 500, never a traceback; a 4xx in the route's error shape, or a proper answer.

The classes: nesting depth, huge numbers, NaN / Infinity, long strings and keys, duplicate
keys, lone surrogates, invalid UTF-8, and every JSON-in-JSON field (tool-call arguments,
response_format schemas, Ollama `format`, tool schemas)."""
import json

import httpx
import pytest

from tests.daemon_rig import RunningDaemon, ollama_backend
from tests.rig.fault_backend import FaultBackend
from tests.rig.ollama_emulator import OllamaEmulator
from velollmd.api.ollama import MANAGEMENT_ROUTES
from velollmd.api.rerank import RERANK_PATHS, SCORE_PATHS
from velollmd.wire import wirejson

NOT_MANAGED = {path for _, path in MANAGEMENT_ROUTES}

MODELS = ["fault-model", "llama3.2:latest"]           # an OpenAI-compatible backend, and Ollama
LONE = "\ud800"
DEEP = "[" * 100_000 + "]" * 100_000
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def nested(depth: int) -> dict:
    """A JSON Schema nesting objects `depth` levels (two JSON levels each)."""
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def history_call(arguments) -> list:
    return [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "user", "content": "and?"}]


def body(**fields) -> dict:
    return {"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi",
            "input": "hi", "query": "hi", "documents": ["hi"], "max_tokens": 4, **fields}


# name -> raw bytes (with MODEL standing for the model), or a dict to send as JSON
CASES = {
    "deep_array": DEEP.encode(),
    "deep_object": ('{"a":' * 50_000 + "1" + "}" * 50_000).encode(),
    "deep_messages": b'{"model":"MODEL","messages":' + b"[" * 5000 + b"]" * 5000 + b"}",
    "deep_101": json.dumps(body(user=json.loads("[" * 100 + "]" * 100))).encode(),
    "huge_int_digits": b'{"model":"MODEL","messages":[{"role":"user","content":"hi"}],"max_tokens":'
                       + b"9" * 5000 + b"}",
    "huge_ints": body(max_tokens=10 ** 30, n=10 ** 30, seed=10 ** 30, logit_bias={"1": 10 ** 30}, top_n=10 ** 30,
                      options={"num_ctx": 10 ** 30, "seed": 10 ** 30}),
    "float_overflow": b'{"model":"MODEL","messages":[{"role":"user","content":"hi"}],"temperature":1e999}',
    "nan": b'{"model":"MODEL","messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
    "minus_infinity": b'{"model":"MODEL","prompt":"hi","messages":[{"role":"user","content":"hi"}],"top_p":-Infinity}',
    "long_key": ('{"' + "k" * 1_000_000 + '":1,"model":"MODEL","messages":[{"role":"user","content":"hi"}]}').encode(),
    "long_string": body(messages=[{"role": "user", "content": "x" * 1_000_000}]),
    "duplicate_keys": b'{"model":"MODEL","model":"nope","messages":[{"role":"user","content":"hi"}]}',
    "lone_surrogate_content": body(messages=[{"role": "user", "content": "a" + LONE}], prompt=LONE, input=LONE,
                                   query=LONE, documents=[LONE, {"text": LONE}]),
    "lone_surrogate_model": body(model=LONE),
    "lone_surrogate_key": body(**{LONE: LONE}),
    "lone_surrogate_stream": body(messages=[{"role": "user", "content": LONE}], stream=True),
    "lone_surrogate_cached": body(messages=[{"role": "user", "content": LONE}], temperature=0),
    "invalid_utf8": b'{"model":"MODEL","messages":[{"role":"user","content":"\xff\xfe"}]}',
    "utf8_encoded_surrogate": b'{"model":"MODEL","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
    "args_not_json": body(messages=history_call("{not json"), tools=TOOLS),
    "args_deep": body(messages=history_call(DEEP), tools=TOOLS),
    "args_lone_surrogate": body(messages=history_call('{"a": "\\ud800"}'), tools=TOOLS),
    "args_huge_number": body(messages=history_call('{"a": ' + "9" * 5000 + "}"), tools=TOOLS),
    "args_infinity": body(messages=history_call('{"a": 1e999, "b": NaN}'), tools=TOOLS),
    "args_a_list": body(messages=history_call("[1, 2]"), tools=TOOLS),
    "args_object_deep": body(messages=history_call(nested(60)), tools=TOOLS),
    "tool_schema_deep": body(tools=[{"type": "function", "function": {"name": "f", "parameters": nested(60)}}]),
    "tool_schema_ref_loop": body(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/properties/a"}}}}}]),
    "tool_schema_junk": body(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": ["object", 5], "required": 5, "properties": [1], "pattern": "(unclosed"}}}]),
    "tool_schema_lone_surrogate": body(tools=[{"type": "function", "function": {
        "name": LONE, "parameters": {"type": "object", LONE: LONE}}}], tool_choice="required"),
    "too_many_tools": body(tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(5000)]),
    "response_format_deep": body(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": nested(60)}}),
    "response_format_junk": body(response_format={"type": "json_schema", "json_schema": {"name": LONE,
                                                                                          "schema": "nope"}}),
    "ollama_format_deep": body(format=nested(60)),
    "ollama_format_unknown": body(format="yaml"),
    "ollama_format_lone_surrogate": body(format={"type": "object", LONE: LONE}),
    "ollama_load_no_prompt": {"model": "MODEL"},
    "ollama_empty_messages": {"model": "MODEL", "messages": []},
}


@pytest.fixture(scope="module")
def daemon():
    with FaultBackend() as backend, OllamaEmulator() as emulator:
        table = {"backends": [{"name": "fault", "kind": "openai", "url": backend.url, "models": ["fault-*"]},
                              ollama_backend(emulator)]}
        with RunningDaemon(table) as running:
            running.backend = backend
            yield running


def post_routes(daemon: RunningDaemon) -> list[str]:
    """Every POST route the daemon serves now (routes added later are covered too)."""
    return sorted(path for path, methods in daemon.app.router._exact.items() if "POST" in methods)


def encode(case, model: str) -> bytes:
    if isinstance(case, bytes):
        return case.replace(b"MODEL", model.encode())
    return json.dumps({**case, "model": model} if case.get("model") == "MODEL" else case).encode()


TOKENIZER_ROUTES = ("/tokenize", "/detokenize", "/apply-template")
UNSERVED_CODES = (b'"tokenizer_unavailable"', b'"rerank_unavailable"')   # no backend here tokenizes or reranks
LOAD_ROUTES = ("/models/load", "/models/unload")                # Ollama's models load; fault-model's do not


def assert_well_formed(path: str, response: httpx.Response) -> None:
    # 501 only where velollmd does nothing whatever the body: Ollama's model management, changing
    # llama-server's props, and the tokenizer, rerank and score routes for a model whose backend
    # serves none of them (no backend here does); loading a model its backend keeps loaded itself
    not_served = path in NOT_MANAGED or path in ("/api/pull", "/props") or (
        (path in TOKENIZER_ROUTES or path in RERANK_PATHS or path in SCORE_PATHS)
        and any(code in response.content for code in UNSERVED_CODES)) or (
        path in LOAD_ROUTES and b'"load_unsupported"' in response.content)
    assert response.status_code < 500 or response.status_code == 501 and not_served, (
        path, response.status_code, response.text[:300])
    assert b"Traceback" not in response.content
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error if path.startswith("/api/") else error["message"], str)    # Ollama: a string


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_no_pathological_body_gets_a_500_on_any_route(daemon, name, model):
    raw = encode(CASES[name], model)
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        for path in post_routes(daemon):
            assert_well_formed(path, client.post(path, content=raw, headers={"content-type": "application/json"}))
        after = client.post("/v1/chat/completions", json={"model": model, "messages": [
            {"role": "user", "content": "hi"}], "max_tokens": 2})
        assert after.status_code == 200                   # and the backend still serves


@pytest.mark.parametrize("name,message", [
    ("deep_array", "nested deeper than 100 levels"), ("deep_101", "nested deeper than 100 levels"),
    ("nan", "NaN is not a JSON value"), ("minus_infinity", "-Infinity is not a JSON value"),
    ("invalid_utf8", "can't decode"), ("utf8_encoded_surrogate", "can't decode"),
    ("huge_int_digits", "integer string conversion"),
])
def test_unreadable_bodies_are_a_400_saying_why(daemon, name, message):
    response = httpx.post(daemon.url + "/v1/chat/completions", content=encode(CASES[name], MODELS[0]), timeout=30)
    assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_a_lone_surrogate_reaches_the_backend_as_the_escape_the_client_sent(daemon):
    sent = body(model=MODELS[0], messages=[{"role": "user", "content": "a" + LONE}])
    response = httpx.post(daemon.url + "/v1/chat/completions", content=json.dumps(sent).encode(), timeout=30)
    assert response.status_code == 200
    upstream = daemon.backend.bodies[-1]
    assert b"\\ud800" in upstream and json.loads(upstream.decode("utf-8"))["messages"][0]["content"] == "a" + LONE


def test_ollama_load_requests_do_not_poison_the_queue(daemon):
    """An /api/chat without messages (Ollama's way to load a model) once left a request that
    could not be scheduled at the head of the queue: every later request got a 500."""
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        for _ in range(3):
            assert client.post("/api/chat", json={"model": MODELS[1]}).status_code == 200
        answer = client.post("/api/generate", json={"model": MODELS[1], "prompt": "hi", "stream": False})
    assert answer.status_code == 200 and answer.json()["done"] is True


@pytest.mark.parametrize("text,ok", [
    ("[" * 100 + "]" * 100, True), ("[" * 101 + "]" * 101, False),
    ('{"a":' * 100 + "1" + "}" * 100, True), ('{"a":' * 101 + "1" + "}" * 101, False),
    ("[" + "[]," * 5000 + "[]]", True),                    # many brackets, shallow
    ('"' + "[" * 500 + '"', True),                         # brackets inside a string
    ("NaN", False), ("[Infinity]", False), ("\ufeff{}", True),
])
def test_wirejson_loads_limits_depth_and_rejects_constants(text, ok):
    if ok:
        assert wirejson.loads(text) == json.loads(text.lstrip("\ufeff"))
        assert wirejson.loads(text.encode()) == json.loads(text.lstrip("\ufeff"))
    else:
        with pytest.raises(ValueError):
            wirejson.loads(text)


def test_wirejson_dumps_keeps_a_lone_surrogate_as_an_escape():
    assert wirejson.dumps({"a": "x" + LONE}) == b'{"a":"x\\ud800"}'
    assert wirejson.dumps({"a": "é"}) == '{"a":"é"}'.encode()       # UTF-8 as before otherwise
