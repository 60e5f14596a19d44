"""Chat stream chunks -> the OpenAI Responses API's stream events.

A Responses stream is a life cycle (`response.created`, `response.in_progress`, then
`response.completed`, `response.incomplete` or `response.failed` carrying the whole
response) around output items, each opened and closed by its own events:

    message        output_item.added -> content_part.added -> output_text.delta* ->
                   output_text.done -> content_part.done -> output_item.done
    reasoning      the same with reasoning_text.delta / reasoning_text.done
    function_call  output_item.added -> function_call_arguments.delta* ->
                   function_call_arguments.done -> output_item.done
    custom_tool_call  output_item.added -> custom_tool_call_input.delta ->
                   custom_tool_call_input.done -> output_item.done (the input is the string
                   inside the function arguments {"input": ...}: it is sent once they are whole,
                   which the tool-call layer makes them anyway)
    local_shell_call  output_item.added -> output_item.done (the action, as OpenAI sends it)

One item is open at a time (reasoning, then text, then calls, as a chat stream sends them);
every event carries `sequence_number`, and `output_index` / `item_id` (/ `content_index`) as
the SDK's stream accumulator needs them to rebuild the final response.
"""
from __future__ import annotations

from .responses import (
    ResponseDraft,
    call_item,
    dict_of,
    logprobs_of,
    message_item,
    reasoning_item,
    reasoning_part,
    response_object,
    status_of,
    text_of,
    text_part,
    usage_of,
)
from .responses_tools import custom_input, exec_action

CALL_TYPES = frozenset({"function_call", "custom_tool_call", "local_shell_call"})
TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete"}


class ResponseEvents:
    """Feeds on chat chunk dicts and returns the events to send, in order."""

    def __init__(self, draft: ResponseDraft):
        self.draft = draft
        self.num_events = 0
        self.output: list[dict] = []    # closed items; the open one gets index len(output)
        self.item: dict | None = None   # the open item
        self.pieces: list[str] = []     # its text or arguments so far
        self.logprobs: list[dict] = []  # its text's token logprobs so far (when asked for)
        self.held_logprobs: list[dict] = []  # of tokens with no text yet (part of a character)
        self.call_index: int | None = None   # the chunk's tool_calls index of an open call
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.response: dict | None = None    # the final response, once finished

    def event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.num_events, **fields}
        self.num_events += 1
        return event

    def start(self) -> list[dict]:
        response = response_object(self.draft, "in_progress", [])
        return [self.event("response.created", response=response),
                self.event("response.in_progress", response=response)]

    def feed(self, chunk: dict) -> list[dict]:
        self.usage = chunk.get("usage") or self.usage
        choices = chunk.get("choices")
        if not choices:
            return []
        delta = choices[0].get("delta") or {}
        self.finish_reason = text_of(choices[0].get("finish_reason")) or self.finish_reason
        events = []
        if text_of(delta.get("reasoning_content")):
            events += self._text("reasoning", delta["reasoning_content"])
        logprobs = self.held_logprobs + logprobs_of(choices[0])
        has_text = delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content")
        self.held_logprobs = [] if has_text else logprobs
        if delta.get("content"):
            events += self._text("message", delta["content"], logprobs)
        for fragment in delta.get("tool_calls") or ():
            if isinstance(fragment, dict):
                events += self._call(fragment)
        return events

    def finish(self) -> list[dict]:
        """The closing events; `self.response` holds the final response after this."""
        status, incomplete = status_of(self.finish_reason)
        events = [] if self.item is not None or self.output else self._open("message")
        events += self._close(status)
        self.response = response_object(self.draft, status, self.output, usage_of(self.usage), incomplete)
        return events + [self.event(TERMINAL[status], response=self.response)]

    def fail(self, message: str, status: int = 502) -> list[dict]:
        """A mid-stream failure (an error with an HTTP `status`): the open item closes as
        incomplete, then `response.failed` with one of the error codes OpenAI defines."""
        events = self._close("incomplete")
        code = "rate_limit_exceeded" if status == 429 else "server_error"
        self.response = response_object(self.draft, "failed", self.output, usage_of(self.usage),
                                        error={"code": code, "message": message})
        return events + [self.event("response.failed", response=self.response)]

    # -- items -------------------------------------------------------------------------------

    def _text(self, kind: str, piece: str, logprobs: list[dict] | None = None) -> list[dict]:
        is_open = self.item is not None and self.item["type"] == kind
        events = [] if is_open else self._close() + self._open(kind)
        self.pieces.append(piece)
        self.logprobs += logprobs or []
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": logprobs or []} if kind == "message" else {}
        return events + [self.event(name, **self._where(), content_index=0, delta=piece, **extra)]

    def _call(self, fragment: dict) -> list[dict]:
        index, function = fragment.get("index", 0), dict_of(fragment.get("function"))
        if self.item is None or self.item["type"] not in CALL_TYPES or index != self.call_index:
            events = self._close() + self._open("call", fragment)
            self.call_index = index
        else:                                   # a later piece of the open call
            events = []
            if "name" in self.item:
                self.item["name"] += text_of(function.get("name"))
        arguments = text_of(function.get("arguments"))
        if arguments:
            self.pieces.append(arguments)
            if self.item["type"] == "function_call":
                events.append(self.event("response.function_call_arguments.delta", **self._where(),
                                         delta=arguments))
        return events

    def _open(self, kind: str, fragment: dict | None = None) -> list[dict]:
        if kind == "call":
            function = {**dict_of(fragment.get("function")), "arguments": ""}
            call = {"id": fragment.get("id"), "function": function}
            self.item = call_item(call, self.draft.kinds, "in_progress")
            return [self.event("response.output_item.added", output_index=len(self.output),
                               item=dict(self.item))]
        make, part = (message_item, text_part) if kind == "message" else (reasoning_item, reasoning_part)
        self.item = make(None, status="in_progress")
        return [self.event("response.output_item.added", output_index=len(self.output), item=dict(self.item)),
                self.event("response.content_part.added", **self._where(), content_index=0, part=part(""))]

    def _close(self, status: str = "completed") -> list[dict]:
        if self.item is None:
            return []
        item, text = self.item, "".join(self.pieces)
        item["status"] = status
        events = self._finish_call(item, text) if item["type"] in CALL_TYPES else self._finish_text(item, text)
        events.append(self.event("response.output_item.done", output_index=len(self.output), item=item))
        self.output.append(item)
        self.item, self.pieces, self.logprobs, self.call_index = None, [], [], None
        return events

    def _finish_call(self, item: dict, arguments: str) -> list[dict]:
        """The open call's last events before output_item.done, its whole arguments known."""
        if item["type"] == "function_call":
            item["arguments"] = arguments
            return [self.event("response.function_call_arguments.done", **self._where(), name=item["name"],
                               arguments=arguments)]
        if item["type"] == "custom_tool_call":
            item["input"] = custom_input(arguments)
            return [self.event("response.custom_tool_call_input.delta", **self._where(), delta=item["input"]),
                    self.event("response.custom_tool_call_input.done", **self._where(), input=item["input"])]
        item["action"] = exec_action(arguments)        # local_shell_call: no events of its own
        return []

    def _finish_text(self, item: dict, text: str) -> list[dict]:
        if item["type"] == "message":
            item["content"] = [text_part(text, self.logprobs)]
            return [self.event("response.output_text.done", **self._where(), content_index=0, text=text,
                               logprobs=self.logprobs),
                    self.event("response.content_part.done", **self._where(), content_index=0,
                               part=text_part(text, self.logprobs))]
        item["content"] = [reasoning_part(text)]
        return [self.event("response.reasoning_text.done", **self._where(), content_index=0, text=text),
                self.event("response.content_part.done", **self._where(), content_index=0,
                           part=reasoning_part(text))]

    def _where(self) -> dict:
        return {"item_id": self.item["id"], "output_index": len(self.output)}
