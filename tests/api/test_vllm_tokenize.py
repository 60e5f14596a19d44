"""/tokenize and /detokenize behind an OpenAI-compatible backend (vLLM): the server's own
routes, passed through, so lm-evaluation-harness's remote tokenizer (tokenizer_backend=remote,
or "auto") works through velollmd as against vLLM itself. The vLLM is scripted over a real socket
(its tokenizer: one token per character, the id its code point); the client is the lm-eval port
in test_recipes_lmeval.py."""
import httpx
import pytest

from tests.api.test_recipes_lmeval import check_remote_tokenizer_support, remote_tokenizer
from tests.daemon_rig import RunningDaemon, ollama_backend
from tests.rig.ollama_emulator import OllamaEmulator
from tests.rig.scripted_openai import ScriptedServer

MAX_MODEL_LEN = 4096
BOS = 1


def vllm_tokenize(body: dict) -> tuple[int, dict]:
    """vLLM's /tokenize of a `prompt` (BOS with add_special_tokens, its default) or a chat (the
    contents joined); `extra` shows the answer is passed on whole."""
    if "messages" in body:
        text, specials = "".join(m["content"] for m in body["messages"]), True
    else:
        text, specials = body["prompt"], body.get("add_special_tokens", True)
    tokens = [BOS] * specials + [ord(char) for char in text]
    answer = {"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens, "extra": "kept"}
    if body.get("return_token_strs"):
        answer["token_strs"] = ["<s>"] * specials + list(text)
    return 200, answer


def vllm_detokenize(body: dict) -> tuple[int, dict]:
    if any(token >= 0x110000 for token in body["tokens"]):
        return 400, {"object": "error", "message": "token id out of range", "type": "BadRequestError", "code": 400}
    return 200, {"prompt": "".join(chr(token) for token in body["tokens"] if token != BOS)}


@pytest.fixture(scope="module")
def vllm():
    server = ScriptedServer({"/tokenizer_info": (200, b'{"eos_token": "</s>", "bos_token": "<s>"}'),
                             "POST /tokenize": vllm_tokenize, "POST /detokenize": vllm_detokenize})
    yield server
    server.close()


@pytest.fixture(scope="module")
def daemon(vllm):
    table = {"backends": [{"name": "vllm", "kind": "openai", "url": vllm.url, "models": ["m"]}],
             "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


def post(daemon, path: str, body: dict, status: int = 200) -> dict:
    answer = httpx.post(daemon.url + path, json=body, timeout=60)
    assert answer.status_code == status, answer.text
    return answer.json()


def test_vllms_tokenize_is_passed_through_with_the_model_named(daemon, vllm):
    answer = post(daemon, "/tokenize", {"prompt": "hi", "return_token_strs": True})
    assert answer == {"count": 3, "max_model_len": MAX_MODEL_LEN, "tokens": [BOS, 104, 105],
                      "token_strs": ["<s>", "h", "i"], "extra": "kept"}
    assert vllm.bodies[-1] == {"prompt": "hi", "return_token_strs": True, "model": "m"}


def test_a_vllm_chat_tokenize_goes_to_vllm_whole(daemon, vllm):
    body = {"model": "m", "messages": [{"role": "user", "content": "ok"}], "add_generation_prompt": True}
    assert post(daemon, "/tokenize", body)["tokens"] == [BOS, ord("o"), ord("k")]
    assert vllm.bodies[-1] == body


def test_vllms_detokenize_answers_both_dialects(daemon, vllm):
    assert post(daemon, "/detokenize", {"tokens": [BOS, 104, 105]}) == {"content": "hi", "prompt": "hi"}
    assert vllm.bodies[-1] == {"model": "m", "tokens": [BOS, 104, 105]}


def test_llama_servers_dialect_becomes_vllms_prompt(daemon, vllm):
    assert post(daemon, "/tokenize", {"content": "ab"}) == {"tokens": [97, 98]}
    assert vllm.bodies[-1] == {"model": "m", "prompt": "ab", "add_special_tokens": False}
    assert post(daemon, "/tokenize", {"content": "ab", "add_special": True}) == {"tokens": [BOS, 97, 98]}


@pytest.mark.parametrize("body, param", [({"content": ["a", 5]}, "content"), ({"content": "a", "with_pieces": True},
                                         "with_pieces"), ({"content": "a", "parse_special": False}, "parse_special")])
def test_what_vllms_tokenize_cannot_answer_is_a_400_naming_it(daemon, body, param):
    error = post(daemon, "/tokenize", body, 400)["error"]
    assert error["param"] == param and "vllm" in error["message"] and error["code"] == "unsupported_value"


def test_vllms_own_errors_and_bad_ids_are_400s(daemon):
    assert "out of range" in post(daemon, "/detokenize", {"tokens": [0x110000]}, 400)["error"]["message"]
    assert post(daemon, "/detokenize", {"tokens": [-1]}, 400)["error"]["param"] == "tokens"
    assert post(daemon, "/detokenize", {"tokens": "hi"}, 400)["error"]["param"] == "tokens"


def test_apply_template_has_no_vllm_route(daemon):
    error = post(daemon, "/apply-template", {"messages": [{"role": "user", "content": "x"}]}, 501)["error"]
    assert error["code"] == "tokenizer_unavailable"


def test_lm_evals_remote_tokenizer_works_through_the_daemon(daemon):
    tokenizer = remote_tokenizer(daemon)
    assert tokenizer.encode("lm eval") == [ord(char) for char in "lm eval"]      # add_special_tokens: false
    assert tokenizer.decode(tokenizer.encode("round trip")) == "round trip"
    assert check_remote_tokenizer_support(daemon.url + "/v1/completions") is True


def test_a_server_without_vllms_routes_and_an_ollama_model_are_a_501():
    bare = ScriptedServer({})           # an OpenAI-compatible server that has no /tokenize (LM Studio, ...)
    try:
        with OllamaEmulator() as emulator, RunningDaemon({"backends": [
                {"name": "bare", "kind": "openai", "url": bare.url, "models": ["m"]},
                ollama_backend(emulator)], "cache": {"enabled": False}}) as daemon:
            error = post(daemon, "/tokenize", {"model": "m", "prompt": "x"}, 501)["error"]
            assert error["code"] == "tokenizer_unavailable" and "POST /tokenize" in error["message"]
            assert "bare" in post(daemon, "/detokenize", {"model": "m", "tokens": [1]}, 501)["error"]["message"]
            error = post(daemon, "/tokenize", {"model": "llama3.2", "prompt": "x"}, 501)["error"]
            assert error["code"] == "tokenizer_unavailable" and "ollama" in error["message"]
    finally:
        bare.close()

