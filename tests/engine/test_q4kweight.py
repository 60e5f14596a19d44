"""Q4_K weights kept quantised (engine/q4kweight.py) and their integer kernel (matmul_q4k.c): what
only Q4_K has (its reference's lanes, the compiled Q8_K quantiser). What every kept type passes
(bit for bit the numpy reference, tests/engine/q4k_reference.py, and ggml's own
ggml_vec_dot_q4_K_q8_K, whatever the batch size and thread count): test_quant_types.py."""
from __future__ import annotations

import numpy as np
import pytest

from tests.engine.q4k_reference import int_lanes, unpacked_values
from tests.engine.quant_harness import CASES, exact_weight
from tests.engine.test_vecdot import activations
from velollmd.engine import kernels, vecdot

pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


def test_the_reference_lanes_are_exact_scaled_dot_products():
    rng = np.random.default_rng(5)
    w = exact_weight(rng, CASES["q4_k"], 3, 512)
    xq = rng.integers(-127, 128, (2, 512)).astype(np.int8)
    values = unpacked_values(w.qs).reshape(3, 512).astype(np.int64)               # (N, K)
    scales = np.repeat(w.sc.astype(np.int64), 32, axis=1)                         # (N, K)
    lanes = int_lanes(xq, w)                                                      # (2, 3, 2, 8)
    assert lanes.shape == (2, 3, 2, 8)
    assert np.array_equal(lanes.sum(axis=(2, 3)), xq.astype(np.int64) @ (values * scales).T)


def test_the_compiled_quantiser_equals_vecdots():
    """Mixed scales, zero blocks, a negative peak, exact halves after scaling."""
    rng = np.random.default_rng(6)
    ties = np.concatenate([[-127.0], np.arange(255) % 127 + 0.5]).astype(np.float32)[None, :]  # iscale 1
    zero = np.zeros((1, 256), np.float32)
    for x in (activations(rng, 6, 1024), np.concatenate([ties, zero, -ties]),
              (rng.standard_normal((64, 2816)) * 3).astype(np.float32)):
        d, q = vecdot.quantize_q8_k(x)                                            # (n, 1), (n, 256)
        xq, xd, bsums = kernels.quantize_q8_k(x)
        assert np.array_equal(xq, q.reshape(x.shape)) and np.array_equal(xd.ravel(), d.ravel())
        assert np.array_equal(bsums, xq.reshape(x.shape[0], -1, 16).sum(axis=-1, dtype=np.int16))
