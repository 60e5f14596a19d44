"""Q5_K weights kept quantised (engine/q5kweight.py) and their integer kernel (matmul_q5k.c, Q4_K's
tiles with the 5th bit): what only Q5_K has, its fifth bit. What every kept type passes (bit for
bit a numpy reference and ggml's own ggml_vec_dot_q5_K_q8_K, whatever the batch size and thread
count): test_quant_types.py; a Q5_K_M file's fused weights stacked with their Q6_K parts:
test_q6kweight.py."""
from __future__ import annotations

import numpy as np
import pytest

from tests.engine.q4k_reference import reference_matmul_q5_k
from tests.engine.quant_harness import CASES, exact_weight, file_weight, random_x
from velollmd.engine import kernels
from velollmd.engine.q5kweight import Q5KWeight

pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


def test_the_fifth_bit_counts():
    """The same weight without its high bits multiplies differently (by 16 * sc * d per bit)."""
    rng = np.random.default_rng(7)
    w = exact_weight(rng, CASES["q5_k"], 6, 512)
    x = kernels.quantize_q8_k(random_x(rng, 2, 512))
    cleared = Q5KWeight(w.qs, w.sc, w.mn, w.d, w.dmin, np.zeros_like(w.qh))
    assert not np.array_equal(w.matmul_quantised(x), cleared.matmul_quantised(x))
    assert np.array_equal(cleared.matmul_quantised(x), reference_matmul_q5_k(x, cleared))


def test_a_files_values_use_the_fifth_bit():
    w = file_weight(np.random.default_rng(1), CASES["q5_k"], 40, 512)
    assert w.values(slice(None)).max() > 15
