"""llama-server's router mode through velollmd (llama-server's server-models.cpp), as llama.cpp's
web UI speaks it: GET /props without a model is the router's answer (`role` "router") when
several models answer /props; /models and /v1/models carry each model's `status.value`, `path`
and `in_cache`; POST /models/load and /models/unload load and unload an engine model (what
/api/ps and /models report changes), are 501s naming a backend that keeps its models itself,
400s naming `model` for a bad body, 404 for an unknown model, and need a key when keys are set."""
import httpx
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend, ollama_backend
from tests.rig.llama import make_tiny_model
from tests.rig.ollama_emulator import OllamaEmulator

ENGINE, OTHER = "eng-tiny", "eng-other"
# llama-server's router /props keys (server-models.cpp, get_router_props)
ROUTER_PROPS_KEYS = {"role", "max_instances", "models_autoload", "model_alias", "model_path",
                     "default_generation_settings", "ui_settings", "build_info", "cors_proxy_enabled"}
STATUS_VALUES = {"loaded", "unloaded", "loading"}
BAD_BODIES = [{}, {"model": ""}, {"model": 5}, {"model": [ENGINE]}, {"model": None}]


@pytest.fixture(scope="module")
def engine_daemon(tmp_path_factory):
    """The engine serving two tiny GGUFs, both may stay loaded at once."""
    folder = tmp_path_factory.mktemp("router-engine")
    make_tiny_model(folder / f"{ENGINE}.gguf")
    make_tiny_model(folder / f"{OTHER}.gguf", seed=1)
    with RunningDaemon({"backends": [engine_backend(folder, models=["eng-*"], max_loaded_models=2)],
                        "cache": {"enabled": False}}) as daemon:
        daemon.folder = folder
        yield daemon


@pytest.fixture(scope="module")
def llama_daemon(llama_server):
    """velollmd before the real llama-server ("tiny") and the Ollama emulator (llama3.2...)."""
    with OllamaEmulator() as emulator, RunningDaemon({"backends": [
            llama_backend(llama_server), ollama_backend(emulator)], "cache": {"enabled": False}}) as daemon:
        yield daemon


def get(url: str, path: str, status: int = 200) -> dict:
    answer = httpx.get(url + path, timeout=60)
    assert answer.status_code == status, answer.text
    return answer.json()


def post(url: str, path: str, body: dict, status: int = 200, **headers) -> dict:
    answer = httpx.post(url + path, json=body, headers=headers, timeout=120)
    assert answer.status_code == status, answer.text
    return answer.json()


def entries(url: str, path: str = "/models") -> dict[str, dict]:
    body = get(url, path)
    assert body["object"] == "list"
    return {entry["id"]: entry for entry in body["data"]}


def status_of(url: str, model: str) -> str:
    return entries(url)[model]["status"]["value"]


def ps_names(url: str) -> set[str]:
    return {entry["name"] for entry in get(url, "/api/ps")["models"]}


# -- GET /props ------------------------------------------------------------------------------------

def test_props_without_a_model_is_the_routers_answer(engine_daemon):
    props = get(engine_daemon.url, "/props")
    assert set(props) == ROUTER_PROPS_KEYS
    assert props["role"] == "router" and props["models_autoload"] is True
    assert props["default_generation_settings"] == {"params": {}, "n_ctx": 0}
    assert props["build_info"].startswith("velollmd ") and props["cors_proxy_enabled"] is False
    model = get(engine_daemon.url, f"/props?model={ENGINE}")
    assert "role" not in model and model["model_alias"] == ENGINE and model["default_generation_settings"]["n_ctx"] > 0


def test_one_model_with_props_keeps_its_own_answer(llama_daemon):
    props = get(llama_daemon.url, "/props")                 # Ollama's models serve no /props: tiny is the one
    assert props["model_alias"] == "tiny" and props.get("role") != "router"


# -- GET /models, /v1/models ---------------------------------------------------------------------

def test_models_and_v1_models_carry_the_fields_the_web_ui_reads(engine_daemon):
    listed = entries(engine_daemon.url)
    assert listed == entries(engine_daemon.url, "/v1/models") and set(listed) == {ENGINE, OTHER}
    for name, entry in listed.items():
        assert entry["object"] == "model" and entry["owned_by"] == "engine" and entry["in_cache"] is False
        assert entry["status"]["value"] in STATUS_VALUES
        assert entry["path"] == str(engine_daemon.folder / f"{name}.gguf")
    one = get(engine_daemon.url, f"/v1/models/{OTHER}")
    assert one["id"] == OTHER and one["status"] == listed[OTHER]["status"]
    client = openai.OpenAI(base_url=engine_daemon.url + "/v1", api_key="none")
    assert {m.id for m in client.models.list()} == {ENGINE, OTHER}      # still OpenAI's list for its SDK


def test_llama_server_models_are_loaded_and_ollamas_as_its_ps_says(llama_daemon):
    listed = entries(llama_daemon.url)
    assert listed["tiny"]["status"] == {"value": "loaded"} and listed["tiny"]["path"] == ""
    assert get(llama_daemon.url, "/api/ps")["models"][0]["name"].startswith("tiny")   # Ollama's /api/ps: none
    assert listed["llama3.2:latest"]["status"] == {"value": "unloaded"}


# -- POST /models/load, /models/unload -------------------------------------------------------------

def test_load_and_unload_change_what_models_and_ps_report(engine_daemon):
    url = engine_daemon.url
    if status_of(url, OTHER) == "loaded":                     # an earlier test's request loaded it
        assert post(url, "/models/unload", {"model": OTHER}) == {"success": True}
    assert status_of(url, OTHER) == "unloaded" and OTHER not in ps_names(url)
    assert post(url, "/models/load", {"model": OTHER}) == {"success": True}
    assert status_of(url, OTHER) == "loaded" and OTHER in ps_names(url)
    again = post(url, "/models/load", {"model": OTHER}, status=400)["error"]
    assert again["param"] == "model" and again["code"] == "model_already_loaded"
    assert post(url, "/models/unload", {"model": OTHER}) == {"success": True}
    assert status_of(url, OTHER) == "unloaded" and OTHER not in ps_names(url)
    again = post(url, "/models/unload", {"model": OTHER}, status=400)["error"]
    assert again["param"] == "model" and again["code"] == "model_not_loaded"


def test_a_loaded_model_still_generates_after_a_reload(engine_daemon):
    url = engine_daemon.url
    if status_of(url, ENGINE) != "loaded":
        post(url, "/models/load", {"model": ENGINE})
    post(url, "/models/unload", {"model": ENGINE})
    answer = post(url, "/v1/completions", {"model": ENGINE, "prompt": "hi", "max_tokens": 3})
    assert answer["usage"]["completion_tokens"] == 3 and status_of(url, ENGINE) == "loaded"


@pytest.mark.parametrize("path", ["/models/load", "/models/unload"])
@pytest.mark.parametrize("body", BAD_BODIES)
def test_a_bad_body_is_a_400_naming_model(engine_daemon, path, body):
    error = post(engine_daemon.url, path, body, status=400)["error"]
    assert error["param"] == "model" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/models/load", "/models/unload"])
def test_an_unknown_model_is_a_404(engine_daemon, path):
    error = post(engine_daemon.url, path, {"model": "eng-nope"}, status=404)["error"]
    assert error["code"] == "model_not_found" and "eng-nope" in error["message"]


@pytest.mark.parametrize("model,backend", [("tiny", "llama"), ("llama3.2", "ollama")])
@pytest.mark.parametrize("path", ["/models/load", "/models/unload"])
def test_a_server_that_keeps_its_models_is_a_501_naming_it(llama_daemon, path, model, backend):
    error = post(llama_daemon.url, path, {"model": model}, status=501)["error"]
    assert error["code"] == "load_unsupported" and f"backend {backend} " in error["message"]


def test_loading_needs_a_key_when_keys_are_set(daemon_factory, tmp_path):
    make_tiny_model(tmp_path / f"{ENGINE}.gguf")
    daemon = daemon_factory({"server": {"api_keys": ["sk-router"]}, "cache": {"enabled": False},
                             "backends": [engine_backend(tmp_path, models=["eng-*"])]})
    refused = post(daemon.url, "/models/load", {"model": ENGINE}, status=401)["error"]
    assert refused["code"] == "invalid_api_key"
    assert post(daemon.url, "/models/load", {"model": ENGINE}, authorization="Bearer sk-router") == {"success": True}
    listed = httpx.get(daemon.url + "/models", headers={"authorization": "Bearer sk-router"}, timeout=60).json()
    assert listed["data"][0]["status"] == {"value": "loaded"}
