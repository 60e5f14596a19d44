"""Where does an open segment end? One small finder per shape, each resumable.

Each finder's `find_end(text, eof)` returns the index just past the segment, or None while the
text may still grow (at eof the segment ends at the end of the text). Finders remember how far
they searched, so feeding a stream token by token stays linear.
"""
from __future__ import annotations

import re

from .scan import ValueEndScanner

_FENCE_CLOSE_RE = re.compile(r"\n[ \t]*```")


class Here:
    """The segment ends at a known index (a marker alone, a header without a body). With
    `cut_from` it is a header the end of the text cut, its body beginning there."""

    def __init__(self, end: int, cut_from: int | None = None):
        self.end = end
        self.cut = cut_from is not None
        self.body_from = cut_from

    def find_end(self, text: str, eof: bool) -> int | None:
        return self.end


class ValueEnd:
    """The segment ends where the JSON (or Python-literal) value starting at `start` closes."""

    def __init__(self, start: int):
        self.scanner = ValueEndScanner(start)
        self.body_from = start
        self.cut = False                  # ended by the end of the text, the value still open

    def find_end(self, text: str, eof: bool) -> int | None:
        end = self.scanner.scan(text)
        if end is None and eof:
            self.cut = True
            return len(text)
        return end


class FenceEnd:
    """A ``` fence opened on the line before `search_from`: ends after its closing fence."""

    def __init__(self, search_from: int):
        self.search_from = search_from

    def find_end(self, text: str, eof: bool) -> int | None:
        match = _FENCE_CLOSE_RE.search(text, self.search_from)
        if match:
            return match.end()
        if eof:
            return len(text)
        self.search_from = max(self.search_from, len(text) - 16)
        return None


class Until:
    """Ends after the first of `closes` (closing tags) or before the first of `stops` (the
    next segment's marker), whichever comes first."""

    def __init__(self, search_from: int, closes: tuple[str, ...], stops: tuple[str, ...]):
        self.search_from = self.body_from = search_from
        self.closes = closes
        self.stops = stops
        self.longest = max(map(len, closes + stops))
        self.cut = False                  # ended by the end of the text, not by a close or a stop

    def find_end(self, text: str, eof: bool) -> int | None:
        ends = []
        for close in self.closes:
            found = text.find(close, self.search_from)
            if found >= 0:
                ends.append(found + len(close))
        for stop in self.stops:
            found = text.find(stop, self.search_from)
            if found >= 0:
                ends.append(found)
        if ends:
            return min(ends)
        if eof:
            self.cut = True
            return len(text)
        self.search_from = max(self.search_from, len(text) - self.longest)
        return None
