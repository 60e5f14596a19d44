"""docs/recipes/codex-cli.md: what Codex CLI sends to a `wire_api = "responses"` provider
(POST {base_url}/responses, streamed, stateless: each turn resends the whole history) through
the daemon to the real llama-server, read back as Codex reads it (SSE `event:` / `data:`
frames, output items from `response.output_item.done`, the turn ends at `response.completed`).

The tiny model calls a tool only when pushed: the tests add a `logit_bias` (see
tests/rig/llama.py force_tool_call_bias) and a fixed `seed`, the two fields here that Codex
does not send. Its free text never ends before the token limit, so each turn here is a call (a
turn that ends in a call is `response.completed`), the second one made after the first call's
result. The seed: with a random one, a first call once held a number of 300+ digits (JSON, but
past a double), which llama-server could not read back in the second turn's history (its 500,
the daemon's 502): the random model's text, not the round trip under test."""
import json
import uuid

import httpx
import pytest

from tests.daemon_rig import llama_backend
from tests.rig.llama import LlamaServer, force_tool_call_bias

KEY = "sk-local"
MODEL = "gpt-5-codex"                 # Codex's model name, mapped onto the tiny model by [aliases]
SEED = 1                               # the sampler's, for both turns (module docstring)
# A shortened stand-in for Codex's apply_patch grammar (the whole one, and Codex's instructions,
# would not fit the tiny model's 1k-token slots).
PATCH_GRAMMAR = ('start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\n'
                 'end_patch: "*** End Patch" LF?\nhunk: "*** Add File: " filename LF add_line+\n')
SHELL = {"type": "function", "name": "shell", "description": "Runs a shell command and returns its output.",
         "strict": False, "parameters": {"type": "object", "properties": {
             "command": {"type": "array", "items": {"type": "string"}},
             "workdir": {"type": "string"}, "timeout_ms": {"type": "number"}},
             "required": ["command"], "additionalProperties": False}}
UPDATE_PLAN = {"type": "function", "name": "update_plan", "description": "Updates the task plan.",
               "strict": False, "parameters": {"type": "object", "properties": {
                   "plan": {"type": "array", "items": {"type": "object", "properties": {
                       "step": {"type": "string"}, "status": {"type": "string"}},
                       "required": ["step", "status"], "additionalProperties": False}}},
                   "required": ["plan"], "additionalProperties": False}}
APPLY_PATCH = {"type": "custom", "name": "apply_patch",
               "description": "Use the `apply_patch` tool to edit files. This is a FREEFORM tool.",
               "format": {"type": "grammar", "syntax": "lark", "definition": PATCH_GRAMMAR}}
CODEX_TOOLS = [SHELL, UPDATE_PLAN, APPLY_PATCH]


@pytest.fixture(scope="module")
def codex_llama(llama_binary, tiny_model_path):
    """A llama-server of its own with 4k-token slots: Codex's tool list alone is over 1k tokens
    in the tiny vocab (the shared server's slots are 1k)."""
    with LlamaServer(tiny_model_path, binary=llama_binary, parallel=2, ctx_size=8192) as server:
        yield server


@pytest.fixture
def daemon(daemon_factory, codex_llama):
    """The recipe's velollm.toml: a key for Codex's env_key, and Codex's model name aliased."""
    return daemon_factory({"backends": [llama_backend(codex_llama)], "server": {"api_keys": [KEY]},
                           "aliases": {MODEL: "tiny"}})


@pytest.fixture
def http(daemon):
    headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "responses=experimental",
               "originator": "codex_cli_rs", "session_id": str(uuid.uuid4()), "Accept": "text/event-stream"}
    with httpx.Client(base_url=daemon.url + "/v1", headers=headers, timeout=120) as client:
        yield client


def codex_body(input_items: list[dict], tools: list[dict], cache_key: str) -> dict:
    """The body of one Codex turn (codex-rs ResponsesApiRequest)."""
    return {"model": MODEL, "instructions": "You are Codex, a coding agent. Keep answers short.",
            "input": input_items, "tools": tools, "tool_choice": "auto", "parallel_tool_calls": False,
            "reasoning": {"effort": "medium", "summary": "auto"}, "store": False, "stream": True,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": cache_key}


def first_turn() -> list[dict]:
    return [{"type": "message", "role": "developer", "content": [
                {"type": "input_text", "text": "<permissions>workspace-write</permissions>"}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "<environment_context><cwd>/repo</cwd></environment_context>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Add hello.txt"}]}]


def turn(http: httpx.Client, body: dict) -> tuple[list[dict], dict]:
    """One streamed turn read as Codex reads it: (the events, the final response)."""
    events = []
    with http.stream("POST", "/responses", json=body) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name                    # Codex dispatches on `event:`
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] == "response.completed"          # else Codex retries the turn
    return events, events[-1]["response"]


def done_items(events: list[dict]) -> list[dict]:
    return [e["item"] for e in events if e["type"] == "response.output_item.done"]


def result_of(item: dict) -> dict:
    """What Codex sends back after running a call."""
    kind = "custom_tool_call_output" if item["type"] == "custom_tool_call" else "function_call_output"
    return {"type": kind, "call_id": item["call_id"], "output": "Success. Updated the following files:\nA hello.txt"}


def test_codex_turns_with_its_tools_round_trip_a_call(http):
    cache_key = str(uuid.uuid4())
    body = {**codex_body(first_turn(), CODEX_TOOLS, cache_key), "logit_bias": force_tool_call_bias(), "seed": SEED}
    events, response = turn(http, body)
    [call] = done_items(events)
    assert response["output"] == [call] and response["model"] == MODEL and response["status"] == "completed"
    assert call["type"] in ("function_call", "custom_tool_call") and call["call_id"]
    if call["type"] == "custom_tool_call":
        assert call["name"] == "apply_patch" and isinstance(call["input"], str)
        assert [e["type"] for e in events[2:6]] == ["response.output_item.added",
                                                   "response.custom_tool_call_input.delta",
                                                   "response.custom_tool_call_input.done",
                                                   "response.output_item.done"]
    else:
        assert call["name"] in ("shell", "update_plan") and isinstance(json.loads(call["arguments"]), dict)
        assert "response.function_call_arguments.done" in [e["type"] for e in events]

    history = first_turn() + [call, result_of(call)]            # stateless: the whole history again
    events, follow = turn(http, {**body, "input": history})
    [again] = done_items(events)
    assert again["type"] in ("function_call", "custom_tool_call") and again["call_id"] != call["call_id"]
    assert follow["usage"]["input_tokens"] > response["usage"]["input_tokens"]     # the call and result went in


def test_codex_apply_patch_is_a_custom_tool_call_and_its_output_goes_back(http):
    cache_key = str(uuid.uuid4())
    body = {**codex_body(first_turn(), [APPLY_PATCH], cache_key), "logit_bias": force_tool_call_bias(), "seed": SEED}
    events, response = turn(http, body)
    [call] = done_items(events)
    assert call["type"] == "custom_tool_call" and call["name"] == "apply_patch" and call["id"].startswith("ctc_")
    [done] = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
    assert done["input"] == call["input"] == "".join(
        e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta")

    history = first_turn() + [call, result_of(call)]
    events, follow = turn(http, {**body, "input": history})
    assert [item["type"] for item in done_items(events)] == ["custom_tool_call"]
    assert follow["usage"]["input_tokens"] > response["usage"]["input_tokens"]


def test_codex_without_a_key_is_a_401(daemon):
    answer = httpx.post(daemon.url + "/v1/responses", json=codex_body(first_turn(), CODEX_TOOLS, "k"), timeout=30)
    assert answer.status_code == 401 and answer.json()["error"]["message"]
