"""Spot repair: fix the one place `json.loads` complains about, then let it try again.

Most broken tool-call JSON has one or two bad spots (a trailing comma, `True`, an unquoted
key, a raw newline, a cut-off end). The C decoder's error names the position; fixing it in
place and decoding again costs a few `json.loads` calls, far less than parsing in Python.
When a spot is not one of these simple cases, `repair._Parser` takes over from the start.
"""
from __future__ import annotations

import json
import re

_DECODER = json.JSONDecoder()
_LOOSE_DECODER = json.JSONDecoder(strict=False)  # allows raw control characters in strings
_MAX_SPOT_FIXES = 6
_PY_WORD_RE = re.compile(r"(?:True|False|None)\b")
_PY_WORDS = {"True": "true", "False": "false", "None": "null"}
_KEY_WORD_RE = re.compile(r"[A-Za-z_$][\w$\-]*(?=\s*:)")


UNSET = object()


def spot_repair(text: str, error: json.JSONDecodeError, fixes: list[str]) -> object:
    """Fix the spot json.loads complains about, and retry. Returns the value or UNSET
    (then `fixes` is left as it was and the parser starts over from the original text)."""
    decoder, num_fixes = _DECODER, len(fixes)
    for _ in range(_MAX_SPOT_FIXES):
        if error.msg.startswith("Invalid control character") and decoder is _DECODER:
            decoder = _LOOSE_DECODER
            _add(fixes, "raw-newline")
        elif error.msg == "Extra data":
            _add(fixes, "text-around")
            return decoder.raw_decode(text)[0]
        else:
            fixed = _spot_fix(text, error, fixes)
            if fixed is None:
                break
            text = fixed
        try:
            return decoder.decode(text)
        except json.JSONDecodeError as next_error:
            error = next_error
    del fixes[num_fixes:]
    return UNSET


def _spot_fix(text: str, error: json.JSONDecodeError, fixes: list[str]) -> str | None:
    """The text with the error at error.pos fixed, or None when it is no simple spot."""
    pos, msg = error.pos, error.msg
    if pos >= len(text) or msg.startswith("Unterminated string") or not text[pos:].strip():
        closed = _close_truncated(text)
        if closed is not None:
            _add(fixes, "truncated")
        return closed
    char = text[pos]
    if pos == 0 and char == "\ufeff":
        fixes.append("bom")
        return text[1:]
    if char in "}]" and (msg == "Expecting value" or msg.startswith("Expecting property name")):
        comma = _comma_before(text, pos)
        if comma is None:
            return None
        _add(fixes, "trailing-comma")
        return text[:comma] + text[comma + 1:]
    if msg == "Expecting value":
        word = _PY_WORD_RE.match(text, pos)
        if word:
            _add(fixes, "python-literal")
            return text[:pos] + _PY_WORDS[word.group()] + text[word.end():]
    elif msg.startswith("Expecting property name"):
        word = _KEY_WORD_RE.match(text, pos)
        if word:
            _add(fixes, "unquoted-key")
            return text[:pos] + '"' + word.group() + '"' + text[word.end():]
    elif msg == "Expecting ',' delimiter" and char == '"':
        _add(fixes, "missing-comma")
        return text[:pos] + "," + text[pos:]
    if msg.startswith("Invalid \\escape"):
        _add(fixes, "invalid-escape")
        return text[:pos] + "\\" + text[pos:]
    if char in "/#":
        return _drop_comment(text, pos, fixes)
    return None


def _drop_comment(text: str, pos: int, fixes: list[str]) -> str | None:
    if text.startswith("/*", pos):
        end = text.find("*/", pos + 2)
        end = len(text) if end < 0 else end + 2
    elif _is_line_comment(text, pos):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
    else:
        return None
    _add(fixes, "comment")
    return text[:pos] + " " + text[end:]


def _is_line_comment(text: str, pos: int) -> bool:
    return text[pos] == "#" or text.startswith("//", pos)


_TRUNC_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*("?)|[\[\]{}]')
_DANGLING_RE = re.compile(r"[\s,]*$")
_LITERAL_TAIL_RE = re.compile(r"(?<![\w\"])(t|tr|tru|f|fa|fal|fals|n|nu|nul)$")
_CLOSERS = {"{": "}", "[": "]"}


def _close_truncated(text: str) -> str | None:
    """Close what a cut-off document left open: its string, then its arrays and objects.
    None when the cut is messier (inside a key, after a colon, a half number)."""
    stack: list[str] = []
    open_string = False
    for match in _TRUNC_TOKEN_RE.finditer(text):
        token = match.group()
        if token in _CLOSERS:
            stack.append(_CLOSERS[token])
        elif token in "]}":
            if not stack or stack.pop() != token:
                return None
        elif not match.group(1):
            open_string = True
    if open_string:
        text = text[:-1] if text.endswith("\\") and not text.endswith("\\\\") else text
        text += '"'
    else:
        text = text[:_DANGLING_RE.search(text).start()]
        literal = _LITERAL_TAIL_RE.search(text)
        if literal:
            word = literal.group()
            text = text[:literal.start()] + next(w for w in ("true", "false", "null") if w.startswith(word))
        if text.endswith((":", "-", ".", "e", "E", "+")):
            return None
    if not stack:
        return None
    return text + "".join(reversed(stack))


def _comma_before(text: str, pos: int) -> int | None:
    j = pos - 1
    while j >= 0 and text[j] in " \t\r\n":
        j -= 1
    return j if j >= 0 and text[j] == "," else None


def _add(fixes: list[str], token: str) -> None:
    if token not in fixes:
        fixes.append(token)
