"""Turning a model's thinking off: Ollama's `think: false` and the OpenAI-side switch that vLLM
and llama-server read (`chat_template_kwargs: {"enable_thinking": false}`) reach whatever
serves the model: the engine renders Qwen3's empty think block, an Ollama backend gets
`think`, llama-server gets the switch. A real daemon, the engine on a GGUF with Qwen3's real
chat template, the Ollama emulator."""
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend, llama_backend, ollama_backend
from tests.engine.weights import write_random_gguf

QWEN3 = (Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
MODEL = "tiny-qwen3"
HI = [{"role": "user", "content": "hi"}]
OFF = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("thinking")
    write_random_gguf(folder / f"{MODEL}.gguf", "qwen3", vocab="bpe:qwen2", chat_template=QWEN3)
    table = {"backends": [engine_backend(folder, models=[MODEL], num_ctx=256)], "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


def prompt_tokens(daemon, **extra) -> int:
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1, **extra).usage.prompt_tokens


def test_the_engine_answers_without_thinking_when_asked(daemon):
    thinking = prompt_tokens(daemon)
    not_thinking = prompt_tokens(daemon, extra_body=OFF)
    assert not_thinking > thinking                    # "<think>\n\n</think>\n\n" opens the answer
    assert prompt_tokens(daemon, extra_body={"chat_template_kwargs": {"enable_thinking": True}}) == thinking
    native = ollama.Client(host=daemon.url)
    assert native.chat(model=MODEL, messages=HI, think=False, options={"num_predict": 1}).prompt_eval_count \
        == not_thinking
    assert native.generate(model=MODEL, prompt="hi", think=False, options={"num_predict": 1}).prompt_eval_count \
        == not_thinking
    assert native.chat(model=MODEL, messages=HI, options={"num_predict": 1}).prompt_eval_count == thinking


def test_reasoning_effort_none_turns_the_engines_thinking_off(daemon):
    """OpenAI's `reasoning_effort: "none"` (and the Responses API's reasoning.effort) is the
    thinking switch on the engine as on llama-server; it was read nowhere there."""
    thinking, not_thinking = prompt_tokens(daemon), prompt_tokens(daemon, extra_body=OFF)
    assert prompt_tokens(daemon, reasoning_effort="none") == not_thinking
    assert prompt_tokens(daemon, reasoning_effort="low") == thinking
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0)
    answer = client.responses.create(model=MODEL, input="hi", max_output_tokens=16, reasoning={"effort": "none"})
    assert answer.usage.input_tokens == not_thinking


def test_anthropic_thinking_disabled_renders_the_empty_think_block(daemon):
    claude = anthropic.Anthropic(base_url=daemon.url, api_key="unused", max_retries=0)
    thinking, not_thinking = prompt_tokens(daemon), prompt_tokens(daemon, extra_body=OFF)
    served = claude.messages.create(model=MODEL, max_tokens=1, messages=HI, thinking={"type": "disabled"}).usage
    assert served.input_tokens + served.cache_read_input_tokens == not_thinking
    counted = claude.messages.count_tokens(model=MODEL, messages=HI, thinking={"type": "disabled"})
    assert counted.input_tokens == not_thinking
    assert claude.messages.count_tokens(model=MODEL, messages=HI,
                                        thinking={"type": "enabled", "budget_tokens": 1024}).input_tokens == thinking


def test_an_ollama_backend_gets_think_from_the_openai_switch(daemon_factory, ollama_emulator):
    proxy = daemon_factory({"backends": [ollama_backend(ollama_emulator)]})
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model="llama3.2:latest", messages=HI, extra_body=OFF)
    assert ollama_emulator.last_request("/api/chat")["think"] is False
    client.chat.completions.create(model="llama3.2:latest", messages=HI)
    assert "think" not in ollama_emulator.last_request("/api/chat")


def test_an_ollama_clients_earlier_thinking_reaches_the_template(daemon):
    """An assistant turn sent back with its `thinking` (the ollama client's message.thinking, as
    an agent loop appends it) is rendered where the template keeps earlier thoughts (Qwen3: after
    the last user turn, in a tool loop); it was dropped."""
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    def history(**thinking):
        return [{"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [call], **thinking},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    native = ollama.Client(host=daemon.url)
    without = native.chat(model=MODEL, messages=history(), options={"num_predict": 1}).prompt_eval_count
    with_thoughts = native.chat(model=MODEL, messages=history(thinking="The user asks about Paris."),
                                options={"num_predict": 1}).prompt_eval_count
    assert with_thoughts > without


# -- reasoning_effort (chat) and reasoning.effort (Responses) ------------------------------

# A template that says how hard to think in as many words as gpt-oss's levels, and renders an
# empty think block when thinking is off (as Qwen3's): the prompt's length tells what it read.
EFFORT_TEMPLATE = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if reasoning_effort is defined and reasoning_effort == 'low' %} effort"
    "{%- elif reasoning_effort is defined and reasoning_effort == 'medium' %} effort effort"
    "{%- elif reasoning_effort is defined and reasoning_effort == 'high' %} effort effort effort{%- endif %}"
    "<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}")


@pytest.fixture
def llamacpp_effort(daemon_factory, llama_server_factory, tmp_path):
    template = tmp_path / "effort.jinja"
    template.write_text(EFFORT_TEMPLATE)
    server = llama_server_factory(parallel=1, extra_args=["--jinja", "--chat-template-file", str(template)])
    return daemon_factory({"backends": [llama_backend(server)], "cache": {"enabled": False}})


def chat_prompt_tokens(proxy, model: str, **extra) -> int:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(model=model, messages=HI, max_tokens=1, **extra).usage.prompt_tokens


def test_reasoning_effort_reaches_llama_servers_template_as_gpt_oss_levels(llamacpp_effort):
    """OpenAI's efforts become the level a gpt-oss template reads (chat_template_kwargs and
    the top-level field): "minimal" is "low", "xhigh" and "max" are "high"; "none" turns
    thinking off; a Responses request's reasoning.effort is chat's reasoning_effort, counted
    alike by /v1/responses/input_tokens."""
    count = {effort: chat_prompt_tokens(llamacpp_effort, "tiny", reasoning_effort=effort)
             for effort in ("none", "minimal", "low", "medium", "high", "xhigh", "max")}
    plain = chat_prompt_tokens(llamacpp_effort, "tiny")
    assert plain < count["low"] < count["medium"] < count["high"]
    assert count["minimal"] == count["low"] and count["xhigh"] == count["max"] == count["high"]
    assert count["none"] > plain                      # the empty think block
    native = ollama.Client(host=llamacpp_effort.url)
    for think, effort in (("medium", "medium"), ("high", "high"), (False, "none")):
        assert native.chat(model="tiny", messages=HI, think=think, options={"num_predict": 1}).prompt_eval_count \
            == count[effort]                          # an Ollama client's think level too
    responses = openai.OpenAI(base_url=llamacpp_effort.url + "/v1", api_key="unused", max_retries=0).responses
    for effort in ("none", "medium", "xhigh"):
        served = responses.create(model="tiny", input="hi", max_output_tokens=1, reasoning={"effort": effort})
        assert served.usage.input_tokens == count[effort]
        assert served.reasoning.effort == effort and served.reasoning.summary is None
        assert responses.input_tokens.count(model="tiny", input="hi",
                                            reasoning={"effort": effort}).input_tokens == count[effort]


def test_reasoning_effort_becomes_ollamas_think(daemon_factory, ollama_emulator):
    """As Ollama's own OpenAI endpoint maps it: "none" is think false, a level is the level
    (gpt-oss's three); an explicit think or thinking switch wins; the Responses API's too."""
    proxy = daemon_factory({"backends": [ollama_backend(ollama_emulator)], "cache": {"enabled": False}})
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    for effort, think in (("none", False), ("minimal", "low"), ("low", "low"), ("medium", "medium"),
                          ("high", "high"), ("xhigh", "high")):
        client.chat.completions.create(model="llama3.2:latest", messages=HI, reasoning_effort=effort)
        assert ollama_emulator.last_request("/api/chat")["think"] == think
        list(client.chat.completions.create(model="llama3.2:latest", messages=HI, reasoning_effort=effort,
                                            stream=True))
        assert ollama_emulator.last_request("/api/chat")["think"] == think
    client.chat.completions.create(model="llama3.2:latest", messages=HI, reasoning_effort="high", extra_body=OFF)
    assert ollama_emulator.last_request("/api/chat")["think"] is False
    client.responses.create(model="llama3.2:latest", input="hi", reasoning={"effort": "low", "summary": "auto"})
    assert ollama_emulator.last_request("/api/chat")["think"] == "low"


@pytest.mark.parametrize("where, request_body, param", [
    ("/v1/chat/completions", {"messages": HI, "reasoning_effort": "extreme"}, "reasoning_effort"),
    ("/v1/chat/completions", {"messages": HI, "reasoning_effort": 3}, "reasoning_effort"),
    ("/v1/responses", {"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ("/v1/responses", {"input": "hi", "reasoning": {"summary": "verbose"}}, "reasoning.summary"),
    ("/v1/responses", {"input": "hi", "reasoning": "high"}, "reasoning"),
])
def test_a_bad_reasoning_effort_is_a_400_naming_it(daemon, where, request_body, param):
    answer = httpx.post(daemon.url + where, json={"model": MODEL, **request_body})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
