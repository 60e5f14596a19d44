"""The semantic tier: cosine search over one preallocated matrix of query vectors.

Rows are L2-normalised, so cosine = one matrix-vector product. Each row carries a partition
id (the partition key: everything but the last user turn), the exact key of the stored
response and the query text for the guard rails. A search scans only the rows of the query's
partition: a boolean mask over all used rows when the partition is large, a gather of its
rows when it is small. Full index: the least recently used row is evicted.
"""
from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .guard import mismatch

MAX_CANDIDATES = 8            # rows above threshold checked by the guard rails, best first
GATHER_FRACTION = 0.125       # partitions smaller than this share of used rows are gathered


@dataclass(frozen=True)
class SemanticMatch:
    key: str                  # exact key of the cached response
    similarity: float
    row: int


PARALLEL_SCAN_ELEMENTS = 1 << 22        # ~16 MB of float32: below this one thread is faster
_SCAN_POOL: ThreadPoolExecutor | None = None


def _scan_pool() -> ThreadPoolExecutor:
    global _SCAN_POOL
    if _SCAN_POOL is None:
        _SCAN_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="velollm-scan")
    return _SCAN_POOL


class SemanticIndex:
    def __init__(self, capacity: int, dim: int, *, dtype: str = "float32",
                 threshold: float = 0.95,
                 guard: Callable[[str, str], str | None] = mismatch):
        self.capacity, self.dim, self.threshold, self.guard = capacity, dim, threshold, guard
        self.vectors = np.zeros((capacity, dim), np.dtype(dtype))   # (capacity, dim)
        self.row_partition = np.full(capacity, -1, np.int32)         # (capacity,) -1 = free
        self.row_key: list[str | None] = [None] * capacity
        self.row_text: list[str | None] = [None] * capacity
        self.num_used_rows = 0          # high-water mark: rows >= this were never used
        self.num_evictions = 0
        self.num_guard_rejects = 0
        self._free_rows: list[int] = []
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._key_row: dict[str, int] = {}
        self._partition_id: dict[str, int] = {}
        self._partition_name: dict[int, str] = {}
        self._partition_size: dict[int, int] = {}
        self._next_partition_id = 0

    def __len__(self) -> int:
        return len(self._lru)

    # -- insert / remove ---------------------------------------------------------------
    def add(self, partition: str, key: str, text: str, vector: np.ndarray) -> int | None:
        """Insert (or replace) the row for `key`; returns its row, None when capacity is 0."""
        if self.capacity <= 0:
            return None
        if key in self._key_row:
            self.remove(key)
        row = self._take_row()
        pid = self._partition_id.get(partition)
        if pid is None:
            pid = self._partition_id[partition] = self._next_partition_id
            self._partition_name[pid] = partition
            self._next_partition_id += 1
        self._partition_size[pid] = self._partition_size.get(pid, 0) + 1
        self.vectors[row] = vector
        self.row_partition[row] = pid
        self.row_key[row], self.row_text[row] = key, text
        self._key_row[key] = row
        self._lru[row] = None
        return row

    def _take_row(self) -> int:
        if self._free_rows:
            return self._free_rows.pop()
        if self.num_used_rows < self.capacity:
            self.num_used_rows += 1
            return self.num_used_rows - 1
        oldest = next(iter(self._lru))
        self.remove(self.row_key[oldest])
        self.num_evictions += 1
        return self._free_rows.pop()

    def remove(self, key: str) -> bool:
        row = self._key_row.pop(key, None)
        if row is None:
            return False
        pid = int(self.row_partition[row])
        self._partition_size[pid] -= 1
        if not self._partition_size[pid]:
            del self._partition_size[pid]
            del self._partition_id[self._partition_name.pop(pid)]
        self.row_partition[row] = -1
        self.row_key[row] = self.row_text[row] = None
        del self._lru[row]
        self._free_rows.append(row)
        return True

    def clear(self) -> None:
        self.__init__(self.capacity, self.dim, dtype=self.vectors.dtype.name,
                      threshold=self.threshold, guard=self.guard)

    # -- search ------------------------------------------------------------------------
    def scores(self, partition: str, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosine) of every row in `partition`: ((num_rows,) intp, (num_rows,) float32)."""
        pid = self._partition_id.get(partition)
        if pid is None:
            return np.empty(0, np.intp), np.empty(0, np.float32)
        used = self.num_used_rows
        query = np.asarray(vector, np.float32)                       # (dim,)
        in_partition = self.row_partition[:used] == pid              # (used,) bool
        if self._partition_size[pid] < GATHER_FRACTION * used:
            rows = np.flatnonzero(in_partition)                     # (num_rows,)
            return rows, self._matvec(self.vectors[rows], query)
        sims = self._matvec(self.vectors[:used], query)              # (used,)
        rows = np.flatnonzero(in_partition)
        return rows, sims[rows]

    @staticmethod
    def _matvec(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
        """matrix (n, dim) float32|float16 @ query (dim,) float32 -> (n,) float32.

        einsum runs numpy's own SIMD loop on the calling thread: no BLAS thread pool, which
        would stall for a scheduler slice whenever the inference backend holds every core.
        A large scan is split in two halves, one on a helper thread (einsum releases the GIL):
        one core alone cannot stream 100k x 384 floats in under 5 ms here. float16 rows are
        widened on the fly (half the memory, but slower: numpy's cast has no fast path)."""
        if matrix.size < PARALLEL_SCAN_ELEMENTS:
            return np.einsum("ij,j->i", matrix, query, dtype=np.float32)
        out = np.empty(len(matrix), np.float32)                       # (n,) float32
        half = len(matrix) // 2
        other = _scan_pool().submit(np.einsum, "ij,j->i", matrix[half:], query,
                                    dtype=np.float32, out=out[half:])
        np.einsum("ij,j->i", matrix[:half], query, dtype=np.float32, out=out[:half])
        other.result()
        return out

    def search(self, partition: str, vector: np.ndarray, text: str) -> SemanticMatch | None:
        """Best row in `partition` with cosine >= threshold that passes the guard rails."""
        rows, sims = self.scores(partition, vector)
        above = np.flatnonzero(sims >= self.threshold)
        if not len(above):
            return None
        best_first = above[np.argsort(-sims[above], kind="stable")][:MAX_CANDIDATES]
        for i in best_first:
            row = int(rows[i])
            if self.guard(text, self.row_text[row]) is None:
                self._lru.move_to_end(row)
                return SemanticMatch(self.row_key[row], float(sims[i]), row)
            self.num_guard_rejects += 1
        return None

    # -- persistence -------------------------------------------------------------------
    def export_rows(self) -> tuple[list[tuple[str, str, str]], np.ndarray]:
        """([(partition, key, text)], vectors (num_rows, dim)) from least to most recent."""
        rows = list(self._lru)
        meta = [(self._partition_name[int(self.row_partition[r])], self.row_key[r],
                 self.row_text[r]) for r in rows]
        return meta, self.vectors[rows]

    def import_rows(self, meta, vectors: np.ndarray) -> None:
        """Re-add exported rows (vectors (num_rows, dim)) in LRU order."""
        for (partition, key, text), vector in zip(meta, vectors):
            self.add(partition, key, text, vector)
