"""Convert between OpenAI responses (JSON or stream chunks) and a CachedResponse.

`to_json` and `to_sse_chunks` replay an entry, as a new answer (its own id, `created` now);
`from_json_response` and `from_stream_chunks` record one. Content, tool calls and usage survive any round trip
(JSON -> entry -> chunks -> entry -> JSON). `endpoint` "chat" speaks chat.completion(.chunk),
"completion" speaks text_completion (`choices[].text`); recording reads either.
"""
from __future__ import annotations

import time

from ..wire.chunks import chunk_choice
from ..wire.stopword import stop_word_of
from .exact import CachedResponse

DEFAULT_PIECE_CHARS = 16          # size of replayed content deltas without recorded boundaries


def _envelope(entry: CachedResponse, request_id: str, obj: str, created, model) -> dict:
    body = {"id": request_id, "object": obj,
            "created": int(created if created is not None else time.time()),   # a new answer: now
            "model": model or entry.model}
    if entry.system_fingerprint is not None:
        body["system_fingerprint"] = entry.system_fingerprint
    return body


def to_json(entry: CachedResponse, request_id: str, *, created: int | None = None,
            model: str | None = None, endpoint: str = "chat") -> dict:
    """An OpenAI chat.completion (or text_completion) body for `entry`."""
    if endpoint == "completion":
        body = _envelope(entry, request_id, "text_completion", created, model)
        body["choices"] = [{"index": 0, "text": entry.content, "logprobs": None,
                            "finish_reason": entry.finish_reason}]
        return _with_usage(body, entry)
    message = {"role": "assistant",
               "content": entry.content if entry.content or not entry.tool_calls else None}
    if entry.reasoning_content:
        message["reasoning_content"] = entry.reasoning_content
    if entry.tool_calls:
        message["tool_calls"] = [dict(tc) for tc in entry.tool_calls]
    body = _envelope(entry, request_id, "chat.completion", created, model)
    body["choices"] = [_with_stop_word({"index": 0, "message": message, "logprobs": None,
                                        "finish_reason": entry.finish_reason}, entry)]
    return _with_usage(body, entry)


def _with_stop_word(choice: dict, entry: CachedResponse) -> dict:
    """The finishing choice names the stop string as vLLM does (`stop_reason`), when known."""
    if entry.stop_word:
        choice["stop_reason"] = entry.stop_word
    return choice


def _with_usage(body: dict, entry: CachedResponse) -> dict:
    """The answer's closing fields: its usage, and its Ollama `context` where it had one."""
    if entry.usage is not None:
        body["usage"] = dict(entry.usage)
    if entry.context is not None:
        body["context"] = list(entry.context)
    return body


def split_content(content: str, chunk_sizes=(),
                  piece_chars: int = DEFAULT_PIECE_CHARS) -> list[str]:
    """Content pieces: the recorded chunk boundaries when they fit, else fixed-size pieces."""
    if chunk_sizes and sum(chunk_sizes) == len(content):
        pieces, start = [], 0
        for size in chunk_sizes:
            pieces.append(content[start:start + size])
            start += size
        return [p for p in pieces if p]
    return [content[i:i + piece_chars] for i in range(0, len(content), piece_chars)]


def _tool_call_delta(index: int, tool_call: dict) -> dict:
    function = tool_call.get("function") or {}
    return {"index": index, "id": tool_call.get("id"), "type": tool_call.get("type", "function"),
            "function": {"name": function.get("name"),
                         "arguments": function.get("arguments", "")}}


def _deltas(entry: CachedResponse, piece_chars: int) -> list[dict]:
    deltas = [{"role": "assistant", "content": ""}]
    deltas += [{"reasoning_content": p}
               for p in split_content(entry.reasoning_content, (), piece_chars)]
    deltas += [{"content": p} for p in split_content(entry.content, entry.chunk_sizes, piece_chars)]
    deltas += [{"tool_calls": [_tool_call_delta(i, tc)]} for i, tc in enumerate(entry.tool_calls)]
    return deltas


def to_sse_chunks(entry: CachedResponse, request_id: str, *, created: int | None = None,
                  model: str | None = None, include_usage: bool = False,
                  piece_chars: int = DEFAULT_PIECE_CHARS, endpoint: str = "chat") -> list[dict]:
    """The chat.completion.chunk (or text_completion) dicts a streaming client would have
    received.

    With include_usage every chunk carries "usage": null and a last chunk with
    "choices": [] carries the usage, as OpenAI does for stream_options.include_usage.
    """
    if endpoint == "completion":
        head = _envelope(entry, request_id, "text_completion", created, model)
        pieces = split_content(entry.content, entry.chunk_sizes, piece_chars)
        choices = [chunk_choice(p, chat=False) for p in pieces]
        choices.append(chunk_choice("", entry.finish_reason, chat=False))
    else:
        head = _envelope(entry, request_id, "chat.completion.chunk", created, model)
        choices = [chunk_choice(d) for d in _deltas(entry, piece_chars)]
        choices.append(_with_stop_word(chunk_choice({}, entry.finish_reason), entry))
    chunks = [{**head, "choices": [c]} for c in choices]
    if entry.tool_report:                   # as the tool-call layer reports on a stream's finish chunk
        chunks[-1]["velollm"] = dict(entry.tool_report)
    if include_usage:
        for chunk in chunks:
            chunk["usage"] = None
        chunks.append(_with_usage({**head, "choices": [], "usage": {}}, entry))
    return chunks


def from_json_response(body: dict, tool_report: dict | None = None) -> CachedResponse | None:
    """Record a chat.completion or text_completion body (and what the tool-call layer
    reported of it in the answer's headers); None when it has no complete first choice."""
    choices = body.get("choices") or []
    if len(choices) != 1 or not choices[0].get("finish_reason"):
        return None
    message = choices[0].get("message") or {}
    content = message.get("content") if "message" in choices[0] else choices[0].get("text")
    return CachedResponse(
        model=body.get("model", ""), content=content or "",
        tool_calls=tuple(message.get("tool_calls") or ()),
        finish_reason=choices[0]["finish_reason"], usage=body.get("usage"),
        created=int(body.get("created") or 0),
        reasoning_content=message.get("reasoning_content") or "",
        system_fingerprint=body.get("system_fingerprint"), stop_word=stop_word_of(body, choices[0]),
        tool_report=tool_report or None, context=_context_of(body))


def _context_of(body: dict) -> tuple[int, ...] | None:
    return tuple(body["context"]) if isinstance(body.get("context"), list) else None


class _StreamRecorder:
    """Accumulates chunk deltas: content pieces, tool calls merged by index, usage."""

    def __init__(self):
        self.model, self.created, self.fingerprint = "", 0, None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict] = {}
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.num_choices_seen: set[int] = set()
        self.stop_word: str | None = None
        self.tool_report: dict | None = None
        self.context: tuple[int, ...] | None = None

    def feed(self, chunk: dict) -> None:
        self.model = chunk.get("model") or self.model
        if isinstance(chunk.get("velollm"), dict):        # the tool-call layer's report (finish chunk)
            self.tool_report = chunk["velollm"]
        self.created = chunk.get("created") or self.created
        self.fingerprint = chunk.get("system_fingerprint") or self.fingerprint
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        self.context = _context_of(chunk) or self.context
        for choice in chunk.get("choices") or []:
            self.num_choices_seen.add(choice.get("index", 0))
            self._feed_delta(choice.get("delta") or {"content": choice.get("text")})
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            self.stop_word = stop_word_of(chunk, choice) or self.stop_word

    def _feed_delta(self, delta: dict) -> None:
        if delta.get("content"):
            self.content.append(delta["content"])
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            self.reasoning.append(reasoning)
        for tc in delta.get("tool_calls") or []:
            self._feed_tool_call(tc)

    def _feed_tool_call(self, tc: dict) -> None:
        slot = self.tool_calls.setdefault(tc.get("index", len(self.tool_calls)), {
            "id": None, "type": "function", "function": {"name": None, "arguments": ""}})
        slot["id"] = tc.get("id") or slot["id"]
        slot["type"] = tc.get("type") or slot["type"]
        function = tc.get("function") or {}
        slot["function"]["name"] = function.get("name") or slot["function"]["name"]
        slot["function"]["arguments"] += function.get("arguments") or ""


def from_stream_chunks(chunks) -> CachedResponse | None:
    """Record a stream of chat.completion.chunk dicts; None if incomplete or n > 1."""
    rec = _StreamRecorder()
    for chunk in chunks:
        rec.feed(chunk)
    if rec.finish_reason is None or rec.num_choices_seen - {0}:
        return None
    return CachedResponse(
        model=rec.model, content="".join(rec.content),
        tool_calls=tuple(rec.tool_calls[i] for i in sorted(rec.tool_calls)),
        finish_reason=rec.finish_reason, usage=rec.usage, created=int(rec.created),
        reasoning_content="".join(rec.reasoning),
        chunk_sizes=tuple(len(p) for p in rec.content), system_fingerprint=rec.fingerprint,
        stop_word=rec.stop_word, tool_report=rec.tool_report, context=rec.context)
