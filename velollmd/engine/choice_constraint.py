"""vLLM's guided_choice: the output is exactly one of a few texts, then an end token.

The same per-step seam as JSON mode (engine/json_constraint.JsonConstraint, which the Sampler
asks `allows(token)`, `mask()`, then `advance(token)`): the bytes written so far must be a
prefix of one of the choices, a token is allowed when the bytes it adds keep them so, and
the end tokens come only once a choice is complete. The token bytes are the model's JsonVocab
table (special tokens never allowed). With the choices "yes" and "yes please", "yes" may end
or go on, as vLLM's grammar lets it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .json_constraint import JsonVocab


class ChoiceConstraint:
    """One sequence's progress through the choices (a trie walked by prefix: the choices are
    few, so the prefix test is plain bytes.startswith at the written offset, whose cost is the
    token's length or the written text's, never a long choice's)."""

    def __init__(self, vocab: JsonVocab, end_ids: Sequence[int], choices: Sequence[str]):
        self._vocab_source = vocab
        self.end_ids = frozenset(end_ids)
        self.choices = tuple(dict.fromkeys(choice.encode() for choice in choices))
        self.written = b""

    @property
    def vocab(self) -> JsonVocab:
        return self._vocab_source.built()

    @property
    def complete(self) -> bool:
        return self.written in self.choices

    def _live(self) -> list[bytes]:
        """The choices the output can still become (those that start with what is written)."""
        return [choice for choice in self.choices if choice.startswith(self.written)]

    def allows(self, token_id: int) -> bool:
        if token_id in self.end_ids:
            return self.complete
        data = self.vocab.token_bytes[token_id] if token_id < len(self.vocab.token_bytes) else None
        start = len(self.written)
        return bool(data) and any(choice.startswith(data, start) for choice in self._live())

    def advance(self, token_id: int) -> None:
        if token_id not in self.end_ids:
            self.written += self.vocab.token_bytes[token_id]

    def mask(self) -> np.ndarray:
        """(vocab,) bool: the tokens whose bytes are a prefix of what a choice has left, found
        by each such prefix's tokens: no longer than the longest token, so a few per choice
        and byte of a token, however long the choices."""
        vocab = self.vocab
        allowed = np.zeros(vocab.vocab_size, bool)                                       # (vocab,)
        start, longest = len(self.written), int(vocab.length.max(initial=0))
        for choice in self._live():
            for end in range(start + 1, min(len(choice), start + longest) + 1):
                allowed[vocab.ids_by_bytes.get(choice[start:end], [])] = True
        for token_id in self.end_ids:
            if token_id < allowed.shape[0]:
                allowed[token_id] = self.complete
        return allowed
