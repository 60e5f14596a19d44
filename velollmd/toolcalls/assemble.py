"""One reply in, clean OpenAI tool_calls out: extract -> repair -> validate -> dedup -> guard.

`process_output` is for whole replies; `stream.ToolCallStream` does the same incrementally.
Both feed RawCalls into one `CallAssembler`, which owns everything after extraction, so a
streamed reply ends exactly as the same reply processed whole.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial

from ..config import ToolsConfig
from ..wire import wirejson
from ..wire.ids import ensure_call_id
from ..wire.tools import parse_tool_choice
from .choice import check_tool_choice
from .extract import Extracted, parse_segment
from .formats import Loads
from .loopguard import call_key, detect_loop
from .repair import loads_repaired
from .schema import validate_and_coerce
from .segment import Segmenter
from .tools import RawCall, ToolIndex


@dataclass
class ToolResult:
    content: str | None
    tool_calls: list[dict] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)   # for x-velollm-tool-repair
    loop: bool = False                                 # for x-velollm-tool-loop
    error: str | None = None                           # schema / tool_choice text for a retry
    reasoning: str | None = None                       # Harmony analysis, Command R7B thinking

    @property
    def finish_reason(self) -> str | None:
        return "tool_calls" if self.tool_calls else None


def strict_loads(text: str) -> tuple[object, list[str]]:
    return wirejson.loads(text), []


def loads_for(config: ToolsConfig) -> Loads:
    return loads_repaired if config.repair else strict_loads


def new_segmenter(index: ToolIndex, config: ToolsConfig) -> Segmenter:
    parse = partial(_parse_segment, index=index, loads=loads_for(config))
    return Segmenter(parse)


def _parse_segment(kind: str, text: str, *, index: ToolIndex, loads: Loads) -> Extracted | None:
    return parse_segment(kind, text, index, loads)


class CallAssembler:
    """Cleans calls one at a time: arguments decoded, names checked, tool_choice, schema,
    dedup, parallel_tool_calls, ids. Keeps the fixes and errors seen so far."""

    def __init__(self, index: ToolIndex, tool_choice=None, config: ToolsConfig = ToolsConfig(),
                 parallel_tool_calls: bool = True):
        self.index = index
        self.config = config
        self.parallel = parallel_tool_calls is not False
        self.loads = loads_for(config)
        self.mode, self.chosen = parse_tool_choice(tool_choice)
        self.tool_choice = tool_choice
        self.calls: list[dict] = []
        self.fixes: list[str] = []
        self.errors: list[str] = []
        self._keys: set[str] = set()
        self._ids: set[str] = set()

    @property
    def forces_a_call(self) -> bool:
        """tool_choice "required" or a named function: OpenAI's answer is then the calls alone
        (content null), and Anthropic's (tool_choice "any" / "tool") has no text before them."""
        return self.mode in ("required", "named")

    def fix(self, *tokens: str) -> None:
        for token in tokens:
            if token not in self.fixes:
                self.fixes.append(token)

    def add(self, raw: RawCall) -> dict | None:
        """The finished OpenAI call, or None when it was dropped."""
        name, name_fix = self.index.resolve(raw.name)
        if name is None:
            self.fix("dropped-unknown-tool")
            self.errors.append(f"unknown tool {raw.name!r}")
            return None
        if self.mode == "none" or (self.mode == "named" and name != self.chosen):
            self.fix("dropped-by-tool-choice")
            return None
        arguments, arguments_text = self._arguments(raw, name)
        key = call_key(name, arguments if arguments is not None else arguments_text)
        if self.config.dedup and key in self._keys:
            self.fix("dedup")
            return None
        self._keys.add(key)
        if self.calls and not self.parallel:
            self.fix("dropped-parallel")
            return None
        self.fix(*raw.fixes, *([name_fix] if name_fix else []))
        call = {"id": ensure_call_id(raw.id, self._ids), "type": "function",
                "function": {"name": name, "arguments": arguments_text}}
        self.calls.append(call)
        return call

    def _arguments(self, raw: RawCall, name: str) -> tuple[dict | None, str]:
        """(arguments, their JSON text); keeps a backend's JSON string when nothing changed.
        Arguments that are no JSON object go out as written, (None, text): the client decides,
        as with OpenAI, and the error drives a retry."""
        arguments, fixes = self._decode(raw.arguments, name)
        if arguments is None:
            self.fix("invalid-arguments")
            written = raw.arguments
            return None, written if isinstance(written, str) else json.dumps(written, ensure_ascii=False)
        if self.config.validate:
            arguments, schema_fixes, errors = validate_and_coerce(
                arguments, self.index.schema(name), coerce=self.config.coerce)
            fixes += schema_fixes
            self.errors.extend(f"{name}: {error}" for error in errors)
        self.fix(*fixes)
        if isinstance(raw.arguments, str) and not fixes:
            return arguments, raw.arguments
        return arguments, json.dumps(arguments, ensure_ascii=False)

    def _decode(self, value: object, name: str) -> tuple[dict | None, list[str]]:
        fixes: list[str] = []
        for _ in range(3):  # a JSON string may hold a JSON string (double encoding)
            if not isinstance(value, str):
                break
            if not value.strip():
                return {}, fixes
            try:
                value, value_fixes = self.loads(value)
            except ValueError:
                self.errors.append(f"{name}: arguments are not valid JSON")
                return None, fixes
            fixes += value_fixes
            if isinstance(value, str):
                fixes.append("quoted-json")
        if value is None:
            return {}, fixes
        if not isinstance(value, dict):
            self.errors.append(f"{name}: arguments must be a JSON object, got {type(value).__name__}")
            return None, fixes
        return value, fixes

    def error(self) -> str | None:
        """Everything a retry prompt should tell the model, or None."""
        problems = list(self.errors)
        choice_error = check_tool_choice(self.tool_choice, self.calls)
        if choice_error:
            problems.append(choice_error)
        return "; ".join(problems) or None


def backend_raw_call(call: dict) -> RawCall:
    """A call a backend already parsed (OpenAI or Ollama shape, arguments object or string)."""
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    arguments = function.get("arguments", function.get("parameters", {}))
    return RawCall(str(function.get("name", "")), arguments, call.get("id"))


def process_output(content: str | None, tool_calls: list[dict] | None, tools: list[dict], *,
                   tool_choice=None, config: ToolsConfig = ToolsConfig(),
                   messages: list[dict] | None = None, parallel_tool_calls: bool = True,
                   cut: bool = False) -> ToolResult:
    """Clean one whole reply. Without tools the reply passes through unchanged. `cut`: max_tokens
    ended the reply (finish_reason "length")."""
    index = ToolIndex(tools)
    if not index:
        return ToolResult(content, list(tool_calls or []))
    assembler = CallAssembler(index, tool_choice, config, parallel_tool_calls)
    for call in tool_calls or ():
        if isinstance(call, dict):
            assembler.add(backend_raw_call(call))
    out_content, reasoning = content, []
    if content:
        segmenter = new_segmenter(index, config)
        pieces = segmenter.feed(content) + segmenter.finish(cut)
        out_content = collect_pieces(pieces, assembler, reasoning)
    return finish_result(out_content, assembler, messages, "".join(reasoning))


def collect_pieces(pieces: list, assembler: CallAssembler, reasoning: list[str]) -> str | None:
    """Content text of the pieces; their calls go into the assembler, reasoning text into
    `reasoning`."""
    texts = []
    for kind, value in pieces:
        if kind == "content":
            texts.append(value)
        elif kind == "reasoning":
            reasoning.append(value)
        else:
            assembler.fix(*value.fixes)
            for raw in value.calls:
                assembler.add(raw)
    return "".join(texts)


def finish_result(content: str | None, assembler: CallAssembler,
                  messages: list[dict] | None, reasoning: str = "") -> ToolResult:
    calls = assembler.calls
    if calls and (not content or assembler.forces_a_call):
        content = None                  # a forced call's chatter ("Sure, let me check.") is dropped
    return ToolResult(content=content, tool_calls=calls, fixes=list(assembler.fixes),
                      loop=assembler.config.dedup and detect_loop(calls, messages), error=assembler.error(),
                      reasoning=reasoning or None)
