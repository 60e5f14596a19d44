"""Readers for the call shapes of DeepSeek, Kimi K2, GLM-4.5/4.6, Functionary v3.2 and gpt-oss.

Each reads one segment body (markers.py says where segments start, ends.py and headers.py
where they end) and returns RawCalls, or None when the text is not a call. Arguments stay as
the model wrote them (JSON text, or GLM's strings); the assembler repairs and coerces them by
the tool's schema like every other family's.

- DeepSeek R1 / V3:  <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>
- DeepSeek V3.1:     <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>
- Kimi K2:           <|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{...}<|tool_call_end|>
- GLM-4.5 / 4.6:     <tool_call>NAME\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>\\n</tool_call>
- Functionary v3.2:  >>>NAME\\n{...}   (>>>all\\n is text, >>>python\\n raw code)
- gpt-oss Harmony:   <|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>
"""
from __future__ import annotations

import re

from .headers import HARMONY_RECIPIENT_RE, harmony_channel
from .tools import RawCall

_FENCE_RE = re.compile(r"^\s*```[\w-]*[ \t]*\n?|\n?[ \t]*```\s*$")

# -- DeepSeek ------------------------------------------------------------------------------
_DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"
_DS_CALL_END = "<｜tool▁call▁end｜>"
_DS_R1_RE = re.compile(r"\s*function\s*<｜tool▁sep｜>\s*([^\n<]+?)\s*\n(.*)", re.S)
_DS_V31_RE = re.compile(r"\s*([^\n<]+?)\s*<｜tool▁sep｜>(.*)", re.S)


def parse_deepseek(body: str) -> list[RawCall] | None:
    """Calls in a DeepSeek section body (or one call's body): R1/V3 and V3.1 shapes."""
    calls = []
    for part in body.split(_DS_CALL_BEGIN):
        part = part.split(_DS_CALL_END, 1)[0]
        match = _DS_R1_RE.match(part) or _DS_V31_RE.match(part)
        if match:
            calls.append(RawCall(match.group(1), strip_fence(match.group(2))))
    return calls or None


def strip_fence(text: str) -> str:
    return _FENCE_RE.sub("", text).strip()


# -- Kimi K2 -------------------------------------------------------------------------------
_KIMI_CALL_BEGIN = "<|tool_call_begin|>"
_KIMI_CALL_END = "<|tool_call_end|>"
_KIMI_CALL_RE = re.compile(r"\s*([^\s<]+?)\s*<\|tool_call_argument_begin\|>(.*)", re.S)
_KIMI_ID_RE = re.compile(r"(?:functions\.)?(.+?)(?::\d+)?")


def parse_kimi(body: str) -> list[RawCall] | None:
    """Calls in a Kimi K2 section body; the id `functions.NAME:IDX` is kept as the call id,
    since Kimi's template writes it back that way in the next turn."""
    calls = []
    for part in body.split(_KIMI_CALL_BEGIN):
        match = _KIMI_CALL_RE.match(part.split(_KIMI_CALL_END, 1)[0])
        if match:
            call_id = match.group(1)
            name = _KIMI_ID_RE.fullmatch(call_id).group(1)
            calls.append(RawCall(name, match.group(2).strip(), call_id))
    return calls or None


# -- GLM-4.5 / 4.6 -------------------------------------------------------------------------
_GLM_RE = re.compile(r"\s*([\w.\-]+)[ \t]*(?:\n|(?=<arg_key>)|$)\s*(<arg_key>.*|\{.*)?$", re.S)
_GLM_ARG_RE = re.compile(
    r"<arg_key>\s*(.*?)\s*</arg_key>\s*<arg_value>(.*?)(?:</arg_value>|(?=<arg_key>)|$)", re.S)


def parse_glm(body: str) -> list[RawCall] | None:
    """`NAME\\n<arg_key>k</arg_key><arg_value>v</arg_value>...` (the body of a <tool_call>);
    GLM-4-0414's `NAME\\n{...}` too. Values stay strings: the schema coerces `3` to 3 and
    `["a"]` to a list."""
    match = _GLM_RE.match(body)
    if match is None:
        return None
    rest = match.group(2) or ""
    if rest.startswith("{"):
        return [RawCall(match.group(1), rest.strip())]
    return [RawCall(match.group(1), dict(_GLM_ARG_RE.findall(rest)))]


# -- Functionary v3.2 ----------------------------------------------------------------------
_FUNCTIONARY_RE = re.compile(r">>>([\w.\-]+)\n(.*)", re.S)


def parse_functionary(segment: str) -> list[RawCall] | None:
    """`>>>NAME\\n{...}` -> a call; `>>>python\\ncode` -> python(code=...); else None
    (`>>>all\\n` is handled by the caller: the header of plain text)."""
    match = _FUNCTIONARY_RE.match(segment)
    if match is None:
        return None
    name, rest = match.group(1), match.group(2)
    if rest.lstrip()[:1] in ("{", "["):
        return [RawCall(name, rest.strip())]
    if name == "python" and rest.strip():
        return [RawCall(name, {"code": rest.rstrip()})]
    return None


def is_functionary_text_header(segment: str) -> bool:
    return segment == ">>>all\n"


# -- gpt-oss Harmony -----------------------------------------------------------------------
_HARMONY_MESSAGE = "<|message|>"
_HARMONY_TAIL_RE = re.compile(r"\s*(?:<\|call\|>|<\|end\|>|<\|return\|>)\s*$")


def split_harmony(segment: str) -> tuple[str, str] | None:
    """(header, body) of one Harmony message, the body without its end token."""
    found = segment.find(_HARMONY_MESSAGE)
    if found < 0:
        return None
    body = segment[found + len(_HARMONY_MESSAGE):]
    return segment[:found], _HARMONY_TAIL_RE.sub("", body)


def harmony_call(header: str, body: str) -> list[RawCall] | None:
    """The call a header with a recipient makes: `to=functions.NAME` (also before the channel)."""
    match = HARMONY_RECIPIENT_RE.search(header)
    if match is None:
        return None
    name = match.group(1)
    return [RawCall(name[len("functions."):] if name.startswith("functions.") else name, body.strip())]


def is_harmony_analysis(header: str) -> bool:
    return harmony_channel(header) == "analysis"
