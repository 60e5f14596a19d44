"""A chat whose last message is the assistant's is a prefill: the engine continues it, as
llama-server, Ollama, vLLM (continue_final_message) and Anthropic's Messages API do, and the
answer is the continuation only, whole and streamed, on the OpenAI, Anthropic and Ollama routes.

The prompt is checked by what the model does with it: greedy, the chat's answer equals the
/v1/completions answer to the prompt text written out by hand (the assistant turn open, the
prefill after its header, no end-of-turn); tests/backends/test_engine_parity.py checks the
rendering of every template family against llama-server's. Real daemon, real engine, the
official openai, anthropic and ollama clients."""
from __future__ import annotations

import json

import anthropic
import ollama
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend
from tests.rig.llama import make_tiny_model, tiny_gguf_tool

CHATML, THINKER = "tiny-chatml", "tiny-thinker"
HI = [{"role": "user", "content": "Hi"}]
PREFILL = "Sure, here"
CHATML_PROMPT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" + PREFILL   # the prefilled chat's
JSON = {"type": "json_object"}
TOOL = tiny_gguf_tool()
THINK = {str(TOOL.spm_vocab("spm-think")[0].index("<think>")): 100}      # opens the scripted thought


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefill-models")
    make_tiny_model(folder / f"{CHATML}.gguf")
    TOOL.build_tiny_gguf(folder / f"{THINKER}.gguf", vocab="spm-think")
    table = {"backends": [engine_backend(folder)], "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def prefilled(text: str) -> list[dict]:
    return [*HI, {"role": "assistant", "content": text}]


def chat(client, model: str, messages: list[dict], **kwargs) -> tuple[openai.types.chat.ChatCompletion, str, str]:
    """(the whole answer, the stream's content, the stream's reasoning_content), greedy."""
    kwargs = dict(model=model, messages=messages, temperature=0, **kwargs)
    whole = client.chat.completions.create(**kwargs)
    deltas = [c.choices[0].delta for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
    return (whole, "".join(d.content or "" for d in deltas),
            "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas))


def continuation(client) -> str:
    """The tiny ChatML model's greedy 6 tokens after the prefilled chat's prompt text."""
    return client.completions.create(model=CHATML, prompt=CHATML_PROMPT, max_tokens=6, temperature=0).choices[0].text


@pytest.mark.parametrize("model, prompt", [
    (CHATML, CHATML_PROMPT),
    # Qwen3's family: answer text comes after the empty think block, as the template writes it
    (THINKER, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n" + PREFILL)])
def test_the_answer_continues_the_prefill_and_is_the_continuation_only(client, model, prompt):
    whole, streamed, reasoning = chat(client, model, prefilled(PREFILL), max_tokens=6)
    completion = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0)
    text = whole.choices[0].message.content
    assert text == completion.choices[0].text and text == streamed and whole.usage.completion_tokens == 6
    assert whole.usage.prompt_tokens == completion.usage.prompt_tokens
    assert "reasoning_content" not in (whole.choices[0].message.model_extra or {}) and reasoning == ""
    fresh = client.chat.completions.create(model=model, messages=HI, max_tokens=6, temperature=0)
    assert fresh.usage.prompt_tokens < whole.usage.prompt_tokens          # no prefill: a bare header


@pytest.mark.parametrize("model", [CHATML, THINKER])
def test_a_prefill_of_a_brace_in_json_mode_continues_the_object(client, model):
    whole, streamed, _ = chat(client, model, prefilled("{"), max_tokens=60, response_format=JSON, logit_bias=THINK)
    text = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop" and text == streamed
    assert isinstance(json.loads("{" + text), dict) and not text.lstrip().startswith("{")


def test_a_prefill_that_is_no_json_start_in_json_mode_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHATML, messages=prefilled("Sure"), max_tokens=4, response_format=JSON)
    assert caught.value.body["param"] == "messages" and "JSON" in caught.value.body["message"]
    assert client.chat.completions.create(model=CHATML, messages=HI, max_tokens=2).choices[0].message.content


def test_a_prefill_with_its_thinking_closed_is_continued_after_it_with_no_new_thinking(client):
    """The answer's thinking is the prefill's, already closed: the bias that would open a new
    thought is masked in JSON mode (the object starts at once), and nothing is reasoning."""
    messages = prefilled("<think>\nearlier\n</think>\n\n")
    for extra in ({"response_format": JSON}, {}):
        whole, streamed, reasoning = chat(client, THINKER, messages, max_tokens=60, logit_bias=THINK, **extra)
        message = whole.choices[0].message
        assert "reasoning_content" not in (message.model_extra or {}) and reasoning == ""
        assert message.content == streamed
        if extra:
            assert whole.choices[0].finish_reason == "stop" and isinstance(json.loads(message.content), dict)


def test_a_prefill_that_opens_its_thinking_is_continued_as_thinking(client):
    """Left alone the thinker never writes </think>: the continuation is reasoning to the end,
    the prefill's own text not in it, and there is no content."""
    whole, streamed, reasoning = chat(client, THINKER, prefilled("<think>\nLet me"), max_tokens=8)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "length" and message.content == "" and streamed == ""
    assert message.model_extra["reasoning_content"] == reasoning and reasoning
    assert not reasoning.startswith("Let me") and "<think>" not in reasoning


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_prefill_is_continued_and_answers_the_continuation(daemon, client, stream):
    expected = continuation(client)
    claude = anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0)
    kwargs = dict(model=CHATML, max_tokens=6, messages=prefilled(PREFILL), extra_body={"temperature": 0})
    if stream:
        with claude.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**kwargs)
    assert message.content[0].text == expected and message.usage.output_tokens == 6


def test_ollama_chat_continues_the_prefill_as_ollama_does(daemon, client):
    """Ollama leaves a trailing assistant turn open and answers the new text only."""
    expected = continuation(client)
    native = ollama.Client(host=daemon.url)
    options = {"num_predict": 6, "temperature": 0}
    assert native.chat(model=CHATML, messages=prefilled(PREFILL), options=options).message.content == expected
    chunks = native.chat(model=CHATML, messages=prefilled(PREFILL), options=options, stream=True)
    assert "".join(c.message.content for c in chunks) == expected


def test_a_lone_assistant_message_is_a_400_and_the_daemon_keeps_serving(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHATML, messages=[{"role": "assistant", "content": "Hi"}], max_tokens=2)
    assert caught.value.body["param"] == "messages" and "before it" in caught.value.body["message"]
    assert client.chat.completions.create(model=CHATML, messages=HI, max_tokens=2).choices[0].message.content
