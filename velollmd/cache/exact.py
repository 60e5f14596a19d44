"""The exact tier: an LRU of complete responses bounded by entries, bytes and a TTL.

Entries are stored in a neutral form (`CachedResponse`) that replay.py turns into either a
chat.completion JSON body or the chat.completion.chunk list of a stream, so a response
recorded from a stream can answer a non-stream request and vice versa.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

ENTRY_OVERHEAD_BYTES = 256          # dict slot, key string, dataclass: a rough constant


@dataclass(frozen=True)
class CachedResponse:
    """One complete assistant turn, independent of how it was delivered."""
    model: str
    content: str = ""
    tool_calls: tuple[dict, ...] = ()   # OpenAI shape: {id, type, function: {name, arguments}}
    finish_reason: str = "stop"
    usage: dict | None = None
    created: int = 0
    reasoning_content: str = ""
    chunk_sizes: tuple[int, ...] = ()   # content delta lengths when recorded from a stream
    system_fingerprint: str | None = None
    stop_word: str | None = None        # the stop string that ended it, where known (wire/stopword.py)
    tool_report: dict | None = None     # what the tool-call layer fixed: {"tool_repair": [...], "tool_loop": true}
    context: tuple[int, ...] | None = None   # Ollama's `context` of an /api/generate answer (the engine's)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CachedResponse":
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["tool_calls"] = tuple(data.get("tool_calls") or ())
        data["chunk_sizes"] = tuple(data.get("chunk_sizes") or ())
        if not isinstance(data.get("tool_report"), dict):   # absent in entries written before it
            data["tool_report"] = None
        data["context"] = tuple(data["context"]) if isinstance(data.get("context"), list) else None
        return cls(**data)

    def nbytes(self) -> int:
        """Approximate memory cost: the JSON size plus a constant per entry."""
        return len(json.dumps(self.to_dict(), ensure_ascii=False).encode()) + ENTRY_OVERHEAD_BYTES


@dataclass
class _Slot:
    entry: CachedResponse
    nbytes: int
    expires_at: float            # wall-clock seconds; inf = never


@dataclass
class ExactStats:
    num_evictions: int = 0
    num_expired: int = 0
    num_rejected: int = 0        # single entries larger than max_bytes


class ExactCache:
    """key -> CachedResponse, LRU order in an OrderedDict: O(1) get and put.

    The clock is wall time (injectable) so that expiry survives a snapshot and restart.
    """

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float = 0.0,
                 clock: Callable[[], float] = time.time):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.num_bytes = 0
        self.stats = ExactStats()
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self.generation = 0          # bumped by every put, pop and clear (a snapshot is due)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: str) -> bool:
        return self.get(key, touch=False) is not None

    def get(self, key: str, *, touch: bool = True) -> CachedResponse | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires_at <= self.clock():
            self._remove(key)
            self.stats.num_expired += 1
            return None
        if touch:
            self._slots.move_to_end(key)
        return slot.entry

    def put(self, key: str, entry: CachedResponse, *, expires_at: float | None = None) -> bool:
        """Insert or replace; returns False when the entry alone exceeds the bounds."""
        nbytes = entry.nbytes()
        if self.max_entries <= 0 or nbytes > self.max_bytes:
            self.stats.num_rejected += 1
            return False
        if expires_at is None:
            expires_at = self.clock() + self.ttl_s if self.ttl_s > 0 else float("inf")
        if key in self._slots:
            self._remove(key)
        self._slots[key] = _Slot(entry, nbytes, expires_at)
        self.num_bytes += nbytes
        self._evict_to_bounds()
        self.generation += 1
        return True

    def pop(self, key: str) -> CachedResponse | None:
        slot = self._slots.get(key)
        if slot is not None:
            self._remove(key)
            self.generation += 1
        return slot.entry if slot else None

    def clear(self) -> None:
        self._slots.clear()
        self.num_bytes = 0
        self.generation += 1

    def items(self):
        """(key, entry, expires_at) from least to most recently used, expired ones skipped."""
        now = self.clock()
        return [(k, s.entry, s.expires_at) for k, s in self._slots.items() if s.expires_at > now]

    def _remove(self, key: str) -> None:
        slot = self._slots.pop(key)
        self.num_bytes -= slot.nbytes

    def _evict_to_bounds(self) -> None:
        while len(self._slots) > self.max_entries or self.num_bytes > self.max_bytes:
            key = next(iter(self._slots))
            self._remove(key)
            self.stats.num_evictions += 1
