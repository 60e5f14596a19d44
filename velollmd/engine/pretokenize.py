"""From text to vocabulary pieces, without a vocabulary's state: llama.cpp's pre-tokenizer word
splits, the GPT-2 byte encoding, and the two merge loops (SentencePiece by score, BPE by rank).

llama.cpp (src/unicode.cpp) splits text into words with a list of regexes per `tokenizer.ggml.pre`,
each applied to the pieces the previous one left (matches and the gaps between them both become
pieces). Its regexes use \\p{L} and \\p{N}, which Python's `re` lacks; llama.cpp itself runs them on
a "collapsed" copy of the text in which every code point >= 128 is replaced by one character that
stands for its class (whitespace, or a Unicode general category). We do the same: `collapse()` maps
the text one code point to one character, the patterns below are written against the collapsed
characters, and the spans they find are cut from the original text. The hand-written GPT-2 and
Llama-3 splitters of llama.cpp follow the same regexes, so one mechanism covers every pre here.
"""
from __future__ import annotations

import heapq
import re
import unicodedata
from typing import Mapping

# Unicode's White_Space property (what llama.cpp's tables call whitespace).
WHITESPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    + list(range(0x2000, 0x200B))
)

# Stand-ins for code points >= 128 in the collapsed text (the bytes llama.cpp uses).
_COLLAPSED_WHITESPACE = "\x0b"
_CATEGORY_STAND_IN = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}
_OTHER_STAND_IN = "\xd0"


class _CollapseTable(dict):
    """str.translate table filled on first use of each code point (texts use few distinct ones)."""

    def __missing__(self, cpt: int) -> str:
        if cpt < 128:
            stand_in = chr(cpt)
        elif cpt in WHITESPACE:
            stand_in = _COLLAPSED_WHITESPACE
        else:
            stand_in = _CATEGORY_STAND_IN.get(unicodedata.category(chr(cpt))[0], _OTHER_STAND_IN)
        self[cpt] = stand_in
        return stand_in


_COLLAPSE = _CollapseTable()


def collapse(text: str) -> str:
    """One character per code point: ASCII kept, the rest replaced by its class stand-in."""
    return text.translate(_COLLAPSE)


# Character classes over the collapsed text, as llama.cpp expands \p{..} (ASCII part + stand-in).
_L = "A-Za-z\xd2"
_N = "0-9\xd1"
_P = "!-#%-*,-/:-;?-@\\[-\\]_{}\xd3"     # llama.cpp's ASCII punctuation list: no $+<=>^`|~
_WS = "\\t\\n\\x0b\\x0c\\r "             # std::regex \s on char text: C isspace
_S = f"[{_WS}]"
_NOT_S = f"[^{_WS}]"

_CONTRACTIONS_CASED = "'s|'t|'re|'ve|'m|'ll|'d"
_CONTRACTIONS_ANY_CASE = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

GPT2 = (
    f"{_CONTRACTIONS_CASED}| ?[{_L}]+| ?[{_N}]+| ?[^{_WS}{_L}{_N}]+|{_S}+(?!{_NOT_S})|{_S}+"
)


def _llama3_like(numbers: str) -> str:
    return (
        f"{_CONTRACTIONS_ANY_CASE}|[^\\r\\n{_L}{_N}]?[{_L}]+|[{_N}]{numbers}"
        f"| ?[^{_WS}{_L}{_N}]+[\\r\\n]*|{_S}*[\\r\\n]+|{_S}+(?!{_NOT_S})|{_S}+"
    )


# Pre-tokenizer kind -> the regexes applied in turn (llama.cpp's llm_tokenizer_bpe).
PRE_PATTERNS: dict[str, tuple[re.Pattern, ...]] = {
    "gpt2": (re.compile(GPT2),),
    "llama3": (re.compile(_llama3_like("{1,3}")),),
    "qwen2": (re.compile(_llama3_like("")),),
    "default": (
        re.compile(f"[{_P}$+<=>^~|]+"),
        re.compile(GPT2),
        re.compile(f"[{_N}]+"),
        re.compile("[0-9][0-9][0-9]"),
    ),
}


def split_words(text: str, patterns: tuple[re.Pattern, ...]) -> list[str]:
    """The words of `text` after every pattern has split the pieces the previous one left."""
    collapsed = collapse(text)
    spans = [(0, len(text))]
    for pattern in patterns:
        spans = _split_spans(pattern, collapsed, spans)
    return [text[start:end] for start, end in spans]


def _split_spans(pattern: re.Pattern, collapsed: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in spans:
        pos = start
        for match in pattern.finditer(collapsed, start, end):
            if match.start() > pos:
                out.append((pos, match.start()))   # the gap before a match is a piece too
            out.append(match.span())
            pos = match.end()
        if pos < end:
            out.append((pos, end))
    return out


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes map to themselves."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {char: b for b, char in enumerate(BYTE_TO_UNICODE)}
_LATIN1_TO_BYTE_CHARS = {b: char for b, char in enumerate(BYTE_TO_UNICODE)}


def utf8(text: str) -> bytes:
    """UTF-8 bytes; a vocabulary's invalid bytes (read with surrogateescape) come back as they were,
    other lone surrogates become U+FFFD as llama.cpp reads invalid input."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def as_text(value: str | bytes) -> str:
    """A GGUF string as str (bytes decoded with surrogateescape, so utf8() restores them)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def byte_encode(word: str) -> str:
    """The UTF-8 bytes of `word`, each shown as its GPT-2 byte character."""
    return utf8(word).decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)


def byte_decode(text: str) -> bytes:
    """Undo byte_encode, as llama.cpp's llama_decode_text (odd characters kept as a marker)."""
    out = bytearray()
    for char in text:
        byte = UNICODE_TO_BYTE.get(char)
        if byte is not None:
            out.append(byte)
        else:
            out += b"[UNK_BYTE_0x" + utf8(char).hex().encode() + utf8(text) + b"]"
    return bytes(out)


# ---- merge loops: llama.cpp's llm_tokenizer_spm_session / llm_tokenizer_bpe_session, same tie-breaks ----


def spm_merge(text: str, token_to_id: Mapping[str, int], scores: list[float]) -> list[str]:
    """SentencePiece BPE: merge the adjacent pair forming the highest-scoring token (leftmost on
    ties) until no adjacent pair forms a token. Symbols start as single code points."""
    symbols = list(text)                      # "" once merged into its left neighbour
    links = _Links(len(symbols))
    heap: list[tuple[float, int, int, int]] = []   # (-score, left, right, merged length)

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            token_id = token_to_id.get(symbols[left] + symbols[right])
            if token_id is not None:
                size = len(symbols[left]) + len(symbols[right])
                heapq.heappush(heap, (-scores[token_id], left, right, size))

    for right in range(1, len(symbols)):
        push(right - 1, right)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if not symbols[left] or not symbols[right] or len(symbols[left]) + len(symbols[right]) != size:
            continue                          # stale: a side changed after this pair was queued
        symbols[left] += symbols[right]
        symbols[right] = ""
        links.unlink(right)
        push(links.prev[left], left)
        push(left, links.next[left])
    return [symbol for symbol in symbols if symbol]


def bpe_merge(word: str, ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE: merge the adjacent pair of lowest merge rank (leftmost on ties) until no
    adjacent pair has a rank."""
    symbols = list(word)
    links = _Links(len(symbols))
    heap: list[tuple[int, int, int, str]] = []     # (rank, left, right, merged text)

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            rank = ranks.get((symbols[left], symbols[right]))
            if rank is not None:
                heapq.heappush(heap, (rank, left, right, symbols[left] + symbols[right]))

    for right in range(1, len(symbols)):
        push(right - 1, right)
    while heap:
        _, left, right, merged = heapq.heappop(heap)
        if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != merged:
            continue
        symbols[left] = merged
        symbols[right] = ""
        links.unlink(right)
        push(links.prev[left], left)
        push(left, links.next[left])
    return [symbol for symbol in symbols if symbol]


class _Links:
    """prev/next positions of a doubly linked list over symbols (-1: none)."""

    def __init__(self, size: int):
        self.prev = list(range(-1, size - 1))
        self.next = list(range(1, size + 1))
        if size:
            self.next[-1] = -1

    def unlink(self, index: int) -> None:
        before, after = self.prev[index], self.next[index]
        if before >= 0:
            self.next[before] = after
        if after >= 0:
            self.prev[after] = before
