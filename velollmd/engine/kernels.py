"""The engine's compiled decode kernels (matmul.c, matmul_q8.c, matmul_q4k.c, matmul_q5k.c,
matmul_q6k.c, matmul_legacy.c, attention.c, activations.c through cffi) and their threads.

    y = matmul_nt(x, w)          # x (B, K) @ w (N, K)^T -> (B, N) float32
    xq, xd = quantize_q8_0(x)     # x (B, K) -> int8 (B, K), scales (B, K / 32), as vecdot's
    y = matmul_q8_0(xq, xd, wp, wd, n)   # the same product for Q8_0 x and packed w: integer dot products
    y = matmul_q4_k(quantize_q8_k(x), qs, sc, mn, wd, wdmin)   # Q8_K x, Q4_K w (ggml's product)
    y = matmul_q5_k(quantize_q8_k(x), qs, qh, sc, mn, wd, wdmin)   # Q8_K x, Q5_K w
    y = matmul_q6_k(quantize_q8_k(x), wq, sc, wd)              # Q8_K x, Q6_K w
    y = matmul_q4_0(xq, xd, qs, wd)   # Q8_0 x, Q4_0 w (nibbles as stored); matmul_q5_0, _q4_1, _q5_1 likewise
    out = paged_decode_attention(q, k_pages, v_pages, tables, lens, scale)   # (B, n_head, d)
    act = silu_mul(gate_up)       # (T, 2n) -> silu(gate_up[:, :n]) * gate_up[:, n:] (ops.silu's twin)
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


# matmul_q8.h's paths: "best" (the fastest this CPU has) or one named, slowest first
Q8_PATHS = {"best": 0, "portable": 1, "avx2": 2, "avxvnni": 4, "vnni": 3}
Q8_SIGNED, Q8_UNSIGNED = 0, 1       # matmul_q8.h's byte formats of packed weights: int8 w, uint8 w + 128


def q8_0_paths() -> list[str]:
    """The Q8_0 kernel's paths this CPU can run (COMPILED only), slowest first."""
    available = lib.vl_q8_0_paths()
    return [name for name, bit in Q8_PATHS.items() if bit and available & (1 << bit)]


def q8_0_reads_unsigned(path: str = "best") -> bool:
    """Whether the Q8_0 kernel's path (COMPILED only) reads packed weights as unsigned bytes w + 128
    (the VNNI paths) rather than signed (matmul_q8.h's formats)."""
    fmt = lib.vl_q8_0_format(Q8_PATHS[path])
    if fmt < 0:
        raise ValueError(f"matmul_q8_0: path {path!r} is not available on this CPU ({q8_0_paths()})")
    return fmt == Q8_UNSIGNED


def integer_kernels_pay() -> bool:
    """Whether keeping Q8_0/Q4_K/Q5_K/Q6_K weights quantised pays on this CPU: the integer kernels are
    built and have their AVX2 path. Their portable path measured 14-25x slower than AVX2, slower
    than the float32 kernel on dequantised weights, so a CPU without AVX2 (or a tree without the
    compiled extension, where they do not exist) dequantises at load as before."""
    return COMPILED and "avx2" in q8_0_paths()


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (T, K) float32 -> Q8_0 values (T, K) int8 and scales (T, K / 32) float32 (COMPILED
    only): vecdot.quantize_q8_0's, bit for bit, without numpy's per-call overhead."""
    x = np.ascontiguousarray(x, dtype=np.float32)                                 # (T, K)
    assert x.shape[-1] % 32 == 0, x.shape
    xq = np.empty(x.shape, dtype=np.int8)                                         # (T, K)
    xd = np.empty((x.shape[0], x.shape[1] // 32), dtype=np.float32)               # (T, K / 32)
    lib.vl_quantize_q8_0(ffi.from_buffer("float[]", x), ffi.from_buffer("int8_t[]", xq),
                         ffi.from_buffer("float[]", xd), xd.size)
    return xq, xd


def matmul_q8_0(xq: np.ndarray, xd: np.ndarray, wp: np.ndarray, wd: np.ndarray, n: int,
                path: str = "best") -> np.ndarray:
    """Q8_0 x (B, K) @ Q8_0 w (N, K)^T -> (B, N) float32: ggml's int32 block sums, one float
    rounding per block (matmul_q8.h; COMPILED only). xq (B, K) int8, xd (B, K / 32) float32; w
    packed by q8weight.pack_rows: wp (G, K / 32, 8, 16, 4) int8 (signed bytes) or uint8 (w + 128),
    wd (G, K / 32, 16) float32. path "best": the fastest path that reads wp's format; a path named
    that reads the other format (or is not on this CPU) raises ValueError."""
    xq = np.ascontiguousarray(xq, dtype=np.int8)                                  # (B, K)
    xd = np.ascontiguousarray(xd, dtype=np.float32)                               # (B, K / 32)
    batch, k = xq.shape
    groups = -(-n // 16)
    assert k % 32 == 0 and xd.shape == (batch, k // 32), (xq.shape, xd.shape)
    assert wp.dtype in (np.int8, np.uint8) and wp.flags.c_contiguous, wp.dtype
    assert wp.shape == (groups, k // 32, 8, 16, 4), wp.shape
    assert wd.dtype == np.float32 and wd.flags.c_contiguous and wd.shape == (groups, k // 32, 16), wd.shape
    y = np.empty((batch, n), dtype=np.float32)                                    # (B, N)
    ran = lib.vl_matmul_q8_0(ffi.from_buffer("int8_t[]", xq), ffi.from_buffer("float[]", xd),
                             ffi.from_buffer(wp), ffi.from_buffer("float[]", wd),
                             ffi.from_buffer("float[]", y), batch, k, n, _num_threads, Q8_PATHS[path],
                             Q8_UNSIGNED if wp.dtype == np.uint8 else Q8_SIGNED)
    if ran == -2:
        raise MemoryError("matmul_q8_0: no memory for the VNNI bias")
    if ran < 0:
        raise ValueError(f"matmul_q8_0: path {path!r} is not available for {wp.dtype} weights on this CPU "
                         f"(its paths {q8_0_paths()}; the VNNI ones read uint8 w + 128, the others int8)")
    return y


def quantize_q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (T, K) float32 -> Q8_K values (T, K) int8, scales (T, K / 256) float32 and sums of 16
    values (T, K / 16) int16 (COMPILED only): vecdot.quantize_q8_k's values, bit for bit."""
    x = np.ascontiguousarray(x, dtype=np.float32)                                 # (T, K)
    assert x.shape[-1] % 256 == 0, x.shape
    xq = np.empty(x.shape, dtype=np.int8)                                         # (T, K)
    xd = np.empty((x.shape[0], x.shape[1] // 256), dtype=np.float32)              # (T, K / 256)
    bsums = np.empty((x.shape[0], x.shape[1] // 16), dtype=np.int16)              # (T, K / 16)
    lib.vl_quantize_q8_k(ffi.from_buffer("float[]", x), ffi.from_buffer("int8_t[]", xq),
                         ffi.from_buffer("float[]", xd), ffi.from_buffer("int16_t[]", bsums), xd.size)
    return xq, xd, bsums


def legacy_paths() -> list[str]:
    """The Q4_0 / Q5_0 / Q4_1 / Q5_1 kernels' paths this CPU can run (COMPILED only), slowest
    first: portable, AVX2 and AVX-512 VNNI (matmul_legacy.c has no AVX-VNNI path)."""
    return [name for name in q8_0_paths() if name in ("portable", "avx2", "vnni")]


def q4_k_paths() -> list[str]:
    """The Q4_K kernel's paths this CPU can run (COMPILED only), slowest first: portable and AVX2."""
    return [name for name in q8_0_paths() if name in ("portable", "avx2")]


def matmul_q4_k(x: tuple[np.ndarray, np.ndarray, np.ndarray], qs: np.ndarray, sc: np.ndarray,
                mn: np.ndarray, wd: np.ndarray, wdmin: np.ndarray, path: str = "best") -> np.ndarray:
    """Q8_K x (B, K) @ Q4_K w (N, K)^T -> (B, N) float32, as ggml_vec_dot_q4_K_q8_K (matmul_q4k.h;
    COMPILED only). x: quantize_q8_k's (xq, xd, bsums); w unpacked by row: qs (N, K / 2) uint8,
    sc and mn (N, K / 32) uint8, wd and wdmin (N, K / 256) float32."""
    xq, xd, bsums = x
    y = _scale_min_output(x, qs, sc, mn, wd, wdmin)                               # (B, N)
    ran = lib.vl_matmul_q4_k(ffi.from_buffer("int8_t[]", xq), ffi.from_buffer("float[]", xd),
                             ffi.from_buffer("int16_t[]", bsums), ffi.from_buffer("uint8_t[]", qs),
                             ffi.from_buffer("uint8_t[]", sc), ffi.from_buffer("uint8_t[]", mn),
                             ffi.from_buffer("float[]", wd), ffi.from_buffer("float[]", wdmin),
                             ffi.from_buffer("float[]", y), y.shape[0], qs.shape[1] * 2, y.shape[1],
                             _num_threads, Q8_PATHS[path])
    if ran < 0:
        raise ValueError(f"matmul_q4_k: path {path!r} is not available on this CPU ({q4_k_paths()})")
    return y


def matmul_q5_k(x: tuple[np.ndarray, np.ndarray, np.ndarray], qs: np.ndarray, qh: np.ndarray, sc: np.ndarray,
                mn: np.ndarray, wd: np.ndarray, wdmin: np.ndarray, path: str = "best") -> np.ndarray:
    """Q8_K x (B, K) @ Q5_K w (N, K)^T -> (B, N) float32, as ggml_vec_dot_q5_K_q8_K (matmul_q5k.h;
    COMPILED only). w as matmul_q4_k's plus qh (N, K / 8) uint8, the 5th bits as stored.
    path: one of q4_k_paths()."""
    xq, xd, bsums = x
    y = _scale_min_output(x, qs, sc, mn, wd, wdmin)                               # (B, N)
    assert qh.dtype == np.uint8 and qh.flags.c_contiguous, qh.dtype
    assert qh.shape == (qs.shape[0], qs.shape[1] // 4), (qh.shape, qs.shape)
    ran = lib.vl_matmul_q5_k(ffi.from_buffer("int8_t[]", xq), ffi.from_buffer("float[]", xd),
                             ffi.from_buffer("int16_t[]", bsums), ffi.from_buffer("uint8_t[]", qs),
                             ffi.from_buffer("uint8_t[]", qh), ffi.from_buffer("uint8_t[]", sc),
                             ffi.from_buffer("uint8_t[]", mn), ffi.from_buffer("float[]", wd),
                             ffi.from_buffer("float[]", wdmin), ffi.from_buffer("float[]", y),
                             y.shape[0], qs.shape[1] * 2, y.shape[1], _num_threads, Q8_PATHS[path])
    if ran < 0:
        raise ValueError(f"matmul_q5_k: path {path!r} is not available on this CPU ({q4_k_paths()})")
    return y


def _scale_min_output(x: tuple[np.ndarray, np.ndarray, np.ndarray], qs: np.ndarray, sc: np.ndarray,
                      mn: np.ndarray, wd: np.ndarray, wdmin: np.ndarray) -> np.ndarray:
    """The (B, N) float32 output of a Q4_K/Q5_K product, once x's and w's shared fields are checked."""
    xq, xd, bsums = x
    batch, k = xq.shape
    n = qs.shape[0]
    assert xd.shape == (batch, k // 256) and bsums.shape == (batch, k // 16), (xq.shape, xd.shape, bsums.shape)
    for array, dtype, cols in ((qs, np.uint8, k // 2), (sc, np.uint8, k // 32), (mn, np.uint8, k // 32),
                               (wd, np.float32, k // 256), (wdmin, np.float32, k // 256)):
        assert array.dtype == dtype and array.flags.c_contiguous and array.shape == (n, cols), array.shape
    return np.empty((batch, n), dtype=np.float32)


def matmul_q6_k(x: tuple[np.ndarray, np.ndarray, np.ndarray], wq: np.ndarray, sc: np.ndarray, wd: np.ndarray,
                path: str = "best") -> np.ndarray:
    """Q8_K x (B, K) @ Q6_K w (N, K)^T -> (B, N) float32, as ggml_vec_dot_q6_K_q8_K (matmul_q6k.h;
    COMPILED only). x: quantize_q8_k's; w unpacked by row: wq (N, K) uint8 (0..63),
    sc (N, K / 16) int8, wd (N, K / 256) float32. path: one of q4_k_paths()."""
    xq, xd, bsums = x
    batch, k = xq.shape
    n = wq.shape[0]
    assert xd.shape == (batch, k // 256) and bsums.shape == (batch, k // 16), (xq.shape, xd.shape, bsums.shape)
    for array, dtype, cols in ((wq, np.uint8, k), (sc, np.int8, k // 16), (wd, np.float32, k // 256)):
        assert array.dtype == dtype and array.flags.c_contiguous and array.shape == (n, cols), array.shape
    y = np.empty((batch, n), dtype=np.float32)                                    # (B, N)
    ran = lib.vl_matmul_q6_k(ffi.from_buffer("int8_t[]", xq), ffi.from_buffer("float[]", xd),
                             ffi.from_buffer("int16_t[]", bsums),
                             ffi.from_buffer("uint8_t[]", wq), ffi.from_buffer("int8_t[]", sc),
                             ffi.from_buffer("float[]", wd), ffi.from_buffer("float[]", y),
                             batch, k, n, _num_threads, Q8_PATHS[path])
    if ran < 0:
        raise ValueError(f"matmul_q6_k: path {path!r} is not available on this CPU ({q4_k_paths()})")
    return y


def matmul_q4_0(xq: np.ndarray, xd: np.ndarray, qs: np.ndarray, wd: np.ndarray,
                path: str = "best") -> np.ndarray:
    """Q8_0 x (B, K) @ Q4_0 w (N, K)^T -> (B, N) float32, as ggml_vec_dot_q4_0_q8_0 (matmul_legacy.h;
    COMPILED only). xq (B, K) int8 and xd (B, K / 32) float32 (quantize_q8_0's); w by row: qs
    (N, K / 2) uint8 (each block's 16 nibble bytes as stored), wd (N, K / 32) float32.
    path: one of legacy_paths()."""
    return _matmul_legacy("q4_0", (xq, xd), path, (qs, 2), (wd, 32))


def matmul_q5_0(xq: np.ndarray, xd: np.ndarray, qs: np.ndarray, qh: np.ndarray, wd: np.ndarray,
                path: str = "best") -> np.ndarray:
    """Q8_0 x (B, K) @ Q5_0 w (N, K)^T -> (B, N) float32, as ggml_vec_dot_q5_0_q8_0 (matmul_legacy.h;
    COMPILED only): as matmul_q4_0, with qh (N, K / 8) uint8 each block's 4 bytes of fifth bits."""
    return _matmul_legacy("q5_0", (xq, xd), path, (qs, 2), (qh, 8), (wd, 32))


def matmul_q4_1(xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, qs: np.ndarray, wd: np.ndarray,
                wm: np.ndarray, path: str = "best") -> np.ndarray:
    """Q8_1 x (B, K) @ Q4_1 w (N, K)^T -> (B, N) float32, as ggml_vec_dot_q4_1_q8_1 (matmul_legacy.h;
    COMPILED only): as matmul_q4_0, with xs (B, K / 32) float32 each block's F16 d * sum(xq)
    and wm (N, K / 32) float32 the weight's mins."""
    return _matmul_legacy("q4_1", (xq, xd, xs), path, (qs, 2), (wd, 32), (wm, 32))


def matmul_q5_1(xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, qs: np.ndarray, qh: np.ndarray,
                wd: np.ndarray, wm: np.ndarray, path: str = "best") -> np.ndarray:
    """Q8_1 x (B, K) @ Q5_1 w (N, K)^T -> (B, N) float32, as ggml_vec_dot_q5_1_q8_1 (matmul_legacy.h;
    COMPILED only): matmul_q4_1's arrays and matmul_q5_0's qh."""
    return _matmul_legacy("q5_1", (xq, xd, xs), path, (qs, 2), (qh, 8), (wd, 32), (wm, 32))


_CTYPES = {np.dtype(np.int8): "int8_t[]", np.dtype(np.uint8): "uint8_t[]", np.dtype(np.float32): "float[]"}


def _matmul_legacy(name: str, x: tuple[np.ndarray, ...], path: str,
                   *weight: tuple[np.ndarray, int]) -> np.ndarray:
    """lib.vl_matmul_<name>(*x, *weight arrays, y, B, K, N, ...): x = (xq (B, K) int8, then
    (B, K / 32) float32 arrays); weight as (array (N, K / divisor) C-contiguous, divisor) in the
    header's order, each checked."""
    xq = np.ascontiguousarray(x[0], dtype=np.int8)                                # (B, K)
    scales = [np.ascontiguousarray(a, dtype=np.float32) for a in x[1:]]           # (B, K / 32) each
    batch, k = xq.shape
    n = weight[0][0].shape[0]
    assert k % 32 == 0 and all(a.shape == (batch, k // 32) for a in scales), (name, xq.shape)
    for array, divisor in weight:
        fits = array.dtype in (np.uint8, np.float32) and array.flags.c_contiguous
        assert fits and array.shape == (n, k // divisor), (name, array.dtype, array.shape)
    y = np.empty((batch, n), dtype=np.float32)                                    # (B, N)
    arrays = (xq, *scales, *(array for array, _ in weight))
    ran = getattr(lib, f"vl_matmul_{name}")(
        *(ffi.from_buffer(_CTYPES[a.dtype], a) for a in arrays),
        ffi.from_buffer("float[]", y), batch, k, n, _num_threads, Q8_PATHS[path])
    if ran < 0:
        raise ValueError(f"matmul_{name}: path {path!r} is not available on this CPU ({legacy_paths()})")
    return y


def paged_decode_attention(q: np.ndarray, k_pages: np.ndarray, v_pages: np.ndarray,
                           block_tables: np.ndarray, context_lens: np.ndarray, scale: float,
                           starts: np.ndarray | None = None, softcap: float = 0.0,
                           f16_portable: bool = False) -> np.ndarray:
    """B single-token queries over their paged contexts, read in place (attention.c; COMPILED only).

    q (B, n_head, d); k_pages, v_pages (num_blocks, block_size, n_head_kv, d) C-contiguous, both
    float32 or both float16 (one layer of the cache; float16: attention_f16.c, each element read
    as its exact float, so the result is the float32 kernel's on the cache converted; its F16C
    build where the CPU has one, the portable build with f16_portable); block_tables (B,
    max_blocks) and context_lens (B,) already checked (kvcache.PagedKVCache.decode_attention).
    starts (B,), each below its length: the first visible position (a sliding window's first
    key; the keys and blocks before it are not read). softcap > 0: the scores soft-capped before
    the softmax, as ops.soft_cap_. Returns (B, n_head, d).
    """
    q = np.ascontiguousarray(q, dtype=np.float32)                         # (B, n_head, d)
    batch, n_head, head_dim = q.shape
    _, block_size, n_head_kv, _ = k_pages.shape
    tables = np.ascontiguousarray(block_tables, dtype=np.int64)           # (B, max_blocks)
    lens = np.ascontiguousarray(context_lens, dtype=np.int64)             # (B,)
    assert k_pages.flags.c_contiguous and v_pages.flags.c_contiguous, "KV pages must be C-contiguous"
    assert k_pages.dtype == v_pages.dtype and k_pages.dtype in (np.float32, np.float16), k_pages.dtype
    if starts is None:
        first = ffi.NULL
    else:
        starts = np.ascontiguousarray(starts, dtype=np.int64)            # (B,)
        assert starts.shape == lens.shape and (starts >= 0).all() and (starts < lens).all()
        first = ffi.from_buffer("int64_t[]", starts)
    scores = np.empty((batch, n_head, tables.shape[1] * block_size), dtype=np.float32)  # scratch
    out = np.empty_like(q)                                                # (B, n_head, d)
    pointers = (ffi.from_buffer("int64_t[]", tables), ffi.from_buffer("int64_t[]", lens), first,
                ffi.from_buffer("float[]", scores), ffi.from_buffer("float[]", out),
                batch, n_head, n_head_kv, head_dim, block_size, tables.shape[1], scale, softcap, _num_threads)
    if k_pages.dtype == np.float16:
        lib.vl_decode_attention_f16(ffi.from_buffer("float[]", q), ffi.from_buffer("uint16_t[]", k_pages),
                                    ffi.from_buffer("uint16_t[]", v_pages), *pointers, 0, int(f16_portable))
    else:
        lib.vl_decode_attention(ffi.from_buffer("float[]", q), ffi.from_buffer("float[]", k_pages),
                                ffi.from_buffer("float[]", v_pages), *pointers)
    return out


def silu_mul(gate_up: np.ndarray) -> np.ndarray:
    """silu(gate) * up (activations.c; COMPILED only) for gate_up (T, 2n) float32 C-contiguous,
    gate its first n columns and up the rest (the FFN's one fused product). Returns (T, n)."""
    if gate_up.ndim != 2 or gate_up.shape[1] % 2 or gate_up.dtype != np.float32 \
            or not gate_up.flags.c_contiguous:
        raise ValueError(f"silu_mul: gate_up {gate_up.shape} {gate_up.dtype}, C-contiguous (T, 2n) wanted")
    rows, n = gate_up.shape[0], gate_up.shape[1] // 2
    out = np.empty((rows, n), dtype=np.float32)                          # (T, n)
    gate = ffi.from_buffer("float[]", gate_up)
    lib.vl_silu_mul(gate, gate + n, ffi.from_buffer("float[]", out), rows, n, 2 * n, 2 * n, _num_threads)
    return out
