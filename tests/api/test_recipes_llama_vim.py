"""The editors of docs/recipes/llama-vim.md, replayed through the daemon: llama.vim's and
llama.vscode's POST /infill bodies as their sources build them, and Continue's llama.cpp
provider's POST /completion, to the real llama-server and to the engine (the tiny model with
Qwen2.5-Coder's FIM tokens), each answer read as the plugin reads it.

Sources (the contract): ggml-org/llama.vim autoload/llama.vim @a1c8e6e (llama#fim,
s:ring_update, s:fim_on_response, s:fim_render), ggml-org/llama.vscode src/llama-server.ts
@3938fb3 (createRequestPayload, getFIMCompletion), src/completion.ts (getComplFromContent),
src/statusbar.ts (showInfo), continuedev/continue core/llm/llms/LlamaCpp.ts (_streamComplete)."""
from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.daemon_rig import llama_and_engine_daemon
from tests.rig.llama import LlamaServer, tiny_gguf_tool

LLAMA = "tiny-fim"            # llama-server's alias (the daemon's llama backend serves "tiny*")
ENGINE = "editor-engine"
MODELS = [LLAMA, ENGINE]
KEY = "sk-editor"

# llama.vim's chunk of another file (s:ring_get_extra): its text, when it was picked, its file
RING_CHUNK = {"text": "def helper(x):\n    return x * 2\n", "time": [1733300000, 123456], "filename": "util.py"}

# llama.vim's llama#fim: the lines before the cursor's, the cursor's line up to the cursor
# (`prompt`, the start of the middle), the rest of that line and the lines after it
LLAMA_VIM_FIELDS = ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                    "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                    "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated", "tokens_cached"]
LLAMA_VIM_FIM = {"id_slot": 0, "input_prefix": "import os\n\ndef the(a, b):\n", "input_suffix": "\n    return a\n",
                 "input_extra": [RING_CHUNK], "prompt": "    x = ", "n_predict": 128, "stop": [], "n_indent": 4,
                 "top_k": 40, "top_p": 0.90, "samplers": ["top_k", "top_p", "infill"], "stream": False,
                 "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 250,
                 "response_fields": LLAMA_VIM_FIELDS}
# s:fim_on_response's quick check before it decodes an answer (one it fails is dropped)
LLAMA_VIM_QUICK_CHECK = (re.compile(r"^\s*\{"), re.compile(r'"content"\s*:"'))
# s:fim_render shows its info line only when all of these came back
LLAMA_VIM_INFO = ["timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_second", "timings/predicted_n",
                  "timings/predicted_ms", "timings/predicted_per_second"]

# llama.vscode's createRequestPayload(noPredict=false): its default settings (n_predict 128,
# max_parallel_completions 3, t_max_* 500 / 2500) and its defaultRequestParams
LLAMA_VSCODE_FIM = {"id_slot": 0, "input_prefix": "import os\n\ndef the(a, b):\n", "input_suffix": "\n    return a\n",
                    "input_extra": [{"text": RING_CHUNK["text"], "time": 1733300000123, "filename": "/src/util.py"}],
                    "prompt": "    x = ", "n_predict": 128, "n_cmpl": 3,
                    "top_k": 40, "top_p": 0.99, "stream": False, "samplers": ["top_k", "top_p", "infill"],
                    "cache_prompt": True, "n_indent": 4, "t_max_prompt_ms": 500, "t_max_predict_ms": 2500}


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("editor-models")
    return tiny_gguf_tool().build_tiny_gguf(models_dir / f"{ENGINE}.gguf", vocab="spm-fim")


@pytest.fixture(scope="module")
def server(llama_binary, fim_model):
    """Three slots for llama.vscode's n_cmpl 3; room for /infill's repo-level context."""
    with LlamaServer(fim_model, binary=llama_binary, parallel=3, ctx_size=4096, alias=LLAMA,
                     extra_args=["-b", "512"]) as running:
        yield running


@pytest.fixture(scope="module")
def daemon(server, fim_model):
    with llama_and_engine_daemon(server, fim_model.parent, LLAMA, table={"server": {"api_keys": [KEY]}},
                                 max_running=3, num_ctx=2048) as running:
        yield running


@pytest.fixture(scope="module")
def editor(daemon):
    """The plugins' client: their api_key setting as a bearer token, JSON bodies."""
    with httpx.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        yield client


def infill(editor: httpx.Client, body: dict) -> httpx.Response:
    """POST /infill with the body as the plugins encode it (curl --data / axios: compact JSON)."""
    return editor.post("/infill", content=json.dumps(body), headers={"Content-Type": "application/json"})


def llama_vscode_completions(data) -> list[str]:
    """llama.vscode's getComplFromContent: one result's content, or each of a list's, once each."""
    if isinstance(data, dict) and "content" in data:
        return [data["content"] or ""]
    return list(dict.fromkeys(result.get("content") or "" for result in data)) if data else []


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.mark.parametrize("model", MODELS)
def test_llama_vims_fim_request_is_answered_in_the_fields_it_reads(editor, model):
    response = infill(editor, {**LLAMA_VIM_FIM, "model": model})
    assert response.status_code == 200, response.text
    assert all(check.search(response.text) for check in LLAMA_VIM_QUICK_CHECK)
    reply = response.json()
    assert set(reply) == set(LLAMA_VIM_FIELDS)
    assert isinstance(reply["content"], str) and reply["truncated"] is False
    assert type(reply["tokens_cached"]) is int and reply["tokens_cached"] > 0
    assert all(is_number(reply[name]) for name in LLAMA_VIM_INFO)          # the info line is shown
    assert reply["timings/predicted_n"] >= 1


def test_llama_vims_answer_is_llama_servers_own_on_llama_server(editor, server):
    """`samplers` with "infill", `n_indent` and the repo-level chunk reach llama-server: the
    middle is the one its own /infill writes for the same body."""
    body = {**LLAMA_VIM_FIM, "temperature": 0, "n_predict": 8}
    theirs = httpx.post(server.url + "/infill", json=body, timeout=60).json()
    ours = infill(editor, {**body, "model": LLAMA}).json()
    assert ours["content"] == theirs["content"]


@pytest.mark.parametrize("model", MODELS)
def test_llama_vscodes_fim_request_gives_it_completions_to_show(editor, model):
    """llama.vscode asks for 3 completions (n_cmpl): llama-server answers a list of results,
    given back as a list; the engine answers one. Either way getComplFromContent finds text."""
    response = infill(editor, {**LLAMA_VSCODE_FIM, "model": model, "temperature": 0})
    assert response.status_code == 200, response.text
    data = response.json()
    completions = llama_vscode_completions(data)
    assert completions and all(isinstance(c, str) for c in completions)
    results = data if isinstance(data, list) else [data]
    if model == LLAMA:
        assert len(results) == 3 and [r["index"] for r in results] == [0, 1, 2]
    for result in results:                   # statusbar.showInfo: numbers it formats with toFixed
        assert type(result["tokens_cached"]) is int and isinstance(result["generation_settings"], dict)
        assert all(is_number(result["timings"][name]) for name in
                   ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                    "predicted_per_second"))
        assert result["truncated"] is False and result["stop"] is True


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_request_for_several_completions_is_a_400_naming_n_cmpl(editor, model):
    body = {k: v for k, v in LLAMA_VSCODE_FIM.items() if k != "n_indent"}   # a stream takes no n_indent here
    response = infill(editor, {**body, "model": model, "stream": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "n_cmpl"
    assert infill(editor, {**LLAMA_VSCODE_FIM, "model": model, "n_cmpl": 1, "n_predict": 2}).status_code == 200


def context_update(chunk: dict) -> dict:
    """s:ring_update's body: the ring's chunks alone (no prefix, suffix or prediction), asking
    for no field (`response_fields: [""]`)."""
    return {"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": [chunk], "prompt": "",
            "n_predict": 0, "temperature": 0.0, "samplers": [], "stream": False, "cache_prompt": True,
            "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""]}


def test_llama_vims_context_update_is_answered_as_llama_server_answers_it(editor, server):
    """llama-server answers s:ring_update {}, and so does the daemon, on every backend."""
    body = context_update(RING_CHUNK)
    assert httpx.post(server.url + "/infill", json=body, timeout=60).json() == {}
    for model in MODELS:
        response = infill(editor, {**body, "model": model})
        assert response.status_code == 200 and response.json() == {}, (model, response.text)


@pytest.mark.parametrize("model", MODELS)
def test_a_context_update_fills_the_cache_with_the_chunks_the_next_fim_request_reuses(editor, server, model):
    """An empty suffix is still a fill in the middle on /infill (the gap at the end of a file):
    the update evaluates the ring's chunks in the FIM prompt, as llama-server itself does, so the
    next request's repo-level context comes from the cache."""
    chunk = {**RING_CHUNK, "text": f"def {model.replace('-', '_')}_cached(y):\n    return y + 7\n"}
    update = {**context_update(chunk), "response_fields": None}
    direct = httpx.post(server.url + "/infill", json=update, timeout=60).json()
    answer = infill(editor, {**update, "model": model}).json()
    assert answer["tokens_evaluated"] == direct["tokens_evaluated"] > 20
    fim = infill(editor, {**LLAMA_VIM_FIM, "input_extra": [chunk], "model": model, "n_predict": 2,
                          "response_fields": None}).json()
    assert fim["timings"]["cache_n"] >= 16, fim["timings"]


def test_without_the_key_the_plugins_get_a_401_in_the_error_shape_they_show(daemon):
    """llama.vscode shows `error.message` of a refused request."""
    response = httpx.post(daemon.url + "/infill", json={**LLAMA_VSCODE_FIM, "model": LLAMA}, timeout=30)
    assert response.status_code == 401 and response.json()["error"]["message"]


@pytest.mark.parametrize("model", MODELS)
def test_continues_llama_cpp_provider_streams_completion_content(editor, model):
    """Continue's `provider: llama.cpp` posts /completion with stream true and reads each
    event's `content` (its autocomplete writes its own FIM template into the prompt)."""
    body = {"prompt": "def fibonacci(n):\n    ", "stream": True, "n_predict": 6, "stop": ["\n\n"],
            "top_k": 40, "top_p": 0.9, "temperature": 0.01, "model": model}
    with editor.stream("POST", "/completion", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events if e.get("content"))
    assert events[-1]["stop"] is True and not any(e["stop"] for e in events[:-1])
