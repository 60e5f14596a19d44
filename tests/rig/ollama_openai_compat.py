"""The emulator's minimal copy of Ollama's OpenAI compatibility layer (docs/openai.md):
`GET /v1/models` and `POST /v1/chat/completions` (JSON or SSE), fed by the same replies."""
from __future__ import annotations

import json
import time
from typing import Any

from tests.rig.ollama_replies import apply_stop, count_tokens, prompt_text

CREATED = 1735689600   # fixed "created" timestamp of every listed model


def route_models(h, body: Any) -> None:
    data = [{"id": m.name, "object": "model", "created": CREATED, "owned_by": "library"}
            for m in h.emu.models.values()]
    h.send_json(200, {"object": "list", "data": data})


def openai_error(h, status: int, message: str, kind: str = "api_error",
                 headers: dict[str, str] | None = None) -> None:
    h.send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}}, headers)


def to_native(body: dict[str, Any]) -> dict[str, Any]:
    """The /api/chat body an OpenAI request maps to (what Ollama does internally)."""
    options = {k: body[src] for k, src in (("num_predict", "max_tokens"), ("seed", "seed"),
                                           ("temperature", "temperature"), ("stop", "stop"))
               if body.get(src) is not None}
    if body.get("max_completion_tokens") is not None:
        options["num_predict"] = body["max_completion_tokens"]
    native = {"model": body.get("model"), "messages": body.get("messages") or [], "options": options}
    fmt = (body.get("response_format") or {}).get("type")
    if fmt == "json_object":
        native["format"] = "json"
    elif fmt == "json_schema":
        native["format"] = body["response_format"]["json_schema"].get("schema", {})
    return native


def tool_calls_openai(tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": f"call_{i}", "index": i, "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {})}}
            for i, c in enumerate(tool_calls)]


def route_chat_completions(h, body: dict[str, Any]) -> None:
    model = h.emu.find_model(body.get("model"))
    if model is None:
        return openai_error(h, 404, f'model "{body.get("model")}" not found, try pulling it first',
                            "not_found_error")
    native = to_native(body)
    h.emu.touch(model, None)
    reply = h.emu.next_reply(native)
    if reply.status != 200:
        return openai_error(h, reply.status, reply.error, headers=reply.headers)
    stops = native["options"].get("stop") or []
    pieces, stopped = apply_stop(reply.pieces(), [stops] if isinstance(stops, str) else stops)
    finish = "tool_calls" if reply.tool_calls else (
        "stop" if stopped or reply.done_reason == "stop" else "length")
    prompt_tokens = count_tokens(prompt_text(native))
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
             "total_tokens": prompt_tokens + len(pieces)}
    head = {"id": f"chatcmpl-{int(time.time() * 1000) % 1000000}", "created": int(time.time()),
            "model": model.name, "system_fingerprint": "fp_ollama"}
    if body.get("stream"):
        return _stream_sse(h, reply, pieces, head, finish, usage, body)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
    if reply.tool_calls:
        message["tool_calls"] = tool_calls_openai(reply.tool_calls)
    h.send_json(200, dict(head, object="chat.completion", usage=usage, choices=[
        {"index": 0, "message": message, "finish_reason": finish}]))


def _stream_sse(h, reply, pieces, head, finish, usage, body) -> None:
    def sse(obj: Any) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return dict(head, object="chat.completion.chunk",
                    choices=[{"index": 0, "delta": delta, "finish_reason": finish_reason}])

    h.start_stream("text/event-stream")
    if not h.stream_pieces(reply, pieces, lambda p: chunk({"role": "assistant", "content": p}), sse):
        return
    if reply.tool_calls:                 # as Ollama: the role (and an empty content) in every delta
        h.send_chunk(sse(chunk({"role": "assistant", "content": "",
                                "tool_calls": tool_calls_openai(reply.tool_calls)})))
    h.send_chunk(sse(chunk({"role": "assistant", "content": ""}, finish)))
    if (body.get("stream_options") or {}).get("include_usage"):
        h.send_chunk(sse(dict(head, object="chat.completion.chunk", choices=[], usage=usage)))
    h.send_chunk(b"data: [DONE]\n\n")
    h.end_stream()
