"""Segments whose header decides where they end (Functionary `>>>`, Harmony, Command-R `Action:`).

`read_header(kind, text, start, eof)` returns the end finder (`ends.py`) for the segment that
starts at text[start], or None while the header is still incomplete. A header that turns out to
be no header (`>>> ` in a REPL transcript, `Action: call the plumber`) gives a segment of the
marker alone, which the parser then releases as content.
"""
from __future__ import annotations

import re

from .ends import Here, Until, ValueEnd

_WS_RE = re.compile(r"\s*")
_NAME_RE = re.compile(r"[\w.\-]*")
_NAME_MAX = 64
_HARMONY_MESSAGE = "<|message|>"
_HARMONY_HEADER_MAX = 256
_HARMONY_CHANNEL_RE = re.compile(r"<\|channel\|>\s*(\w+)")
HARMONY_RECIPIENT_RE = re.compile(r"\bto=([^\s<]+)")
_HARMONY_CALL_ENDS = ("<|call|>", "<|end|>", "<|return|>")
_HARMONY_ANALYSIS_ENDS = ("<|end|>", "<|return|>")
_HARMONY_NEXT = ("<|start|>", "<|channel|>")


def read_header(kind: str, text: str, start: int, eof: bool):
    return _READERS[kind](text, start, eof)


def _functionary(text: str, start: int, eof: bool):
    """`>>>NAME\\n{...}` ends with its JSON value; `>>>all\\n` is the header alone (the text
    after it is content); `>>>python\\n` code runs to the next `>>>`."""
    pos = start + len(">>>")
    name = _NAME_RE.match(text, pos)
    if name.end() >= len(text):
        return _more_or_rest(text, eof, pos) if name.end() - pos <= _NAME_MAX else Here(pos)
    if not name.group() or text[name.end()] != "\n" or name.end() - pos > _NAME_MAX:
        return Here(pos)
    body = name.end() + 1
    if name.group() == "all":
        return Here(body)
    value = _WS_RE.match(text, body).end()
    if value >= len(text):
        return _more_or_rest(text, eof, pos)
    if text[value] in "{[":
        return ValueEnd(value)
    if name.group() == "python":
        return Until(body, (), (">>>",))
    return Here(body)


def _harmony(text: str, start: int, eof: bool):
    """A message header up to `<|message|>`: with a recipient (`to=functions.NAME`) the body
    runs to `<|call|>`; an analysis body runs to `<|end|>`; any other (final, a commentary
    preamble) is the header alone, its body being content."""
    found = text.find(_HARMONY_MESSAGE, start, start + _HARMONY_HEADER_MAX + len(_HARMONY_MESSAGE))
    marker_end = start + (len("<|start|>") if text.startswith("<|start|>", start) else len("<|channel|>"))
    if found < 0:
        if len(text) - start > _HARMONY_HEADER_MAX + len(_HARMONY_MESSAGE):
            return Here(marker_end)
        return _more_or_rest(text, eof, marker_end)
    header, body = text[start:found], found + len(_HARMONY_MESSAGE)
    if HARMONY_RECIPIENT_RE.search(header):
        return Until(body, _HARMONY_CALL_ENDS, _HARMONY_NEXT)
    if harmony_channel(header) == "analysis":
        return Until(body, _HARMONY_ANALYSIS_ENDS, _HARMONY_NEXT)
    return Here(body)


def harmony_channel(header: str) -> str | None:
    match = _HARMONY_CHANNEL_RE.search(header)
    return match.group(1) if match else None


def _action(text: str, start: int, eof: bool):
    """Command-R: `Action: ```json\\n[...]```` ends after its closing fence, `Action: [...]`
    with its JSON value; `Action:` before anything else is prose. The text's end cutting it at
    the marker or in its fence line (`Action:`, `Action: ```js`) gives a cut header."""
    pos = start + len("Action:")
    value = _WS_RE.match(text, pos).end()
    if value >= len(text):
        return _more_or_rest(text, eof, pos)
    if text[value] in "[{":
        return ValueEnd(value)
    if text.startswith("```", value):
        newline = text.find("\n", value)
        if newline < 0:
            return _more_or_rest(text, eof, pos)
        return Until(newline, ("```",), ())  # the closing fence, on its own line or right after `]`
    if "```".startswith(text[value:]):
        return _more_or_rest(text, eof, pos)
    return Here(pos)


def _more_or_rest(text: str, eof: bool, body_from: int | None = None):
    """None while the header may grow; at the end of the text the rest is the segment, a cut
    one (see segment.cut_call) when `body_from` says where its body began."""
    if not eof:
        return None
    return Here(len(text), cut_from=body_from)


_READERS = {"functionary": _functionary, "harmony": _harmony, "command-r-action": _action}
