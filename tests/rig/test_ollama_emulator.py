"""The Ollama emulator, driven by the official ollama SDK (and raw sockets where the SDK hides
the wire format)."""
import json
import socket
import time
import urllib.error
import urllib.request

import ollama
import pytest

from tests.rig.ollama_replies import ScriptedReply

USER = [{"role": "user", "content": "why is the sky blue"}]
TIMING_FIELDS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture
def client(ollama_emulator):
    return ollama.Client(host=ollama_emulator.url)


def raw_post(url, body: bytes):
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_chat_non_stream_default_reply_has_num_predict_words(client, ollama_emulator):
    resp = client.chat(model="tiny", messages=USER, options={"num_predict": 5, "seed": 1})
    assert resp.done and resp.done_reason == "length"
    assert len(resp.message.content.split()) == resp.eval_count == 5
    assert all(isinstance(resp[f], int) and resp[f] > 0 for f in TIMING_FIELDS)
    again = client.chat(model="tiny", messages=USER, options={"num_predict": 5, "seed": 1})
    assert again.message.content == resp.message.content
    assert ollama_emulator.count("/api/chat") == 2
    assert ollama_emulator.last_request("/api/chat")["options"]["seed"] == 1


def test_chat_stream_is_ndjson_chunks_then_final(client):
    parts = list(client.chat(model="tiny", messages=USER, stream=True, options={"num_predict": 4}))
    assert [p.done for p in parts] == [False] * 4 + [True]
    assert parts[-1].message.content == "" and parts[-1].eval_count == 4
    assert len("".join(p.message.content for p in parts).split()) == 4


def test_wire_format_is_chunked_ndjson(ollama_emulator):
    body = json.dumps({"model": "tiny", "messages": USER, "options": {"num_predict": 3}}).encode()
    with socket.create_connection(("127.0.0.1", ollama_emulator.port)) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += sock.recv(65536)
    head, _, payload = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"application/x-ndjson" in head
    lines = [json.loads(line) for line in payload.split(b"\r\n") if line.startswith(b"{")]
    assert len(lines) == 4 and lines[-1]["done"] is True


def test_scripted_reply_chunks_and_tool_calls(client, ollama_emulator):
    ollama_emulator.script(chunks=["Hel", "lo"])
    ollama_emulator.script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    parts = list(client.chat(model="tiny", messages=USER, stream=True))
    assert [p.message.content for p in parts[:-1]] == ["Hel", "lo"]
    resp = client.chat(model="tiny", messages=USER, tools=[{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}])
    call = resp.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert ollama_emulator.last_request("/api/chat")["tools"][0]["function"]["name"] == "get_weather"


def test_generate_stream_and_options_stop(client):
    parts = list(client.generate(model="tiny", prompt="hi", stream=True, options={"num_predict": 3}))
    assert parts[-1].done and parts[-1].context and len(parts) == 4
    reply = client.generate(model="tiny", prompt="hi", options={"num_predict": 6})
    second_word = reply.response.split()[1]
    cut = client.generate(model="tiny", prompt="hi", options={"num_predict": 6, "stop": [second_word]})
    assert cut.done_reason == "stop" and second_word not in cut.response


def test_format_json_schema(client):
    schema = {"type": "object", "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"}}}
    resp = client.generate(model="tiny", prompt="json please", format=schema)
    assert json.loads(resp.response) == {"age": 42, "ok": True}
    assert isinstance(json.loads(client.chat(model="tiny", messages=USER, format="json").message.content), dict)


def test_list_show_ps_version(client, ollama_emulator):
    models = client.list().models
    assert "tiny:latest" in [m.model for m in models]
    assert all(len(m.digest) == 64 and m.details.format == "gguf" for m in models)
    assert client.show("tiny").details.family == "llama"
    assert client.ps().models == []
    client.generate(model="tiny", prompt="x", keep_alive="1m")
    assert [m.model for m in client.ps().models] == ["tiny:latest"]
    client.generate(model="tiny", prompt="", keep_alive=0)   # unload
    assert client.ps().models == []
    with urllib.request.urlopen(ollama_emulator.url + "/api/version") as resp:
        assert "version" in json.load(resp)


def test_embed_is_unit_length_and_similar_for_similar_text(client):
    resp = client.embed(model="nomic-embed-text", input=["the sky is blue", "the sky is blue today", "zebra"])
    a, b, c = resp.embeddings
    dot = lambda x, y: sum(i * j for i, j in zip(x, y))  # noqa: E731
    assert abs(dot(a, a) - 1.0) < 1e-9
    assert dot(a, b) > dot(a, c)


def test_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope", messages=USER)
    assert info.value.status_code == 404
    assert info.value.error == 'model "nope" not found, try pulling it first'


def test_bad_json_is_400(ollama_emulator):
    status, _, body = raw_post(ollama_emulator.url + "/api/chat", b"{not json")
    assert status == 400 and "error" in json.loads(body)


def test_mid_stream_error_and_status_error(client, ollama_emulator):
    ollama_emulator.script("one two three", error_after=1, error="boom")
    with pytest.raises(ollama.ResponseError, match="boom"):
        list(client.chat(model="tiny", messages=USER, stream=True))
    ollama_emulator.push_reply(ScriptedReply(status=503, error="busy"))
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="tiny", messages=USER)
    assert info.value.status_code == 503


def test_connection_drop_mid_stream(client, ollama_emulator):
    ollama_emulator.script("one two three", drop_after=2)
    with pytest.raises(Exception) as info:
        list(client.chat(model="tiny", messages=USER, stream=True))
    assert "incomplete" in str(info.value) or "closed" in str(info.value)


def test_client_disconnect_is_noticed(ollama_emulator):
    ollama_emulator.script(" ".join(["w"] * 50), delay_s=0.02)
    body = json.dumps({"model": "tiny", "messages": USER}).encode()
    with socket.create_connection(("127.0.0.1", ollama_emulator.port)) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert b"200 OK" in sock.recv(4096)
    deadline = time.monotonic() + 5
    while ollama_emulator.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ollama_emulator.disconnects == 1


def test_keep_alive_connection_serves_several_requests(ollama_emulator):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", ollama_emulator.port)
    for _ in range(3):
        conn.request("GET", "/api/tags")
        assert conn.getresponse().read()
    conn.close()
    assert ollama_emulator.count("/api/tags") == 3


def test_openai_compat(ollama_emulator):
    import openai
    client = openai.OpenAI(base_url=ollama_emulator.url + "/v1", api_key="ollama", max_retries=0)
    assert "tiny:latest" in [m.id for m in client.models.list().data]
    resp = client.chat.completions.create(model="tiny", messages=USER, max_tokens=3)
    assert resp.usage.completion_tokens == 3 and resp.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="tiny", messages=USER, max_tokens=3, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 3
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)


def test_logprobs_as_ollama_documents_them(client):
    """Ollama 0.12.11's logprobs: one {token, logprob, bytes} a generated token, top_logprobs
    only when asked, each streamed chunk with its own tokens'; none unless asked."""
    whole = client.chat(model="tiny", messages=USER, options={"num_predict": 3}, logprobs=True, top_logprobs=2)
    assert "".join(entry.token for entry in whole.logprobs) == whole.message.content
    assert all(len(entry.top_logprobs) == 2 for entry in whole.logprobs)
    parts = list(client.generate(model="tiny", prompt="why", stream=True, options={"num_predict": 3}, logprobs=True))
    assert [len(p.logprobs or []) for p in parts] == [1, 1, 1, 0]
    assert all(p.logprobs[0].top_logprobs is None and p.logprobs[0].token == p.response for p in parts[:3])
    assert client.chat(model="tiny", messages=USER, options={"num_predict": 3}).logprobs is None
