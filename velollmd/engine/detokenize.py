"""Incremental detokenization with stop strings across token boundaries.

A TextStream is fed the bytes of one token at a time (the tokenizer's `token_bytes(id)`) and
returns the text that is safe to emit now. Two things are held back:

- an incomplete UTF-8 sequence: byte-level tokens can split one character (an emoji is often
  four single-byte tokens), so its bytes wait until the character completes;
- a tail that could still become a stop string: with stop "</s>", text ending in "</" waits for
  the next token to tell whether it is a stop.

When a stop string completes, the text before it is emitted, `.stopped` becomes True and
`.stop_string` names it; the stop string and anything after it are never emitted (OpenAI's
behaviour; vLLM's include_stop_str_in_output emits the stop string too). Among stops completing
in the same push, the one starting earliest wins. With vLLM's `min_tokens`, no stop string is
looked for until that many tokens were pushed: their text is emitted as it comes.
"""
from __future__ import annotations

import codecs
from typing import Sequence


class TextStream:
    """Bytes of tokens in, text safe to emit out, stopping at the first stop string."""

    def __init__(self, stop: Sequence[str] = (), *, min_tokens: int = 0, include_stop: bool = False):
        self.stops = tuple(s for s in stop if s)               # "" would match everywhere
        self.min_tokens, self.include_stop = min_tokens, include_stop
        self.num_pushed = 0
        self.stopped = False
        self.stop_string: str | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""                                          # decoded text not yet emitted

    def push(self, token_bytes: bytes) -> str:
        """Feed one token's bytes; return the text that can be emitted now (maybe "")."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(token_bytes)
        self.num_pushed += 1
        if self.num_pushed <= self.min_tokens:
            text, self._held = self._held, ""           # not yet a stop: min_tokens
            return text
        return self._release(final=False)

    def finish(self) -> str:
        """End of generation: flush what was held (an incomplete UTF-8 tail becomes U+FFFD)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        found = self._find_stop()
        if found is not None:
            start, stop = found
            text, self._held = self._held[:start + len(stop) * self.include_stop], ""
            self.stopped, self.stop_string = True, stop
            return text
        keep = 0 if final else self._partial_stop_length()
        cut = len(self._held) - keep
        text, self._held = self._held[:cut], self._held[cut:]
        return text

    def _find_stop(self) -> tuple[int, str] | None:
        """(start, stop) of the earliest complete stop string in the held text."""
        best: tuple[int, str] | None = None
        for stop in self.stops:
            start = self._held.find(stop)
            if start >= 0 and (best is None or start < best[0]):
                best = (start, stop)
        return best

    def _partial_stop_length(self) -> int:
        """Length of the longest tail of the held text that is a proper prefix of a stop."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self._held)), longest, -1):
                if self._held.endswith(stop[:size]):
                    longest = size
                    break
        return longest
