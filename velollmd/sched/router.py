"""Which backend (and which llama.cpp slot) serves a request.

Prefix-aware (`[scheduler] prefix_routing = true`): the backend that served the longest
prefix of this prompt recently goes first (its KV cache or prompt cache still holds it),
unless it is busier than the least loaded backend by `balance_slack` requests per slot; then,
and when nothing matches, the least loaded backend goes first. On llama.cpp the request is
pinned (`id_slot`) to the free slot that shares the longest prefix, so a conversation keeps
landing on the slot that holds its KV cache (`pin_slots = false` leaves the slot to
llama-server, which recent builds choose by prompt similarity themselves). Off: least load,
ties in round-robin order.

The rest of the ranking is the failover order. Backends are duck-typed: `name`, `kind`,
`num_slots` are all the router reads.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .affinity import RecentTable, SlotTable
from .fingerprint import Fingerprint

MIN_MATCH_TOKENS = 32         # a shared role marker or a short system prompt is no affinity


class PrefixRouter:
    def __init__(self, prefix_routing: bool = True, *, pin_slots: bool = True,
                 min_match_tokens: int = MIN_MATCH_TOKENS, balance_slack: float = 1.0):
        self.prefix_routing = prefix_routing
        self.pin_slots = pin_slots
        self.min_match_tokens = min_match_tokens
        self.balance_slack = balance_slack
        self._recent: dict[str, RecentTable] = {}
        self._slots: dict[str, SlotTable] = {}
        self._turn = 0
        self.num_routed = 0
        self.num_affinity_hits = 0          # went to the backend that matched best
        self.num_slot_hits = 0              # pinned to a slot that held a prefix
        self.num_matched_tokens = 0         # estimated prompt tokens found cached at pinning

    def rank(self, backends: Sequence[Any], fingerprint: Fingerprint,
             load: Callable[[Any], float]) -> list[Any]:
        """Backends best first; the rest are the failover order."""
        self._turn += 1
        self.num_routed += 1
        if len(backends) < 2:                       # nothing to rank (load is not asked)
            return list(backends)
        start = self._turn % len(backends) if backends else 0
        by_load = sorted(list(backends[start:]) + list(backends[:start]), key=load)
        if not self.prefix_routing or len(by_load) < 2:
            return by_load
        matches = {b.name: self._recent_of(b).best_match(fingerprint) for b in by_load}
        best = max(by_load, key=lambda b: matches[b.name])
        matched = matches[best.name]
        if matched < self.min_match_tokens or load(best) - load(by_load[0]) >= self.balance_slack:
            return by_load
        self.num_affinity_hits += 1
        return [best] + [b for b in by_load if b is not best]

    def claim(self, backend: Any, fingerprint: Fingerprint, now: float, *, pinnable: bool = True) -> int | None:
        """Record that `backend` now serves this prompt; the llama.cpp slot to pin, or None. A
        request that is not `pinnable` (several prompts: llama-server runs them on as many
        slots, and pinned to one they would run one after another) goes unpinned."""
        if not self.prefix_routing:
            return None
        self._recent_of(backend).record(fingerprint, now)
        if not self._pins(backend):
            return None
        slot, matched = self._slots_of(backend).claim(fingerprint, now, pinnable=pinnable)
        if matched >= self.min_match_tokens:
            self.num_slot_hits += 1
            self.num_matched_tokens += matched
        return slot

    def release(self, backend: Any, slot: int | None) -> None:
        """Pair of every claim that went through the backend's slot table."""
        table = self._slots.get(backend.name)
        if table is not None and self._pins(backend):
            table.release(slot)

    def _pins(self, backend: Any) -> bool:
        """Do claims on `backend` go through its slot table (pinned or not)?"""
        return self.prefix_routing and self.pin_slots and backend.pins_slots

    def forget(self, backend: Any) -> None:
        """Drop what we believed the backend caches (it failed, restarted or went away)."""
        if backend.name in self._recent:
            self._recent[backend.name].clear()
        if backend.name in self._slots:
            self._slots[backend.name].clear()

    def stats(self) -> dict:
        return {"prefix_routing": self.prefix_routing, "num_routed": self.num_routed,
                "num_affinity_hits": self.num_affinity_hits, "num_slot_hits": self.num_slot_hits,
                "num_matched_tokens": self.num_matched_tokens}

    def _recent_of(self, backend: Any) -> RecentTable:
        table = self._recent.get(backend.name)
        if table is None:
            table = self._recent[backend.name] = RecentTable()
        return table

    def _slots_of(self, backend: Any) -> SlotTable:
        table = self._slots.get(backend.name)
        if table is None or table.num_slots != backend.num_slots and not table.busy:
            table = self._slots[backend.name] = SlotTable(backend.num_slots, self.min_match_tokens)
        return table
