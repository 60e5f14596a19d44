"""The engine's compiled decode matmul (matmul.c through cffi) and its thread settings.

    y = matmul_nt(x, w)          # x (B, K) @ w (N, K)^T -> (B, N) float32
    set_num_threads(4)           # this kernel's OpenMP threads and numpy's OpenBLAS threads

Only this module imports the extension `velollmd.engine._matmul`. Without it (a checkout whose
extension is not built yet) matmul_nt is numpy's `x @ w.T`: same results within float32
rounding, slower for a few decoding rows (`COMPILED` says which one runs).
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
