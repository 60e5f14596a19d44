"""Text normalisation shared by the builtin embedder and the guard rails."""
from __future__ import annotations

import re
import unicodedata

_CONTRACTIONS = (
    (re.compile(r"\bcan't\b|\bcannot\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'d\b"), " would"),
    (re.compile(r"\b(it|that|what|there|here|who|where|how|he|she)'s\b"), r"\1 is"),
)
# The same contractions typed without an apostrophe.
_BARE = {"dont": "do not", "doesnt": "does not", "didnt": "did not", "isnt": "is not",
         "arent": "are not", "wasnt": "was not", "werent": "were not", "cant": "can not",
         "wont": "will not", "shouldnt": "should not", "couldnt": "could not",
         "wouldnt": "would not", "havent": "have not", "hasnt": "has not",
         "whats": "what is", "thats": "that is", "hows": "how is", "wheres": "where is"}
_BARE_RE = re.compile(r"\b(" + "|".join(_BARE) + r")\b")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Lower case, NFKC, curly quotes -> straight, common contractions expanded."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    for pattern, repl in _CONTRACTIONS:
        text = pattern.sub(repl, text)
    return _BARE_RE.sub(lambda m: _BARE[m.group(1)], text)


def words(text: str) -> list[str]:
    """Word tokens of already-normalised text (punctuation dropped)."""
    return _WORD.findall(text)


# Words that rarely change what is asked: articles, present-tense auxiliaries, pronouns of the
# asker, politeness. Dropped before embedding and ignored by the content-word guard.
# Tense, modality (should, will, did), direction (to, from) and question words are kept.
STOP_WORDS = frozenset("""
a an the is are am be do does i me my you your please kindly can could would hey hi hello
thanks thank just of in for with some tell give
""".split())


def content_words(text: str) -> list[str]:
    """Normalised words with STOP_WORDS removed, in order."""
    return [w for w in words(normalize(text)) if w not in STOP_WORDS]
