"""Turn one segment of model text (a marker block, a fence, a leading JSON value) into calls.

`parse_segment` is the only entry point; `segment.py` decides where segments start and end.
A segment whose calls name no tool of the request is not a tool call: it returns None and
the caller keeps the text as content.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .formats import (
    Loads,
    looks_pythonic,
    parse_function_xml,
    parse_json_values,
    parse_mistral_named,
    parse_pythonic,
    value_to_calls,
)
from .scan import find_value_end
from .tools import RawCall, ToolIndex

# marker -> (segment kind, closing tag or None)
MARKERS = {
    "<tool_call>": ("hermes", "</tool_call>"),
    "<|tool_call|>": ("granite", None),
    "[TOOL_CALLS]": ("mistral", None),
    "<|python_tag|>": ("python-tag", None),
    "<function=": ("qwen-xml", "</function>"),
    "functools[": ("functools", None),
}
MARKER_OF_KIND = {kind: marker for marker, (kind, _close) in MARKERS.items()}
_SPECIAL_TOKENS_RE = re.compile(
    r"<\|eom_id\|>|<\|eot_id\|>|<\|im_end\|>|</tool_call>|</s>|\[/TOOL_CALLS\]|<\|end_of_text\|>")
_FENCE_OPEN_RE = re.compile(r"[ \t]*```[^\n]*\n?")
_FENCE_CLOSE_RE = re.compile(r"\n?[ \t]*```\s*$")


@dataclass
class Extracted:
    """Calls found in one segment, the text left after them, and what was fixed."""
    calls: list[RawCall]
    leftover: str = ""
    fixes: list[str] = field(default_factory=list)


def parse_segment(kind: str, segment: str, index: ToolIndex, loads: Loads) -> Extracted | None:
    fixes: list[str] = []
    body = _segment_body(kind, segment, fixes)
    calls, end = _parse_body(kind, body, index, loads, fixes)
    if not calls:
        return None
    known = [call for call in calls if _resolve_name(call, index)]
    if not known:
        return None
    if len(known) < len(calls):
        fixes.append("dropped-unknown-tool")
    leftover = _SPECIAL_TOKENS_RE.sub("", body[end:])
    return Extracted(known, leftover, fixes)


def _segment_body(kind: str, segment: str, fixes: list[str]) -> str:
    if kind in ("json", "qwen-xml"):
        return segment
    if kind == "fence":
        fixes.append("fence")
        body = segment[_FENCE_OPEN_RE.match(segment).end():]
        return _FENCE_CLOSE_RE.sub("", body)
    marker = MARKER_OF_KIND[kind]
    body = segment[len(marker) - (kind == "functools"):]  # functools[ keeps its bracket
    close = MARKERS[MARKER_OF_KIND[kind]][1]
    if close and body.rstrip().endswith(close):
        body = body.rstrip()[:-len(close)]
    return body


def _parse_body(kind: str, body: str, index: ToolIndex, loads: Loads, fixes: list[str]):
    """(calls, end of the text they came from) for one segment body."""
    stripped = body.lstrip()
    if stripped.startswith("<function="):
        fixes.append("extracted-qwen-xml")
        return parse_function_xml(body, loads, fixes), len(body)
    fixes.append("extracted-" + (kind if kind != "fence" else "json"))
    if looks_pythonic(body):
        calls, end = _parse_pythonic_prefix(body, index)
        if calls:
            fixes.append("extracted-pythonic")
            return calls, end
    if kind == "mistral" and stripped[:1] not in ("{", "[", ""):
        return parse_mistral_named(body, loads, fixes)
    calls, end = _json_calls(body, index, loads, fixes)
    if not calls and kind not in ("json", "fence"):
        return _whole_body_calls(body, index, loads, fixes)
    return calls, end


def _whole_body_calls(body: str, index: ToolIndex, loads: Loads, fixes: list[str]):
    """Inside a marker the text is meant as a call: allow prose or a fence around the JSON."""
    try:
        value, value_fixes = loads(body)
    except ValueError:
        return None, 0
    calls = value_to_calls(value, index, loads, fixes)
    fixes.extend(value_fixes)
    return calls, len(body)


def _parse_pythonic_prefix(body: str, index: ToolIndex) -> tuple[list[RawCall] | None, int]:
    start = len(body) - len(body.lstrip())
    bracket = start if body[start] == "[" else body.find("(", start)
    end = find_value_end(body, bracket) or len(body)
    return parse_pythonic(body[start:end], index), end


def _json_calls(body: str, index: ToolIndex, loads: Loads, fixes: list[str]):
    """Calls from JSON values one after another; stops at the first value that is no call."""
    calls: list[RawCall] = []
    end = 0
    value_fixes: list[str] = []
    for value, start, value_end in parse_json_values(body, loads, value_fixes):
        found = value_to_calls(value, index, loads, value_fixes)
        if not found:
            break
        calls.extend(found)
        end = value_end
    fixes.extend(value_fixes)
    return calls, end


def _resolve_name(call: RawCall, index: ToolIndex) -> bool:
    name, fix = index.resolve(call.name)
    if name is None:
        return False
    call.name = name
    if fix:
        call.fixes.append(fix)
    return True
