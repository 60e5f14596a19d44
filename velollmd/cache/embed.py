"""Embedders for the semantic tier.

`HashingEmbedder` ("builtin") needs no model: signed feature hashing of character 3/4/5-grams
(vectorised with numpy, a stable 64-bit hash, so vectors survive a restart) and of word
unigrams and bigrams (zlib.crc32, also stable) into `dim` buckets, L2-normalised. It sees
surface form only: case, punctuation, word order, contractions, small typos and filler words
move it little; synonyms it does not know. The guard rails (guard.py) catch the lexical
near-misses (negations, numbers) that it scores high.

A backend embedder (an embeddings endpoint) is wired by the daemon: anything with `dim` and
`embed(texts)` (sync or async) returning L2-normalised float32 rows fits.
"""
from __future__ import annotations

import zlib
from typing import Awaitable, Protocol, runtime_checkable

import numpy as np

from .text import content_words

CHAR_NGRAMS = (3, 4, 5)
CHAR_WEIGHT = 1.0
WORD_WEIGHT = 2.0
BIGRAM_WEIGHT = 1.5
MAX_CHARS = 8192                    # longer queries are embedded by their first MAX_CHARS
_PRIME = np.uint64(0x100000001B3)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@runtime_checkable
class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:  # (n, dim) float32, rows L2-normalised
        ...


class AsyncEmbedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> Awaitable[np.ndarray]:  # (n, dim) float32
        ...


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the 64 output bits."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def char_ngram_hashes(codes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every n-gram of `codes` (L,) uint64 -> (L - n + 1,) uint64."""
    num = len(codes) - n + 1
    if num <= 0:
        return np.empty(0, np.uint64)
    h = np.full(num, np.uint64(n), np.uint64)
    for k in range(n):                              # polynomial hash, wraps mod 2**64
        h = h * _PRIME + codes[k:k + num]
    return _mix64(h)


def word_hashes(tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stable hashes of word unigrams and bigrams: ((num_words,), (num_words - 1,)) uint64."""
    uni = [zlib.crc32(t.encode()) for t in tokens]
    bi = [zlib.crc32(f"{a} {b}".encode(), 0x5BD1E995) for a, b in zip(tokens, tokens[1:])]
    uni_h = _mix64(np.array(uni, np.uint64) + np.uint64(1 << 40))
    bi_h = _mix64(np.array(bi, np.uint64) + np.uint64(2 << 40))
    return uni_h, bi_h


class HashingEmbedder:
    """Dependency-free embedder: hashed char n-grams + word n-grams, signed, L2-normalised."""

    def __init__(self, dim: int = 384):
        self.dim = dim
        self.identity = f"builtin-hashing-v1/{dim}"   # change the version with the features

    def _accumulate(self, vec: np.ndarray, hashes: np.ndarray, weight: float) -> None:
        if not len(hashes):
            return
        buckets = (hashes % np.uint64(self.dim)).astype(np.intp)        # (num_features,)
        signs = np.where(hashes >> np.uint64(63), -weight, weight)      # (num_features,)
        vec += np.bincount(buckets, weights=signs, minlength=self.dim)

    def embed_one(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalised (all zeros for empty text)."""
        tokens = content_words(text[:MAX_CHARS])
        padded = " " + " ".join(tokens) + " "
        codes = np.frombuffer(padded.encode("utf-32-le"), np.uint32).astype(np.uint64)  # (L,)
        vec = np.zeros(self.dim, np.float64)                            # (dim,)
        for n in CHAR_NGRAMS:
            self._accumulate(vec, char_ngram_hashes(codes, n), CHAR_WEIGHT)
        uni, bi = word_hashes(tokens)
        self._accumulate(vec, uni, WORD_WEIGHT)
        self._accumulate(vec, bi, BIGRAM_WEIGHT)
        norm = np.linalg.norm(vec)
        return (vec / norm if norm > 0 else vec).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""
        out = np.zeros((len(texts), self.dim), np.float32)               # (n, dim)
        for i, text in enumerate(texts):
            out[i] = self.embed_one(text)
        return out
