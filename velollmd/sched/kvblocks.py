"""BlockPool: the Python face of the C block allocator (kvblocks.c).

This is the only module that imports the CFFI extension `_kvblocks`, and the only place where
C return codes become Python values: KV_NO_FIT becomes `None` / `False` (not fitting is an
ordinary outcome), KV_ENOMEM MemoryError, KV_EINVAL ValueError, KV_ENOSEQ KeyError.
Every per-request call is one C call; token ids cross as one int32 array.

Semantics (shared with the pure-Python model in tests/sched/pyblocks.py, the tests' oracle):
- blocks of `block_size` token slots; a request's block table covers its tokens plus any
  reserved `num_extra_tokens`;
- never-hashed free blocks are reused LIFO; a full block is registered under
  hash(parent block hash, its token ids) and, once freed, stays cached (findable) until it is
  evicted least-recently-freed-first, only when no never-hashed block is left;
- a request's blocks are freed tail first, so a prompt's tail is evicted before its head;
- a full prefix hit still leaves one token to compute: at most len(prompt) - 1 cached tokens;
- fork shares every block (ref_cnt + 1); writing into a shared block copies it first, and the
  (src, dst) pair waits in `pop_copies()` for whoever owns the KV memory.
"""
from __future__ import annotations

from array import array as _int_array
from collections.abc import Hashable, Sequence
from typing import NamedTuple

from ._kvblocks import ffi, lib

_ERRORS = {lib.KV_ENOMEM: MemoryError, lib.KV_EINVAL: ValueError, lib.KV_ENOSEQ: KeyError}
_INT32_ARRAY = ffi.typeof("int32_t[]")
_from_buffer = ffi.from_buffer
# Bound once: attribute lookups on `lib` cost as much as a short C call.
_kv_allocate, _kv_append, _kv_fork, _kv_free = lib.kv_allocate, lib.kv_append, lib.kv_fork, lib.kv_free
_kv_append_step = lib.kv_append_step


class Allocation(NamedTuple):
    """What allocate() gives a request: its block ids and how many tokens are already cached.
    (A NamedTuple: a frozen dataclass's __init__ costs about 4x the instructions, per request.)"""
    block_table: Sequence[int]        # a list; () when allocate() was told not to read it back
    num_cached_tokens: int


def _fits(rc: int, what: object) -> bool:
    """KV_OK -> True, KV_NO_FIT -> False, an error code -> its exception."""
    if rc == lib.KV_OK:
        return True
    if rc == lib.KV_NO_FIT:
        return False
    raise _ERRORS.get(rc, RuntimeError)(f"kvblocks: {what!r} (code {rc})")


def _int32_array(token_ids: Sequence[int]):
    """Token ids as a C int32 array, zero-copy for int32 buffers (numpy, array('i')).

    Lists go through array('i', ...), which converts about twice as fast as ffi.new.
    """
    if type(token_ids) is not list:
        try:
            view = memoryview(token_ids)
        except TypeError:
            token_ids = list(token_ids)
        else:
            if view.itemsize == 4 and view.format in ("i", "l") and view.c_contiguous:
                return _from_buffer(_INT32_ARRAY, token_ids), len(view)
            token_ids = view.tolist()
    return _from_buffer(_INT32_ARRAY, _int_array("i", token_ids)), len(token_ids)


def hash_block(parent_hash: int, token_ids: Sequence[int]) -> int:
    """The 64-bit hash of one block given its parent's hash (ROOT_HASH for the first block)."""
    tokens, num_tokens = _int32_array(token_ids)
    return lib.kv_hash_block(parent_hash, tokens, num_tokens)


ROOT_HASH = lib.KV_ROOT_HASH


class BlockPool:
    """A pool of `num_blocks` KV blocks of `block_size` tokens, addressed per request id."""

    def __init__(self, num_blocks: int, block_size: int = 16):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        pool = lib.kv_pool_new(num_blocks, block_size)
        if pool == ffi.NULL:
            raise MemoryError("kvblocks: cannot create pool")
        self._pool = ffi.gc(pool, lib.kv_pool_delete)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._seqs: dict[Hashable, int] = {}      # request id -> C seq id
        self._out = ffi.new("int32_t[]", num_blocks)  # (num_blocks,) block ids from C
        self._out_a = ffi.new("int32_t *")           # out-params: seq id / copy src
        self._out_b = ffi.new("int32_t *")           # num cached blocks / copy dst
        self._copies: list[tuple[int, int]] = []

    def allocate(self, request_id: Hashable, token_ids: Sequence[int], num_extra_tokens: int = 0,
                 with_table: bool = True) -> Allocation | None:
        """Blocks for the prompt (+ reserved slots), reusing its cached prefix; None if no fit.
        `with_table=False`: the block ids are not read back (block_table is ()), for a caller
        that only accounts a budget: a list of one id per block is not free for long prompts."""
        if request_id in self._seqs:
            raise ValueError(f"kvblocks: request {request_id!r} already allocated")
        tokens, num_tokens = _int32_array(token_ids)
        rc = _kv_allocate(self._pool, tokens, num_tokens, num_extra_tokens, self._out,
                          self._out_a, self._out_b)
        if rc and not _fits(rc, request_id):
            return None
        self._seqs[request_id] = self._out_a[0]
        num_cached_tokens = self._out_b[0] * self.block_size
        if not with_table:
            return Allocation((), num_cached_tokens)
        num_table = -(-(num_tokens + num_extra_tokens) // self.block_size)
        return Allocation(ffi.unpack(self._out, num_table), num_cached_tokens)

    def append_tokens(self, request_id: Hashable, token_ids: Sequence[int]) -> bool:
        """Grow the request by these tokens; False (and nothing changed) if it does not fit."""
        tokens, num_tokens = _int32_array(token_ids)
        src, dst = self._out_a, self._out_b
        rc = _kv_append(self._pool, self._seq(request_id), tokens, num_tokens, src, dst)
        if rc and not _fits(rc, request_id):
            return False
        if src[0] >= 0:
            self._copies.append((src[0], dst[0]))
        return True

    def append_step(self, request_ids: Sequence[Hashable], token_ids: Sequence[int]) -> list[Hashable]:
        """One decode step: token_ids[i] appended to request_ids[i], all in one C call.
        Returns the requests that did not fit (those are unchanged; the rest grew)."""
        num = len(request_ids)
        if num != len(token_ids):
            raise ValueError("kvblocks: append_step needs one token per request")
        seqs = self._seqs
        seq_ids = _int_array("i", [seqs.get(r, -1) for r in request_ids])
        tokens, _ = _int32_array(token_ids)
        rcs, src, dst = ffi.new("int32_t[]", num), ffi.new("int32_t[]", num), ffi.new("int32_t[]", num)
        rc = _kv_append_step(self._pool, num, _from_buffer(_INT32_ARRAY, seq_ids), tokens, rcs, src, dst)
        if rc:
            _fits(rc, request_ids)
        self._copies += [(s, d) for s, d in zip(ffi.unpack(src, num), ffi.unpack(dst, num)) if s >= 0]
        return [r for r, fit in zip(request_ids, ffi.unpack(rcs, num)) if fit]

    def pop_copies(self) -> list[tuple[int, int]]:
        """(src_block_id, dst_block_id) copy-on-write pairs since the last call."""
        copies, self._copies = self._copies, []
        return copies

    def fork(self, parent_id: Hashable, *child_ids: Hashable) -> None:
        """Each child shares all of the parent's blocks (copy-on-write); one C call for all."""
        seqs = self._seqs
        num_children = len(child_ids)
        if num_children == 1:               # the common case, kept lean: it is on hot paths
            if child_ids[0] in seqs:
                raise ValueError(f"kvblocks: request {child_ids[0]!r} already allocated")
            rc = _kv_fork(self._pool, seqs.get(parent_id, -1), 1, self._out_a)
            if rc:
                _fits(rc, parent_id)
            seqs[child_ids[0]] = self._out_a[0]
            return
        if not num_children or not seqs.keys().isdisjoint(child_ids):
            raise ValueError(f"kvblocks: fork needs new child ids, got {child_ids!r}")
        out = self._out if num_children <= self.num_blocks else ffi.new("int32_t[]", num_children)
        rc = _kv_fork(self._pool, seqs.get(parent_id, -1), num_children, out)
        if rc:
            _fits(rc, parent_id)
        num_before = len(seqs)
        seqs.update(zip(child_ids, ffi.unpack(out, num_children)))
        if len(seqs) != num_before + num_children:      # a child id given twice: undo
            self._undo_fork(child_ids, ffi.unpack(out, num_children))

    def _undo_fork(self, child_ids: tuple, child_seqs: list[int]) -> None:
        for seq in child_seqs:
            _kv_free(self._pool, seq)
        for child_id in child_ids:
            self._seqs.pop(child_id, None)
        raise ValueError(f"kvblocks: fork got a child id twice: {child_ids!r}")

    def free(self, request_id: Hashable) -> None:
        rc = _kv_free(self._pool, self._seq(request_id))
        if rc:
            _fits(rc, request_id)
        del self._seqs[request_id]

    def find_cached_prefix(self, token_ids: Sequence[int]) -> int:
        """Tokens of this prompt that allocate() would find cached (at most len - 1)."""
        tokens, num_tokens = _int32_array(token_ids)
        return lib.kv_find_cached_prefix(self._pool, tokens, num_tokens) * self.block_size

    def block_table(self, request_id: Hashable) -> list[int]:
        num = lib.kv_block_table(self._pool, self._seq(request_id), self._out, self.num_blocks)
        return ffi.unpack(self._out, num)

    def num_tokens(self, request_id: Hashable) -> int:
        return lib.kv_num_tokens(self._pool, self._seq(request_id))

    def ref_cnt(self, block_id: int) -> int:
        rc = lib.kv_ref_cnt(self._pool, block_id)
        _fits(lib.KV_OK if rc >= 0 else rc, block_id)
        return rc

    @property
    def num_free_blocks(self) -> int:
        """Blocks allocate() may hand out: never-hashed free ones plus evictable cached ones."""
        return lib.kv_num_free_blocks(self._pool)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix-hash table (in use or evictable)."""
        return lib.kv_num_cached_blocks(self._pool)

    def usage(self) -> float:
        """Fraction of blocks held by requests (0.0 .. 1.0)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def __contains__(self, request_id: Hashable) -> bool:
        return request_id in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    def _seq(self, request_id: Hashable) -> int:
        seq = self._seqs.get(request_id, -1)
        if seq < 0:
            raise KeyError(f"kvblocks: unknown request {request_id!r}")
        return seq
