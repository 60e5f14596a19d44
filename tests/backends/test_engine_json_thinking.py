"""JSON mode on a thinking model served by the engine, through the official clients: the model
thinks first and the format applies to the answer after </think>, as on Ollama and llama.cpp.

The tiny model of `make_tiny_gguf.py --vocab spm-think` has "<think>", one whole thought and
"</think>" as tokens, chained: a logit_bias on <think> makes it think that thought, then answer.
Left alone it never writes </think>, so a request that thinks is cut while thinking."""
from __future__ import annotations

import json

import anthropic
import ollama
import openai
import pytest

from tests.daemon_rig import RunningDaemon, engine_backend
from tests.rig.llama import tiny_gguf_tool

MODEL = "tiny-thinker"
TOOL = tiny_gguf_tool()
THOUGHT = TOOL.SCRIPTED_THOUGHT.strip()
THINK = {str(TOOL.spm_vocab("spm-think")[0].index("<think>")): 100}      # opens the scripted thought
HI = [{"role": "user", "content": "hi"}]
JSON = {"type": "json_object"}
OFF = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    folder = tmp_path_factory.mktemp("thinker")
    TOOL.build_tiny_gguf(folder / f"{MODEL}.gguf", vocab="spm-think")
    table = {"backends": [engine_backend(folder, models=[MODEL])], "cache": {"enabled": False}}
    with RunningDaemon(table) as running:
        yield running


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)


def streamed(chunks) -> tuple[str, str, str]:
    """(reasoning, content, finish reason) of a chat stream."""
    deltas = [c.choices[0] for c in chunks if c.choices]
    return ("".join((d.delta.model_extra or {}).get("reasoning_content") or "" for d in deltas),
            "".join(d.delta.content or "" for d in deltas), deltas[-1].finish_reason)


@pytest.mark.parametrize("response_format", [JSON, {"type": "json_schema", "json_schema": {"name": "x", "schema": {
    "type": "object", "properties": {"paris": {"type": "boolean"}}, "required": ["paris"]}}}])
def test_the_model_thinks_then_answers_json_streamed_or_not(client, response_format):
    kwargs = dict(model=MODEL, messages=HI, max_tokens=60, temperature=0, logit_bias=THINK,
                  response_format=response_format)
    answer = client.chat.completions.create(**kwargs)
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "stop"
    assert message.model_extra["reasoning_content"] == THOUGHT
    assert isinstance(json.loads(message.content), dict)
    assert streamed(client.chat.completions.create(stream=True, **kwargs)) == \
        (THOUGHT, message.content, "stop")


def test_thinking_off_constrains_from_the_first_token(client):
    """enable_thinking false (Qwen3's empty think block in the prompt): <think> is no JSON, so
    the bias that opens the thought is masked and the answer is JSON alone, as before."""
    for extra in (dict(extra_body=OFF), dict(reasoning_effort="none")):
        answer = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=60, temperature=0,
                                                logit_bias=THINK, response_format=JSON, **extra)
        message = answer.choices[0].message
        assert answer.choices[0].finish_reason == "stop" and "reasoning_content" not in (message.model_extra or {})
        assert isinstance(json.loads(message.content), dict)


def test_thinking_off_streams_json_from_the_first_chunk_with_no_reasoning(daemon, client):
    """The prompt ends with the empty think block (the template wrote "</think>"): the stream's
    first text is the object's "{", and no chunk carries reasoning_content, empty or not."""
    kwargs = dict(model=MODEL, messages=HI, max_tokens=60, temperature=0, logit_bias=THINK, response_format=JSON,
                  extra_body=OFF)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    deltas = [c.choices[0].delta for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
    assert all("reasoning_content" not in (d.model_extra or {}) for d in deltas)
    texts = [d.content for d in deltas if d.content]
    assert texts[0].lstrip().startswith("{") and "".join(texts) == whole and isinstance(json.loads(whole), dict)
    chunks = list(ollama.Client(host=daemon.url).chat(model=MODEL, messages=HI, format="json", think=False,
                                                      stream=True, options={"num_predict": 60, "temperature": 0}))
    assert not any(c.message.thinking for c in chunks) and "".join(c.message.content for c in chunks) == whole


def test_a_cut_while_thinking_is_length_with_the_thinking_and_no_content(daemon, client):
    answer = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, temperature=0,
                                            response_format=JSON)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 8
    assert answer.choices[0].message.content == "" and answer.choices[0].message.model_extra["reasoning_content"]
    native = ollama.Client(host=daemon.url)
    reply = native.chat(model=MODEL, messages=HI, format="json", think=True, options={"num_predict": 8,
                                                                                    "temperature": 0})
    assert reply.done_reason == "length" and reply.message.content == ""
    assert reply.message.thinking == answer.choices[0].message.model_extra["reasoning_content"]
    chunks = list(native.chat(model=MODEL, messages=HI, format="json", think=True, stream=True,
                              options={"num_predict": 8, "temperature": 0}))
    assert "".join(c.message.thinking or "" for c in chunks) == reply.message.thinking
    assert "".join(c.message.content for c in chunks) == ""


def test_ollama_think_false_with_format_answers_json(daemon):
    reply = ollama.Client(host=daemon.url).chat(model=MODEL, messages=HI, format="json", think=False,
                                                options={"num_predict": 60, "temperature": 0})
    assert reply.done_reason == "stop" and not reply.message.thinking
    assert isinstance(json.loads(reply.message.content), dict)


def test_responses_and_anthropic_carry_the_thinking_in_their_own_places(daemon, client):
    answer = client.responses.create(model=MODEL, input="hi", max_output_tokens=60, temperature=0,
                                     text={"format": {"type": "json_object"}}, extra_body={"logit_bias": THINK})
    assert [item.type for item in answer.output] == ["reasoning", "message"]
    assert isinstance(json.loads(answer.output_text), dict)
    claude = anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0)
    cut = claude.messages.create(model=MODEL, max_tokens=8, messages=HI, extra_body={
        "output_format": {"type": "json_schema", "schema": {"type": "object"}}})
    assert cut.stop_reason == "max_tokens" and [block.type for block in cut.content] == ["thinking"]


def test_a_response_cut_while_thinking_is_incomplete_with_the_reasoning_alone(client):
    """max_output_tokens spent on the thinking: as OpenAI answers, the response is incomplete
    (reason max_output_tokens) and its output is the reasoning item alone, no empty message;
    the stream never adds a message item either."""
    kwargs = dict(model=MODEL, input="hi", max_output_tokens=8, temperature=0,
                  text={"format": {"type": "json_object"}})
    answer = client.responses.create(**kwargs)
    assert answer.status == "incomplete" and answer.incomplete_details.reason == "max_output_tokens"
    assert [(item.type, item.status) for item in answer.output] == [("reasoning", "incomplete")]
    assert answer.output[0].content[0].text and answer.output_text == ""
    events = list(client.responses.create(stream=True, **kwargs))
    added = [event.item.type for event in events if event.type == "response.output_item.added"]
    final = events[-1]
    assert added == ["reasoning"] and final.type == "response.incomplete"
    assert final.response.incomplete_details.reason == "max_output_tokens"
    assert [item.model_dump() for item in final.response.output] == \
        [{**item.model_dump(), "id": final.response.output[0].id} for item in answer.output]


# --- without JSON mode: the thinking is split out as llama-server and Ollama split it ----------

def test_a_plain_answer_carries_its_thinking_apart_streamed_or_not(client):
    """The first thought is reasoning_content; what follows its </think> is the content (the
    bias on <think> makes this tiny model open another thought there: content, as llama-server
    splits only the first)."""
    kwargs = dict(model=MODEL, messages=HI, max_tokens=40, temperature=0, logit_bias=THINK)
    answer = client.chat.completions.create(**kwargs)
    message = answer.choices[0].message
    assert message.model_extra["reasoning_content"] == THOUGHT
    assert not message.content.startswith(THOUGHT)
    assert streamed(client.chat.completions.create(stream=True, **kwargs)) == \
        (THOUGHT, message.content, answer.choices[0].finish_reason)


def test_an_answer_that_does_not_think_is_all_content(client):
    """Left alone the tiny model never opens <think>: its whole text is the content, with no
    reasoning_content, the same text as with the thinking turned off."""
    kwargs = dict(model=MODEL, messages=HI, max_tokens=12, temperature=0)
    answer = client.chat.completions.create(**kwargs)
    assert "reasoning_content" not in (answer.choices[0].message.model_extra or {})
    assert answer.choices[0].message.content
    assert streamed(client.chat.completions.create(stream=True, **kwargs)) == \
        ("", answer.choices[0].message.content, answer.choices[0].finish_reason)
