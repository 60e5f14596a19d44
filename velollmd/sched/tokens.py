"""Real token ids of prompt texts from the backend's own tokenizer (llama.cpp /tokenize), cached.

Prefix routing and the Scheduler's KV block budget work on a prompt's token ids, which the
fingerprint otherwise estimates from text (fingerprint.py). On llama.cpp the real ids are one
POST /tokenize away. `TokenCache.for_request` tokenizes each long text of a request (message
content, completion prompt) on the first healthy llama.cpp backend among the model's
candidates, keyed by (model identity, blake2b of the text), and keeps the ids in an LRU bounded
by the number of tokens it holds: a conversation's earlier turns are never tokenized again.

Texts shorter than MIN_CHARS keep the estimate: it is off by a block or two at most there,
and a round trip would cost more than it saves. Any failure (a timeout, an error answer, a
backend without /tokenize, an answer of the wrong shape) leaves the text out, so routing falls
back to the estimate and the client never sees it; after a failure that backend is left alone
for RETRY_AFTER_S so that a hung one does not add TIMEOUT_S to every request.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..wire.request import GenerateRequest
from .fingerprint import texts_of

log = logging.getLogger("velollmd.sched.tokens")

MAX_TOKENS = 1_000_000        # ids held in all: 4 MB as int32 arrays
MIN_CHARS = 256               # shorter texts keep the estimate
TIMEOUT_S = 1.0               # per /tokenize call
RETRY_AFTER_S = 10.0          # after a failure, leave that backend alone this long
MAX_CONCURRENT = 4            # /tokenize calls in flight per request (a long history's first)

Key = tuple[str, bytes]       # (model identity, blake2b digest of the text)


def tokenizer_of(backends: Iterable[Any]) -> Any | None:
    """The first healthy backend that can tokenize, or None."""
    return next((b for b in backends if b.can_tokenize and b.healthy), None)


class TokenCache:
    """An LRU of token ids by (model, text digest), bounded by `max_tokens` ids in all."""

    def __init__(self, max_tokens: int = MAX_TOKENS, *, min_chars: int = MIN_CHARS,
                 timeout_s: float = TIMEOUT_S, retry_after_s: float = RETRY_AFTER_S,
                 clock: Callable[[], float] = time.monotonic):
        self.max_tokens = max_tokens
        self.min_chars = min_chars
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.clock = clock
        self._entries: OrderedDict[Key, array] = OrderedDict()
        self._resting_until: dict[str, float] = {}      # backend name -> no calls before
        self._inflight: dict[Key, asyncio.Future] = {}   # texts being tokenized now
        self.num_tokens = 0           # ids held now
        self.num_tokenized = 0        # /tokenize calls that returned ids
        self.num_failed = 0           # /tokenize calls that did not
        self.num_hits = 0             # texts found here

    async def for_request(self, request: GenerateRequest, tokenizer: Any) -> dict[str, array]:
        """Real ids of the request's long texts from `tokenizer` (a backend: tokenizer_of)."""
        return await self.lookup(tokenizer, tokenizer.identity(request.model), texts_of(request))

    async def lookup(self, backend: Any, model: str, texts: Sequence[str]) -> dict[str, array]:
        """text -> ids for the texts of at least min_chars that are cached or that `backend`
        tokenized now (concurrently); texts it failed on are left out."""
        found: dict[str, array] = {}
        missing: dict[str, Key] = {}
        for text in texts:
            if len(text) < self.min_chars or text in found or text in missing:
                continue
            key = (model, hashlib.blake2b(text.encode("utf-8", "surrogatepass")).digest())
            ids = self._get(key)
            if ids is None:
                missing[text] = key
            else:
                found[text] = ids
        for text, ids in await self._tokenize_all(backend, missing):
            if ids is not None:
                self._put(missing[text], ids)
                found[text] = ids
        return found

    async def _tokenize_all(self, backend: Any, missing: dict[str, Key]) -> list[tuple[str, array | None]]:
        """(text, ids or None) per text, MAX_CONCURRENT calls at a time; none while the
        backend rests after a failure."""
        texts = list(missing)
        results: list[tuple[str, array | None]] = []
        for start in range(0, len(texts), MAX_CONCURRENT):
            if self._resting_until.get(backend.name, 0.0) > self.clock():
                break
            batch = texts[start:start + MAX_CONCURRENT]
            results += zip(batch, await asyncio.gather(*(self._shared(backend, t, missing[t]) for t in batch)))
        return results

    async def _shared(self, backend: Any, text: str, key: Key) -> array | None:
        """One /tokenize call per text at a time: requests arriving together with the same
        new text (a burst sharing a long system prompt) wait for the first one's answer."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = self._inflight[key] = asyncio.get_running_loop().create_future()
        ids = None
        try:
            ids = await self._tokenize(backend, text)
        finally:
            del self._inflight[key]
            pending.set_result(ids)            # None if this call failed or was cancelled
        return ids

    async def _tokenize(self, backend: Any, text: str) -> array | None:
        try:
            answer = await asyncio.wait_for(backend.tokenize(text), self.timeout_s)
            if not isinstance(answer, list) or not answer or not all(type(i) is int for i in answer):
                raise ValueError(f"not a list of token ids: {str(answer)[:80]}")
            ids = array("i", answer)                    # OverflowError past int32: a bad answer
        except Exception as exc:       # timeout, error answer, no /tokenize, bad shape: estimate
            self.num_failed += 1
            self._resting_until[backend.name] = self.clock() + self.retry_after_s
            log.debug("tokenize failed", extra={"fields": {"backend": backend.name, "error": repr(exc)}})
            return None
        self.num_tokenized += 1
        return ids

    def _get(self, key: Key) -> array | None:
        ids = self._entries.get(key)
        if ids is not None:
            self._entries.move_to_end(key)
            self.num_hits += 1
        return ids

    def _put(self, key: Key, ids: array) -> None:
        if key in self._entries or len(ids) > self.max_tokens:
            return
        self._entries[key] = ids
        self.num_tokens += len(ids)
        while self.num_tokens > self.max_tokens:
            _, evicted = self._entries.popitem(last=False)
            self.num_tokens -= len(evicted)

    def stats(self) -> dict:
        return {"num_entries": len(self._entries), "num_tokens": self.num_tokens,
                "num_tokenized": self.num_tokenized, "num_failed": self.num_failed,
                "num_hits": self.num_hits}
