"""The Ollama-native API served by velollmd, driven by the official `ollama` client:
passed through to an Ollama backend, or translated for the llama.cpp backend."""
import ollama
import pytest


@pytest.fixture
def client(daemon):
    return ollama.Client(host=daemon.url)


def test_tags_merge_every_backend(client):
    names = {m.model for m in client.list().models}
    assert {"tiny", "llama3.2:latest", "nomic-embed-text:latest"} <= names
    tiny = next(m for m in client.list().models if m.model == "tiny")
    assert len(tiny.digest) == 64 and tiny.details.format == "gguf"


def test_chat_passthrough_to_ollama_keeps_ndjson(client, ollama_emulator):
    ollama_emulator.script(chunks=["Hel", "lo"])
    parts = list(client.chat(model="llama3.2:latest", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [p.message.content for p in parts[:-1]] == ["Hel", "lo"]
    assert parts[-1].done and parts[-1].eval_count > 0 and parts[-1].total_duration > 0
    assert ollama_emulator.count("/api/chat") == 1


def test_chat_translated_for_llamacpp(client):
    reply = client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 6})
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.done_reason == "length" and reply.eval_count == 6
    assert reply.total_duration > 0


def test_chat_stream_translated_for_llamacpp(client):
    parts = list(client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}],
                             options={"num_predict": 5}, stream=True))
    assert not any(p.done for p in parts[:-1]) and parts[-1].done
    assert len([p for p in parts if p.message.content]) == 5
    assert parts[-1].eval_count == 5 and parts[-1].prompt_eval_count > 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_over_llama_servers_context_drops_its_oldest_turns_as_in_ollama(client, stream):
    """Ollama cuts a chat over the context (system messages and the latest message kept, the
    oldest turns dropped); llama-server's 400 was passed on. `truncate: false` keeps it."""
    system, latest = {"role": "system", "content": "Be brief."}, {"role": "user", "content": "And now?"}
    old = [{"role": "user", "content": "word " * 600}, {"role": "assistant", "content": "word " * 600}]
    recent = [{"role": "user", "content": "a short turn"}, {"role": "assistant", "content": "a short answer"}]

    def last(reply):
        return list(reply)[-1] if stream else reply
    cut = last(client.chat(model="tiny", messages=[system, *old, *recent, latest], options={"num_predict": 3},
                           stream=stream))
    kept = client.chat(model="tiny", messages=[system, *recent, latest], options={"num_predict": 3})
    assert cut.done and cut.eval_count == 3 and cut.prompt_eval_count == kept.prompt_eval_count
    with pytest.raises(ollama.ResponseError) as info:
        client._request_raw("POST", "/api/chat", json={"model": "tiny", "messages": [system, *old, latest],
                                                       "truncate": False, "stream": False})
    assert info.value.status_code == 400


@pytest.mark.parametrize("raw", [False, True], ids=["templated", "raw"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_generate_prompt_over_llama_servers_context_is_cut_as_in_ollama(client, raw, stream):
    """Ollama keeps a prompt's first num_keep tokens and its latest ones, leaving room for the
    answer; llama-server's 400 was passed on. `truncate: false` keeps it."""
    context = int(client.show("tiny").parameters.split()[1])
    reply = client.generate(model="tiny", prompt="word " * 1500, raw=raw, stream=stream, options={"num_predict": 3})
    final = list(reply)[-1] if stream else reply
    assert final.done and final.eval_count == 3 and final.prompt_eval_count == context - 3
    with pytest.raises(ollama.ResponseError) as info:
        client._request_raw("POST", "/api/generate", json={"model": "tiny", "prompt": "word " * 1500, "raw": raw,
                                                           "truncate": False, "stream": False})
    assert info.value.status_code == 400


def test_a_chat_whose_latest_message_alone_is_over_llama_servers_context_is_cut_as_in_ollama(client):
    context = int(client.show("tiny").parameters.split()[1])
    reply = client.chat(model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "word " * 1500}], options={"num_predict": 3})
    assert reply.done and reply.eval_count == 3 and reply.prompt_eval_count == context - 3


def test_num_keep_picks_the_first_tokens_a_cut_prompt_keeps_on_llama_server(client):
    from tests.api.test_ollama_sdk_qa import HEAD, first_token_alternatives
    prompt = HEAD + "word " * 1500
    default = first_token_alternatives(client, "tiny", prompt)
    assert first_token_alternatives(client, "tiny", prompt, num_keep=4) == default
    assert first_token_alternatives(client, "tiny", prompt, num_keep=4.0) == default     # was a 500
    assert first_token_alternatives(client, "tiny", prompt, num_keep=-1) != default


def test_tool_calls_translated_back_to_objects(client):
    from tests.rig.llama import force_tool_call_bias
    from velollmd.wire.ollama import ollama_chat_request_to_openai
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    # the ollama client has no logit_bias: send it through options, which pass to llama-server
    reply = client.chat(model="tiny", messages=[{"role": "user", "content": "weather?"}], tools=[tool],
                        options={"num_predict": 100, "logit_bias": force_tool_call_bias()})
    [call] = reply.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    converted = ollama_chat_request_to_openai({"model": "m", "messages": [], "options": {"top_k": 5, "num_ctx": 9}})
    assert converted["top_k"] == 5 and converted["num_ctx"] == 9     # the engine sizes a request's context by it


def test_generate_both_ways(client, ollama_emulator):
    ollama_emulator.script("from the emulator")
    assert client.generate(model="llama3.2:latest", prompt="hi").response == "from the emulator"
    reply = client.generate(model="tiny", prompt="Once upon", options={"num_predict": 4})
    assert reply.response and reply.eval_count == 4 and reply.done
    raw = client.generate(model="tiny", prompt="Once upon", raw=True, options={"num_predict": 3})
    assert raw.eval_count == 3


@pytest.mark.parametrize("stream", [False, True])
def test_durations_split_as_ollama_gives_them_from_llama_servers_timings(client, stream):
    """`ollama run --verbose` and UIs divide counts by these: the prompt's time is not 0, the
    generation's not the whole request's."""
    reply = client.generate(model="tiny", prompt="Once upon a time", options={"num_predict": 4}, stream=stream)
    final = list(reply)[-1] if stream else reply
    assert final.prompt_eval_count > 0 and final.prompt_eval_duration > 0 and final.eval_duration > 0
    assert final.load_duration + final.prompt_eval_duration + final.eval_duration == final.total_duration


def test_show_ps_embed_version(client):
    assert client.show("llama3.2:latest").details.family == "llama"
    assert client.show("tiny").details.format == "gguf"
    running = {m.model: m for m in client.ps().models}
    assert running["tiny"].expires_at.year > 2200       # llama-server keeps it: `ollama ps` says Forever
    assert running["tiny"].context_length == int(client.show("tiny").parameters.split()[1])   # its CONTEXT
    assert len(client.embed(model="nomic-embed-text:latest", input="hello").embeddings[0]) == 64
    assert client._request_raw("GET", "/api/version").json()["version"]


def test_unknown_model_raises_response_error_404(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404 and "nope-model" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3-not-pulled", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404 and "not found" in info.value.error


def test_native_passthrough_goes_through_admission(daemon, client, ollama_emulator):
    import httpx
    ollama_emulator.script("admitted")
    assert client.chat(model="llama3.2:latest", messages=[{"role": "user", "content": "hi"}]).message.content == "admitted"
    client.generate(model="llama3.2:latest", prompt="hi")
    stats = httpx.get(daemon.url + "/v1/velollm/queue").json()
    assert stats["backends"]["ollama"]["num_admitted"] == 2 and stats["num_running"] == 0
