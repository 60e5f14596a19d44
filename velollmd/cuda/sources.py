"""The kernel sources, their entry points, and the -D defines a build passes to them."""
from __future__ import annotations

from pathlib import Path

CUDA_DIR = Path(__file__).resolve().parent

# file -> its extern "C" entry points
KERNEL_FILES: dict[str, tuple[str, ...]] = {
    "paged_attention.cu": ("paged_attention_decode", "paged_attention_decode_partitioned",
                           "paged_attention_reduce"),
    "cache_write.cu": ("reshape_and_cache",),
    "prefill_attention.cu": ("prefill_attention",),
    "layer_ops.cu": ("rms_norm", "rope", "silu_mul", "embedding_f32", "embedding_f16", "add_bias"),
    "matmul.cu": ("gemv_f32", "gemv_f16", "gemv_q8_0", "matmul_f32", "matmul_f16", "matmul_q8_0"),
}

# The defaults each .cu holds under #ifndef (the numpy mirrors take the same values).
HEAD_DIM = 128          # paged_attention.cu, prefill_attention.cu, cache_write.cu: dims per head
BLOCK_SIZE = 16         # paged_attention.cu, prefill_attention.cu: tokens per KV cache block
NUM_WARPS = 4           # paged_attention.cu: warps per (kv head, sequence[, partition]) block
MAX_GROUP = 8           # paged_attention.cu: largest query heads per KV head of a build
TOKENS_PER_WARP = 1     # paged_attention.cu: tokens a warp takes per loop iteration (one softmax update)
Q_TILE = 4              # prefill_attention.cu: query rows (warps) per block
NORM_THREADS = 256      # layer_ops.cu: threads of an rms_norm block
GEMV_MAX_ROWS = 8       # matmul.cu: most input rows the GEMV kernels take
GEMV_WARPS = 4          # matmul.cu: output columns (warps) per GEMV block
TILE, TILE_ROWS = 32, 8  # matmul.cu: tiled kernel's output tile and blockDim.y


def kv_tile(head_dim: int) -> int:
    """prefill_attention.cu's KV_TILE default: keys per shared-memory tile."""
    return 32 if head_dim <= 128 else 16


# The paged decode's TOKENS_PER_WARP in engine builds: 1 (the one-token loop) until a GPU run of
# benchmarks/kernels.py --tokens-per-warp 1,2,4 shows 2 or 4 faster; change it here then.
ENGINE_TOKENS_PER_WARP = 1


def engine_defines(head_dim: int, block_size: int, kv_f16: bool, group: int,
                   tokens_per_warp: int = ENGINE_TOKENS_PER_WARP) -> dict[str, int]:
    """The defines an engine build passes for one model and KV cache."""
    if head_dim % 32:
        raise ValueError(f"CUDA kernels need head_dim a multiple of 32, not {head_dim}")
    if tokens_per_warp < 1:
        raise ValueError(f"tokens_per_warp must be at least 1, not {tokens_per_warp}")
    return {"HEAD_DIM": head_dim, "BLOCK_SIZE": block_size, "KV_F16": int(kv_f16),
            "MAX_GROUP": max(1, group), "TOKENS_PER_WARP": tokens_per_warp}


def define_flags(defines: dict[str, int]) -> list[str]:
    return [f"-D{name}={value}" for name, value in sorted(defines.items())]


def source_path(name: str) -> Path:
    if name not in KERNEL_FILES:
        raise KeyError(f"no CUDA kernel file {name!r}; known: {', '.join(KERNEL_FILES)}")
    return CUDA_DIR / name
