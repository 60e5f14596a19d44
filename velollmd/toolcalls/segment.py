"""Split model text into content and call segments, incrementally (sans-IO, like h11).

Feed text in any chunks; get back pieces: ("content", text), ("reasoning", text) and
("calls", Extracted). The
whole-text path (`pipeline.process_output`) and the stream (`stream.ToolCallStream`) both run
this one state machine, so chunking can never change the result.

Rules, decided on text alone (every decision is stable once made, whatever comes later):
- A segment starts at a tool-call marker (markers.py; anywhere, `Action:` at a line's start),
  at `{` or a ```json-ish fence at the start of a line, or at `[` / `"{` / `"[` when nothing
  but whitespace came before.
- It ends at its closing tag, at the next marker of its spelling, where its JSON value closes,
  at the closing fence, where its header says (headers.py: Harmony, Functionary, Command-R),
  or at the end of the text. A framing token (`<|end|>`) is a segment alone and is dropped.
- Text that might still become a marker or fence (`<tool_ca`, "``") is held back; at the end
  of a text max_tokens cut (`finish(cut=True)`), a markup marker's beginning is dropped.
- A segment the text's end cut that is a call begun (`cut_call`) is dropped, not content. An
  empty marker (`<tool_call></tool_call>`) waits: dropped before a call (a repeated marker's
  stray) or at the end of a text max_tokens cut, released as the text it was before anything
  else.
- Whitespace next to a call is dropped, except that text before and after a call stays
  separated by the whitespace that preceded the call; a segment that is no call is released
  as content unchanged.
"""
from __future__ import annotations

import re
from typing import Callable

from .ends import FenceEnd, Here, Until, ValueEnd
from .extract import Extracted
from .headers import read_header
from .markers import (
    HEADER_KINDS,
    LINE_START_MARKERS,
    LONGEST_MARKER,
    MARKER_FIRST_CHARS,
    MARKER_PREFIXES,
    MARKERS,
    WHOLE_KINDS,
)

_BY_LENGTH = sorted(MARKERS, key=len, reverse=True)
_MARKER_RE = re.compile("|".join(re.escape(m) for m in _BY_LENGTH))
_CANDIDATE_RE = re.compile(_MARKER_RE.pattern + r"|[{\[\"`]")
FENCE_LANGS = {"", "json", "jsonc", "json5", "tool_call", "tool_calls", "tool_code"}
_MORE = "more"  # undecidable until more text arrives
_XML_CALL_START = "<function="
_CUT_CALL_STARTS = ("{", "[", _XML_CALL_START)   # a cut segment body that opens a call
# a call cut in or just after its name: `get_wea`, `get_weather[ARGS]{"ci`, `brave_search.call(query="x`
_CUT_NAME_RE = re.compile(r"[A-Za-z_][\w.\-]*(?:\[ARGS\].*|\([^)]*)?", re.S)
# a gpt-oss message header cut before <|message|>, its parts in the orders gpt-oss writes them:
# role or channel, recipient, channel, content type (`<|constrain|>json`, a bare `json` or its
# beginning), then a tag begun: `commentary to=functions.get_wea`,
# `assistant to=functions.get_weather<|channel|>commentary json`,
# `assistant<|channel|>commentary to=functions.search <|constrain|>js`
_HARMONY_TO = r"(?:\s+to=[^\s<]*)?"
_CUT_HARMONY_HEADER_RE = re.compile(rf"\w*{_HARMONY_TO}(?:\s*<\|channel\|>\w*{_HARMONY_TO})?"
                                    r"(?:\s*<\|constrain\|>\w*|\s+j(?:s(?:on?)?)?)?(?:\s*<[|\w]*)?")
# a header the text's end cut, by kind: gpt-oss's; Command-R's `Action: ```json` fence line begun
_CUT_HEADER_RES = {"harmony": _CUT_HARMONY_HEADER_RE, "command-r-action": re.compile(r"`{1,3}\w*")}
_UNMARKED_KINDS = {"json", "fence"}             # segments no marker opened
_MARKUP_FIRST_CHARS = "<[>"                     # markers no prose word begins (`>>`: Functionary's `>>>`)

ParseSegment = Callable[[str, str], "Extracted | None"]
Piece = tuple[str, object]  # ("content", str) | ("calls", Extracted)


class Segmenter:
    def __init__(self, parse_segment: ParseSegment):
        self.parse_segment = parse_segment
        self.text = ""
        self.pos = 0                      # text[:pos] is decided
        self.segment: _OpenSegment | None = None
        self.held = ""                    # trailing whitespace: released only before more text
        self.after_call = False           # drop whitespace that follows a call
        self.at_start = True              # nothing but whitespace so far
        self.stray = ""                   # empty markers, held until a call or text follows
        self.stray_lead = ""              # the whitespace before them
        self.cut = False                  # max_tokens ended the text (known at finish)

    def feed(self, chunk: str) -> list[Piece]:
        if not self.text and self.pos == 0 and chunk.startswith("\ufeff"):
            chunk = chunk[1:]  # a byte-order mark is never content
        self.text += chunk
        pieces = self._run(eof=False)
        self._trim()
        return pieces

    def finish(self, cut: bool = False) -> list[Piece]:
        """The rest of the text; `cut`: max_tokens cut it (finish_reason "length"), so a
        marker's beginning at its very end (`<tool_`, `[TOOL_CA`) is a call cut at its marker."""
        self.cut = cut
        tail = self._cut_marker_tail() if cut else ""
        pieces = self._run(eof=True)
        if tail:
            self._markup(Extracted([], fixes=["dropped-cut-call"]), pieces)
        if self.stray:
            self._end_stray(pieces)
        if self.held and not self.after_call:
            pieces.append(("content", self.held))
        self.held = ""
        return pieces

    def _run(self, eof: bool) -> list[Piece]:
        pieces: list[Piece] = []
        while True:
            if self.segment is None:
                start, kind = find_segment_start(self.text, self.pos, self.at_start, eof)
                self._content(self.text[self.pos:start], pieces)
                self.pos = start
                if kind is None:
                    return pieces
                self.segment = _OpenSegment(kind, start, self.text)
            end = self.segment.find_end(self.text, eof)
            if end is None:
                return pieces
            self._close_segment(end, pieces)

    def _close_segment(self, end: int, pieces: list[Piece]) -> None:
        segment, self.segment = self.segment, None
        text = self.text[segment.start:end]
        self.pos = end
        found = self.parse_segment(segment.kind, text)
        if found is None and segment.cut_call(text, self.cut):
            found = Extracted([], fixes=["dropped-cut-call"])
        if found is not None:
            self._markup(found, pieces)
        elif segment.empty_call(text):
            self._hold_stray(text)
        else:
            self._content(text, pieces)
        self.at_start = False

    def _markup(self, found: Extracted, pieces: list[Piece]) -> None:
        """A segment that was markup: its calls, fixes and reasoning go out, never its text."""
        if self.stray and (found.calls or found.fixes):
            self._drop_stray(found)
        if found.reasoning:
            pieces.append(("reasoning", found.reasoning))
        if found.calls or found.fixes:
            pieces.append(("calls", found))
        self.after_call = True
        self._content(found.leftover, pieces)

    def _hold_stray(self, text: str) -> None:
        """An empty marker (`<tool_call></tool_call>`) waits for what follows: before a call it
        is the stray of a repeated marker (dropped), before anything else it was text."""
        if not self.stray:
            self.stray_lead, self.held = self.held, ""
        self.stray += self.held + text
        self.held = ""

    def _drop_stray(self, found: Extracted) -> None:
        self.held = self.stray_lead       # the call keeps the whitespace that preceded the stray
        self.stray = self.stray_lead = ""
        found.fixes.append("dropped-empty-call")

    def _end_stray(self, pieces: list[Piece]) -> None:
        """An empty marker the text ends on: when max_tokens cut the text there it opened a call
        that never came (dropped), otherwise the model wrote it as text."""
        if not self.cut:
            self._content(self._take_stray(), pieces)
            return
        found = Extracted([])
        self._drop_stray(found)
        self._markup(found, pieces)

    def _take_stray(self) -> str:
        """The held empty marker (and the whitespace around it), released as the text it was."""
        stray = self.stray_lead + self.stray + self.held
        self.stray = self.stray_lead = self.held = ""
        return stray

    def _cut_marker_tail(self) -> str:
        """Remove and return a markup marker's beginning (`<tool_`, `[TOOL_CA`, `<|python_`, at
        least two characters, `>>` of Functionary's `>>>`) at the very end of undecided text; ""
        when there is none. Word markers' beginnings (`Action`, `functools`) and a lone `<` or `>`
        may be prose: they stay."""
        if self.segment is not None:
            return ""
        start = _partial_marker_start(self.text, self.pos)
        tail = self.text[start:]
        if len(tail) < 2 or tail[0] not in _MARKUP_FIRST_CHARS:
            return ""
        self.text = self.text[:start]
        return tail

    def _content(self, text: str, pieces: list[Piece]) -> None:
        if self.stray and text.strip():
            text = self._take_stray() + text
        if self.after_call:
            text = text.lstrip()
            if not text:
                return
            self.after_call = False
        if not text:
            return
        text = self.held + text
        body = text.rstrip()
        self.held = text[len(body):]
        if body:
            self.at_start = False
            pieces.append(("content", body))

    def _trim(self) -> None:
        """Forget decided text, keeping the current line (line-start rules look back)."""
        if self.segment is None and self.pos > 4096:
            cut = self.text.rfind("\n", 0, self.pos) + 1
            self.text = self.text[cut:]
            self.pos -= cut


def find_segment_start(text: str, pos: int, at_start: bool, eof: bool) -> tuple[int, str | None]:
    """(index, kind) of the first segment at or after pos; kind None means no segment starts
    before index (and text[index:] is held back until more text arrives, unless eof)."""
    i = pos
    while True:
        match = _CANDIDATE_RE.search(text, i)
        if match is None:
            break
        start, token = match.start(), match.group()
        if token in MARKERS:
            if token not in LINE_START_MARKERS or _at_line_start(text, start):
                return start, MARKERS[token][0]
            i = start + 1
            continue
        if not eof and _partial_marker_start(text, start) == start:
            return start, None  # `[TOOL_CA...` may still become a marker
        leading = at_start and not text[pos:start].strip()
        verdict = _classify(text, start, leading, eof)
        if verdict == _MORE:
            return start, None
        if verdict:
            return start, verdict
        i = start + 1
    return (len(text) if eof else _partial_marker_start(text, pos)), None


def _classify(text: str, i: int, leading: bool, eof: bool) -> str | None:
    """Does the bracket, quote or backtick at text[i] start a segment?"""
    char = text[i]
    if char == "{":
        return "json" if _at_line_start(text, i) else None
    if char == "[":
        return "json" if leading else None
    if char == '"':
        if not leading:
            return None
        if i + 1 >= len(text):
            return None if eof else _MORE
        return "json" if text[i + 1] in "{[" else None
    if not _at_line_start(text, i):
        return None
    if not text.startswith("```", i):
        return _MORE if not eof and "```".startswith(text[i:]) else None
    newline = text.find("\n", i)
    if newline < 0:
        return None if eof else _MORE
    return "fence" if text[i + 3:newline].strip().lower() in FENCE_LANGS else None


def _at_line_start(text: str, i: int) -> bool:
    j = i - 1
    while j >= 0 and text[j] in " \t":
        j -= 1
    return j < 0 or text[j] == "\n"


def _partial_marker_start(text: str, pos: int) -> int:
    """Where a marker may be starting at the very end of text (else len(text))."""
    for k in range(max(pos, len(text) - LONGEST_MARKER + 1), len(text)):
        if text[k] in MARKER_FIRST_CHARS and text[k:] in MARKER_PREFIXES:
            return k
    return len(text)


class _OpenSegment:
    """A segment whose start is known; finds its end as text arrives (see ends.py)."""

    def __init__(self, kind: str, start: int, text: str):
        self.kind = kind
        self.start = start
        self.finder = None if kind in HEADER_KINDS else _body_finder(kind, start, text)

    def cut_call(self, text: str, length_cut: bool) -> bool:
        """`text` (this segment's) is a call the text's end cut: markup, not prose, so it is
        dropped, not released as content. A call whose JSON (`<tool_call>{"na`, `[TOOL_CALLS]
        [{"na`, `functools[{"na`) or XML (Qwen3-Coder's `<tool_call>\n<function=get_wea`, a bare
        `<function=get_wea`) was begun is cut in any answer, as is a tagged call's empty body
        (`<tool_call>`: max_tokens 1 or 2). Only when max_tokens ended the text (`length_cut`) is a
        call with its name begun (GLM's `<tool_call>get_wea`, `[TOOL_CALLS]get_wea`,
        Functionary's `>>>get_wea`) or its gpt-oss header begun (`<|channel|>commentary
        to=functions.get_wea`, `<|start|>assistant to=functions.get_weather<|channel|>commentary
        json`) or Command-R's fence line begun (`Action: ```js`) cut, and so is the bare marker of
        a call that has no closing tag (`[TOOL_CALLS]`, `<|python_tag|>`, `Action:`: the end of the
        text ends such a segment in every answer). Otherwise prose that mentions a marker (`wrap it
        in <tool_call> tags`, `models emit [TOOL_CALLS] first`) is content, as is a JSON value or
        fence no marker opened."""
        if self.kind in _UNMARKED_KINDS or not getattr(self.finder, "cut", False):
            return False
        body = text[self.finder.body_from - self.start:].strip()
        if body.startswith(_CUT_CALL_STARTS) or text.startswith(_XML_CALL_START):
            return True
        tagged = isinstance(self.finder, Until) and bool(self.finder.closes)
        if not body:
            return tagged or length_cut
        header = _CUT_HEADER_RES.get(self.kind)
        return length_cut and (_CUT_NAME_RE.fullmatch(body) is not None
                               or (header is not None and header.fullmatch(body) is not None))

    def empty_call(self, text: str) -> bool:
        """A marker with nothing in it (`<tool_call></tool_call>`, or `<tool_call>` right before
        the next `<tool_call>`): a stray of a repeated marker when a call follows."""
        if self.kind in _UNMARKED_KINDS or not isinstance(self.finder, Until):
            return False
        body = text[self.finder.body_from - self.start:].strip()
        return not body or body in self.finder.closes

    def find_end(self, text: str, eof: bool) -> int | None:
        if self.finder is None:
            self.finder = read_header(self.kind, text, self.start, eof)
            if self.finder is None:
                return None
        return self.finder.find_end(text, eof)


def _body_finder(kind: str, start: int, text: str):
    if kind == "json":
        return ValueEnd(start)
    if kind == "functools":
        return ValueEnd(start + len("functools"))
    if kind == "fence":
        return FenceEnd(text.find("\n", start))
    marker = _MARKER_RE.match(text, start).group()
    if kind in WHOLE_KINDS:
        return Here(start + len(marker))
    close = MARKERS[marker][1]
    return Until(start + len(marker), (close,) if close else (), (marker,))
