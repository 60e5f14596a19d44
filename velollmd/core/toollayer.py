"""The tool-call layer in the daemon: cleans every answer to a request that has `tools`.

Whole answers go through `process_output`; streams through a `ToolCallStream`, so content
passes through untouched until something that may be a call appears. tool_choice
"required" / a named function: Ollama is constrained with a `format` schema (see the Ollama
backend); elsewhere a non-streaming answer that breaks it is retried `max_retries` times with
a message telling the model what was wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Awaitable, Callable

from ..config import ToolsConfig
from ..metrics import Metrics
from ..toolcalls.assemble import ToolResult, process_output
from ..toolcalls.choice import retry_messages
from ..toolcalls.stream import ToolCallStream
from ..wire.chunks import chunk_like, merge_tool_call_fragments
from ..wire.request import GenerateRequest
from ..wire.streams import closing
from ..wire.tools import parse_tool_choice

Regenerate = Callable[[GenerateRequest], Awaitable]
REPAIR_HEADER = "x-velollm-tool-repair"
LOOP_HEADER = "x-velollm-tool-loop"


class ToolCallLayer:
    def __init__(self, config: ToolsConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics

    @staticmethod
    def applies(request: GenerateRequest) -> bool:
        """Does this layer read the answer to `request`? (chat requests with tools)"""
        return request.endpoint == "chat" and bool(request.tools)

    async def apply(self, request: GenerateRequest, outcome, regenerate: Regenerate):
        if not self.applies(request):
            return outcome
        if outcome.chunks is not None:
            outcome.chunks = self._stream(request, outcome.chunks)
            return outcome
        result = self._clean_body(request, outcome.body)
        retries = self.config.max_retries if parse_tool_choice(request.body.get("tool_choice"))[0] in (
            "required", "named") else 0
        while result.error and retries > 0:
            retries -= 1
            self.metrics.tool_repairs.inc(kind="retry")
            outcome = await regenerate(self._retry_request(request, outcome.body, result))
            result = self._clean_body(request, outcome.body)
        self._headers(outcome.headers, result)
        return outcome

    def _clean_body(self, request: GenerateRequest, body: dict) -> ToolResult:
        """Every choice cleaned (n > 1); the first one's result (what a retry reads)."""
        return [self._clean_choice(request, choice) for choice in body["choices"]][0]

    def _clean_choice(self, request: GenerateRequest, choice: dict) -> ToolResult:
        message = choice.setdefault("message", {})
        result = process_output(message.get("content"), message.get("tool_calls"), request.tools,
                                tool_choice=request.body.get("tool_choice"), config=self.config,
                                messages=request.body.get("messages"),
                                parallel_tool_calls=request.body.get("parallel_tool_calls", True),
                                cut=choice.get("finish_reason") == "length")
        message["content"] = result.content
        if result.reasoning:
            message["reasoning_content"] = (message.get("reasoning_content") or "") + result.reasoning
        if result.tool_calls:
            message["tool_calls"] = result.tool_calls
        else:
            message.pop("tool_calls", None)
        choice["finish_reason"] = _finish_reason(choice.get("finish_reason"), bool(result.tool_calls))
        self._count(result)
        return result

    def _retry_request(self, request: GenerateRequest, body: dict, result: ToolResult) -> GenerateRequest:
        content = (body["choices"][0].get("message") or {}).get("content")
        messages = retry_messages(request.body["messages"], content, result.error, request.tools,
                                  request.body.get("tool_choice"))
        return replace(request, body={**request.body, "messages": messages})

    def _headers(self, headers: dict, result: ToolResult) -> None:
        """What was fixed, for a whole answer (a stream's head is gone by then: see _report)."""
        headers.update(report_headers(tool_report(result)))

    def _count(self, result: ToolResult) -> None:
        for fix in dict.fromkeys(result.fixes):
            self.metrics.tool_repairs.inc(kind=fix)
        if result.loop:
            self.metrics.tool_loops.inc()

    async def _stream(self, request: GenerateRequest, chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
        """Content deltas pass through until a call may start; calls come out whole, each as
        one `delta.tool_calls` entry with index, id, type, name and arguments. Each choice
        (n > 1) is read on its own, its chunks under its own index."""
        open_choices: dict[int, _ChoiceStream] = {}
        async with closing(chunks) as source_iter:
            async for chunk in source_iter:
                choices = chunk.get("choices") or []
                if not choices:                                   # the usage chunk
                    for out in self._close(open_choices):
                        yield out
                    yield chunk
                    continue
                index = choices[0].get("index", 0)
                choice = open_choices.get(index) or open_choices.setdefault(index, self._choice_stream(request, chunk))
                delta = choices[0].get("delta") or {}
                choice.finish = choices[0].get("finish_reason") or choice.finish
                merge_tool_call_fragments(delta.get("tool_calls"), choice.backend_calls)
                if delta.get("role") and not delta.get("content"):
                    yield _role_chunk(chunk, delta)
                    continue
                if delta.get("reasoning_content"):
                    yield chunk_like(chunk, {"reasoning_content": delta["reasoning_content"]})
                for out in _emit(choice.stream.feed(delta.get("content") or ""), chunk):
                    yield out
        for out in self._close(open_choices):
            yield out

    def _choice_stream(self, request: GenerateRequest, template: dict) -> _ChoiceStream:
        body = request.body
        return _ChoiceStream(ToolCallStream(request.tools, tool_choice=body.get("tool_choice"), config=self.config,
                                            messages=body.get("messages"),
                                            parallel_tool_calls=body.get("parallel_tool_calls", True)), template)

    def _close(self, open_choices: dict[int, _ChoiceStream]) -> list[dict]:
        """The end of every open choice (its calls, its finish chunk), in index order."""
        out = []
        for index in sorted(open_choices):
            choice = open_choices.pop(index)
            events = choice.stream.add_calls([choice.backend_calls[i] for i in sorted(choice.backend_calls)])
            events += choice.stream.finish(cut=choice.finish == "length")
            self._count(choice.stream.result)
            out += _emit(events, choice.template)
            reason = _finish_reason(choice.finish, bool(choice.stream.result.tool_calls))
            out.append(chunk_like(choice.template, {}, finish_reason=reason) | _report(choice.stream.result))
        return out


@dataclass
class _ChoiceStream:
    """One choice of a stream with tools: its call detector, its backend's own calls, the
    chunk its chunks are made like, and its backend's finish_reason."""
    stream: ToolCallStream
    template: dict
    backend_calls: dict[int, dict] = field(default_factory=dict)
    finish: str | None = None


def _finish_reason(backend: str | None, has_calls: bool) -> str:
    """"tool_calls" when calls went out, "stop" for a backend's "tool_calls" when none did;
    an answer cut by max_tokens stays "length", its calls and all (a call it cut short is
    repaired, but the client must know it was cut)."""
    if backend == "length":
        return "length"
    if has_calls:
        return "tool_calls"
    return "stop" if backend in (None, "tool_calls") else backend


def _report(result: ToolResult) -> dict:
    """The headers' news for a stream, on its finish chunk: {"velollm": {"tool_repair": [...],
    "tool_loop": true}}, or nothing when nothing was fixed."""
    report = tool_report(result)
    return {"velollm": report} if report else {}


def tool_report(result: ToolResult) -> dict:
    """What was fixed or flagged: {"tool_repair": [fix, ...], "tool_loop": true}, {} for nothing."""
    report = {}
    if result.fixes:
        report["tool_repair"] = list(dict.fromkeys(result.fixes))
    if result.loop:
        report["tool_loop"] = True
    return report


def report_headers(report: dict | None) -> dict:
    """A report's headers on a whole answer (the answer itself, or a replay of it)."""
    headers = {}
    if report and report.get("tool_repair"):
        headers[REPAIR_HEADER] = ",".join(map(str, report["tool_repair"]))
    if report and report.get("tool_loop"):
        headers[LOOP_HEADER] = "1"
    return headers


def report_of_headers(headers: dict) -> dict:
    """The report a whole answer's headers carry (what the cache keeps with it)."""
    report = {}
    if headers.get(REPAIR_HEADER):
        report["tool_repair"] = headers[REPAIR_HEADER].split(",")
    if headers.get(LOOP_HEADER):
        report["tool_loop"] = True
    return report


def _role_chunk(chunk: dict, delta: dict) -> dict:
    """A chunk that carries the role, less the backend's raw `tool_calls` and finish_reason
    (Ollama sends both with the role): the layer sends its own, cleaned, at the end."""
    if not delta.get("tool_calls") and not chunk["choices"][0].get("finish_reason"):
        return chunk
    return chunk_like(chunk, {k: v for k, v in delta.items() if k != "tool_calls"})


def _emit(events, template: dict):
    for event in events:
        if event.is_call:
            yield chunk_like(template, {"tool_calls": [event.tool_call_delta()]})
        elif event.reasoning:
            yield chunk_like(template, {"reasoning_content": event.reasoning})
        elif event.content:
            yield chunk_like(template, {"content": event.content})
