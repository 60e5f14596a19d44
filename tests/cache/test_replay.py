import json
import time

from velollmd.cache.exact import CachedResponse
from velollmd.cache.replay import (
    from_json_response,
    from_stream_chunks,
    split_content,
    to_json,
    to_sse_chunks,
)

USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
TOOL_CALLS = (
    {"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "call_2", "type": "function",
     "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
)
JSON_BODY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "llama3",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
        "role": "assistant", "content": "Paris is the capital of France. " * 5}}],
    "usage": USAGE,
}


def essentials(e: CachedResponse):
    return e.content, e.tool_calls, e.usage, e.finish_reason, e.model


def test_json_to_sse_to_entry_round_trip():
    entry = from_json_response(JSON_BODY)
    chunks = to_sse_chunks(entry, "chatcmpl-2", include_usage=True)
    rebuilt = from_stream_chunks(json.loads(json.dumps(chunks)))
    assert essentials(rebuilt) == essentials(entry)
    assert to_json(rebuilt, "chatcmpl-1", created=1700000000) == JSON_BODY


def test_a_replay_is_created_now_not_when_the_entry_was_recorded():
    entry = from_json_response(JSON_BODY)                      # recorded at 1700000000
    before = int(time.time())
    assert to_json(entry, "chatcmpl-2")["created"] >= before
    assert all(c["created"] >= before for c in to_sse_chunks(entry, "chatcmpl-3"))


def test_sse_chunk_shapes():
    entry = from_json_response(JSON_BODY)
    chunks = to_sse_chunks(entry, "r", include_usage=True)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "r" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert len(chunks) > 4                     # content split into several deltas
    assert "usage" not in to_sse_chunks(entry, "r")[-1]


def test_tool_calls_json_sse_round_trip():
    body = {**JSON_BODY, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": list(TOOL_CALLS)}}]}
    entry = from_json_response(body)
    chunks = to_sse_chunks(entry, "r", include_usage=True)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    tc_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [(d["index"], d["id"]) for d in tc_deltas] == [(0, "call_1"), (1, "call_2")]
    rebuilt = from_stream_chunks(chunks)
    assert essentials(rebuilt) == essentials(entry)
    assert to_json(rebuilt, "x")["choices"][0]["message"] == body["choices"][0]["message"] | {}


def _stream(pieces, tool_args=None):
    head = {"id": "s", "object": "chat.completion.chunk", "created": 5, "model": "qwen"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    chunks += [{**head, "choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    if tool_args:
        chunks.append({**head, "choices": [{"index": 0, "delta": {"tool_calls": [{
            "index": 0, "id": "c1", "type": "function",
            "function": {"name": "f", "arguments": tool_args[0]}}]}}]})
        chunks += [{**head, "choices": [{"index": 0, "delta": {"tool_calls": [{
            "index": 0, "function": {"arguments": a}}]}}]} for a in tool_args[1:]]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**head, "choices": [], "usage": USAGE})
    return chunks


def test_sse_to_json_keeps_content_usage_and_chunk_boundaries():
    pieces = ["Hel", "lo, ", "wor", "ld! ", "\u00e9\u4e16"]
    entry = from_stream_chunks(_stream(pieces, ['{"a"', ': 1}']))
    assert entry.content == "".join(pieces) and entry.usage == USAGE
    assert entry.tool_calls[0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    body = to_json(entry, "j")
    assert body["choices"][0]["message"]["content"] == "".join(pieces)
    assert body["usage"] == USAGE and body["object"] == "chat.completion"
    replayed = [c["choices"][0]["delta"].get("content") for c in to_sse_chunks(entry, "r")[1:]]
    assert [p for p in replayed if p] == pieces
    assert essentials(from_json_response(body)) == essentials(entry)


def test_incomplete_stream_is_not_recorded():
    chunks = _stream(["partial"])[:-2]                 # no finish_reason
    assert from_stream_chunks(chunks) is None
    assert from_json_response({**JSON_BODY, "choices": []}) is None


def test_model_override_and_split_fallback():
    entry = CachedResponse(model="llama3:latest", content="abcdef", chunk_sizes=(2, 2))
    assert split_content(entry.content, entry.chunk_sizes, 4) == ["abcd", "ef"]
    assert to_json(entry, "x", model="llama3")["model"] == "llama3"


def test_ollamas_context_survives_json_stream_and_persisted_round_trips():
    """The engine's /api/generate answer carries `context` (beside usage, and in a stream's
    usage chunk): a replay carries the same, whichever way it was recorded and replayed."""
    body = {**JSON_BODY, "context": [5, 6, 7]}
    entry = from_json_response(body)
    assert entry.context == (5, 6, 7)
    assert to_json(entry, "chatcmpl-2")["context"] == [5, 6, 7]
    chunks = to_sse_chunks(entry, "chatcmpl-2", include_usage=True)
    assert chunks[-1]["context"] == [5, 6, 7] and all("context" not in c for c in chunks[:-1])
    assert from_stream_chunks(chunks).context == (5, 6, 7)
    assert CachedResponse.from_dict(json.loads(json.dumps(entry.to_dict()))).context == (5, 6, 7)
    assert "context" not in to_json(from_json_response(JSON_BODY), "chatcmpl-3")
    assert CachedResponse.from_dict({"model": "m"}).context is None          # an entry written before it
