"""PyCUDA launchers for the kernels in this folder; pycuda is imported only when used.

Arrays are pycuda GPUArrays with the shapes and dtypes each .cu file states; scalars go as
numpy int32 / float32. `probe()` says whether a CUDA device answers, and why not.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import numpy as np

from . import sources

I32, F32 = np.int32, np.float32


class Probe(NamedTuple):
    ok: bool
    detail: str     # the device's name, or why there is no device


def probe() -> Probe:
    """Is there a CUDA device pycuda can use? Never raises."""
    try:
        import pycuda.driver as driver
    except ImportError as exc:        # no pycuda, or pycuda built but no libcuda.so.1 (no driver)
        return Probe(False, f"pycuda.driver does not import: {exc}")
    try:
        driver.init()
        if driver.Device.count() == 0:
            return Probe(False, "the CUDA driver reports no device")
        return Probe(True, driver.Device(0).name())
    except Exception as exc:          # pycuda.driver.Error and friends: no usable device
        return Probe(False, f"CUDA driver: {exc}")


class PrimaryContext:
    """Device 0's primary context, made current around each use: the engine loads on one worker
    thread and steps on others, and a CUDA context is current per thread."""

    def __init__(self, ordinal: int = 0):
        import pycuda.driver as driver
        driver.init()
        self._driver = driver
        self._context = driver.Device(ordinal).retain_primary_context()

    @contextmanager
    def active(self):
        self._context.push()
        try:
            yield
        finally:
            self._driver.Context.pop()


class Kernels:
    """The kernels compiled for one set of defines, on the caller's current CUDA context (or,
    given one, on `context` made current by active()).

    Besides the launchers, the few array moves the engine's CUDA forward pass needs (free_bytes,
    to_device, keep_on_device, to_host, zeros, empty_like, copy_blocks): tests/cuda/mirror_kernels.py
    offers the same methods over numpy arrays, so the forward pass runs on any machine."""

    def __init__(self, defines: dict[str, int] | None = None, context: PrimaryContext | None = None):
        self.defines = dict(defines or {})
        self.context = context
        self._modules: dict[str, object] = {}
        self._pool = None           # pycuda DeviceMemoryPool for the arrays of one pass, made on first use

    def _allocator(self):
        """The pool's allocate: a pass's dozens of activations reuse freed device memory instead
        of a cuMemAlloc and cuMemFree each (pycuda's default). Long-lived arrays (weights, the KV
        cache: keep_on_device, zeros) take plain allocations, which the pool's size bins would round up."""
        if self._pool is None:
            from pycuda.tools import DeviceMemoryPool
            self._pool = DeviceMemoryPool()
        return self._pool.allocate

    def _empty(self, shape: tuple[int, ...], dtype=np.float32):
        from pycuda import gpuarray
        return gpuarray.empty(shape, dtype, allocator=self._allocator())

    def active(self):
        return self.context.active() if self.context is not None else nullcontext()

    def free_bytes(self) -> int:
        """Device memory free now (inside active())."""
        import pycuda.driver as driver
        return int(driver.mem_get_info()[0])

    def to_device(self, array: np.ndarray):
        """A pass's input (token ids, positions, tables) on the device, pooled."""
        from pycuda import gpuarray
        return gpuarray.to_gpu(np.ascontiguousarray(array), allocator=self._allocator())

    @staticmethod
    def keep_on_device(array: np.ndarray):
        """A long-lived array (a weight) on the device."""
        from pycuda import gpuarray
        return gpuarray.to_gpu(np.ascontiguousarray(array))

    @staticmethod
    def to_host(array) -> np.ndarray:
        return array.get()

    @staticmethod
    def zeros(shape: tuple[int, ...], dtype):
        from pycuda import gpuarray
        return gpuarray.zeros(shape, dtype)

    def empty_like(self, array):
        return self._empty(array.shape, array.dtype)

    @staticmethod
    def free(arrays) -> None:
        """Free these arrays' device memory now (inside active()). pycuda frees an allocation its
        last reference drops only on a thread where its context is current or on the thread that
        made the context, else it warns and the memory leaks: the event loop unloading a model is
        neither, so a model's weights and KV cache are freed here, not left to the collector."""
        for array in arrays:
            array.gpudata.free()

    def release(self) -> None:
        """Free the pool's held memory and unload the compiled modules (inside active()), for
        the same reason as free(); a later launch compiles and pools again."""
        if self._pool is not None:
            self._pool.stop_holding()       # frees what it holds, and what comes back later
            self._pool = None
        self._modules.clear()

    @staticmethod
    def copy_blocks(caches: list, pairs: list[tuple[int, int]]) -> None:
        """Block src -> block dst of each cache (num_blocks, ...) for each (src, dst) pair."""
        import pycuda.driver as driver
        for cache in caches:
            block_bytes = cache.nbytes // cache.shape[0]
            for src, dst in pairs:
                driver.memcpy_dtod(int(cache.gpudata) + dst * block_bytes, int(cache.gpudata) + src * block_bytes,
                                   block_bytes)

    def function(self, file: str, name: str):
        if file not in self._modules:
            from pycuda.compiler import SourceModule
            self._modules[file] = SourceModule(
                sources.source_path(file).read_text(), no_extern_c=True,
                options=sources.define_flags(self.defines), include_dirs=[str(sources.CUDA_DIR)])
        return self._modules[file].get_function(name)

    def compile_all(self) -> None:
        """Build every kernel file now (nvcc, about 0.5 s each), so that a model's first request
        does not wait for it."""
        for file, entries in sources.KERNEL_FILES.items():
            self.function(file, entries[0])
        from pycuda import elementwise
        elementwise.get_axpbyz_kernel(F32, F32, F32)     # GPUArray += (the residual adds), memoized per context

    def _define(self, name: str, default: int) -> int:
        return int(self.defines.get(name, default))

    def decode_workspace(self, q, max_context_len: int, partition_size: int) -> tuple:
        """(out, tmp_out, max_logits, exp_sums) for the partitioned decode, reusable across calls."""
        num_seqs, num_heads, head_dim = q.shape
        num_parts = math.ceil(max_context_len / partition_size)
        return (self._empty(q.shape), self._empty((num_seqs, num_heads, num_parts, head_dim)),
                self._empty((num_seqs, num_heads, num_parts)), self._empty((num_seqs, num_heads, num_parts)))

    def paged_attention_decode(self, q, k_cache, v_cache, block_tables, context_lens, scale: float,
                               max_context_len: int, partition_size: int | None = None, workspace=None):
        """q (B, H, D) f32; caches (blocks, block_size, kv, D); tables (B, max_blocks) i32; lens (B,) i32.

        workspace: decode_workspace(...)'s arrays (the output among them), else allocated here.
        """
        num_seqs, num_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[2]
        threads = (self._define("NUM_WARPS", sources.NUM_WARPS) * 32, 1, 1)
        args = (q, k_cache, v_cache, block_tables, context_lens, I32(block_tables.shape[1]),
                I32(num_kv_heads), I32(num_heads // num_kv_heads), F32(scale))
        if partition_size is None:          # one pass: no partials to allocate
            out = workspace[0] if workspace else self._empty(q.shape)
            self.function("paged_attention.cu", "paged_attention_decode")(
                out, *args, block=threads, grid=(num_kv_heads, num_seqs, 1))
            return out
        out, tmp_out, max_logits, exp_sums = workspace or self.decode_workspace(q, max_context_len, partition_size)
        num_parts = math.ceil(max_context_len / partition_size)
        self.function("paged_attention.cu", "paged_attention_decode_partitioned")(
            tmp_out, max_logits, exp_sums, *args, I32(partition_size), block=threads,
            grid=(num_kv_heads, num_seqs, num_parts))
        self.function("paged_attention.cu", "paged_attention_reduce")(
            out, tmp_out, max_logits, exp_sums, context_lens, I32(num_parts), I32(partition_size),
            block=(min(head_dim, 128), 1, 1), grid=(num_heads, num_seqs))
        return out

    def reshape_and_cache(self, k_cache, v_cache, key, value, slot_mapping) -> None:
        """key, value (T, kv, D) f32; slot_mapping (T,) int64; caches written in place."""
        self.function("cache_write.cu", "reshape_and_cache")(
            k_cache, v_cache, key, value, slot_mapping, I32(key.shape[1]),
            block=(128, 1, 1), grid=(key.shape[0], 1))

    def prefill_attention(self, q, k_cache, v_cache, query_start, context_lens, block_tables,
                          scale: float, max_query_len: int):
        num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
        q_tile = self._define("Q_TILE", sources.Q_TILE)
        out = self._empty(q.shape)
        self.function("prefill_attention.cu", "prefill_attention")(
            out, q, k_cache, v_cache, query_start, context_lens, block_tables, I32(block_tables.shape[1]),
            I32(num_kv_heads), I32(num_heads // num_kv_heads), F32(scale),
            block=(q_tile * 32, 1, 1), grid=(math.ceil(max_query_len / q_tile), num_heads, len(context_lens)))
        return out

    def rms_norm(self, out, x, weight, eps: float) -> None:
        threads = self._define("NORM_THREADS", sources.NORM_THREADS)
        self.function("layer_ops.cu", "rms_norm")(out, x, weight, I32(x.shape[-1]), F32(eps),
                                                  block=(threads, 1, 1), grid=(x.shape[0], 1))

    def rope(self, x, cos, sin, neox: bool) -> None:
        """x (T, heads, D) in place; cos, sin (T, n_rot/2)."""
        self.function("layer_ops.cu", "rope")(x, cos, sin, I32(x.shape[1]), I32(x.shape[2]),
                                              I32(2 * cos.shape[1]), I32(int(neox)),
                                              block=(128, 1, 1), grid=(x.shape[0], 1))

    def silu_mul(self, gate_up):
        num_tokens, n_ff = gate_up.shape[0], gate_up.shape[1] // 2
        out = self._empty((num_tokens, n_ff))
        blocks = min(4096, math.ceil(num_tokens * n_ff / 256))
        self.function("layer_ops.cu", "silu_mul")(out, gate_up, I32(num_tokens), I32(n_ff),
                                                  block=(256, 1, 1), grid=(blocks, 1))
        return out

    def embedding(self, table, token_ids):
        out = self._empty((token_ids.shape[0], table.shape[1]))
        name = "embedding_f16" if table.dtype == np.float16 else "embedding_f32"
        self.function("layer_ops.cu", name)(out, table, token_ids, I32(table.shape[1]),
                                            block=(256, 1, 1), grid=(token_ids.shape[0], 1))
        return out

    def add_bias(self, y, bias) -> None:
        """y (rows, n) += bias (n,) on every row, in place."""
        num_rows, n = y.shape
        blocks = max(1, min(4096, math.ceil(num_rows * n / 256)))
        self.function("layer_ops.cu", "add_bias")(y, bias, I32(num_rows), I32(n), block=(256, 1, 1), grid=(blocks, 1))

    def matmul(self, x, weight_bytes, kind: str, num_out: int):
        """x (M, K) f32 @ W^T for W (num_out, K) as raw GGUF bytes of kind "f32", "f16" or "q8_0"."""
        rows, k = x.shape
        y = self._empty((rows, num_out))
        dims = (I32(rows), I32(num_out), I32(k))
        if rows <= self._define("GEMV_MAX_ROWS", sources.GEMV_MAX_ROWS):
            warps = self._define("GEMV_WARPS", sources.GEMV_WARPS)
            self.function("matmul.cu", f"gemv_{kind}")(y, x, weight_bytes, *dims, block=(warps * 32, 1, 1),
                                                      grid=(math.ceil(num_out / warps), 1))
        else:
            tile = sources.TILE
            self.function("matmul.cu", f"matmul_{kind}")(
                y, x, weight_bytes, *dims, block=(tile, sources.TILE_ROWS, 1),
                grid=(math.ceil(num_out / tile), math.ceil(rows / tile)))
        return y
