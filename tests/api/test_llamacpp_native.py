"""llama-server's own generation routes through the daemon (POST /completion, /completions,
/infill: what llama.vim, llama.vscode and llama.cpp scripts call), on the real llama-server, the
engine and the Ollama emulator, compared with llama-server's own answers to the same bodies."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.daemon_rig import llama_and_engine_daemon, llama_backend, ollama_backend
from tests.rig.llama import LlamaServer, tiny_gguf_tool
from velollmd.backends.llamacpp_infill import to_completion
from velollmd.wire.llamacpp_native import NativeShape, cut_at_indent, full_timings, native_answer, picked_fields

LLAMA = "tiny-fim"            # llama-server's alias (the daemon's llama backend serves "tiny*")
ENGINE = "native-engine"
MODELS = [LLAMA, ENGINE]
PROMPT = "def the(a, b):\n    "
EXTRAS = [{"filename": "util.py", "text": "def helper(x):\n    return x * 2\n", "time": 1700000000},
          {"text": "CONSTANT = 42\n"}]
INFILL = {"input_prefix": "def f(a):\n", "input_suffix": "\n    return a\n", "prompt": "    x",
          "input_extra": EXTRAS, "n_predict": 5, "temperature": 0}


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("native-models")
    return tiny_gguf_tool().build_tiny_gguf(models_dir / f"{ENGINE}.gguf", vocab="spm-fim")


@pytest.fixture(scope="module")
def server(llama_binary, fim_model):
    """Room for /infill's repo-level context (n_ctx - n_batch - 2 * n_predict), as in test_fill_in_middle."""
    with LlamaServer(fim_model, binary=llama_binary, parallel=1, ctx_size=2048, alias=LLAMA,
                     extra_args=["-b", "512"]) as running:
        yield running


@pytest.fixture(scope="module")
def daemon(server, fim_model):
    with llama_and_engine_daemon(server, fim_model.parent, LLAMA, max_running=2) as running:
        yield running


def post(url: str, body: dict) -> tuple[int, dict | list]:
    """(status, JSON answer); a stream's answer is the list of its events."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            text = resp.read().decode()
            if resp.headers.get("content-type", "").startswith("text/event-stream"):
                return resp.status, [json.loads(line[len("data: "):]) for line in text.splitlines()
                                     if line.startswith("data: ")]
            return resp.status, json.loads(text)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def answer(url: str, body: dict) -> dict:
    status, reply = post(url, body)
    assert status == 200, reply
    return reply


def eos_id() -> int:
    tokens, _, _ = tiny_gguf_tool().tiny_vocab(fim=True)
    return tokens.index(tiny_gguf_tool().EOS)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("route", ["/completion", "/completions"])
def test_a_greedy_completion_equals_llama_servers_own(daemon, server, model, route):
    body = {"prompt": PROMPT, "n_predict": 6, "temperature": 0}
    theirs = answer(server.url + "/completion", body)
    ours = answer(daemon.url + route, {**body, "model": model})
    assert ours["content"] == theirs["content"] and ours["content"]
    assert (ours["tokens_predicted"], ours["tokens_evaluated"]) == (theirs["tokens_predicted"],
                                                                    theirs["tokens_evaluated"])
    assert ours["tokens_predicted"] == 6
    assert ours["stop"] is True and ours["stop_type"] == theirs["stop_type"] == "limit"
    assert ours["model"] == model and ours["truncated"] is False and ours["tokens"] == []
    assert ours["generation_settings"]["n_predict"] == 6 and ours["timings"]["predicted_n"] == 6


@pytest.mark.parametrize("model", MODELS)
def test_token_ids_and_a_mixed_prompt_are_read_as_llama_server_reads_them(daemon, server, model):
    """Texts and token ids mixed: tokenized by the model's backend (with BOS and specials), as
    llama-server tokenizes them; plain ids are the prompt as they are."""
    ids = answer(server.url + "/tokenize", {"content": PROMPT})["tokens"]
    for prompt in (ids, ["def ", ids[2], "x"]):
        body = {"prompt": prompt, "n_predict": 4, "temperature": 0}
        theirs = answer(server.url + "/completion", body)
        ours = answer(daemon.url + "/completion", {**body, "model": model})
        assert ours["content"] == theirs["content"]
        assert ours["tokens_evaluated"] == theirs["tokens_evaluated"]


@pytest.mark.parametrize("model", MODELS)
def test_streamed_chunks_concatenate_to_the_whole_answer(daemon, server, model):
    body = {"prompt": PROMPT, "n_predict": 5, "temperature": 0, "stream": True}
    theirs = answer(server.url + "/completion", body)
    events = answer(daemon.url + "/completion", {**body, "model": model})
    *pieces, last = events
    assert all(e["stop"] is False and set(e) == {"index", "content", "stop"} for e in pieces)
    assert "".join(e["content"] for e in pieces) == "".join(e["content"] for e in theirs)
    assert last["stop"] is True and last["content"] == "" and last["stop_type"] == "limit"
    assert (last["tokens_predicted"], last["tokens_evaluated"]) == (theirs[-1]["tokens_predicted"],
                                                                    theirs[-1]["tokens_evaluated"])
    assert last["generation_settings"]["stream"] is True


@pytest.mark.parametrize("model", MODELS)
def test_stop_type_tells_a_limit_a_stop_word_and_an_end_token(daemon, server, model):
    base = {"prompt": PROMPT, "n_predict": 8, "temperature": 0}
    whole = answer(server.url + "/completion", base)["content"]
    word = whole.split()[2]
    cases = [({"n_predict": 2}, "limit", ""), ({"stop": [word, "zzz"]}, "word", word),
             ({"logit_bias": [[eos_id(), 2000]]}, "eos", "")]
    for extra, stop_type, stopping_word in cases:
        theirs = answer(server.url + "/completion", {**base, **extra})
        ours = answer(daemon.url + "/completion", {**base, **extra, "model": model})
        assert (ours["stop_type"], ours["stopping_word"]) == (theirs["stop_type"], theirs["stopping_word"]) \
            == (stop_type, stopping_word)
        assert ours["content"] == theirs["content"]
        assert ours["tokens_predicted"] == theirs["tokens_predicted"]
        streamed = answer(daemon.url + "/completion", {**base, **extra, "model": model, "stream": True})
        assert (streamed[-1]["stop_type"], streamed[-1]["stopping_word"]) == (stop_type, stopping_word)


@pytest.mark.parametrize("model", MODELS)
def test_infill_with_input_extra_matches_llama_servers_own(daemon, server, model):
    """The FIM prompt of the prefix, `prompt` (the line so far) and the suffix, the other files
    before it: the same tokens read and the same middle as llama-server's own /infill."""
    theirs = answer(server.url + "/infill", INFILL)
    ours = answer(daemon.url + "/infill", {**INFILL, "model": model})
    assert ours["content"] == theirs["content"] and ours["content"]
    assert ours["tokens_evaluated"] == theirs["tokens_evaluated"]
    bare = answer(daemon.url + "/infill", {**INFILL, "model": model, "input_extra": []})
    assert bare["tokens_evaluated"] < ours["tokens_evaluated"]


@pytest.mark.parametrize("model", MODELS)
def test_an_editors_infill_body_is_served_in_the_fields_it_asks_for(daemon, server, model):
    """llama.vim's body: its timing and slot fields accepted, `response_fields` honoured (a
    nested field under its path), `n_indent` applied; `samplers` reaches llama-server (its
    "infill" sampler may end the middle early), which the engine does not read."""
    fields = ["content", "timings/prompt_n", "timings/predicted_n", "tokens_cached", "truncated"]
    body = {**INFILL, "model": model, "id_slot": 0, "n_indent": 4, "top_k": 40, "top_p": 0.99, "stream": False,
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "t_max_prompt_ms": 500,
            "t_max_predict_ms": 1000, "stop": [], "response_fields": fields}
    reply = answer(daemon.url + "/infill", body)
    assert set(reply) == set(fields) and reply["truncated"] is False
    if model == LLAMA:
        assert reply["content"] == answer(server.url + "/infill", {k: v for k, v in body.items()
                                                                   if k != "model"})["content"]
    else:
        assert reply["timings/predicted_n"] == 5


@pytest.mark.parametrize("model", MODELS)
def test_n_probs_gives_each_tokens_probabilities(daemon, server, model):
    body = {"prompt": PROMPT, "n_predict": 3, "temperature": 0, "n_probs": 2}
    theirs = answer(server.url + "/completion", body)["completion_probabilities"]
    ours = answer(daemon.url + "/completion", {**body, "model": model})["completion_probabilities"]
    assert [p["token"] for p in ours] == [p["token"] for p in theirs]
    assert all(len(p["top_logprobs"]) == 2 and p["bytes"] == list(p["token"].encode()) for p in ours)
    assert [p["logprob"] for p in ours] == pytest.approx([p["logprob"] for p in theirs], abs=0.05)


@pytest.mark.parametrize("model", MODELS)
def test_n_predict_zero_answers_one_token_as_llama_server_does(daemon, server, model):
    body = {"prompt": PROMPT, "n_predict": 0, "temperature": 0}
    theirs = answer(server.url + "/completion", body)
    ours = answer(daemon.url + "/completion", {**body, "model": model})
    assert (ours["content"], ours["tokens_predicted"]) == (theirs["content"], theirs["tokens_predicted"]) \
        and ours["tokens_predicted"] == 1


def test_without_a_model_the_one_model_served_answers(daemon_factory, server):
    single = daemon_factory({"backends": [llama_backend(server, models=[LLAMA])], "cache": {"enabled": False}})
    reply = answer(single.url + "/completion", {"prompt": PROMPT, "n_predict": 2})
    assert reply["model"] == LLAMA and reply["tokens_predicted"] == 2


def test_without_a_model_several_served_is_a_400_naming_them(daemon):
    status, reply = post(daemon.url + "/completion", {"prompt": PROMPT, "n_predict": 2})
    assert status == 400 and reply["error"]["param"] == "model"
    assert LLAMA in reply["error"]["message"] and ENGINE in reply["error"]["message"]


BAD_BODIES = [
    ("/completion", {"prompt": PROMPT, "n_predict": "many"}, "n_predict"),
    ("/completion", {"prompt": PROMPT, "n_probs": 50}, "n_probs"),
    ("/completion", {"prompt": []}, "prompt"),
    ("/completion", {"prompt": ["one", "two"]}, "prompt"),
    ("/completion", {"prompt": {"text": "x"}}, "prompt"),
    ("/completion", {"prompt": [1, -3]}, "prompt"),
    ("/completion", {"prompt": PROMPT, "temperature": "hot"}, "temperature"),
    ("/completion", {"prompt": PROMPT, "logit_bias": [[1]]}, "logit_bias"),
    ("/completion", {"prompt": PROMPT, "return_tokens": True}, "return_tokens"),
    ("/completion", {"prompt": PROMPT, "response_fields": "content"}, "response_fields"),
    ("/completion", {"prompt": PROMPT, "stream": True, "n_indent": 4}, "n_indent"),
    ("/completion", {"prompt": PROMPT, "stop": [1]}, "stop"),
    ("/infill", {"input_suffix": "x"}, "input_prefix"),
    ("/infill", {"input_prefix": "x"}, "input_suffix"),
    ("/infill", {"input_prefix": "x", "input_suffix": 5}, "input_suffix"),
    ("/infill", {"input_prefix": "x", "input_suffix": "y", "prompt": 7}, "prompt"),
    ("/infill", {"input_prefix": "x", "input_suffix": "y", "input_extra": "files"}, "input_extra"),
    ("/infill", {"input_prefix": "x", "input_suffix": "y", "input_extra": [{"filename": "a.py"}]}, "input_extra"),
]


@pytest.mark.parametrize("route, body, param", BAD_BODIES)
def test_a_bad_body_is_a_400_naming_the_field(daemon, route, body, param):
    status, reply = post(daemon.url + route, {**body, "model": ENGINE})
    assert status == 400 and reply["error"]["param"] == param and reply["error"]["type"] == "invalid_request_error"
    assert answer(daemon.url + "/completion", {"model": ENGINE, "prompt": PROMPT, "n_predict": 1})["stop"] is True


def test_on_ollama_the_routes_are_served_from_its_generate(daemon_factory, ollama_emulator):
    """The emulator's words for a completion (out of tokens: "limit"), a scripted reply that
    ends itself ("eos"), /infill as a generate with the suffix and `prompt` after the prefix."""
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})
    body = {"model": "llama3.2", "prompt": PROMPT, "n_predict": 3}
    reply = answer(daemon.url + "/completion", body)
    sent = ollama_emulator.last_request("/api/generate")
    assert sent["prompt"] == PROMPT and sent["options"]["num_predict"] == 3
    assert reply["stop_type"] == "limit" and reply["tokens_predicted"] == 3 and reply["content"]
    ollama_emulator.script("all done")
    assert answer(daemon.url + "/completion", body)["stop_type"] == "eos"
    events = answer(daemon.url + "/completion", {**body, "stream": True})
    assert "".join(e["content"] for e in events[:-1]) == reply["content"] and events[-1]["stop"] is True
    infill = {"model": "llama3.2", "input_prefix": "def f(a):\n", "input_suffix": "\n    return a\n",
              "prompt": "    x", "n_predict": 2}
    assert answer(daemon.url + "/infill", infill)["content"]
    sent = ollama_emulator.last_request("/api/generate")
    assert sent["prompt"] == "def f(a):\n    x" and sent["suffix"] == "\n    return a\n"


def test_on_ollama_what_it_cannot_read_is_a_400(daemon_factory, ollama_emulator):
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})
    status, reply = post(daemon.url + "/completion", {"model": "llama3.2", "prompt": ["def ", 5]})
    assert status == 400 and reply["error"]["param"] == "prompt"
    status, reply = post(daemon.url + "/infill", {"model": "llama3.2", "input_prefix": "a", "input_suffix": "b",
                                                  "input_extra": EXTRAS})
    assert status == 400 and reply["error"]["param"] == "input_extra"
    assert ollama_emulator.count("/api/generate") == 0


def test_n_indent_ends_the_answer_at_the_first_line_indented_less():
    """llama-server's rule: the first line is never checked; a later line with text (an empty
    line too) under `n_indent` ends the answer, kept up to its indentation."""
    text = "x = 1\n    y = 2\n\tz\n  w = 3\n        v"
    assert cut_at_indent(text, 4) == ("x = 1\n    y = 2\n\t", True)
    assert cut_at_indent(text, 1) == (text, False)
    assert cut_at_indent(text, 0) == (text, False)
    assert cut_at_indent("a\n    b\n\n    c", 4) == ("a\n    b\n", True)
    assert cut_at_indent("  only the first line", 8) == ("  only the first line", False)


def test_response_fields_pick_nested_fields_under_their_path():
    reply = {"content": "x", "timings": {"prompt_n": 3}, "stop": True}
    assert picked_fields(reply, ["content", "timings/prompt_n", "timings/none", "absent"]) == \
        {"content": "x", "timings/prompt_n": 3}
    assert picked_fields(reply, []) is reply


def test_timings_get_the_rates_llama_server_derives_where_a_backend_gave_durations_alone():
    engine = {"cache_n": 0, "prompt_n": 4, "prompt_ms": 8.0, "predicted_n": 5, "predicted_ms": 250.0,
              "predicted_per_second": None}
    assert full_timings(engine) == {**engine, "prompt_per_token_ms": 2.0, "prompt_per_second": 500.0,
                                    "predicted_per_token_ms": 50.0, "predicted_per_second": 20.0}
    llama = {"prompt_n": 1, "prompt_ms": 3.0, "prompt_per_token_ms": 3.0, "prompt_per_second": 333.3,
             "predicted_n": 2, "predicted_ms": 4.0, "predicted_per_token_ms": 2.0, "predicted_per_second": 500.0}
    assert full_timings(llama) == llama                             # llama-server's own kept
    unknown = full_timings({"prompt_n": 3, "predicted_n": 0, "predicted_ms": 0})
    assert unknown["prompt_ms"] == unknown["prompt_per_second"] == unknown["predicted_per_token_ms"] == 0.0


def test_several_choices_are_llama_servers_list_of_results():
    """n_cmpl: llama-server answers a list; its results, read into choices, come back as one."""
    results = [{"index": i, "content": text, "stop_type": "eos", "tokens_evaluated": 9, "tokens_predicted": 2,
                "timings": {"cache_n": 4}} for i, text in enumerate(["a", "b"])]
    answer = to_completion(results, "m")
    assert [c["text"] for c in answer["choices"]] == ["a", "b"] and [c["index"] for c in answer["choices"]] == [0, 1]
    assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == (9, 4)
    native = native_answer(answer, NativeShape("m", {}, response_fields=["index", "content"]))
    assert native == [{"index": 0, "content": "a"}, {"index": 1, "content": "b"}]
    assert native_answer(to_completion(results[0], "m"), NativeShape("m", {}))["content"] == "a"
