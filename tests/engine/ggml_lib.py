"""Test helper: one matmul through llama.cpp's own ggml CPU backend (ctypes on the libggml of the
cached llama-server build), to check the engine's activation rounding against the real kernels.

    mul_mat = GgmlMulMat(llama_binary_path)
    y = mul_mat(raw_weight_bytes, ggml_type, (N, K), x)     # x (T, K) float32 -> (T, N)

ggml_graph_compute_with_ctx runs the plain CPU kernels (vec_dot / llamafile sgemm), as
llama-server with --no-repack does; no extra buffer types (repacked or AMX).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

MEM_SIZE = 256 << 20


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class GgmlMulMat:
    def __init__(self, llama_binary: str):
        folder = Path(llama_binary).resolve().parent
        self.base = ctypes.CDLL(str(folder / "libggml-base.so.0"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(str(folder / "libggml-cpu.so.0"))
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        for name, restype, argtypes in (
                ("ggml_init", ptr, [_InitParams]), ("ggml_free", None, [ptr]),
                ("ggml_new_tensor_2d", ptr, [ptr, ctypes.c_int, i64, i64]),
                ("ggml_mul_mat", ptr, [ptr, ptr, ptr]), ("ggml_new_graph", ptr, [ptr]),
                ("ggml_build_forward_expand", None, [ptr, ptr]), ("ggml_get_data", ptr, [ptr])):
            function = getattr(self.base, name)
            function.restype, function.argtypes = restype, argtypes
        self.cpu.ggml_graph_compute_with_ctx.argtypes = [ptr, ptr, ctypes.c_int]

    def __call__(self, raw: np.ndarray, ggml_type: int, shape: tuple[int, int], x: np.ndarray,
                 num_threads: int = 2) -> np.ndarray:
        """raw: the (N, K) weight's bytes as a GGUF stores them; x (T, K) -> ggml's x @ w^T (T, N)."""
        (n, k), base = shape, self.base
        raw = np.ascontiguousarray(raw).view(np.uint8)
        x = np.ascontiguousarray(x, dtype=np.float32)                               # (T, K)
        ctx = base.ggml_init(_InitParams(MEM_SIZE, None, False))
        try:
            weight = base.ggml_new_tensor_2d(ctx, ggml_type, k, n)       # ggml order: ne0 = K
            acts = base.ggml_new_tensor_2d(ctx, 0, k, x.shape[0])         # F32
            ctypes.memmove(base.ggml_get_data(weight), raw.ctypes.data, raw.nbytes)
            ctypes.memmove(base.ggml_get_data(acts), x.ctypes.data, x.nbytes)
            product = base.ggml_mul_mat(ctx, weight, acts)                 # ne0 = N, ne1 = T
            graph = base.ggml_new_graph(ctx)
            base.ggml_build_forward_expand(graph, product)
            self.cpu.ggml_graph_compute_with_ctx(ctx, graph, num_threads)
            out = np.empty((x.shape[0], n), dtype=np.float32)                      # (T, N)
            ctypes.memmove(out.ctypes.data, base.ggml_get_data(product), out.nbytes)
            return out
        finally:
            base.ggml_free(ctx)
