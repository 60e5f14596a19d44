"""llama-server's GET /props through velollmd, as llama.cpp's web UI (tools/server/webui: its
server store reads default_generation_settings.n_ctx and .params, total_slots, model_path,
modalities, build_info) and SillyTavern's llama.cpp type (its /props proxy hashes chat_template,
which must be a string) read it: passed through from the real llama-server, built in the same
shape by the engine on the tiny GGUF; an Ollama model, POST /props and GET /slots are 501s."""
import httpx
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend, ollama_backend
from tests.rig.llama import make_tiny_model, tiny_gguf_tool
from tests.rig.ollama_emulator import OllamaEmulator
from tests.rig.scripted_openai import ScriptedServer
from velollmd import __version__

ENGINE = "eng-tiny"
MAX_RUNNING = 3
# the fields llama-server clients read, by path: present, of llama-server's own types
CLIENT_FIELDS = [("default_generation_settings", "n_ctx"), ("default_generation_settings", "params"),
                 ("default_generation_settings", "params", "temperature"),
                 ("default_generation_settings", "params", "top_k"), ("default_generation_settings", "params", "top_p"),
                 ("default_generation_settings", "params", "min_p"),
                 ("default_generation_settings", "params", "max_tokens"),
                 ("default_generation_settings", "params", "n_predict"),
                 ("default_generation_settings", "params", "seed"), ("total_slots",), ("model_alias",),
                 ("model_path",), ("modalities", "vision"), ("modalities", "audio"), ("chat_template",),
                 ("bos_token",), ("eos_token",), ("build_info",), ("endpoint_slots",)]
# what a request that sets nothing samples with on the engine, in llama-server's names
ENGINE_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
                   "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": -1, "n_predict": -1,
                   "seed": 0xFFFFFFFF}


@pytest.fixture(scope="module")
def llama_daemon(llama_server):
    """velollmd before the real llama-server ("tiny") and the Ollama emulator (llama3.2...)."""
    with OllamaEmulator() as emulator, RunningDaemon({"backends": [
            llama_backend(llama_server), ollama_backend(emulator)], "aliases": {"gpt-4o": "tiny"},
            "cache": {"enabled": False}}) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def engine_daemon(tmp_path_factory):
    """The engine serving the tiny GGUF as "eng-tiny", and a second model."""
    folder = tmp_path_factory.mktemp("props-engine")
    make_tiny_model(folder / f"{ENGINE}.gguf")
    make_tiny_model(folder / "eng-other.gguf", seed=1)
    with RunningDaemon({"backends": [engine_backend(folder, models=["eng-*"], max_running=MAX_RUNNING)],
                        "cache": {"enabled": False}}) as daemon:
        daemon.folder = folder
        yield daemon


def get(url: str, path: str, status: int = 200) -> dict:
    answer = httpx.get(url + path, timeout=60)
    assert answer.status_code == status, answer.text
    return answer.json()


def field(props: dict, path: tuple):
    for name in path:
        props = props[name]
    return props


def max_model_len(url: str, model: str) -> int:
    answer = httpx.post(url + "/tokenize", json={"model": model, "prompt": "hi"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["max_model_len"]


# -- llama-server: its own /props ----------------------------------------------------------------

def test_llama_servers_props_pass_through_named_as_served(llama_daemon, llama_server):
    own = get(llama_server.url, "/props")
    served = get(llama_daemon.url, "/props")
    assert get(llama_daemon.url, "/props?model=tiny") == get(llama_daemon.url, "/props?model=gpt-4o") == served
    assert served["model_alias"] == "tiny"                  # the served name, an alias asked for or not
    assert served["endpoint_slots"] is False and served["cors_proxy_enabled"] is False   # not served here
    changed = {"model_alias", "endpoint_slots", "endpoint_props", "cors_proxy_enabled"}
    assert {k: v for k, v in served.items() if k not in changed} == {k: v for k, v in own.items() if k not in changed}


def test_llama_servers_context_and_slots_are_what_velollmd_serves(llama_daemon, llama_server):
    props = get(llama_daemon.url, "/props")
    assert props["default_generation_settings"]["n_ctx"] == max_model_len(llama_daemon.url, "tiny") == 1024
    assert props["total_slots"] == llama_server.parallel
    assert props["modalities"]["vision"] is False and isinstance(props["chat_template"], str)


def test_a_model_on_ollama_has_no_props(llama_daemon):
    error = get(llama_daemon.url, "/props?model=llama3.2", status=501)["error"]
    assert error["code"] == "props_unavailable" and error["param"] == "model"
    assert "ollama" in error["message"] and "/props" in error["message"]


def test_an_openai_compatible_model_has_none_and_no_model_here_says_so():
    """Not asked of the server (vLLM has no /props); with no model that has /props, a request
    without one is the same 501."""
    vllm = ScriptedServer({})
    try:
        table = {"backends": [{"name": "vllm", "kind": "openai", "url": vllm.url, "models": ["m"]}],
                 "cache": {"enabled": False}}
        with RunningDaemon(table) as daemon:
            named = get(daemon.url, "/props?model=m", status=501)["error"]
            assert named["code"] == "props_unavailable" and "vllm (openai)" in named["message"]
            assert get(daemon.url, "/props", status=501)["error"]["code"] == "props_unavailable"
        assert "/props" not in vllm.hits
    finally:
        vllm.close()


@pytest.mark.parametrize("model,status", [("nope", 404), ("", 400)])
def test_a_bad_model_is_refused_as_tokenize_refuses_it(llama_daemon, model, status):
    error = get(llama_daemon.url, f"/props?model={model}", status=status)["error"]
    tokenize = httpx.post(llama_daemon.url + "/tokenize", json={"model": model, "content": "hi"}, timeout=60)
    assert tokenize.status_code == status and error["param"] == tokenize.json()["error"]["param"] == "model"


# -- the engine: built in llama-server's shape ---------------------------------------------------

def test_the_engine_answers_what_the_web_ui_and_sillytavern_read(engine_daemon):
    tool = tiny_gguf_tool()
    props = get(engine_daemon.url, f"/props?model={ENGINE}")
    settings = props["default_generation_settings"]
    assert settings["n_ctx"] == max_model_len(engine_daemon.url, ENGINE) == 512
    assert props["total_slots"] == MAX_RUNNING
    assert props["model_alias"] == ENGINE and props["model_path"] == str(engine_daemon.folder / f"{ENGINE}.gguf")
    assert props["modalities"] == {"vision": False, "video": False, "audio": False}
    assert props["chat_template"] == tool.CHAT_TEMPLATE                   # the GGUF's own text
    assert (props["bos_token"], props["eos_token"]) == ("<s>", tool.EOS)
    assert props["build_info"] == f"velollmd {__version__}"
    assert {name: settings["params"][name] for name in ENGINE_DEFAULTS} == ENGINE_DEFAULTS


def test_the_engines_fields_have_llama_servers_types(engine_daemon, llama_daemon):
    engine, llama = get(engine_daemon.url, f"/props?model={ENGINE}"), get(llama_daemon.url, "/props")
    for path in CLIENT_FIELDS:
        assert type(field(engine, path)) is type(field(llama, path)), path
    assert set(engine["default_generation_settings"]) <= set(llama["default_generation_settings"])
    assert set(engine["default_generation_settings"]["params"]) <= set(llama["default_generation_settings"]["params"])


def test_the_engines_default_params_are_what_it_samples_with(engine_daemon):
    """A seeded completion that sets nothing equals one that sends the /props params: they are
    the defaults, not a description of some other sampler."""
    params = get(engine_daemon.url, f"/props?model={ENGINE}")["default_generation_settings"]["params"]
    sent = {name: params[name] for name in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty",
                                            "presence_penalty", "frequency_penalty")}
    body = {"model": ENGINE, "prompt": "the sun is", "n_predict": 12, "seed": 7}
    texts = [httpx.post(engine_daemon.url + "/completion", json=b, timeout=120).json()["content"]
             for b in (body, {**body, **sent}, {**body, **sent, "temperature": 0})]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]                 # the seed samples: greedy is another text


def test_several_engine_models_make_props_the_routers_and_tokenize_need_one_named(engine_daemon):
    assert get(engine_daemon.url, "/props")["role"] == "router"          # tests/api/test_router_models.py
    tokenize = httpx.post(engine_daemon.url + "/tokenize", json={"content": "hi"}, timeout=60)
    error = tokenize.json()["error"]
    assert tokenize.status_code == 400 and error["param"] == "model" and ENGINE in error["message"]
    get(engine_daemon.url, "/props?model=nope", status=404)


# -- refused: changing props, listing slots -------------------------------------------------------

@pytest.mark.parametrize("daemon_name", ["engine_daemon", "llama_daemon"])
def test_post_props_and_get_slots_are_501s_saying_why(request, daemon_name):
    url = request.getfixturevalue(daemon_name).url
    change = httpx.post(url + "/props", json={"n_ctx": 8}, timeout=60)
    assert change.status_code == 501 and change.json()["error"]["code"] == "props_read_only"
    slots = get(url, "/slots", status=501)["error"]
    assert slots["code"] == "slots_not_served" and "prompt" in slots["message"]
