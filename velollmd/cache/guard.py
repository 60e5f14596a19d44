"""Guard rails for the semantic tier: lexical differences that flip the answer.

A cosine score cannot tell "how do I enable X" from "how do I disable X" reliably, nor a
different number or quoted string. Before a semantic hit is served, `mismatch(query,
candidate)` compares negations, numbers, quoted strings, symbols (operators, signs,
units: "2+2" is not "2-2", "-3" is not "3") and content words; any difference is a miss; so is a different order of content words around a directional word (to,
from, than...). Small typos (one edit in a word of 5+ letters with the same first letter) and
plural "s" are tolerated; everything else errs on the side of a miss.
"""
from __future__ import annotations

import re

from .text import content_words, normalize, words

NEGATIONS = frozenset("""
not no never none nothing nobody nowhere neither nor without off non except excluding
exclude nope
""".split())
NUMBER_WORDS = frozenset("""
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
ninety hundred thousand million billion trillion first second third fourth fifth sixth
seventh eighth ninth tenth once twice thrice half double triple quarter dozen
""".split())
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Characters that are neither word characters, spaces nor sentence punctuation: operators,
# signs, comparison and currency symbols. The embedder and the word lists cannot see them.
_SYMBOL = re.compile(r"[^\w\s.,;:?!'\"`()\[\]{}\u2018\u2019\u201c\u201d]")
_QUOTED = re.compile(r'"([^"]*)"|\u201c([^\u201d]*)\u201d|`([^`]*)`|(?<!\w)\'([^\']*)\'(?!\w)')
# With one of these, word order carries meaning ("from English to French"): shared
# content words must then appear in the same order.
DIRECTIONAL = frozenset("to from into than vs versus before after over under above below".split())
TYPO_MIN_LEN = 5


def negations(text: str) -> list[str]:
    return sorted(w for w in words(normalize(text)) if w in NEGATIONS)


def numbers(text: str) -> list[str]:
    norm = normalize(text)
    found = [n.replace(",", "") for n in _NUMBER.findall(norm)]
    return sorted(found + [w for w in words(norm) if w in NUMBER_WORDS])


def quoted(text: str) -> list[str]:
    """Quoted strings, case kept: 'Hello' and 'hello' are different literals."""
    return ["".join(groups) for groups in _QUOTED.findall(text)]


def symbols(text: str) -> list[str]:
    """Operator, sign and unit symbols in order: "2+2" and "2-2", "-3" and "3" differ."""
    return _SYMBOL.findall(normalize(text))


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def within_one_edit(a: str, b: str) -> bool:
    """Damerau distance <= 1: one substitution, insertion, deletion or adjacent swap."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        if a[i + 1:] == b[i + 1:]:
            return True
        return a[i:i + 2] == b[i:i + 2][::-1] and a[i + 2:] == b[i + 2:]
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return short[i:] == long_[i + 1:]


def _is_typo(a: str, b: str) -> bool:
    return (min(len(a), len(b)) >= TYPO_MIN_LEN and a[0] == b[0]) and within_one_edit(a, b)


def content_words_match(query: str, candidate: str) -> bool:
    """Same content words (as sets of stems), pairing leftovers only as one-edit typos."""
    q = {_stem(w) for w in content_words(query)}
    c = {_stem(w) for w in content_words(candidate)}
    only_q, only_c = sorted(q - c), sorted(c - q)
    if len(only_q) != len(only_c):
        return False
    for word in only_q:
        match = next((w for w in only_c if _is_typo(word, w)), None)
        if match is None:
            return False
        only_c.remove(match)
    return True


def same_order_if_directional(query: str, candidate: str) -> bool:
    q = [_stem(w) for w in content_words(query)]
    c = [_stem(w) for w in content_words(candidate)]
    if not DIRECTIONAL & (set(q) | set(c)):
        return True
    shared = set(q) & set(c)
    return [w for w in q if w in shared] == [w for w in c if w in shared]


def mismatch(query: str, candidate: str) -> str | None:
    """Why `candidate` must not answer `query` ("negation", "number", "quoted", "symbol",
    "content", "order"), or None when the semantic hit may be served."""
    if negations(query) != negations(candidate):
        return "negation"
    if numbers(query) != numbers(candidate):
        return "number"
    if quoted(query) != quoted(candidate):
        return "quoted"
    if symbols(query) != symbols(candidate):
        return "symbol"
    if not content_words_match(query, candidate):
        return "content"
    if not same_order_if_directional(query, candidate):
        return "order"
    return None
