"""Where does a JSON (or Python-literal) value end? A resumable bracket scanner.

The scanner knows strings (double quotes always; single quotes only where a value may start,
so the apostrophe in `it's` outside a string does not open one) and counts {[( against }]).
It never parses: it only finds the end, so a stream can tell when a buffered call is complete.
Feeding it a longer text later resumes where it stopped, so streaming stays linear.
"""
from __future__ import annotations

import re

_OUTSIDE_RE = re.compile(r"[^{}\[\]()\"']+")
_RUN_RE = {'"': re.compile(r'[^"\\]+'), "'": re.compile(r"[^'\\]+")}
_OPENERS = "{[("
_CLOSERS = "}])"
_VALUE_STARTS = "{[(,:="


class ValueEndScanner:
    """Scans text[start:] for the end of the value starting at `start` (a bracket or quote)."""

    __slots__ = ("pos", "depth", "quote", "end")

    def __init__(self, start: int):
        self.pos = start
        self.depth = 0
        self.quote: str | None = None
        self.end: int | None = None

    def scan(self, text: str) -> int | None:
        """The index just past the value, or None if `text` ends before the value does."""
        n = len(text)
        while self.end is None and self.pos < n:
            if not self.quote:
                self._outside(text)
            elif not self._in_string(text):
                break  # a backslash ends the text: wait for the escaped character
        return self.end

    def _in_string(self, text: str) -> bool:
        run = _RUN_RE[self.quote].match(text, self.pos)
        if run:
            self.pos = run.end()
        elif text[self.pos] == "\\":
            if self.pos + 1 >= len(text):
                return False
            self.pos += 2
        else:
            self.quote = None
            self.pos += 1
            if self.depth == 0:
                self.end = self.pos
        return True

    def _outside(self, text: str) -> None:
        run = _OUTSIDE_RE.match(text, self.pos)
        if run:
            self.pos = run.end()
            return
        char = text[self.pos]
        if char == '"' or (char == "'" and _value_may_start(text, self.pos)):
            self.quote = char
        elif char in _OPENERS:
            self.depth += 1
        elif char in _CLOSERS:
            self.depth -= 1
            if self.depth <= 0:
                self.end = self.pos + 1
        self.pos += 1


def _value_may_start(text: str, i: int) -> bool:
    j = i - 1
    while j >= 0 and text[j] in " \t\r\n":
        j -= 1
    return j < 0 or text[j] in _VALUE_STARTS


def find_value_end(text: str, start: int) -> int | None:
    return ValueEndScanner(start).scan(text)
