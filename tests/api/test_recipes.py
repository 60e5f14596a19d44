"""The requests each app of docs/recipes/ sends, as that app sends them (paths, headers, fields,
streaming options), through the daemon to the real llama-server and the Ollama emulator."""
import json

import httpx
import pytest

from tests.daemon_rig import llama_backend, ollama_backend

CONTINUE_SYSTEM = "You are an expert software developer. You give helpful and concise responses."


@pytest.fixture
def daemon(daemon_factory, llama_server, ollama_emulator):
    """The recipes' configuration: a key, and the vendor names the apps ask for mapped by aliases."""
    return daemon_factory({"backends": [llama_backend(llama_server), ollama_backend(ollama_emulator)],
                           "server": {"api_keys": ["sk-local"]},
                           "aliases": {"gpt-4o": "tiny", "claude-*": "tiny"}})


@pytest.fixture
def http(daemon):
    with httpx.Client(base_url=daemon.url, headers={"Authorization": "Bearer sk-local"}, timeout=60) as client:
        yield client


def sse_events(response: httpx.Response) -> list:
    """The data of each SSE event, [DONE] last."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# -- Continue (docs/recipes/continue.md) ----------------------------------------------------

def test_continue_model_picker_lists_the_served_models_and_aliases(http):
    ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert {"tiny", "gpt-4o", "llama3.2:latest"} <= set(ids)


def test_continue_chat_streams_openai_chunks(http):
    body = {"model": "gpt-4o", "messages": [{"role": "system", "content": CONTINUE_SYSTEM},
                                            {"role": "user", "content": "Write a hello world in Python"}],
            "max_tokens": 16, "temperature": 0, "stream": True, "stop": ["<|im_end|>"]}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-4o" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] \
        in (["length"], ["stop"])


@pytest.mark.parametrize("temperature, caches", [(0.01, ["bypass", "bypass"]), (0, ["miss", "hit-exact"])])
def test_continue_autocomplete_through_legacy_completions(http, temperature, caches):
    """Continue's autocomplete samples at 0.01 (never cached: sampled text is not the same
    answer twice); at temperature 0 the second identical completion is an exact hit."""
    body = {"model": "tiny", "prompt": f"def fibonacci(n):  # t={temperature}\n    ", "max_tokens": 12,
            "temperature": temperature, "stream": True, "stop": ["\n\n", "\ndef "]}
    texts, seen = [], []
    for _ in range(2):
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            seen.append(response.headers["x-velollm-cache"])
            events = sse_events(response)
        assert events[-1] == "[DONE]"
        texts.append("".join(c["choices"][0]["text"] for c in events[:-1] if c["choices"]))
    assert seen == caches and all(texts)
    if temperature == 0:
        assert texts[0] == texts[1]


def test_continue_without_its_key_is_refused_in_openai_shape(daemon):
    response = httpx.post(daemon.url + "/v1/chat/completions", json={"model": "tiny", "messages": []},
                          headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


# -- Open WebUI (docs/recipes/open-webui.md) ------------------------------------------------

def test_open_webui_ollama_connection_discovers_models(http):
    assert http.get("/api/version").json()["version"]
    names = [m["name"] for m in http.get("/api/tags").json()["models"]]
    assert {"tiny", "llama3.2:latest", "gpt-4o"} <= set(names)      # every backend's models, and aliases
    assert isinstance(http.get("/api/ps").json()["models"], list)
    show = http.post("/api/show", json={"model": "tiny"}).json()
    assert "modelfile" in show and "details" in show


@pytest.mark.parametrize("model", ["tiny", "llama3.2:latest"])   # translated (llama-server) and native (Ollama)
def test_open_webui_ollama_chat_streams_ndjson(http, model):
    body = {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "stream": True,
            "options": {"temperature": 0.8, "num_predict": 8}, "keep_alive": "5m"}
    with http.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(line["model"] == model for line in lines)
    assert [line["done"] for line in lines][-1] is True and not any(line["done"] for line in lines[:-1])
    assert lines[-1]["eval_count"] >= 1 and "prompt_eval_count" in lines[-1]
    assert "".join(line["message"]["content"] for line in lines)


def test_open_webui_title_generation_is_a_non_streamed_chat(http):
    body = {"model": "tiny", "stream": False, "options": {"num_predict": 8},
            "messages": [{"role": "user", "content": "Create a concise title for: Hello!"}]}
    reply = http.post("/api/chat", json=body).json()
    assert reply["done"] is True and reply["message"]["role"] == "assistant" and reply["message"]["content"]


def test_open_webui_openai_connection_streams_with_usage(http):
    assert "tiny" in [m["id"] for m in http.get("/v1/models").json()["data"]]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": 8}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 8


# -- Claude Code (docs/recipes/claude-code.md) ----------------------------------------------

CLAUDE_HEADERS = {"anthropic-version": "2023-06-01", "x-app": "cli", "user-agent": "claude-cli/2.1.119 (external, cli)",
                  "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"}
BASH_TOOL = {"name": "Bash", "description": "Executes a given bash command",
             "input_schema": {"type": "object", "properties": {"command": {"type": "string"},
                                                               "timeout": {"type": "number"}},
                              "required": ["command"], "additionalProperties": False}}


def claude_code_body(billing: str, text: str) -> dict:
    return {"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000, "stream": True, "temperature": 1,
            "metadata": {"user_id": "user_abc_account__session_123"},
            "system": [{"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.119.{billing}; "
                                                f"cc_entrypoint=cli; cch={billing};"},
                       {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                        "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>This is a reminder.</system-reminder>"},
                {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}],
            "tools": [BASH_TOOL]}


def anthropic_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_claude_code_start_check_and_count_tokens(http):
    check = http.post("/v1/messages?beta=true", headers=CLAUDE_HEADERS,
                      json={"model": "claude-haiku-4-5", "max_tokens": 1,
                            "messages": [{"role": "user", "content": "quota"}]})
    assert check.status_code == 200 and check.json()["type"] == "message"
    assert check.json()["model"] == "claude-haiku-4-5" and check.json()["stop_reason"] == "max_tokens"
    count = http.post("/v1/messages/count_tokens?beta=true", headers=CLAUDE_HEADERS,
                      json={"model": "claude-sonnet-4-5", "tools": [BASH_TOOL],
                            "messages": [{"role": "user", "content": "How many tokens?"}]})
    assert count.status_code == 200 and count.json()["input_tokens"] > 0


def test_claude_code_streams_and_its_billing_header_does_not_defeat_the_cache(http):
    seen = []
    for billing in ("a7754", "b1234"):              # the header changes on every request
        body = {**claude_code_body(billing, "List the files here."), "temperature": 0, "max_tokens": 12}
        with http.stream("POST", "/v1/messages?beta=true", headers=CLAUDE_HEADERS, json=body) as response:
            assert response.status_code == 200
            seen.append(response.headers["x-velollm-cache"])
            events = anthropic_events(response)
        names = [name for name, _ in events if name != "ping"]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        assert events[0][1]["message"]["model"] == "claude-sonnet-4-5-20250929"
        started = {data["index"] for name, data in events if name == "content_block_start"}
        assert all(data["index"] in started for name, data in events if name == "content_block_delta")
        assert dict(events)["message_delta"]["usage"]["output_tokens"] >= 1
    assert seen == ["miss", "hit-exact"]


def test_claude_code_without_its_key_gets_anthropics_error_shape(daemon):
    response = httpx.post(daemon.url + "/v1/messages?beta=true", headers={**CLAUDE_HEADERS, "x-api-key": "wrong"},
                          json=claude_code_body("x", "hi"))
    assert response.status_code == 401
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "authentication_error"
