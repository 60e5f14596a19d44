"""llama-server's router mode through velollmd (llama-server's server-models.cpp), as llama.cpp's
web UI speaks it: GET /props without a model is the router's answer (`role` "router") when
several models answer /props; /models and /v1/models carry each model's `status.value`, `path`
and `in_cache`; POST /models/load and /models/unload load and unload an engine model or an
Ollama one (as Ollama's API does: an empty /api/generate, keep_alive 0; what /api/ps and /models
report changes), are 501s naming a backend that keeps its models itself, 400s naming `model` for
a bad body, 404 for an unknown model, 503 / 502 for an Ollama that is down, and need a key when
keys are set."""
import httpx
import ollama
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, ollama_backend
from tests.rig.llama import make_tiny_model
from tests.rig.net import free_port
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
def ollama_daemon():
    """velollmd before the Ollama emulator alone; no health check after the first, so what
    /models shows after a load or unload is what the route read back itself."""
    with OllamaEmulator() as emulator, RunningDaemon({"backends": [ollama_backend(emulator, health_interval_s=600)],
                                                      "cache": {"enabled": False}}) as daemon:
        daemon.emulator = emulator
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


@pytest.mark.parametrize("path", ["/models/load", "/models/unload"])
def test_a_server_that_keeps_its_models_is_a_501_naming_it(llama_daemon, path):
    error = post(llama_daemon.url, path, {"model": "tiny"}, status=501)["error"]
    assert error["code"] == "load_unsupported" and "backend llama " in error["message"]


# -- the same routes on Ollama ---------------------------------------------------------------------

OLLAMA_MODEL, OLLAMA_ID = "llama3.2", "llama3.2:latest"


def test_ollama_load_and_unload_are_ollamas_own_and_change_models_and_ps(ollama_daemon):
    url, emulator = ollama_daemon.url, ollama_daemon.emulator
    emulator.loaded.clear()
    assert status_of(url, OLLAMA_ID) == "unloaded" and OLLAMA_ID not in ps_names(url)
    assert post(url, "/models/load", {"model": OLLAMA_MODEL}) == {"success": True}
    assert emulator.last_request("/api/generate") == {"model": OLLAMA_MODEL, "stream": False}
    assert status_of(url, OLLAMA_ID) == "loaded" and OLLAMA_ID in ps_names(url)
    again = post(url, "/models/load", {"model": OLLAMA_MODEL}, status=400)["error"]
    assert again["param"] == "model" and again["code"] == "model_already_loaded"
    assert post(url, "/models/unload", {"model": OLLAMA_ID}) == {"success": True}
    assert emulator.last_request("/api/generate") == {"model": OLLAMA_ID, "keep_alive": 0, "stream": False}
    assert status_of(url, OLLAMA_ID) == "unloaded" and OLLAMA_ID not in ps_names(url)
    again = post(url, "/models/unload", {"model": OLLAMA_MODEL}, status=400)["error"]
    assert again["param"] == "model" and again["code"] == "model_not_loaded"


def test_what_another_ollama_client_loaded_or_unloaded_is_seen_at_once(ollama_daemon):
    """The 400s answer what Ollama holds now (its /api/ps read first), not the last health check."""
    url, emulator = ollama_daemon.url, ollama_daemon.emulator
    emulator.loaded.clear()
    status_of(url, OLLAMA_ID)
    client = ollama.Client(host=emulator.url)
    assert client.generate(model=OLLAMA_MODEL).done_reason == "load"      # Ollama's own load, not through us
    assert post(url, "/models/load", {"model": OLLAMA_MODEL}, status=400)["error"]["code"] == "model_already_loaded"
    assert status_of(url, OLLAMA_ID) == "loaded"
    assert client.generate(model=OLLAMA_MODEL, keep_alive=0).done_reason == "unload"
    assert post(url, "/models/unload", {"model": OLLAMA_MODEL}, status=400)["error"]["code"] == "model_not_loaded"
    assert status_of(url, OLLAMA_ID) == "unloaded"


def test_a_model_ollama_is_still_stopping_after_its_unload_is_unloaded(ollama_daemon):
    """Ollama answers keep_alive 0 before the model is gone: /api/ps lists it a while longer,
    expired (`ollama ps`: Stopping...). /models says unloaded; /api/ps is Ollama's own answer."""
    url, emulator = ollama_daemon.url, ollama_daemon.emulator
    emulator.loaded.clear()
    emulator.stopping_s = 600
    try:
        assert post(url, "/models/load", {"model": OLLAMA_MODEL}) == {"success": True}
        assert post(url, "/models/unload", {"model": OLLAMA_MODEL}) == {"success": True}
        assert status_of(url, OLLAMA_ID) == "unloaded" and OLLAMA_ID in ps_names(url)
        again = post(url, "/models/unload", {"model": OLLAMA_MODEL}, status=400)["error"]
        assert again["code"] == "model_not_loaded"
        assert post(url, "/models/load", {"model": OLLAMA_MODEL}) == {"success": True}
        assert status_of(url, OLLAMA_ID) == "loaded"
    finally:
        emulator.stopping_s = 0


def test_an_ollama_embedding_model_unloads_and_its_load_is_ollamas_400_naming_model(ollama_daemon):
    """Ollama unloads any model with keep_alive 0, but an empty /api/generate loads only a model
    that generates: an embedding model is loaded by embedding."""
    url, embedder = ollama_daemon.url, "nomic-embed-text:latest"
    ollama_daemon.emulator.loaded.clear()
    refused = post(url, "/models/load", {"model": embedder}, status=400)["error"]
    assert refused["param"] == "model" and "does not support generate" in refused["message"]
    assert status_of(url, embedder) == "unloaded"
    post(url, "/v1/embeddings", {"model": embedder, "input": "hi"})
    assert post(url, "/models/unload", {"model": embedder}) == {"success": True}
    assert status_of(url, embedder) == "unloaded" and embedder not in ps_names(url)


def test_a_model_ollama_no_longer_has_is_a_404_naming_it(ollama_daemon):
    """Removed from Ollama (`ollama rm`) since the catalogue was read: Ollama's 404, as a chat maps it."""
    emulator = ollama_daemon.emulator
    removed = emulator.models.pop(OLLAMA_ID)
    try:
        error = post(ollama_daemon.url, "/models/load", {"model": OLLAMA_MODEL}, status=404)["error"]
    finally:
        emulator.models[OLLAMA_ID] = removed
    assert error["code"] == "model_not_found" and error["param"] == "model" and OLLAMA_MODEL in error["message"]


def chat_status(url: str) -> int:
    body = {"model": OLLAMA_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60).status_code


@pytest.mark.parametrize("path", ["/models/load", "/models/unload"])
def test_an_ollama_known_to_be_down_is_a_503_as_a_chat_is(daemon_factory, path):
    dead = {"name": "ollama", "kind": "ollama", "url": f"http://127.0.0.1:{free_port()}", "models": ["llama3*"]}
    daemon = daemon_factory({"backends": [dead], "cache": {"enabled": False}})
    error = post(daemon.url, path, {"model": OLLAMA_MODEL}, status=503)["error"]
    assert error["code"] == "no_healthy_backend" and "ollama" in error["message"]
    assert chat_status(daemon.url) == 503


@pytest.mark.parametrize("path", ["/models/load", "/models/unload"])
def test_an_ollama_gone_since_its_health_check_is_a_502_as_a_chat_is(daemon_factory, path):
    with OllamaEmulator() as emulator:
        daemon = daemon_factory({"backends": [ollama_backend(emulator, health_interval_s=600)],
                                 "cache": {"enabled": False}})
        address = f"127.0.0.1:{emulator.port}"
        emulator.kill()
        error = post(daemon.url, path, {"model": OLLAMA_MODEL}, status=502)["error"]
        assert error["message"].startswith(f"cannot connect to backend {address}")
        assert chat_status(daemon.url) == 502


def test_loading_needs_a_key_when_keys_are_set(daemon_factory, tmp_path):
    make_tiny_model(tmp_path / f"{ENGINE}.gguf")
    daemon = daemon_factory({"server": {"api_keys": ["sk-router"]}, "cache": {"enabled": False},
                             "backends": [engine_backend(tmp_path, models=["eng-*"])]})
    refused = post(daemon.url, "/models/load", {"model": ENGINE}, status=401)["error"]
    assert refused["code"] == "invalid_api_key"
    assert post(daemon.url, "/models/load", {"model": ENGINE}, authorization="Bearer sk-router") == {"success": True}
    listed = httpx.get(daemon.url + "/models", headers={"authorization": "Bearer sk-router"}, timeout=60).json()
    assert listed["data"][0]["status"] == {"value": "loaded"}


@pytest.mark.parametrize("expires_at, stopping", [
    ("2020-01-01T00:00:00Z", True),                          # past: Ollama is unloading it
    ("2318-08-21T12:00:00.123456789+02:00", False),          # keep_alive -1: now + Go's max duration
    ("0001-01-01T00:00:00Z", False),                         # Go's zero time: no expiry set
    ("not a time", False), (None, False)])
def test_only_an_expiry_in_the_past_reads_as_stopping(expires_at, stopping):
    from velollmd.backends.ollama import _stopping
    assert _stopping({"expires_at": expires_at}) is stopping
