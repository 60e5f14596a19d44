"""Test helper: the weight types kept quantised (Q4_K, Q5_K, Q6_K, Q4_0, Q5_0, Q4_1, Q5_1), each
as data for the checks they all pass (tests/engine/test_quant_types.py) and for their own tests.

    case = CASES["q5_k"]
    raw = encoded_tensor(rng, case.ggml_type, n, k)      # a GGUF's bytes of a random (n, k) matrix
    w = exact_weight(rng, case, n, k)                    # full-range integers, power-of-two floats
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import gguf
import numpy as np

from tests.engine.legacy_reference import reference_matmul_legacy
from tests.engine.q4k_reference import reference_matmul_q4_k, reference_matmul_q5_k
from tests.engine.q6k_reference import reference_matmul_q6_k
from tests.engine.weights import write_random_gguf
from tests.rig.llama import tiny_gguf_tool
from velollmd.engine import kernels
from velollmd.engine.legacyweight import Q40Weight, Q41Weight, Q50Weight, Q51Weight
from velollmd.engine.q4kweight import Q4KWeight
from velollmd.engine.q5kweight import Q5KWeight
from velollmd.engine.q6kweight import Q6KWeight
from velollmd.engine.quantweight import QuantWeight

Draw = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def uints(high: int) -> Draw:
    """Every uint8 in 0..high - 1."""
    return lambda rng, shape: rng.integers(0, high, shape).astype(np.uint8)


def int8s() -> Draw:
    return lambda rng, shape: rng.integers(-128, 128, shape).astype(np.int8)


def powers_of_two(low: int, high: int) -> Draw:
    """float32 2^e, e in low..high - 1: products and sums of them stay exact."""
    return lambda rng, shape: np.exp2(rng.integers(low, high, shape)).astype(np.float32)


@dataclass(frozen=True)
class Kernel:
    """What the types of one kernel file share."""
    paths: Callable[[], list[str]]       # the kernel's paths on this CPU
    other_path: str                      # a path another kernel has and this one refuses
    shapes: tuple[tuple[int, int, int], ...]   # (batch, K, N) of the path tests
    row_ks: tuple[int, ...]              # K of the batch / thread count test
    rows: int                            # N of that test
    keep_shape: tuple[int, int]          # (N, K) of the file's-values test


K_QUANTS = Kernel(kernels.q4_k_paths, "vnni", ((1, 256, 7), (3, 512, 70), (5, 1024, 129), (16, 768, 65)),
                  (256, 1280), 131, (40, 512))
LEGACY = Kernel(kernels.legacy_paths, "avxvnni", ((1, 32, 7), (3, 288, 70), (5, 1024, 129), (16, 512, 65)),
                (256, 1056), 200, (40, 96))


@dataclass(frozen=True)
class QuantCase:
    cls: type[QuantWeight]
    ggml_type: int
    kernel: Kernel
    reference: Callable[[tuple[np.ndarray, ...], QuantWeight], np.ndarray]   # the kernel's bits
    exact: dict[str, tuple[int, Draw]]   # field -> (values per column, its exact draw)
    bytes_per_row: int                   # at kernel.keep_shape
    fallback_tolerance: float = 1e-4     # compiled vs dequantised product
    batched_rows: int = 21               # up to this many rows ggml's mul_mat is its vec_dot


Q = gguf.GGMLQuantizationType
_SCALE_MIN = {"qs": (2, uints(256)), "sc": (32, uints(64)), "mn": (32, uints(64)),
              "d": (256, powers_of_two(-14, -8)), "dmin": (256, powers_of_two(-14, -8))}
_LEGACY = {"qs": (2, uints(256)), "qh": (8, uints(256)), "d": (32, powers_of_two(-12, -6)),
           "m": (32, powers_of_two(-10, -4))}

# ggml's mul_mat takes the K-quants' vec_dot for up to 7 rows; from 8 rows on another kernel whose
# rows differ from its own one-row results (the engine keeps the vec_dot's arithmetic for every row)
CASES = {
    "q4_k": QuantCase(Q4KWeight, int(Q.Q4_K), K_QUANTS, reference_matmul_q4_k, _SCALE_MIN,
                      256 + 16 + 16 + 2 * 4 + 2 * 4, batched_rows=7),
    "q5_k": QuantCase(Q5KWeight, int(Q.Q5_K), K_QUANTS, reference_matmul_q5_k,
                      {**_SCALE_MIN, "qh": (8, uints(256))}, 256 + 64 + 16 + 16 + 2 * 4 + 2 * 4,
                      batched_rows=7),
    "q6_k": QuantCase(Q6KWeight, int(Q.Q6_K), K_QUANTS, reference_matmul_q6_k,
                      {"q": (1, uints(64)), "sc": (16, int8s()), "d": (256, powers_of_two(-16, -10))},
                      512 + 32 + 2 * 4, batched_rows=7),
    "q4_0": QuantCase(Q40Weight, int(Q.Q4_0), LEGACY, reference_matmul_legacy, _LEGACY, 48 + 3 * 4),
    "q5_0": QuantCase(Q50Weight, int(Q.Q5_0), LEGACY, reference_matmul_legacy, _LEGACY, 48 + 12 + 3 * 4),
    # Q4_1, Q5_1: vecdot's Q8_1 rounding sums the rounded values exactly, ggml's an F16 d * sum
    "q4_1": QuantCase(Q41Weight, int(Q.Q4_1), LEGACY, reference_matmul_legacy, _LEGACY, 48 + 2 * 3 * 4,
                      fallback_tolerance=5e-3),
    "q5_1": QuantCase(Q51Weight, int(Q.Q5_1), LEGACY, reference_matmul_legacy, _LEGACY, 48 + 12 + 2 * 3 * 4,
                      fallback_tolerance=5e-3),
}


def random_x(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """(rows, k) float32 activations, each row at its own scale."""
    return (rng.standard_normal((rows, k)) * rng.uniform(0.01, 10.0, (rows, 1))).astype(np.float32)


def encoded_tensor(rng: np.random.Generator, ggml_type: int, n: int, k: int) -> np.ndarray:
    """A GGUF's bytes of a random (n, k) matrix of ggml_type (make_tiny_gguf's quantiser: ggml's)."""
    w = (rng.standard_normal((n, k)) / 16).astype(np.float32)
    encoded = tiny_gguf_tool().encode_tensor(w, gguf.GGMLQuantizationType(ggml_type))
    return np.ascontiguousarray(encoded).view(np.uint8)


def file_weight(rng: np.random.Generator, case: QuantCase, n: int, k: int) -> QuantWeight:
    """A random (n, k) weight of the case's type as read from a file."""
    return case.cls.from_raw(encoded_tensor(rng, case.ggml_type, n, k), (n, k))


def exact_weight(rng: np.random.Generator, case: QuantCase, n: int, k: int) -> QuantWeight:
    """Full-range integers and power-of-two scales (and mins): with x's scales powers of two too,
    every float operation is exact, so only the int sums can make a difference."""
    drawn = {}
    for field in fields(case.cls):
        per, draw = case.exact[field.name]
        drawn[field.name] = draw(rng, (n, k // per))
    return case.cls(**drawn)


def exact_input(rng: np.random.Generator, x: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """x (quantize_input's) with its float scales (and sums) replaced by powers of two."""
    return (x[0], *(powers_of_two(-8, -4)(rng, a.shape) if a.dtype == np.float32 else a for a in x[1:]))


def write_k_m_gguf(path: Path, dtype: str, monkeypatch) -> Path:
    """write_random_gguf's llama file as a Q4_K_M or Q5_K_M one (dtype "q4_k" or "q5_k"): V and the
    down projection Q6_K, the rest dtype."""
    tool = tiny_gguf_tool()
    plain, main = tool.tensor_type, Q[dtype.upper()]

    def k_m(name, array, wanted_dtype):
        wanted = plain(name, array, wanted_dtype)
        return Q.Q6_K if wanted == main and ("attn_v" in name or "ffn_down" in name) else wanted
    monkeypatch.setattr(tool, "tensor_type", k_m)
    return write_random_gguf(path, "llama", dtype=dtype, n_embd=256, n_ff=512)
