"""What a backend holds in its KV cache, as far as the daemon can tell, by prompt fingerprint.

Two tables per backend:
- `SlotTable` (llama.cpp only): per slot, the fingerprint of the last prompt prefilled there.
  A request is pinned (`id_slot`) to the free slot that shares the longest prefix with it.
- `RecentTable`: the last `num_entries` conversations the backend served, whatever the slot.
  It models llama-server's host-memory prompt cache (`--cache-ram`) and Ollama's per-model
  cache, and is what backend choice (and Ollama's sticky routing) is scored on.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .fingerprint import Fingerprint

NUM_RECENT = 64


@dataclass
class Entry:
    fingerprint: Fingerprint | None = None
    last_used: float = 0.0


class SlotTable:
    """Per-slot fingerprints of one llama-server; `busy` are slots running a request now."""

    def __init__(self, num_slots: int, min_match_tokens: int = 1):
        self.min_match_tokens = min_match_tokens
        self.entries = [Entry() for _ in range(num_slots)]
        self.busy: set[int] = set()

    @property
    def num_slots(self) -> int:
        return len(self.entries)

    def claim(self, fingerprint: Fingerprint, now: float) -> tuple[int | None, int]:
        """(slot, cached tokens): the free slot with the longest common prefix (of at least
        min_match_tokens), else the least recently used one; (None, 0) when all are busy."""
        free = [s for s in range(self.num_slots) if s not in self.busy]
        if not free:
            return None, 0
        matches = {s: fingerprint.common_prefix_tokens(self.entries[s].fingerprint) for s in free}
        slot = max(free, key=lambda s: (matches[s] if matches[s] >= self.min_match_tokens else 0,
                                        -self.entries[s].last_used))
        matched = matches[slot]
        self.busy.add(slot)
        self.entries[slot] = Entry(fingerprint, now)
        return slot, matched

    def release(self, slot: int | None) -> None:
        self.busy.discard(slot)

    def clear(self) -> None:
        """The backend restarted or failed: its slots hold nothing we know of."""
        self.entries = [Entry() for _ in self.entries]


class RecentTable:
    """The last conversations one backend served (an LRU of fingerprints)."""

    def __init__(self, num_entries: int = NUM_RECENT):
        self.num_entries = num_entries
        self.entries: list[Entry] = []

    def best_match(self, fingerprint: Fingerprint) -> int:
        return max((fingerprint.common_prefix_tokens(e.fingerprint) for e in self.entries), default=0)

    def record(self, fingerprint: Fingerprint, now: float) -> None:
        """Replace the entry this prompt extends (its conversation), else evict the LRU one."""
        index = _best_index(self.entries, fingerprint)
        if index is not None:
            self.entries[index] = Entry(fingerprint, now)
            return
        if len(self.entries) >= self.num_entries:
            self.entries.remove(min(self.entries, key=lambda e: e.last_used))
        self.entries.append(Entry(fingerprint, now))

    def clear(self) -> None:
        self.entries = []


def _best_index(entries: Iterable[Entry], fingerprint: Fingerprint) -> int | None:
    """Index of the entry whose whole prompt is a prefix of this one (the same conversation,
    one turn earlier), if any."""
    for index, entry in enumerate(entries):
        old = entry.fingerprint
        if old is not None and len(old.hashes) <= len(fingerprint.hashes) \
                and fingerprint.hashes[:len(old.hashes)] == old.hashes:
            return index
    return None
