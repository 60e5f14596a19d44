"""OpenAI clients in front of an Ollama backend (the emulator): translation both ways."""
import json

import httpx
import ollama
import openai
import pytest

from tests.daemon_rig import ollama_backend

MESSAGES = [{"role": "user", "content": "hello"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="none", max_retries=0)


def test_chat_is_translated_to_api_chat_with_options(client, ollama_emulator):
    ollama_emulator.script("Hi there friend")
    reply = client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, max_tokens=20,
                                           temperature=0.2, top_p=0.9, seed=7, stop=["END"],
                                           response_format={"type": "json_object"})
    assert reply.choices[0].message.content == "Hi there friend"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0 and reply.usage.total_tokens == (
        reply.usage.prompt_tokens + reply.usage.completion_tokens)
    sent = ollama_emulator.last_request("/api/chat")
    assert sent["options"] == {"temperature": 0.2, "top_p": 0.9, "seed": 7, "num_predict": 20, "stop": ["END"]}
    assert sent["format"] == "json" and sent["stream"] is False
    assert reply.model_extra["timings"]["predicted_n"] == reply.usage.completion_tokens


def test_stream_becomes_sse_chunks_in_order(client, ollama_emulator):
    ollama_emulator.script(chunks=["one ", "two ", "three"])
    chunks = list(client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == \
        ["one ", "two ", "three"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_tool_call_object_arguments_become_json_strings_with_ids(client, ollama_emulator):
    ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}},
                                       {"name": "get_weather", "arguments": {"city": "Rome"}}])
    reply = client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, tools=[WEATHER])
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    assert ollama_emulator.last_request("/api/chat")["tools"] == [WEATHER]


def test_streamed_tool_calls_have_index_and_id(client, ollama_emulator):
    ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    chunks = list(client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, tools=[WEATHER],
                                                 stream=True))
    [fragment] = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert fragment.index == 0 and fragment.id.startswith("call_") and fragment.type == "function"
    assert json.loads(fragment.function.arguments) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_assistant_tool_history_goes_back_as_objects(client, ollama_emulator):
    ollama_emulator.script("It is sunny.")
    history = [*MESSAGES,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    client.chat.completions.create(model="llama3.2:latest", messages=history, tools=[WEATHER])
    sent = ollama_emulator.last_request("/api/chat")["messages"]
    assert sent[1]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert sent[2] == {"role": "tool", "content": "sunny"}


def test_completions_use_api_generate(client, ollama_emulator):
    ollama_emulator.script("and so on")
    reply = client.completions.create(model="llama3.2:latest", prompt="Once upon a time", max_tokens=5)
    assert reply.choices[0].text == "and so on"
    assert ollama_emulator.last_request("/api/generate")["raw"] is True


def test_embeddings_through_api_embed(client):
    reply = client.embeddings.create(model="nomic-embed-text:latest", input=["a cat", "a dog"])
    assert len(reply.data) == 2 and len(reply.data[0].embedding) == 64


def test_embeddings_run_with_the_configured_context_as_chats_do(daemon_factory, ollama_emulator):
    """/v1/embeddings on Ollama asks for the backend's num_ctx (a request's own wins), as a chat
    does and as /api/embed through us does with the client's options: else Ollama cuts a long
    input at its default context without a word."""
    daemon = daemon_factory({"backends": [ollama_backend(ollama_emulator, num_ctx=8192)]})
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="none", max_retries=0)
    client.embeddings.create(model="nomic-embed-text:latest", input="a long text")
    sent = ollama_emulator.last_request("/api/embed")
    assert sent["options"] == {"num_ctx": 8192} and "truncate" not in sent
    client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES)
    assert ollama_emulator.last_request("/api/chat")["options"]["num_ctx"] == 8192
    client.embeddings.create(model="nomic-embed-text:latest", input="x", extra_body={"num_ctx": 4096, "truncate": False})
    sent = ollama_emulator.last_request("/api/embed")
    assert sent["options"] == {"num_ctx": 4096} and sent["truncate"] is False
    ollama.Client(host=daemon.url).embed(model="nomic-embed-text:latest", input="x", options={"num_ctx": 2048},
                                         truncate=False)
    sent = ollama_emulator.last_request("/api/embed")
    assert sent["options"]["num_ctx"] == 2048 and sent["truncate"] is False


def test_ollama_404_is_model_not_found(client, ollama_emulator):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="llama3-missing", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"


def test_midstream_error_is_an_error_event_without_done(daemon, ollama_emulator):
    ollama_emulator.script("a b c d", error_after=2, error="model crashed")
    body = {"model": "llama3.2:latest", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["message"].endswith("model crashed")
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert "".join(c for c in contents if c) == "a b"


def test_error_before_first_byte_is_a_proper_http_error(client, ollama_emulator):
    from tests.rig.ollama_replies import ScriptedReply
    ollama_emulator.push_reply(ScriptedReply(status=500, error="out of memory"))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, stream=True)
    assert info.value.status_code == 502 and "out of memory" in info.value.message


@pytest.mark.parametrize("part", [
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
], ids=["audio", "file"])
def test_parts_ollama_cannot_take_are_a_400_not_dropped(client, ollama_emulator, part):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="llama3.2:latest", messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is in it?"}, part]}])
    assert info.value.body["param"] == "messages"


def test_logprobs_reach_ollama_and_come_back_in_openais_shape(client, ollama_emulator):
    """logprobs / top_logprobs go to Ollama's /api/chat (0.12.11 on); its answer's logprobs come
    back as OpenAI's choice.logprobs.content, whole and streamed; not asked, none asked."""
    ollama_emulator.script("Hi there friend")
    reply = client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, logprobs=True, top_logprobs=2)
    sent = ollama_emulator.last_request("/api/chat")
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    content = reply.choices[0].logprobs.content
    assert "".join(entry.token for entry in content) == reply.choices[0].message.content == "Hi there friend"
    assert all(len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token for entry in content)
    assert content[0].bytes == list(content[0].token.encode()) and content[0].logprob < 0
    ollama_emulator.script(chunks=["one ", "two ", "three"])
    chunks = list(client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, stream=True,
                                                 logprobs=True))
    assert "top_logprobs" not in ollama_emulator.last_request("/api/chat")
    streamed = [entry for c in chunks if c.choices and c.choices[0].logprobs for entry in c.choices[0].logprobs.content]
    assert [entry.token for entry in streamed] == ["one ", "two ", "three"]
    assert all(entry.top_logprobs == [] for entry in streamed)
    plain = client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES)
    assert "logprobs" not in ollama_emulator.last_request("/api/chat") and plain.choices[0].logprobs is None


def test_completion_logprobs_from_ollama_in_the_completions_shape(client, ollama_emulator):
    ollama_emulator.script("alpha beta gamma")
    reply = client.completions.create(model="llama3.2:latest", prompt="say", logprobs=1, max_tokens=5)
    assert ollama_emulator.last_request("/api/generate")["top_logprobs"] == 1
    logprobs = reply.choices[0].logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text == "alpha beta gamma"
    assert logprobs.text_offset == [0, 5, 10] and all(len(top) == 1 for top in logprobs.top_logprobs)
    ollama_emulator.script("alpha beta gamma")
    chunks = list(client.completions.create(model="llama3.2:latest", prompt="say", logprobs=0, stream=True))
    assert ollama_emulator.last_request("/api/generate")["logprobs"] is True
    offsets = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offsets == [0, 5, 10]


def test_vllms_repetition_penalty_is_ollamas_repeat_penalty(client, ollama_emulator):
    client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, extra_body={"repetition_penalty": 1.3})
    assert ollama_emulator.last_request("/api/chat")["options"]["repeat_penalty"] == 1.3
    client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES,
                                   extra_body={"repetition_penalty": 1.3, "repeat_penalty": 1.1})
    assert ollama_emulator.last_request("/api/chat")["options"]["repeat_penalty"] == 1.1


@pytest.mark.parametrize("stream", [False, True])
def test_logit_bias_ollama_cannot_honour_is_a_400_not_ignored(client, ollama_emulator, stream):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="llama3.2:latest", messages=MESSAGES, logit_bias={"5": -100},
                                       stream=stream)
    assert caught.value.body["param"] == "logit_bias"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="llama3.2:latest", prompt="x", logit_bias={"5": -100}, stream=stream)
    assert ollama_emulator.count("/api/chat") == ollama_emulator.count("/api/generate") == 0
