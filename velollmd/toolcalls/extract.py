"""Turn one segment of model text (a marker block, a fence, a leading JSON value) into calls.

`parse_segment` is the only entry point; `segment.py` decides where segments start and end.
A segment whose calls name no tool of the request is not a tool call: it returns None and
the caller keeps the text as content.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .families import (
    harmony_call,
    is_functionary_text_header,
    is_harmony_analysis,
    parse_deepseek,
    parse_functionary,
    parse_glm,
    parse_kimi,
    split_harmony,
    strip_fence,
)
from .formats import (
    Loads,
    looks_pythonic,
    parse_function_xml,
    parse_json_values,
    parse_mistral_named,
    parse_pythonic,
    value_to_calls,
)
from .markers import MARKERS
from .scan import find_value_end
from .tools import RawCall, ToolIndex

_SPECIAL_TOKENS_RE = re.compile(
    r"<\|eom_id\|>|<\|eot_id\|>|<\|im_end\|>|</tool_call>|</s>|\[/TOOL_CALLS\]|<\|end_of_text\|>")
_FENCE_OPEN_RE = re.compile(r"[ \t]*```[^\n]*\n?")
_FENCE_CLOSE_RE = re.compile(r"\n?[ \t]*```\s*$")
_GLM_START_RE = re.compile(r"\s*[\w.\-]+[ \t]*(?:\n|<arg_key>|$)")


@dataclass
class Extracted:
    """Calls found in one segment, the text left after them, and what was fixed. A segment
    with no calls (a channel header, a thinking block) drops its text; `reasoning` is what it
    held for the reasoning channel."""
    calls: list[RawCall]
    leftover: str = ""
    fixes: list[str] = field(default_factory=list)
    reasoning: str = ""


def parse_segment(kind: str, segment: str, index: ToolIndex, loads: Loads) -> Extracted | None:
    reader = _FAMILY_READERS.get(kind)
    if reader is not None:
        return reader(segment, index, loads)
    fixes: list[str] = []
    body = _segment_body(kind, segment, fixes)
    calls, end = _parse_body(kind, body, index, loads, fixes)
    return _known_calls(calls, index, fixes, _SPECIAL_TOKENS_RE.sub("", body[end:]))


def _known_calls(calls: list[RawCall] | None, index: ToolIndex, fixes: list[str],
                 leftover: str = "") -> Extracted | None:
    """The calls that name a tool of the request; None (not a call) when none does."""
    if not calls:
        return None
    known = [call for call in calls if _resolve_name(call, index)]
    if not known:
        return None
    if len(known) < len(calls):
        fixes.append("dropped-unknown-tool")
    return Extracted(known, leftover, fixes)


def _segment_body(kind: str, segment: str, fixes: list[str]) -> str:
    if kind in ("json", "qwen-xml"):
        return segment
    if kind == "fence":
        fixes.append("fence")
        body = segment[_FENCE_OPEN_RE.match(segment).end():]
        return _FENCE_CLOSE_RE.sub("", body)
    marker = next(m for m in MARKERS if segment.startswith(m))
    body = segment[len(marker) - (kind == "functools"):]  # functools[ keeps its bracket
    close = MARKERS[marker][1]
    if close and body.rstrip().endswith(close):
        body = body.rstrip()[:-len(close)]
    return body


def _parse_body(kind: str, body: str, index: ToolIndex, loads: Loads, fixes: list[str]):
    """(calls, end of the text they came from) for one segment body."""
    stripped = body.lstrip()
    if stripped.startswith("<function="):
        fixes.append("extracted-qwen-xml")
        return parse_function_xml(body, loads, fixes), len(body)
    if kind == "hermes" and _GLM_START_RE.match(body):
        fixes.append("extracted-glm")
        return parse_glm(body), len(body)
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


# -- families whose segments are more than calls -------------------------------------------
def _deepseek(segment: str, index: ToolIndex, loads: Loads) -> Extracted | None:
    return _known_calls(parse_deepseek(_segment_body("deepseek", segment, [])), index, ["extracted-deepseek"])


def _kimi(segment: str, index: ToolIndex, loads: Loads) -> Extracted | None:
    return _known_calls(parse_kimi(_segment_body("kimi", segment, [])), index, ["extracted-kimi"])


def _command_r_action(segment: str, index: ToolIndex, loads: Loads) -> Extracted | None:
    """Command-R's `Action: ```json [{"tool_name", "parameters"}]```` (its own fence: no fix)."""
    fixes: list[str] = []
    body = strip_fence(segment[len("Action:"):])
    calls, _end = _parse_body("command-r", body, index, loads, fixes)
    return _directly_answer(calls) or _known_calls(calls, index, fixes)


def _command_r(segment: str, index: ToolIndex, loads: Loads) -> Extracted | None:
    """Command R7B's `<|START_ACTION|>[...]<|END_ACTION|>`."""
    fixes: list[str] = []
    calls, _end = _parse_body("command-r", _segment_body("command-r", segment, fixes), index, loads, fixes)
    return _directly_answer(calls) or _known_calls(calls, index, fixes)


def _directly_answer(calls: list[RawCall] | None) -> Extracted | None:
    """Command-R's `directly-answer` pseudo tool means: no call, the answer follows."""
    if calls and all(call.name in ("directly-answer", "directly_answer") for call in calls):
        return Extracted([])
    return None


def _functionary(segment: str, index: ToolIndex, loads: Loads) -> Extracted | None:
    if is_functionary_text_header(segment):
        return Extracted([])
    return _known_calls(parse_functionary(segment), index, ["extracted-functionary"])


def _harmony(segment: str, index: ToolIndex, loads: Loads) -> Extracted | None:
    """One Harmony message: a call (with a recipient), reasoning (analysis), or the header of
    content (final, a commentary preamble). An analysis body is never read for calls."""
    parts = split_harmony(segment)
    if parts is None:
        return None
    header, body = parts
    calls = harmony_call(header, body)
    if calls:
        return _known_calls(calls, index, ["extracted-harmony"])
    if is_harmony_analysis(header):
        return Extracted([], reasoning=body.strip())
    return Extracted([])


def _thinking(segment: str, index: ToolIndex, loads: Loads) -> Extracted:
    """Command R7B's `<|START_THINKING|>...<|END_THINKING|>`: reasoning."""
    return Extracted([], reasoning=_segment_body("thinking", segment, []).strip())


def _control(segment: str, index: ToolIndex, loads: Loads) -> Extracted:
    """A token that only frames a message (`<|end|>`, `<|START_RESPONSE|>`): dropped."""
    return Extracted([])


_FAMILY_READERS = {"deepseek": _deepseek, "kimi": _kimi, "command-r": _command_r,
                   "command-r-action": _command_r_action, "functionary": _functionary,
                   "harmony": _harmony, "thinking": _thinking, "control": _control}
