"""MirrorKernels: kernels.Kernels' methods over numpy arrays, each launch replayed by its numpy
mirror (velollmd/cuda/mirror.py: the kernel's own grid, warps and accumulation order).

The engine's CUDA forward pass (engine/gpu_model.py) takes either, so on a machine without a GPU
its wiring (shapes, strides, which kernel gets which buffer, in-place writes, the decode and
prefill plans) runs through the kernels' algorithms end to end.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import psutil

from velollmd.cuda import mirror, sources


class MirrorKernels:
    def __init__(self, defines: dict[str, int] | None = None):
        self.defines = dict(defines or {})
        self.launches: dict[str, int] = {}      # kernel -> times launched

    def _count(self, name: str) -> None:
        self.launches[name] = self.launches.get(name, 0) + 1

    def active(self):
        return nullcontext()

    def compile_all(self) -> None:
        self.launches["compile_all"] = self.launches.get("compile_all", 0) + 1

    @staticmethod
    def free_bytes() -> int:
        return psutil.virtual_memory().available

    @staticmethod
    def to_device(array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True, order="C")

    keep_on_device = to_device

    @staticmethod
    def to_host(array: np.ndarray) -> np.ndarray:
        return array.copy()

    @staticmethod
    def zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.zeros(shape, dtype)

    @staticmethod
    def empty_like(array: np.ndarray) -> np.ndarray:
        return np.full_like(array, np.nan)      # never read before written, as on a device

    @staticmethod
    def copy_blocks(caches: list[np.ndarray], pairs: list[tuple[int, int]]) -> None:
        for cache in caches:
            for src, dst in pairs:
                cache[dst] = cache[src]

    def paged_attention_decode(self, q, k_cache, v_cache, block_tables, context_lens, scale: float,
                               max_context_len: int, partition_size: int | None = None, workspace=None):
        self._count("paged_attention_decode" if partition_size is None else "paged_attention_decode_partitioned")
        return mirror.paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale, partition_size)

    def reshape_and_cache(self, k_cache, v_cache, key, value, slot_mapping) -> None:
        self._count("reshape_and_cache")
        mirror.reshape_and_cache(k_cache, v_cache, key, value, slot_mapping)

    def prefill_attention(self, q, k_cache, v_cache, query_start, context_lens, block_tables,
                          scale: float, max_query_len: int):
        self._count("prefill_attention")
        return mirror.prefill_attention(q, k_cache, v_cache, query_start, context_lens, block_tables, scale)

    def rms_norm(self, out, x, weight, eps: float) -> None:
        self._count("rms_norm")
        out[...] = mirror.rms_norm(x, weight, eps, int(self.defines.get("NORM_THREADS", sources.NORM_THREADS)))

    def rope(self, x, cos, sin, neox: bool) -> None:
        self._count("rope")
        x[...] = mirror.rope(x, cos, sin, neox)

    def silu_mul(self, gate_up):
        self._count("silu_mul")
        return mirror.silu_mul(gate_up)

    def embedding(self, table, token_ids):
        self._count("embedding")
        return mirror.embedding(table, token_ids)

    def add_bias(self, y, bias) -> None:
        self._count("add_bias")
        y += bias

    def matmul(self, x, weight_bytes, kind: str, num_out: int):
        self._count(f"matmul_{kind}")
        if x.shape[0] <= sources.GEMV_MAX_ROWS:
            return mirror.gemv(x, weight_bytes, kind, num_out)
        return mirror.tiled_matmul(x, weight_bytes, kind, num_out)
