"""Tolerant JSON for model output (stdlib only).

`loads_repaired` tries `json.loads` first, so valid JSON costs what `json.loads` costs. When
that fails, the C decoder's error position usually names the one broken spot (a trailing
comma, `True`, an unquoted key, a raw newline); it is fixed in place and `json.loads` runs
again, a few times at most. Anything else goes to a forgiving recursive-descent parser,
which still hands every well-formed sub-value back to the C decoder (`raw_decode`). Each
repair is reported as a short fix token (the words of the `x-velollm-tool-repair` header).
"""
from __future__ import annotations

import json
import re
from json.decoder import scanstring

from ..wire import wirejson
from .spotfix import UNSET, spot_repair

_DECODER = json.JSONDecoder()
_WS_RE = re.compile(r"[ \t\r\n\ufeff]*")
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_WORD_RE = re.compile(r"[A-Za-z_$][\w$\-]*")
_UNQUOTED_VALUE_RE = re.compile(r"[^,}\]\n]*")
_UNQUOTED_KEY_RE = re.compile(r"[^:,{}\[\]\n\"']*")
_FENCE_RE = re.compile(r"^\s*```[\w-]*[ \t]*\n?|\n?[ \t]*```\s*$")
_STRING_RUN = {'"': re.compile(r'[^"\\\n\r\t]+'), "'": re.compile(r"[^'\\\n\r\t]+")}
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t", "'": "'"}
_LITERALS = {"true": (True, None), "false": (False, None), "null": (None, None),
             "True": (True, "python-literal"), "False": (False, "python-literal"),
             "None": (None, "python-literal"), "undefined": (None, "python-literal"),
             "NaN": (float("nan"), None), "Infinity": (float("inf"), None)}
_VALUE_FOLLOWERS = ",}]"
_SKIPPABLE = " \t\r\n\ufeff#/"


class _Truncated(Exception):
    """The document ended where a value should start."""


def loads_repaired(text: str) -> tuple[object, list[str]]:
    """Parse `text` as JSON, repairing what models break. Returns (value, fixes).

    Raises ValueError when no JSON value can be recovered, or when it nests deeper than
    wirejson.MAX_DEPTH (the repairing parser recurses).
    """
    try:
        value, fixes = _loads_repaired(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {wirejson.MAX_DEPTH} levels") from None
    wirejson.check_depth(value, text)
    return value, fixes


def _loads_repaired(text: str) -> tuple[object, list[str]]:
    try:
        return json.loads(text), []
    except json.JSONDecodeError as error:
        first_error = error
    fixes: list[str] = []
    value = spot_repair(text, first_error, fixes)
    if value is not UNSET:
        return value, fixes
    value, _end, fixes = _Parser(text).document()
    return value, fixes


def parse_prefix(text: str, *, document: bool = False) -> tuple[object, int, list[str]]:
    """Parse the first JSON value in `text`; returns (value, end index, fixes).

    With document=True, text around the value (prose, fences) is allowed and reported.
    """
    parser = _Parser(text)
    try:
        if document:
            return parser.document()
        value = parser.value()
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {wirejson.MAX_DEPTH} levels") from None
    return value, parser.pos, parser.fixes


class _Parser:
    __slots__ = ("text", "pos", "fixes")

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.fixes: list[str] = []

    def fix(self, token: str) -> None:
        if token not in self.fixes:
            self.fixes.append(token)

    # -- document level ------------------------------------------------------------------
    def document(self) -> tuple[object, int, list[str]]:
        text = self.text
        if text.startswith("\ufeff"):
            self.fix("bom")
        stripped = _FENCE_RE.sub("", text)
        if stripped != text:
            self.fix("fence")
            self.text = text = stripped
        self.skip()
        start = self._find_start()
        if start > self.pos:
            self.fix("text-around")
            self.pos = start
        try:
            value = self.value()
        except _Truncated:
            raise ValueError("no JSON value found") from None
        self.skip()
        if self.pos < len(text):
            self.fix("text-around")
        return value, self.pos, self.fixes

    def _find_start(self) -> int:
        """Where the value starts: here if it looks like one, else the first { or [."""
        text, pos = self.text, self.pos
        if pos < len(text) and text[pos] in "{[\"'-0123456789":
            return pos
        match = _WORD_RE.match(text, pos)
        if match and match.group() in _LITERALS and match.end() == len(text.rstrip()):
            return pos
        starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
        if not starts:
            raise ValueError("no JSON value found")
        return min(starts)

    # -- whitespace and comments ---------------------------------------------------------
    def skip(self) -> None:
        text, i = self.text, self.pos
        if i < len(text) and text[i] not in _SKIPPABLE:
            return
        n = len(text)
        i = _WS_RE.match(text, i).end()
        while i < n and (text[i] == "#" or text.startswith(("//", "/*"), i)):
            self.fix("comment")
            if text.startswith("/*", i):
                end = text.find("*/", i + 2)
                i = n if end < 0 else end + 2
            else:
                end = text.find("\n", i)
                i = n if end < 0 else end
            i = _WS_RE.match(text, i).end()
        self.pos = i

    # -- values --------------------------------------------------------------------------
    def value(self):
        self.skip()
        text, i = self.text, self.pos
        if i >= len(text):
            raise _Truncated
        char = text[i]
        if char in "{[":
            try:
                value, self.pos = _DECODER.raw_decode(text, i)
                return value
            except json.JSONDecodeError:
                return self.object() if char == "{" else self.array()
        if char == '"' or char == "'":
            return self.string(is_key=False)
        return self.scalar()

    def object(self) -> dict:
        out: dict = {}
        self._collection(out, "}", lambda: self._member(out))
        return out

    def array(self) -> list:
        out: list = []
        self._collection(out, "]", lambda: self._item(out))
        return out

    def _collection(self, out, close: str, read_one) -> None:
        """Members or items up to `close`; a missing close, a wrong bracket, stray or
        trailing commas are repaired (and noted)."""
        self.pos += 1
        after_comma = False
        while True:
            self.skip()
            if self.pos >= len(self.text):
                self.fix("truncated")
                return
            char = self.text[self.pos]
            if char in "}]":
                if char != close:
                    self.fix("bracket")
                if after_comma:
                    self.fix("trailing-comma")
                self.pos += 1
                return
            if char == ",":
                self.fix("trailing-comma")
                self.pos += 1
                continue
            if not read_one():
                return
            after_comma = self._separator(close)
            if after_comma is None:
                return

    def _item(self, out: list) -> bool:
        """Parse one array item into out; False when the document ended first."""
        try:
            out.append(self.value())
        except _Truncated:
            self.fix("truncated")
            return False
        return True

    def _member(self, out: dict) -> bool:
        """Parse `key: value` into out; False when the document ended first."""
        key = self.key()
        self.skip()
        text = self.text
        if self.pos < len(text) and text[self.pos] in ":=":
            self.pos += 1
        elif self.pos < len(text):
            self.fix("missing-colon")
        self.skip()
        if self.pos >= len(text):
            self.fix("truncated")
            return False
        if text[self.pos] in ",}":
            self.fix("missing-value")
            out[key] = None
            return True
        try:
            out[key] = self.value()
        except _Truncated:
            self.fix("truncated")
            return False
        return True

    def _separator(self, close: str):
        """After a member/item: True after a comma, False before a close, None at the end."""
        self.skip()
        text = self.text
        if self.pos >= len(text):
            self.fix("truncated")
            return None
        char = text[self.pos]
        if char == ",":
            self.pos += 1
            return True
        if char not in "}]":
            self.fix("missing-comma")
        return False

    def key(self) -> str:
        text, i = self.text, self.pos
        if text[i] == '"' or text[i] == "'":
            return self.string(is_key=True)
        match = _UNQUOTED_KEY_RE.match(text, i)
        self.pos = match.end()
        self.fix("unquoted-key")
        return match.group().strip()

    def scalar(self):
        text, i = self.text, self.pos
        word = _WORD_RE.match(text, i)
        if word:
            found = _LITERALS.get(word.group())
            if found is not None:
                self.pos = word.end()
                if found[1]:
                    self.fix(found[1])
                return found[0]
            if word.end() == len(text) and _is_literal_prefix(word.group()):
                self.pos = word.end()
                self.fix("truncated")
                return _LITERALS[_is_literal_prefix(word.group())][0]
        number = _NUMBER_RE.match(text, i)
        if number and (number.end() >= len(text) or text[number.end()] in " \t\r\n,}]:/#"):
            self.pos = number.end()
            return _to_number(number.group(), self)
        match = _UNQUOTED_VALUE_RE.match(text, i)
        raw = match.group().rstrip()
        if not raw:
            raise ValueError(f"unexpected {text[i]!r} at {i}")
        self.pos = i + len(raw)
        self.fix("unquoted-string")
        return raw

    # -- strings -------------------------------------------------------------------------
    def string(self, *, is_key: bool) -> str:
        text, i = self.text, self.pos
        if text[i] == '"':
            try:
                value, end = scanstring(text, i + 1, True)
                if self._ends_string(end, is_key):
                    self.pos = end
                    return value
            except json.JSONDecodeError:
                pass
        else:
            self.fix("single-quotes")
        return self._loose_string(text[i], is_key)

    def _ends_string(self, end: int, is_key: bool) -> bool:
        """Is the quote before `end` really the closing one? (vs an unescaped inner quote)"""
        text = self.text
        j = _WS_RE.match(text, end).end()
        if j >= len(text):
            return True
        char = text[j]
        if is_key:
            return char in ":=,}"
        return char in _VALUE_FOLLOWERS or char in "\"'/#" or (j > end and text[end:j].count("\n") > 0)

    def _loose_string(self, quote: str, is_key: bool) -> str:
        text, n = self.text, len(self.text)
        run_re = _STRING_RUN[quote]
        parts: list[str] = []
        i = self.pos + 1
        while i < n:
            run = run_re.match(text, i)
            if run:
                parts.append(run.group())
                i = run.end()
                continue
            char = text[i]
            if char == quote:
                if self._ends_string(i + 1, is_key):
                    self.pos = i + 1
                    return _join(parts)
                self.fix("unescaped-quote")
                parts.append(char)
                i += 1
            elif char == "\\":
                i = self._escape(i, parts)
            else:  # raw newline, carriage return or tab inside a string
                self.fix("raw-newline" if char in "\r\n" else "control-char")
                parts.append(char)
                i += 1
        self.fix("truncated")
        self.pos = n
        return _join(parts)

    def _escape(self, i: int, parts: list[str]) -> int:
        text = self.text
        if i + 1 >= len(text):
            return i + 1
        char = text[i + 1]
        if char in _ESCAPES:
            parts.append(_ESCAPES[char])
            return i + 2
        hex_digits = text[i + 2:i + 6]
        if char == "u" and len(hex_digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in hex_digits):
            parts.append(chr(int(hex_digits, 16)))
            return i + 6
        self.fix("invalid-escape")
        parts.append("\\" + char)
        return i + 2


def _join(parts: list[str]) -> str:
    """Join string pieces, pairing up surrogates decoded from \\uD83D\\uDE00 escapes."""
    out = "".join(parts)
    if any("\ud800" <= c <= "\udfff" for c in out):
        out = out.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return out


def _is_literal_prefix(word: str) -> str | None:
    for literal in ("true", "false", "null", "True", "False", "None"):
        if literal.startswith(word):
            return literal
    return None


def _to_number(raw: str, parser: _Parser):
    if raw.startswith("+") or raw.startswith(".") or raw.endswith(".") or raw.startswith("-."):
        parser.fix("number")
    if raw.lstrip("+-").isdigit():
        return int(raw)
    return float(raw)
