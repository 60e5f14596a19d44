"""vLLM's GET /tokenizer_info through velollmd, as lm-evaluation-harness's remote tokenizer
(tokenizer_backend=remote, or "auto", local-completions' default) reads it: built from the
engine's GGUF and from the real llama-server's /props, passed through from a vLLM-like server
that serves it, and a clear error where no tokenizer can answer. The client is the port in
test_recipes_lmeval.py (lm_eval/utils.py RemoteTokenizer and check_remote_tokenizer_support)."""
import json

import httpx
import pytest

from tests.api.test_recipes_lmeval import check_remote_tokenizer_support, remote_tokenizer
from tests.rig.scripted_openai import ScriptedServer
from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend, ollama_backend
from tests.rig.llama import make_tiny_model, tiny_gguf_tool, token_id
from tests.rig.ollama_emulator import OllamaEmulator

ENGINE = "tiny-engine"
NUM_CTX = 1024
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "the sun is over the sea?"}]
# a vLLM answer (TokenizerInfo.to_dict of a Qwen2.5 tokenizer, trimmed): passed through as it is
VLLM_INFO = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
             "pad_token": "<|endoftext|>", "model_max_length": 131072, "errors": "replace",
             "split_special_tokens": False, "unk_token": None, "clean_up_tokenization_spaces": False,
             "chat_template": "{% for message in messages %}{{ message['content'] }}{% endfor %}",
             "tokenizer_class": "Qwen2TokenizerFast"}


@pytest.fixture(scope="module")
def engine_daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokinfo-engine")
    make_tiny_model(folder / f"{ENGINE}.gguf")
    with RunningDaemon({"backends": [engine_backend(folder, num_ctx=NUM_CTX)], "cache": {"enabled": False}}) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def llama_daemon(llama_server):
    with RunningDaemon({"backends": [llama_backend(llama_server)], "cache": {"enabled": False}}) as daemon:
        yield daemon


def info_of(daemon, query: str = "") -> dict:
    answer = httpx.get(f"{daemon.url}/tokenizer_info{query}", timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def refused(daemon, query: str, status: int, **request) -> dict:
    answer = httpx.request(request.pop("method", "GET"), f"{daemon.url}/tokenizer_info{query}", timeout=60, **request)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"] and error["type"]
    return error


# -- the engine: the GGUF's tokenizer and chat template -----------------------------------------

def test_the_engine_answers_its_gguf_tokenizer_as_vllm_names_it(engine_daemon):
    tool = tiny_gguf_tool()
    info = info_of(engine_daemon)
    assert info["tokenizer_class"] == "LlamaTokenizerFast"          # transformers' class of a llama GGUF
    assert (info["bos_token"], info["eos_token"], info["unk_token"]) == ("<s>", tool.EOS, "<unk>")
    assert info["pad_token"] is None                                # the tiny vocab has none
    assert info["model_max_length"] == NUM_CTX                      # the context it serves, as /tokenize's max_model_len
    assert info["chat_template"] == tool.CHAT_TEMPLATE              # the GGUF's own text
    assert info["add_bos_token"] is False and info["add_eos_token"] is False


def test_lm_evals_remote_tokenizer_reads_the_engines_tokens(engine_daemon):
    """eos_token_id and bos_token_id are the first id of /tokenize of the token's text: the
    control tokens' own ids, so lm-eval's prefix token and EOS stop are the model's."""
    tokenizer = remote_tokenizer(engine_daemon)
    assert tokenizer.eos_token_id == token_id(tiny_gguf_tool().EOS)
    assert tokenizer.bos_token_id == token_id("<s>") == tokenizer.prefix_token_id
    assert tokenizer.pad_token is None
    assert tokenizer.decode([tokenizer.eos_token_id]) == tokenizer.eos_token


def test_the_chat_template_renders_in_lm_evals_jinja_as_the_engine_renders_it(engine_daemon):
    """The same prompt, but the template's own last newline, which lm-eval's environment keeps
    (keep_trailing_newline=True; Hugging Face's drops it)."""
    tokenizer = remote_tokenizer(engine_daemon)
    rendered = tokenizer.apply_chat_template(CHAT, tools=None)
    served = httpx.post(engine_daemon.url + "/apply-template", json={"messages": CHAT}, timeout=60).json()["prompt"]
    assert tokenizer.tokenizer_info["chat_template"].endswith("\n")
    assert rendered == served + "\n" and served.endswith("<|im_start|>assistant\n")


def test_an_engine_with_a_configured_template_family_answers_no_gguf_template(tmp_path):
    """chat_template = "chatml" in the config renders with the family, not the GGUF's text:
    that text would be a template the engine does not use, so there is none (as vLLM leaves
    chat_template out), and lm-eval's apply_chat_template says so."""
    make_tiny_model(tmp_path / f"{ENGINE}.gguf")
    table = {"backends": [engine_backend(tmp_path, chat_template="chatml")], "cache": {"enabled": False}}
    with RunningDaemon(table) as daemon:
        info = info_of(daemon)
        assert "chat_template" not in info and info["eos_token"] == tiny_gguf_tool().EOS
        with pytest.raises(ValueError, match="No chat template"):
            remote_tokenizer(daemon).apply_chat_template(CHAT)


# -- llama-server: its /props ------------------------------------------------------------------

def test_llama_server_answers_what_its_props_say(llama_daemon, llama_server):
    props = httpx.get(llama_server.url + "/props", timeout=60).json()
    info = info_of(llama_daemon)
    assert (info["bos_token"], info["eos_token"]) == (props["bos_token"], props["eos_token"]) == ("<s>", "<|im_end|>")
    assert info["chat_template"] == props["chat_template"]
    assert info["model_max_length"] == props["default_generation_settings"]["n_ctx"]
    assert info["tokenizer_class"] == "PreTrainedTokenizerFast" and info["pad_token"] is None


def test_lm_evals_remote_tokenizer_reads_llama_servers_tokens(llama_daemon):
    tokenizer = remote_tokenizer(llama_daemon)
    assert tokenizer.eos_token_id == token_id(tiny_gguf_tool().EOS)
    assert tokenizer.prefix_token_id == token_id("<s>")


@pytest.mark.parametrize("daemon_name", ["engine_daemon", "llama_daemon"])
def test_lm_evals_auto_detection_picks_the_remote_tokenizer(request, daemon_name):
    daemon = request.getfixturevalue(daemon_name)
    assert check_remote_tokenizer_support(daemon.url + "/v1/completions") is True
    assert check_remote_tokenizer_support(daemon.url + "/v1/chat/completions") is True


# -- which model, and who cannot answer -----------------------------------------------------------

def test_the_model_is_chosen_by_query_or_body_and_required_among_several(tmp_path):
    make_tiny_model(tmp_path / "tiny-a.gguf")
    make_tiny_model(tmp_path / "tiny-b.gguf", seed=1)
    with RunningDaemon({"backends": [engine_backend(tmp_path)], "cache": {"enabled": False}}) as daemon:
        error = refused(daemon, "", 400)
        assert error["param"] == "model" and "tiny-a" in error["message"] and "tiny-b" in error["message"]
        assert info_of(daemon, "?model=tiny-b")["eos_token"] == tiny_gguf_tool().EOS
        by_body = httpx.request("GET", daemon.url + "/tokenizer_info", json={"model": "tiny-a"}, timeout=60)
        assert by_body.status_code == 200 and by_body.json()["tokenizer_class"] == "LlamaTokenizerFast"
        assert refused(daemon, "?model=nope", 404)["param"] == "model"
        assert "non-empty" in refused(daemon, "?model=", 400)["message"]
        assert refused(daemon, "", 400, json={"model": 7})["param"] == "model"
        assert "JSON" in refused(daemon, "", 400, content=b"{not json")["message"]
        assert refused(daemon, "", 405, method="POST", json={})["type"]


def test_a_vllm_backend_that_serves_it_is_passed_through():
    """A vLLM-like server (one model, `m`): its answer as it is, its extra fields kept."""
    vllm = ScriptedServer({"/tokenizer_info": (200, json.dumps(VLLM_INFO).encode())})
    try:
        table = {"backends": [{"name": "vllm", "kind": "openai", "url": vllm.url, "models": ["m"]}],
                 "cache": {"enabled": False}}
        with RunningDaemon(table) as daemon:
            assert info_of(daemon) == VLLM_INFO
            assert info_of(daemon, "?model=m") == VLLM_INFO
            assert vllm.hits.count("/tokenizer_info") == 2
    finally:
        vllm.close()


def test_a_vllm_without_the_route_and_an_ollama_model_are_a_clear_501():
    vllm = ScriptedServer({})           # vLLM started without --enable-tokenizer-info-endpoint: 404
    try:
        with OllamaEmulator() as emulator, RunningDaemon({"backends": [
                {"name": "vllm", "kind": "openai", "url": vllm.url, "models": ["m"]},
                ollama_backend(emulator)], "cache": {"enabled": False}}) as daemon:
            error = refused(daemon, "?model=m", 501)
            assert error["code"] == "tokenizer_unavailable" and error["param"] == "model"
            assert "--enable-tokenizer-info-endpoint" in error["message"] and "vllm" in error["message"]
            error = refused(daemon, "?model=llama3.2", 501)
            assert error["code"] == "tokenizer_unavailable" and "ollama" in error["message"]
            with pytest.raises(httpx.HTTPStatusError):      # lm-eval's RemoteTokenizer stops at once
                remote_tokenizer(daemon)
    finally:
        vllm.close()
