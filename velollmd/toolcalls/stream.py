"""Streaming tool-call filter: content deltas pass through, calls come out whole.

Content is released as soon as it cannot be the start of a call; from a tool-call marker or a
leading `{` / `[` on, only the call is buffered, then emitted as one complete call (the
daemon turns it into `delta.tool_calls` chunks). Text that turns out not to be a call is
released as content unchanged. With a forced tool_choice ("required", a named function) the
content is held to the end: dropped when a call came (the answer is the calls alone, as in
`finish_result`), released whole when none did. Any chunking gives the same final result as
`pipeline.process_output` on the whole text.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ToolsConfig
from .assemble import CallAssembler, ToolResult, backend_raw_call, finish_result, new_segmenter
from .tools import ToolIndex


@dataclass(frozen=True)
class StreamEvent:
    """Content text (`content`), reasoning text (`reasoning`: a Harmony analysis message, a
    Command R7B thinking block) or one complete call (index, id, name, arguments)."""
    content: str | None = None
    reasoning: str | None = None
    index: int | None = None
    id: str | None = None
    name: str | None = None
    arguments: str | None = None     # JSON text

    @property
    def is_call(self) -> bool:
        return self.index is not None

    def tool_call_delta(self) -> dict:
        """This call as one OpenAI `delta.tool_calls` entry."""
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallStream:
    def __init__(self, tools: list[dict], *, tool_choice=None, config: ToolsConfig = ToolsConfig(),
                 messages: list[dict] | None = None, parallel_tool_calls: bool = True):
        index = ToolIndex(tools)
        self.passthrough = not index
        self.messages = messages
        self.assembler = CallAssembler(index, tool_choice, config, parallel_tool_calls)
        self.segmenter = new_segmenter(index, config)
        self.content_parts: list[str] = []
        self.reasoning_parts: list[str] = []
        self.held: list[str] = []               # content of a forced call's answer, until the end
        self.result: ToolResult | None = None   # set by finish()

    def feed(self, text: str) -> list[StreamEvent]:
        if self.passthrough:
            self.content_parts.append(text)
            return [StreamEvent(content=text)] if text else []
        return self._events(self.segmenter.feed(text))

    def add_calls(self, tool_calls: list[dict]) -> list[StreamEvent]:
        """Calls the backend parsed itself (complete ones), cleaned like extracted calls."""
        events = []
        for call in tool_calls:
            if isinstance(call, dict):
                events += self._call_event(self.assembler.add(backend_raw_call(call)))
        return events

    def finish(self, cut: bool = False) -> list[StreamEvent]:
        """The end of the stream; `cut`: max_tokens ended it (see Segmenter.finish)."""
        events = [] if self.passthrough else self._events(self.segmenter.finish(cut))
        if self.held and not self.assembler.calls:
            events.append(StreamEvent(content="".join(self.held)))
        content = "".join(self.content_parts)
        self.result = finish_result(content, self.assembler, self.messages, "".join(self.reasoning_parts))
        return events

    @property
    def finish_reason(self) -> str | None:
        return "tool_calls" if self.assembler.calls else None

    def _events(self, pieces: list) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for kind, value in pieces:
            if kind == "content":
                self.content_parts.append(value)
                if self.assembler.forces_a_call:
                    self.held.append(value)
                else:
                    events.append(StreamEvent(content=value))
                continue
            if kind == "reasoning":
                self.reasoning_parts.append(value)
                events.append(StreamEvent(reasoning=value))
                continue
            self.assembler.fix(*value.fixes)
            for raw in value.calls:
                events += self._call_event(self.assembler.add(raw))
        return events

    def _call_event(self, call: dict | None) -> list[StreamEvent]:
        if call is None:
            return []
        function = call["function"]
        return [StreamEvent(index=len(self.assembler.calls) - 1, id=call["id"],
                            name=function["name"], arguments=function["arguments"])]
