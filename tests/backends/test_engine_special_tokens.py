"""A sampled control token's text: the engine against the real llama-server on the tiny model.

llama-server writes a generated token with token_to_piece(special = --special, or the token is
one of the chat format's preserved tokens), so by default a control token it samples adds no
text, though it counts as a completion token; vLLM's skip_special_tokens (default true) hides
them too, and `skip_special_tokens: false` writes them. The tiny model never samples a control
token of its own (its weights hold them at -1000), so a logit_bias of +2000 forces one at every
step. Each side is asked directly: llama-server on its own /v1, the engine through the daemon.
"""
from __future__ import annotations

import gguf
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend
from tests.engine.test_tokenizer import gguf_metadata
from tests.rig.llama import LlamaServer, make_tiny_model, token_id
from velollmd.engine.prompt import preserved_ids
from velollmd.engine.sampling import SamplingParams
from velollmd.engine.templates import get_template
from velollmd.engine.tokenizer import Tokenizer

ENGINE = "special-engine"
LLAMA = "tiny-special"
FORCE = 2000.0
MAX_TOKENS = 3
MESSAGES = [{"role": "user", "content": "the world of water"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("special-models") / f"{ENGINE}.gguf")


@pytest.fixture(scope="module")
def server(llama_binary, tiny_model):
    with LlamaServer(tiny_model, binary=llama_binary, parallel=1, ctx_size=512, alias=LLAMA) as running:
        yield running


@pytest.fixture(scope="module")
def daemon(server, tiny_model):
    table = {"backends": [llama_backend(server, models=[LLAMA]), engine_backend(tiny_model.parent)],
             "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


@pytest.fixture(scope="module")
def clients(server, daemon):
    """{"llama-server": its own /v1, "engine": the daemon's}, with the model each one serves."""
    return {"llama-server": (openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0), LLAMA),
            "engine": (openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0), ENGINE)}


def forced(token: str, **extra) -> dict:
    return {"max_tokens": MAX_TOKENS, "temperature": 0, "logit_bias": {str(token_id(token)): FORCE}, **extra}


def chat(clients, side: str, stream: bool, **body) -> tuple[str, str, int]:
    """(text, finish_reason, completion_tokens) of a chat answer, streamed or not."""
    client, model = clients[side]
    if not stream:
        answer = client.chat.completions.create(model=model, messages=MESSAGES, **body)
        return answer.choices[0].message.content, answer.choices[0].finish_reason, answer.usage.completion_tokens
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}, **body))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish[-1], chunks[-1].usage.completion_tokens


def completion(clients, side: str, stream: bool, **body) -> tuple[str, str, int]:
    client, model = clients[side]
    if not stream:
        answer = client.completions.create(model=model, prompt="the world of water", **body)
        return answer.choices[0].text, answer.choices[0].finish_reason, answer.usage.completion_tokens
    chunks = list(client.completions.create(model=model, prompt="the world of water", stream=True,
                                            stream_options={"include_usage": True}, **body))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish[-1], chunks[-1].usage.completion_tokens


@pytest.mark.parametrize("ask", [chat, completion], ids=["chat", "completion"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("token", ["<|im_start|>", "<s>"])
def test_a_sampled_control_token_adds_no_text_as_on_llama_server(clients, ask, stream, token):
    ours = ask(clients, "engine", stream, **forced(token))
    theirs = ask(clients, "llama-server", stream, **forced(token))
    assert ours == theirs == ("", "length", MAX_TOKENS)      # hidden, and still counted


def test_the_logprobs_of_a_hidden_token_name_no_text_as_llama_servers(clients):
    def sampled(side: str) -> list[tuple[str, list[int]]]:
        client, model = clients[side]
        answer = client.chat.completions.create(model=model, messages=MESSAGES, logprobs=True, top_logprobs=2,
                                                **forced("<|im_start|>"))
        return [(entry.token, entry.bytes) for entry in answer.choices[0].logprobs.content]

    assert sampled("engine") == sampled("llama-server") == [("", [])] * MAX_TOKENS


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_skip_special_tokens_false_writes_them(clients, stream):
    text, finish, num_tokens = chat(clients, "engine", stream, **forced("<|im_start|>"),
                                    extra_body={"skip_special_tokens": False})
    assert (text, finish, num_tokens) == ("<|im_start|>" * MAX_TOKENS, "length", MAX_TOKENS)
    client, _ = clients["engine"]
    answer = client.chat.completions.create(model=ENGINE, messages=MESSAGES, logprobs=True, **forced("<s>"),
                                            extra_body={"skip_special_tokens": False})
    assert [entry.token for entry in answer.choices[0].logprobs.content] == ["<s>"] * MAX_TOKENS


def test_a_stop_string_is_matched_on_the_text_as_written(clients):
    """A stop string spelling the hidden token never matches: the text holds none of it."""
    stop = {"stop": ["<|im_start|>"]}
    assert chat(clients, "engine", False, **forced("<|im_start|>"), **stop) == ("", "length", MAX_TOKENS)
    assert chat(clients, "llama-server", False, **forced("<|im_start|>"), **stop) == ("", "length", MAX_TOKENS)
    text, finish, _ = chat(clients, "engine", False, **forced("<|im_start|>"), **stop,
                           extra_body={"skip_special_tokens": False})
    assert (text, finish) == ("", "stop")


def test_llama_server_cannot_write_them_per_request_a_400_naming_the_field(clients):
    client, _ = clients["engine"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=1,
                                       extra_body={"skip_special_tokens": False})
    assert raised.value.body["param"] == "skip_special_tokens"


# ---- the preserved markers: control tokens the answer's parsing reads ----

def tokenizer_with_control(tiny_model, *texts: str) -> Tokenizer:
    """The tiny vocab with `texts` typed CONTROL, as real models type e.g. Mistral's [TOOL_CALLS]."""
    metadata = gguf_metadata(tiny_model)
    types = list(metadata["tokenizer.ggml.token_type"])
    for text in texts:
        types[token_id(text)] = int(gguf.TokenType.CONTROL)
    return Tokenizer.from_gguf({**metadata, "tokenizer.ggml.token_type": types})


def test_a_templates_tool_call_markers_are_preserved_when_tools_are_offered(tiny_model):
    tokenizer = tokenizer_with_control(tiny_model, "<tool_call>", "</tool_call>")
    opening, closing = token_id("<tool_call>"), token_id("</tool_call>")
    assert tokenizer.is_control(opening)
    assert tokenizer.token_bytes(opening, special=False) == b""
    chatml = get_template("chatml")
    assert preserved_ids(chatml, tokenizer, {"tools": TOOLS}) == {opening, closing}
    assert preserved_ids(chatml, tokenizer, {"tools": TOOLS, "tool_choice": "none"}) == frozenset()
    assert preserved_ids(chatml, tokenizer, {}) == frozenset()
    params = SamplingParams(preserved_ids=preserved_ids(chatml, tokenizer, {"tools": TOOLS}))
    assert params.writes_special(opening) and not params.writes_special(token_id("<|im_start|>"))


def test_a_thinking_templates_tags_are_always_preserved(tiny_model):
    tokenizer = tokenizer_with_control(tiny_model, "<tool_call>")      # the tiny vocab has no <think>
    qwen3 = get_template("qwen3")
    assert qwen3.preserved_tokens(with_tools=False) == ("<think>", "</think>")
    assert qwen3.preserved_tokens(with_tools=True) == ("<think>", "</think>", "<tool_call>", "</tool_call>")
    assert preserved_ids(qwen3, tokenizer, {"tools": TOOLS}) == {token_id("<tool_call>"), token_id("</tool_call>")}
