"""The engine's compiled decode kernels (matmul.c, attention.c through cffi) and their threads.

    y = matmul_nt(x, w)          # x (B, K) @ w (N, K)^T -> (B, N) float32
    out = paged_decode_attention(q, k_pages, v_pages, tables, lens, scale)   # (B, n_head, d)
    set_num_threads(4)           # this kernel's OpenMP threads and numpy's OpenBLAS threads

Only this module imports the extension `velollmd.engine._matmul`. Without it (a checkout whose
extension is not built yet) matmul_nt is numpy's `x @ w.T`: same results within float32
rounding, slower for a few decoding rows (`COMPILED` says which one runs); the paged attention
has no numpy twin here: kvcache.PagedKVCache.decode_attention falls back to a dense gather and
ops.decode_attention (its reference).
"""
from __future__ import annotations

import ctypes
import logging
import os

import numpy as np
import psutil

log = logging.getLogger("velollmd.engine")

try:
    from ._matmul import ffi, lib
    COMPILED = True
except ImportError:             # not built: the numpy path
    ffi = lib = None
    COMPILED = False

# Symbols that set OpenBLAS's thread count, by build: numpy's wheels (scipy-openblas, 64-bit
# ints and plain), a distribution's OpenBLAS.
_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads")
_num_threads = 1


def default_num_threads() -> int:
    """Physical cores (a hyper-thread sibling adds nothing to a memory-bound matmul)."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def set_num_threads(num_threads: int = 0) -> int:
    """Threads for matmul_nt and for numpy's BLAS (0: physical cores); the number set."""
    global _num_threads
    _num_threads = num_threads if num_threads > 0 else default_num_threads()
    if not _set_blas_threads(_num_threads):
        log.warning("engine: no OpenBLAS found to set its thread count", extra={"fields": {
            "threads": _num_threads}})
    return _num_threads


def num_threads() -> int:
    return _num_threads


def _set_blas_threads(num_threads: int) -> bool:
    """Set the thread count of every OpenBLAS this process has loaded (numpy's)."""
    done = False
    for path in _loaded_blas_libraries():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter(num_threads)
                done = True
                break
    return done


def _loaded_blas_libraries() -> list[str]:
    """Paths of the mapped shared objects whose name says OpenBLAS, from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if ".so" in os.path.basename(p))


def matmul_nt(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (B, K) @ w (N, K)^T -> (B, N), both float32; w C-contiguous (the GGUF's (out, in))."""
    if not COMPILED:
        return x @ w.T
    x = np.ascontiguousarray(x, dtype=np.float32)                 # (B, K)
    batch, k = x.shape
    n = w.shape[0]
    assert w.dtype == np.float32 and w.flags.c_contiguous and w.shape[1] == k, (w.dtype, w.shape, k)
    y = np.empty((batch, n), dtype=np.float32)                    # (B, N)
    lib.vl_matmul_nt(ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", w),
                     ffi.from_buffer("float[]", y), batch, k, n, _num_threads)
    return y


def paged_decode_attention(q: np.ndarray, k_pages: np.ndarray, v_pages: np.ndarray,
                           block_tables: np.ndarray, context_lens: np.ndarray, scale: float) -> np.ndarray:
    """B single-token queries over their paged contexts, read in place (attention.c; COMPILED only).

    q (B, n_head, d); k_pages, v_pages (num_blocks, block_size, n_head_kv, d) float32 C-contiguous
    (one layer of the cache); block_tables (B, max_blocks) and context_lens (B,) already checked
    (kvcache.PagedKVCache.decode_attention). Returns (B, n_head, d).
    """
    q = np.ascontiguousarray(q, dtype=np.float32)                         # (B, n_head, d)
    batch, n_head, head_dim = q.shape
    _, block_size, n_head_kv, _ = k_pages.shape
    tables = np.ascontiguousarray(block_tables, dtype=np.int64)           # (B, max_blocks)
    lens = np.ascontiguousarray(context_lens, dtype=np.int64)             # (B,)
    assert k_pages.flags.c_contiguous and v_pages.flags.c_contiguous and k_pages.dtype == np.float32
    scores = np.empty((batch, n_head, tables.shape[1] * block_size), dtype=np.float32)  # scratch
    out = np.empty_like(q)                                                # (B, n_head, d)
    lib.vl_decode_attention(
        ffi.from_buffer("float[]", q), ffi.from_buffer("float[]", k_pages), ffi.from_buffer("float[]", v_pages),
        ffi.from_buffer("int64_t[]", tables), ffi.from_buffer("int64_t[]", lens),
        ffi.from_buffer("float[]", scores), ffi.from_buffer("float[]", out),
        batch, n_head, n_head_kv, head_dim, block_size, tables.shape[1], scale, _num_threads)
    return out
