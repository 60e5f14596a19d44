"""PyBlockPool: a pure-Python model of the C block allocator, with the same API and behaviour.

It mirrors kvblocks.c step by step (same block-id order, same hash, same eviction order), so the
randomized test can demand identical results from both, and the benchmark has a baseline.
Semantics are documented in kvblocks.py.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from velollmd.sched.kvblocks import ROOT_HASH, Allocation

_MASK64 = (1 << 64) - 1
_FNV_PRIME = 0x100000001b3


def hash_block(parent_hash: int, token_ids: Sequence[int]) -> int:
    """Same as kv_hash_block: FNV-1a over 32-bit token words, then a splitmix64 finalizer."""
    h = parent_hash
    for token in token_ids:
        h = ((h ^ (token & 0xFFFFFFFF)) * _FNV_PRIME) & _MASK64
    h = ((h ^ (h >> 30)) * 0xbf58476d1ce4e5b9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94d049bb133111eb) & _MASK64
    return h ^ (h >> 31)


class _Seq:
    __slots__ = ("block_ids", "num_tokens", "last_hash", "partial")

    def __init__(self, block_ids: list[int], num_tokens: int, last_hash: int, partial: list[int]):
        self.block_ids = block_ids
        self.num_tokens = num_tokens
        self.last_hash = last_hash
        self.partial = partial      # token ids of the partially filled last block


class PyBlockPool:
    """Pure-Python twin of kvblocks.BlockPool."""

    def __init__(self, num_blocks: int, block_size: int = 16):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._ref_cnt = [0] * num_blocks
        self._block_hash: dict[int, int] = {}          # block id -> hash, hashed blocks only
        self._hash_to_block: dict[int, int] = {}
        self._free_stack = list(range(num_blocks - 1, -1, -1))  # pops 0, 1, ...
        self._lru: OrderedDict[int, None] = OrderedDict()   # cached free blocks, first = evict
        self._seqs: dict[Hashable, _Seq] = {}
        self._copies: list[tuple[int, int]] = []

    # ---- block life cycle ----

    def _take_block(self) -> int:
        if self._free_stack:
            block_id = self._free_stack.pop()
        else:
            block_id, _ = self._lru.popitem(last=False)
            del self._hash_to_block[self._block_hash.pop(block_id)]
        assert self._ref_cnt[block_id] == 0
        self._ref_cnt[block_id] = 1
        return block_id

    def _pin_block(self, block_id: int) -> None:
        if self._ref_cnt[block_id] == 0:
            del self._lru[block_id]
        self._ref_cnt[block_id] += 1

    def _release_block(self, block_id: int) -> None:
        assert self._ref_cnt[block_id] > 0
        self._ref_cnt[block_id] -= 1
        if self._ref_cnt[block_id] > 0:
            return
        if block_id in self._block_hash:
            self._lru[block_id] = None
        else:
            self._free_stack.append(block_id)

    def _register_block(self, block_id: int, block_hash: int) -> None:
        assert block_id not in self._block_hash
        if block_hash not in self._hash_to_block:
            self._hash_to_block[block_hash] = block_id
            self._block_hash[block_id] = block_hash

    # ---- requests ----

    def _match_prefix(self, token_ids: Sequence[int], num_full: int) -> tuple[list[int], list[int]]:
        """(hashes of the full blocks, block ids of the leading cached ones)."""
        bs, h, hashes, hits = self.block_size, ROOT_HASH, [], []
        for i in range(num_full):
            h = hash_block(h, token_ids[i * bs:(i + 1) * bs])
            hashes.append(h)
            if len(hits) == i and h in self._hash_to_block:
                hits.append(self._hash_to_block[h])
        return hashes, hits

    def allocate(self, request_id: Hashable, token_ids: Sequence[int],
                 num_extra_tokens: int = 0) -> Allocation | None:
        if request_id in self._seqs:
            raise ValueError(f"kvblocks: request {request_id!r} already allocated")
        token_ids = list(token_ids)
        num_tokens, bs = len(token_ids), self.block_size
        if num_tokens < 1 or num_extra_tokens < 0:
            raise ValueError("kvblocks: need >= 1 token and >= 0 extra tokens")
        num_total = -(-(num_tokens + num_extra_tokens) // bs)
        num_full = num_tokens // bs
        if num_total > self.num_blocks:
            return None
        hashes, hits = self._match_prefix(token_ids, num_full)
        del hits[(num_tokens - 1) // bs:]
        num_hits_free = sum(self._ref_cnt[b] == 0 for b in hits)
        if num_total - len(hits) > self.num_free_blocks - num_hits_free:
            return None
        for block_id in hits:
            self._pin_block(block_id)
        block_ids = hits + [self._take_block() for _ in range(num_total - len(hits))]
        for i in range(len(hits), num_full):   # after all evictions, as in C
            self._register_block(block_ids[i], hashes[i])
        self._seqs[request_id] = _Seq(list(block_ids), num_tokens,
                                      hashes[-1] if hashes else ROOT_HASH,
                                      token_ids[num_full * bs:])
        return Allocation(block_ids, len(hits) * bs)

    def append_step(self, request_ids: Sequence[Hashable], token_ids: Sequence[int]) -> list[Hashable]:
        if len(request_ids) != len(token_ids):
            raise ValueError("kvblocks: append_step needs one token per request")
        for request_id in request_ids:
            self._seq(request_id)
        return [r for r, token in zip(request_ids, token_ids) if not self.append_tokens(r, [token])]

    def append_tokens(self, request_id: Hashable, token_ids: Sequence[int]) -> bool:
        seq = self._seq(request_id)
        token_ids = list(token_ids)
        if not token_ids:
            return True
        bs = self.block_size
        new_total = seq.num_tokens + len(token_ids)
        num_needed = -(-new_total // bs)
        if num_needed > self.num_blocks:
            return False
        num_grow = max(0, num_needed - len(seq.block_ids))
        touched = range(seq.num_tokens // bs, min((new_total - 1) // bs, len(seq.block_ids) - 1) + 1)
        num_shared = sum(self._ref_cnt[seq.block_ids[i]] > 1 for i in touched)
        if num_grow + num_shared > self.num_free_blocks:
            return False
        self._copy_on_write(seq, touched)
        seq.block_ids.extend(self._take_block() for _ in range(num_grow))
        self._write_tokens(seq, token_ids)
        return True

    def _copy_on_write(self, seq: _Seq, touched: range) -> None:
        for i in touched:
            block_id = seq.block_ids[i]
            if self._ref_cnt[block_id] == 1:
                continue
            assert block_id not in self._block_hash
            new_block_id = self._take_block()
            self._ref_cnt[block_id] -= 1
            seq.block_ids[i] = new_block_id
            if i * self.block_size < seq.num_tokens:
                self._copies.append((block_id, new_block_id))

    def _write_tokens(self, seq: _Seq, token_ids: list[int]) -> None:
        bs = self.block_size
        for token in token_ids:
            seq.partial.append(token)
            seq.num_tokens += 1
            if len(seq.partial) < bs:
                continue
            seq.last_hash = hash_block(seq.last_hash, seq.partial)
            self._register_block(seq.block_ids[(seq.num_tokens - 1) // bs], seq.last_hash)
            seq.partial = []

    def pop_copies(self) -> list[tuple[int, int]]:
        copies, self._copies = self._copies, []
        return copies

    def fork(self, parent_id: Hashable, *child_ids: Hashable) -> None:
        if not child_ids or len(set(child_ids)) < len(child_ids) \
                or not self._seqs.keys().isdisjoint(child_ids):
            raise ValueError(f"kvblocks: fork needs new, distinct child ids, got {child_ids!r}")
        parent = self._seq(parent_id)
        for child_id in child_ids:
            for block_id in parent.block_ids:
                assert self._ref_cnt[block_id] > 0
                self._ref_cnt[block_id] += 1
            self._seqs[child_id] = _Seq(list(parent.block_ids), parent.num_tokens,
                                        parent.last_hash, list(parent.partial))

    def free(self, request_id: Hashable) -> None:
        seq = self._seq(request_id)
        for block_id in reversed(seq.block_ids):
            self._release_block(block_id)
        del self._seqs[request_id]

    def find_cached_prefix(self, token_ids: Sequence[int]) -> int:
        token_ids = list(token_ids)
        bs, h, num_hits = self.block_size, ROOT_HASH, 0
        while num_hits < (len(token_ids) - 1) // bs:
            h = hash_block(h, token_ids[num_hits * bs:(num_hits + 1) * bs])
            if h not in self._hash_to_block:
                break
            num_hits += 1
        return num_hits * bs

    def block_table(self, request_id: Hashable) -> list[int]:
        return list(self._seq(request_id).block_ids)

    def num_tokens(self, request_id: Hashable) -> int:
        return self._seq(request_id).num_tokens

    def ref_cnt(self, block_id: int) -> int:
        if not 0 <= block_id < self.num_blocks:
            raise ValueError(f"kvblocks: {block_id!r}")
        return self._ref_cnt[block_id]

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_stack) + len(self._lru)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._hash_to_block)

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def __contains__(self, request_id: Hashable) -> bool:
        return request_id in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    def _seq(self, request_id: Hashable) -> _Seq:
        try:
            return self._seqs[request_id]
        except KeyError:
            raise KeyError(f"kvblocks: unknown request {request_id!r}") from None
