"""What a backend holds in its KV cache, as far as the daemon can tell, by prompt fingerprint.

Two tables per backend:
- `SlotTable` (llama.cpp only): per slot, the fingerprint of the last prompt prefilled there.
  A request is pinned (`id_slot`) to the free slot that shares the longest prefix with it.
- `RecentTable`: the last `num_entries` conversations the backend served, whatever the slot.
  It models llama-server's host-memory prompt cache (`--cache-ram`) and Ollama's per-model
  cache, and is what backend choice (and Ollama's sticky routing) is scored on.
"""
from __future__ import annotations

from dataclasses import dataclass

from .fingerprint import Fingerprint

NUM_RECENT = 64


@dataclass
class Entry:
    fingerprint: Fingerprint | None = None
    last_used: float = 0.0


class SlotTable:
    """Per-slot fingerprints of one llama-server; `busy` are slots running a request now.

    A request that finds every slot busy (admission sends some ahead to wait in the backend)
    goes unpinned, and llama-server gives it whichever slot frees first. While any such request
    is in flight, which slots are free is unknown, so nothing is pinned: a pin to a slot that
    llama-server already gave away would wait for that slot while others free up."""

    def __init__(self, num_slots: int, min_match_tokens: int = 1):
        self.min_match_tokens = min_match_tokens
        self.entries = [Entry() for _ in range(num_slots)]
        self.busy: set[int] = set()
        self.num_unpinned = 0               # in flight on a slot llama-server chose

    @property
    def num_slots(self) -> int:
        return len(self.entries)

    def claim(self, fingerprint: Fingerprint, now: float, *, pinnable: bool = True) -> tuple[int | None, int]:
        """(slot, cached tokens): the free slot with the longest common prefix (of at least
        min_match_tokens), else the least recently used one; (None, 0) when none is surely
        free, or the request is not `pinnable` (it runs unpinned). Every claim is released,
        pinned or not."""
        free = [s for s in range(self.num_slots) if s not in self.busy] \
            if pinnable and not self.num_unpinned else []
        if not free:
            self.num_unpinned += 1
            return None, 0
        matches = {s: fingerprint.common_prefix_tokens(self.entries[s].fingerprint) for s in free}
        slot = max(free, key=lambda s: (matches[s] if matches[s] >= self.min_match_tokens else 0,
                                        -self.entries[s].last_used))
        matched = matches[slot]
        self.busy.add(slot)
        self.entries[slot] = Entry(fingerprint, now)
        return slot, matched

    def release(self, slot: int | None) -> None:
        if slot is None:
            self.num_unpinned = max(0, self.num_unpinned - 1)
        else:
            self.busy.discard(slot)

    def clear(self) -> None:
        """The backend restarted or failed: its slots hold nothing we know of."""
        self.entries = [Entry() for _ in self.entries]


class RecentTable:
    """The last `num_entries` conversations one backend served (an LRU of fingerprints).

    Every prefix of every entry is counted under its prefix key, so the longest cached prefix
    of a prompt is a walk along its own keys (one dict lookup per piece), however many
    conversations are recorded: a flat radix tree of the backend's recent prompts."""

    def __init__(self, num_entries: int = NUM_RECENT):
        self.num_entries = num_entries
        self.entries: dict[int, Entry] = {}          # full-prompt key -> entry, least recent first
        self._prefix_counts: dict[int, int] = {}     # prefix key -> entries having that prefix

    def best_match(self, fingerprint: Fingerprint) -> int:
        total = 0
        for key, num in zip(fingerprint.prefix_keys, fingerprint.num_tokens):
            if key not in self._prefix_counts:
                break
            total += num
        return total

    def record(self, fingerprint: Fingerprint, now: float) -> None:
        """Replace the entry this prompt extends (its conversation), else evict the LRU one.
        The replaced entry's prefixes are this prompt's first ones: they stay counted, and
        only the pieces this prompt adds are counted anew."""
        if not fingerprint.hashes:
            return
        keys = fingerprint.prefix_keys
        num_earlier = self._num_extended(keys)
        if num_earlier:
            del self.entries[keys[num_earlier - 1]]
        elif len(self.entries) >= self.num_entries:
            self._remove(next(iter(self.entries)))  # least recent: entries are only ever re-inserted
        self.entries[keys[-1]] = Entry(fingerprint, now)
        counts = self._prefix_counts
        for key in keys[num_earlier:]:
            counts[key] = counts.get(key, 0) + 1

    def clear(self) -> None:
        self.entries = {}
        self._prefix_counts = {}

    def _num_extended(self, keys: tuple[int, ...]) -> int:
        """The pieces of the longest entry whose whole prompt is a prefix of this one with
        prefix keys `keys` (the same conversation, a turn earlier, or the same prompt again);
        0 when there is none."""
        entries = self.entries
        for num in range(len(keys), 0, -1):
            if keys[num - 1] in entries:
                return num
        return 0

    def _remove(self, full_key: int) -> None:
        for key in self.entries.pop(full_key).fingerprint.prefix_keys:
            left = self._prefix_counts[key] - 1
            if left:
                self._prefix_counts[key] = left
            else:
                del self._prefix_counts[key]
