"""llama-server's and vLLM's tokenizer routes (/tokenize, /detokenize, /apply-template) through
velollmd: in front of the real llama-server (its own routes answer; compared with asking it
directly) and on the in-process engine (its own tokenizer and chat template, on the same tiny
GGUF, so its ids must equal llama-server's too); an Ollama model cannot tokenize."""
import httpx
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend
from tests.rig.llama import make_tiny_model

ENGINE_MODEL = "eng-tiny"
MULTILINGUAL = "Hello, wörld! Привет мир. 你好，世界。 こんにちは 🌍 <|im_start|> ça va?"
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Привет, 世界!"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def engine_daemon(tmp_path_factory):
    """velollmd serving the tiny GGUF on its engine as "eng-tiny", and a second model."""
    folder = tmp_path_factory.mktemp("tokenize-engine")
    make_tiny_model(folder / f"{ENGINE_MODEL}.gguf")
    make_tiny_model(folder / "eng-other.gguf", seed=1)
    with RunningDaemon({"backends": [engine_backend(folder, models=["eng-*"])],
                        "cache": {"enabled": False}}) as daemon:
        yield daemon


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60)


def ok(url: str, path: str, body: dict) -> dict:
    answer = post(url, path, body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def refused(url: str, path: str, body: dict, status: int = 400) -> dict:
    answer = post(url, path, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"] and error["type"]
    return error


@pytest.mark.parametrize("body", [
    {"content": MULTILINGUAL},
    {"content": MULTILINGUAL, "add_special": True, "parse_special": False},
    {"content": MULTILINGUAL, "with_pieces": True},
    {"content": ["Hi", 5, " there"], "add_special": True},
    {},
])
def test_llama_tokenize_equals_llama_servers_own(llama_daemon, llama_server, engine_daemon, body):
    own = ok(llama_server.url, "/tokenize", body)
    assert ok(llama_daemon.url, "/tokenize", body) == own
    assert ok(engine_daemon.url, "/tokenize", {**body, "model": ENGINE_MODEL}) == own
    if body.get("with_pieces"):                      # the tiny vocab splits characters into bytes
        pieces = [t["piece"] for t in own["tokens"]]
        assert any(isinstance(p, list) for p in pieces) and any(isinstance(p, str) for p in pieces)


def test_detokenize_round_trips(llama_daemon, llama_server, engine_daemon):
    tokens = ok(llama_daemon.url, "/tokenize", {"content": MULTILINGUAL})["tokens"]
    both = {"content": MULTILINGUAL, "prompt": MULTILINGUAL}     # llama-server's name and vLLM's
    assert ok(llama_daemon.url, "/detokenize", {"tokens": tokens}) == both
    assert ok(llama_daemon.url, "/detokenize", {"model": "tiny", "tokens": tokens}) == both
    engine_tokens = ok(engine_daemon.url, "/tokenize", {"model": ENGINE_MODEL, "content": MULTILINGUAL})["tokens"]
    assert ok(engine_daemon.url, "/detokenize", {"model": ENGINE_MODEL, "tokens": engine_tokens}) == both
    specials = {"tokens": [1, 2, 50]}                # special tokens written out, as llama-server does
    assert ok(llama_daemon.url, "/detokenize", specials)["content"] == ok(llama_server.url, "/detokenize",
                                                                          specials)["content"]
    assert ok(engine_daemon.url, "/detokenize", {"model": ENGINE_MODEL, **specials})["prompt"] == ok(
        llama_server.url, "/detokenize", specials)["content"]


def test_vllm_tokenize_prompt_and_messages(llama_daemon, llama_server):
    answer = ok(llama_daemon.url, "/tokenize", {"model": "tiny", "prompt": MULTILINGUAL})
    assert answer["count"] == len(answer["tokens"]) > 0 and "token_strs" not in answer
    assert answer["tokens"] == ok(llama_server.url, "/tokenize", {"content": MULTILINGUAL, "add_special": True})[
        "tokens"]
    assert answer["max_model_len"] == llama_daemon.app.registry.pick("tiny").context_size("tiny") > 0
    strs = ok(llama_daemon.url, "/tokenize", {"model": "tiny", "prompt": "héllo", "return_token_strs": True})
    assert strs["count"] == len(strs["tokens"]) == len(strs["token_strs"])
    assert all(isinstance(s, str) for s in strs["token_strs"])
    chat = ok(llama_daemon.url, "/tokenize", {"model": "tiny", "messages": CHAT, "tools": [WEATHER]})
    assert chat["count"] == len(chat["tokens"])
    assert chat["count"] > ok(llama_daemon.url, "/tokenize", {"model": "tiny", "messages": CHAT})["count"]
    served = openai.OpenAI(base_url=llama_daemon.url + "/v1", api_key="none", max_retries=0).chat.completions.create(
        model="tiny", messages=CHAT, tools=[WEATHER], max_tokens=1)
    assert chat["count"] == served.usage.prompt_tokens               # the count a prompt budget needs


@pytest.mark.parametrize("extra", [{}, {"tools": [WEATHER]}, {"add_generation_prompt": False}])
def test_apply_template_equals_llama_servers_own(llama_daemon, llama_server, extra):
    body = {"messages": CHAT, **extra}
    own = ok(llama_server.url, "/apply-template", body)
    assert ok(llama_daemon.url, "/apply-template", body) == own
    assert ok(llama_daemon.url, "/apply-template", {**body, "model": "tiny"}) == own
    assert "Привет" in own["prompt"]


def test_engine_apply_template_is_the_prompt_it_generates_from(engine_daemon, llama_server):
    client = openai.OpenAI(base_url=engine_daemon.url + "/v1", api_key="none", max_retries=0)
    for extra in ({}, {"tools": [WEATHER]}):
        prompt = ok(engine_daemon.url, "/apply-template", {"model": ENGINE_MODEL, "messages": CHAT, **extra})["prompt"]
        assert prompt == ok(llama_server.url, "/apply-template", {"messages": CHAT, **extra})["prompt"]
        ids = ok(engine_daemon.url, "/tokenize", {"model": ENGINE_MODEL, "content": prompt, "add_special": True})[
            "tokens"]
        backend = engine_daemon.app.registry.pick(ENGINE_MODEL)
        body = {"model": ENGINE_MODEL, "messages": CHAT, **extra}

        async def generated_from():
            return backend._prompt_ids(await backend.model(ENGINE_MODEL), body, chat=True)
        assert ids == engine_daemon.call(generated_from)
        served = client.chat.completions.create(model=ENGINE_MODEL, messages=CHAT, max_tokens=1, **extra)
        counted = ok(engine_daemon.url, "/tokenize", {"model": ENGINE_MODEL, "messages": CHAT, **extra})
        assert counted["count"] == served.usage.prompt_tokens == len(ids)
        assert counted["max_model_len"] == 512                      # the engine's num_ctx here
    open_turn = ok(engine_daemon.url, "/apply-template", {"model": ENGINE_MODEL, "messages": CHAT,
                                                          "add_generation_prompt": False})["prompt"]
    assert open_turn == ok(llama_server.url, "/apply-template", {"messages": CHAT, "add_generation_prompt": False})[
        "prompt"]


def test_model_is_required_where_several_can_tokenize(engine_daemon):
    error = refused(engine_daemon.url, "/tokenize", {"content": "hi"})
    assert error["param"] == "model" and ENGINE_MODEL in error["message"]
    other = ok(engine_daemon.url, "/tokenize", {"model": "eng-other", "content": MULTILINGUAL})
    assert other["tokens"]


def test_a_model_that_cannot_tokenize_is_named(llama_daemon):
    for path, body in (("/tokenize", {"content": "hi"}), ("/detokenize", {"tokens": [1]}),
                       ("/apply-template", {"messages": CHAT}), ("/tokenize", {"prompt": "hi"})):
        error = refused(llama_daemon.url, path, {**body, "model": "llama3.2"}, status=501)
        assert "llama3.2" in error["message"] and "ollama" in error["message"]
        assert error["code"] == "tokenizer_unavailable"
    assert refused(llama_daemon.url, "/tokenize", {"model": "no-such", "content": "x"}, 404)["param"] == "model"


@pytest.mark.parametrize("path, body, param", [
    ("/detokenize", {"tokens": [1024]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": ["a"]}, "tokens"),
    ("/detokenize", {"tokens": "1 2"}, "tokens"),
    ("/detokenize", {"tokens": [True]}, "tokens"),
    ("/tokenize", {"content": 5}, "content"),
    ("/tokenize", {"content": ["hi", 99999]}, "content"),
    ("/tokenize", {"content": ["hi", None]}, "content"),
    ("/tokenize", {"content": "hi", "with_pieces": "yes"}, "with_pieces"),
    ("/tokenize", {"content": "hi", "prompt": "hi"}, "prompt"),
    ("/tokenize", {"prompt": ["hi"]}, "prompt"),
    ("/tokenize", {"prompt": "hi", "return_token_strs": 1}, "return_token_strs"),
    ("/tokenize", {"messages": "hi"}, "messages"),
    ("/tokenize", {"content": "hi", "model": 7}, "model"),
    ("/apply-template", {}, "messages"),
    ("/apply-template", {"messages": [{"role": "user", "content": "hi"}], "tools": "x"}, "tools"),
    ("/apply-template", {"messages": CHAT, "add_generation_prompt": "no"}, "add_generation_prompt"),
])
def test_bad_bodies_are_400s(llama_daemon, engine_daemon, path, body, param):
    for url, model in ((llama_daemon.url, "tiny"), (engine_daemon.url, ENGINE_MODEL)):
        assert refused(url, path, {"model": model, **body})["param"] == param
    if "model" not in body:
        assert refused(llama_daemon.url, path, body)["param"] == param      # model optional there
    assert ok(llama_daemon.url, "/tokenize", {"content": "still serving"})["tokens"]


@pytest.mark.parametrize("kwargs, param", [
    ("x", "chat_template_kwargs"), (5, "chat_template_kwargs"), ([["a", "b"]], "chat_template_kwargs"),
    ({"enable_thinking": "no"}, "chat_template_kwargs.enable_thinking"),
])
def test_chat_template_kwargs_not_an_object_is_a_400_on_every_chat_route(llama_daemon, engine_daemon, kwargs, param):
    """vLLM's and llama-server's `chat_template_kwargs` is an object (enable_thinking a boolean):
    anything else a 400 naming it, on every route that renders a chat and on both backends
    (with reasoning_effort, llama-server's path once failed on it with a 500)."""
    for url, model in ((llama_daemon.url, "tiny"), (engine_daemon.url, ENGINE_MODEL)):
        body = {"model": model, "messages": CHAT, "reasoning_effort": "high", "chat_template_kwargs": kwargs}
        for path in ("/apply-template", "/tokenize", "/v1/chat/completions"):
            assert refused(url, path, body)["param"] == param, path
        assert ok(url, "/apply-template", {**body, "chat_template_kwargs": {"enable_thinking": False}})["prompt"]


def test_not_json_is_a_400(llama_daemon):
    answer = httpx.post(llama_daemon.url + "/tokenize", content=b"[1, 2]", timeout=30)
    assert answer.status_code == 400 and "JSON object" in answer.json()["error"]["message"]
