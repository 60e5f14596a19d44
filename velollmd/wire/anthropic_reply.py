"""OpenAI chat answers and chunks -> Anthropic `message` objects and Messages stream events.

The stream rules clients break on when they are forgotten: `message_start` first (with
usage), then per content block `content_block_start` -> deltas -> `content_block_stop`, one
block open at a time, indexes from 0 without gaps, never a delta for a block that has not
started; a thinking block gets a `signature_delta` before it stops; `message_delta` carries
stop_reason, stop_sequence and the cumulative usage; `message_stop` last. Usage splits the
prompt as Anthropic does: input_tokens + cache_read_input_tokens is the whole prompt.
"""
from __future__ import annotations

import hashlib
import json

from .ids import new_call_id, response_id
from .stopword import stop_word_of

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
               529: "overloaded_error"}
STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}
Event = tuple[str, dict]            # (event name, data)


def error_type_for(status: int) -> str:
    """Anthropic's error type for an HTTP status: other 4xx are invalid requests, other 5xx
    (a backend's 502, a 501) api_error."""
    return ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def error_body(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": error_type_for(status), "message": message}}


def message_id() -> str:
    return response_id("msg").replace("-", "_", 1)


def thinking_signature(thinking: str) -> str:
    """An opaque, stable signature for a thinking block (clients send it back; we ignore it)."""
    return "velollm-" + hashlib.blake2b(thinking.encode(), digest_size=12).hexdigest()


def anthropic_usage(usage: dict | None) -> dict:
    """OpenAI usage -> Anthropic's: the prompt tokens a backend reused from its KV cache are
    cache_read_input_tokens, the rest input_tokens (local servers never bill a cache write)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    cached = min(cached, prompt)
    return {"input_tokens": prompt - cached, "output_tokens": int(usage.get("completion_tokens") or 0),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def stop_reason_of(finish_reason: str | None, stop_word: str | None, stop_sequences: list[str] | None,
                   num_tool_uses: int) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). Only a backend that names the stop string gives
    stop_sequence: in OpenAI's answer an end-of-turn token and a stop string look alike."""
    if num_tool_uses and finish_reason in (None, "stop", "tool_calls"):
        return "tool_use", None
    if finish_reason in STOP_REASONS:
        return STOP_REASONS[finish_reason], None
    if stop_word is not None and stop_word in (stop_sequences or ()):
        return "stop_sequence", stop_word
    return "end_turn", None


def _input_json(arguments: str) -> str:
    """A tool block's whole arguments as its input_json_delta: as sent when they are an object."""
    return arguments if tool_input(arguments) else "{}"


def tool_input(arguments) -> dict:
    """A tool call's arguments as the object Anthropic clients expect ({} if not an object:
    the tool-call layer has repaired what can be repaired by now)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def chat_to_message(answer: dict, model: str, stop_sequences: list[str] | None = None) -> dict:
    """A whole OpenAI chat answer as an Anthropic `message`."""
    choice = (answer.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if reasoning:
        signature = thinking_signature(reasoning)
        content.append({"type": "thinking", "thinking": reasoning, "signature": signature})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    calls = msg.get("tool_calls") or []
    for call in calls:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name", ""),
                        "input": tool_input(function.get("arguments"))})
    stop_reason, stop_sequence = stop_reason_of(choice.get("finish_reason"), stop_word_of(answer, choice),
                                                stop_sequences, len(calls))
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": anthropic_usage(answer.get("usage"))}


class MessageEvents:
    """OpenAI chat chunks in, Anthropic stream events out: `start()`, `feed(chunk)` per chunk,
    `finish()` at the end. One block is open at a time; a tool call's fragments are held back
    until its name is known, so its block starts with the name, and its arguments until the
    block closes, so its input is always an object ({} for arguments that are none, as
    tool_input())."""

    def __init__(self, model: str, input_tokens: int = 0, stop_sequences: list[str] | None = None):
        self.model, self.input_tokens, self.stop_sequences = model, input_tokens, stop_sequences
        self.index = -1
        self.open: str | int | None = None          # "text", "thinking", a tool-call index or None
        self.thinking: list[str] = []
        self.pending: dict[int, dict] = {}           # tool-call index -> {id, name, arguments}
        self.started_tools: set[int] = set()
        self.tool_arguments: dict[int, str] = {}     # an open tool block's arguments so far
        self.finish_reason: str | None = None
        self.stop_word: str | None = None
        self.usage: dict | None = None

    def start(self) -> list[Event]:
        usage = {"input_tokens": self.input_tokens, "output_tokens": 0,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        message = {"id": message_id(), "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
        return [("message_start", {"type": "message_start", "message": message})]

    def feed(self, chunk: dict) -> list[Event]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events: list[Event] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                events += self._text_delta("thinking", reasoning)
            if delta.get("content"):
                events += self._text_delta("text", delta["content"])
            for fragment in delta.get("tool_calls") or []:
                events += self._tool_fragment(fragment)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            self.stop_word = stop_word_of(chunk, choice) or self.stop_word
        return events

    def finish(self) -> list[Event]:
        events = self._flush_pending() + self._close()
        stop_reason, stop_sequence = stop_reason_of(self.finish_reason, self.stop_word, self.stop_sequences,
                                                    len(self.started_tools))
        usage = anthropic_usage(self.usage) if self.usage else {
            "input_tokens": self.input_tokens, "output_tokens": 0}
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    # -- blocks --------------------------------------------------------------------------

    def _open(self, kind: str | int, block: dict) -> list[Event]:
        events = self._close()
        self.index += 1
        self.open = kind
        return events + [("content_block_start", {"type": "content_block_start", "index": self.index,
                                                  "content_block": block})]

    def _close(self) -> list[Event]:
        if self.open is None:
            return []
        events = []
        if self.open == "thinking":
            signature = thinking_signature("".join(self.thinking))
            events.append(self._delta({"type": "signature_delta", "signature": signature}))
            self.thinking = []
        arguments = self.tool_arguments.pop(self.open, "") if isinstance(self.open, int) else ""
        if arguments:
            events.append(self._delta({"type": "input_json_delta", "partial_json": _input_json(arguments)}))
        self.open = None
        return events + [("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _delta(self, delta: dict) -> Event:
        return ("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def _text_delta(self, kind: str, text: str) -> list[Event]:
        events = self._flush_pending()
        if self.open != kind:
            block = {"type": "text", "text": ""} if kind == "text" else \
                {"type": "thinking", "thinking": "", "signature": ""}
            events += self._open(kind, block)
        if kind == "thinking":
            self.thinking.append(text)
            return events + [self._delta({"type": "thinking_delta", "thinking": text})]
        return events + [self._delta({"type": "text_delta", "text": text})]

    def _tool_fragment(self, fragment: dict) -> list[Event]:
        index = fragment.get("index", 0)
        function = fragment.get("function") or {}
        if index in self.started_tools:           # (a call's fragments come together, OpenAI-style)
            if self.open == index:
                self.tool_arguments[index] += function.get("arguments") or ""
            return []
        call = self.pending.setdefault(index, {"id": None, "name": "", "arguments": ""})
        call["id"] = fragment.get("id") or call["id"]
        call["name"] += function.get("name") or ""
        call["arguments"] += function.get("arguments") or ""
        return self._start_tool(index) if call["name"] else []

    def _start_tool(self, index: int) -> list[Event]:
        call = self.pending.pop(index)
        call["id"] = call["id"] or new_call_id()
        self.started_tools.add(index)
        events = self._open(index, {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}})
        self.tool_arguments[index] = call["arguments"]
        return events

    def _flush_pending(self) -> list[Event]:
        """Calls still held back (their name never came): started with what there is."""
        events = []
        for index in sorted(self.pending):
            events += self._start_tool(index)
        return events
