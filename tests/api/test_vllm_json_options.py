"""structured_outputs' options beside its JSON kind (`disable_any_whitespace`, `whitespace_pattern`,
`disable_additional_properties`, `disable_fallback`, `backend`) and their top-level spellings: how
vLLM's grammar backends shape the JSON. No backend here but vLLM has them: passed on to vLLM beside
the response_format the JSON becomes, a 400 naming the option on the engine, the real llama-server
and Ollama, never a JSON answer that ignored them; the values that ask for nothing pass everywhere."""
from __future__ import annotations

import json

import openai
import pytest

from tests.api.test_vllm_fields import SCHEMA, assert_refused
from tests.backends.test_vllm_versions import ScriptedVLLM
from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend, ollama_backend
from tests.rig.llama import make_tiny_model

ENGINE_MODEL = "tiny-engine"
# (the options asked, the field a refusal names)
ASKED = [({"structured_outputs": {"json": SCHEMA, "disable_any_whitespace": True}},
          "structured_outputs.disable_any_whitespace"),
         ({"structured_outputs": {"json": SCHEMA, "whitespace_pattern": "[ ]?"}}, "structured_outputs.whitespace_pattern"),
         ({"structured_outputs": {"json_object": True, "disable_additional_properties": True}},
          "structured_outputs.disable_additional_properties"),
         ({"structured_outputs": {"json": SCHEMA, "backend": "xgrammar"}}, "structured_outputs.backend"),
         ({"structured_outputs": {"json": SCHEMA, "disable_fallback": True}}, "structured_outputs.disable_fallback"),
         ({"guided_json": SCHEMA, "guided_whitespace_pattern": "[ ]?"}, "guided_whitespace_pattern"),
         ({"guided_json": SCHEMA, "guided_decoding_backend": "outlines"}, "guided_decoding_backend")]
NEUTRAL = {"structured_outputs": {"json": SCHEMA, "disable_any_whitespace": False, "disable_fallback": False,
                                  "disable_additional_properties": False, "backend": "auto",
                                  "whitespace_pattern": None}}


@pytest.fixture(scope="module")
def client(llama_server, ollama_emulator_module, tmp_path_factory):
    folder = tmp_path_factory.mktemp("json-options-models")
    make_tiny_model(folder / f"{ENGINE_MODEL}.gguf")
    backends = [llama_backend(llama_server, models=["tiny"]), ollama_backend(ollama_emulator_module),
                engine_backend(folder)]
    with RunningDaemon({"backends": backends, "cache": {"enabled": False}}) as daemon:
        yield openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def ollama_emulator_module():
    from tests.rig.ollama_emulator import OllamaEmulator
    with OllamaEmulator() as emulator:
        yield emulator


def ask(client, model: str, extra_body: dict):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "who?"}],
                                          max_tokens=120, temperature=1.0, seed=1, extra_body=extra_body)


@pytest.mark.parametrize("model", [ENGINE_MODEL, "tiny", "llama3.2"])
@pytest.mark.parametrize("extra, param", ASKED)
def test_options_no_backend_here_has_are_400s_naming_them(client, model, extra, param):
    assert_refused(lambda: ask(client, model, json.loads(json.dumps(extra))), param)


@pytest.mark.parametrize("model", [ENGINE_MODEL, "tiny"])
def test_options_that_ask_for_nothing_pass_and_the_json_is_constrained(client, model):
    value = json.loads(ask(client, model, json.loads(json.dumps(NEUTRAL))).choices[0].message.content)
    assert set(value) == {"name", "age"}


@pytest.mark.parametrize("options, param", [({"disable_any_whitespace": "yes"}, "structured_outputs.disable_any_whitespace"),
                                            ({"whitespace_pattern": 3}, "structured_outputs.whitespace_pattern"),
                                            ({"backend": False}, "structured_outputs.backend")])
def test_options_of_the_wrong_type_are_400s_naming_them(client, options, param):
    assert_refused(lambda: ask(client, ENGINE_MODEL, {"structured_outputs": {"json": SCHEMA, **options}}), param)


@pytest.fixture(scope="module")
def vllm():
    scripted = ScriptedVLLM("0.11.0")
    yield scripted
    scripted.close()


def test_a_vllm_gets_the_options_beside_its_response_format(vllm):
    options = {"disable_any_whitespace": True, "whitespace_pattern": "[ ]?", "disable_additional_properties": True,
               "backend": "xgrammar", "disable_fallback": True}
    body = vllm.sent(structured_outputs={"json": SCHEMA, **options})
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert body["structured_outputs"] == options
    assert "structured_outputs" not in vllm.sent(**json.loads(json.dumps(NEUTRAL)))      # nothing asked, nothing sent
