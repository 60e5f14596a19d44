"""engine/vecdot.py: activations rounded as llama.cpp's CPU backend rounds them. Q8_0 bit-exact
against gguf-py, Q8_K against a line-by-line copy of ggml's quantize_row_q8_K_ref, and whole
matmuls (model.linear) against ggml's own mul_mat on the cached llama.cpp build."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from tests.engine.ggml_lib import GgmlMulMat
from tests.engine.weights import write_random_gguf
from tests.rig.llama import tiny_gguf_tool
from velollmd.engine import vecdot
from velollmd.engine.gguf import read_gguf
from velollmd.engine.loader import read_model
from velollmd.engine.model import DECODE_ROWS, ModelConfig, act_bands, linear
from velollmd.engine.quants import GGML_TYPES, QK_K, dequantize

Q = gguf.GGMLQuantizationType


def activations(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) float32 of mixed scales, with the edge cases a quantiser must get right."""
    x = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 30.0, (rows, 1))).astype(np.float32)
    x[0, :QK_K] = 0.0                                  # an all-zero block (scale 0) of either size
    x[1, :4] = [-0.0, 1e-30, -65504.0, 0.49999997]
    if cols >= QK_K + 32:                              # Q8_0: amax 127 -> d = 1, x / d exact halves
        x[1, QK_K:QK_K + 32] = np.concatenate([[127.0], np.arange(31) - 15.5])
    return x


def test_q8_0_is_bit_exact_with_gguf_py():
    x = activations(np.random.default_rng(1), 6, 1024)
    raw = gguf.quants.quantize(x, Q.Q8_0).reshape(-1, 34)           # (blocks, 34) uint8
    d, q = vecdot.quantize_q8_0(x)                                   # (blocks, 1) f16, (blocks, 32) i8
    assert np.array_equal(np.concatenate([d.view(np.uint8), q.view(np.uint8)], axis=1), raw)
    rounded = vecdot.round_activations(x, vecdot.Q8_0)
    assert np.array_equal(rounded, gguf.quants.dequantize(raw.reshape(6, -1), Q.Q8_0))
    assert 0 < np.abs(rounded - x).max() and not rounded[0, :32].any()


def test_q8_0_rounds_halves_away_from_zero_exactly():
    """Blocks led by 127 have d = 1, so q = roundf(x): every half k + 0.5 and 15 ulps either
    side (and 0.49999997, which floor(v + 0.5) gets wrong), both signs."""
    halves = np.arange(127, dtype=np.float32) + np.float32(0.5)                  # (127,)
    steps = np.arange(-15, 16, dtype=np.int32)[:, None]
    near = (halves.view(np.int32)[None, :] + steps).view(np.float32).ravel()     # (3937,)
    values = np.concatenate([near, [0.49999997, 0.5, 1.5, 2.5, 3.5]]).astype(np.float32)  # 31 * 127 + 5
    values = np.concatenate([values, -values, np.zeros(-2 * values.size % 31, np.float32)]).reshape(-1, 31)
    blocks = np.concatenate([np.full((len(values), 1), 127.0, np.float32), values], axis=1)  # (n, 32)
    d, q = vecdot.quantize_q8_0(blocks)
    assert np.all(d == 1) and np.array_equal(q[:, 1:], gguf.quants.np_roundf(values).astype(np.int8))
    assert np.array_equal(vecdot.round_activations(blocks, vecdot.Q8_0)[:, 1:], gguf.quants.np_roundf(values))


def nearest_int(value: np.float32) -> int:
    """ggml's nearest_int: the float trick 1.5 * 2**23 (halves to even), in float32."""
    shifted = np.float32(value) + np.float32(12582912.0)
    return int((shifted.view(np.int32) & 0x007FFFFF) - 0x00400000)


def q8_k_reference(row: np.ndarray) -> tuple[list[float], list[list[int]]]:
    """quantize_row_q8_K_ref line by line (float32 scalars): d and q of each block of 256."""
    ds, qs = [], []
    for block in row.reshape(-1, QK_K):
        peak, amax = np.float32(0), np.float32(0)
        for value in block:
            if abs(value) > amax:
                amax, peak = abs(value), value
        if not amax:
            ds.append(0.0)
            qs.append([0] * QK_K)
            continue
        iscale = np.float32(-127.0) / peak
        qs.append([min(127, nearest_int(iscale * value)) for value in block])
        ds.append(float(np.float32(1) / iscale))
    return ds, qs


def test_q8_k_matches_ggml_reference():
    x = activations(np.random.default_rng(2), 3, 512)
    x[2, :QK_K] = np.arange(QK_K) % 64 - 31.75          # many exact halves: iscale * x ends in .5
    x[2, 7] = -127.0 * 0.25                              # the peak is negative: iscale = 4
    d, q = vecdot.quantize_q8_k(x)
    ref_d, ref_q = zip(*(q8_k_reference(row) for row in x))
    assert np.array_equal(d.ravel(), np.float32(sum(ref_d, [])))
    assert np.array_equal(q, np.array(sum(ref_q, []), dtype=np.int8))
    assert np.array_equal(vecdot.round_activations(x, vecdot.Q8_K), (d * q).reshape(x.shape))


def test_f16_and_bf16_rounding():
    x = activations(np.random.default_rng(3), 2, 64)
    assert np.array_equal(vecdot.round_activations(x, vecdot.F16), x.astype(np.float16).astype(np.float32))
    raw = gguf.quants.quantize(x, Q.BF16)                             # ggml's fp32 -> bf16
    assert np.array_equal(vecdot.round_activations(x, vecdot.BF16), gguf.quants.dequantize(raw, Q.BF16))
    assert vecdot.round_activations(x, vecdot.F32) is x


def test_activation_types_and_bands():
    t = GGML_TYPES
    names = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
    assert [vecdot.activation_type(t[name]) for name in names] \
        == [vecdot.F32, vecdot.F16, vecdot.Q8_0, vecdot.Q8_0, vecdot.Q8_1, vecdot.Q8_K, vecdot.Q8_K]
    assert act_bands([(4, t["Q4_K"]), (2, t["Q4_K"]), (2, t["Q6_K"])]) == ((8, vecdot.Q8_K),)
    assert act_bands([(4, t["Q4_K"]), (2, t["Q8_0"])]) == ((4, vecdot.Q8_K), (6, vecdot.Q8_0))
    assert act_bands([(4, t["F32"]), (4, t["F32"])]) == ()


def test_a_fused_weight_rounds_each_band_as_its_own_type():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 256)).astype(np.float32)                          # (T, K)
    w = rng.standard_normal((12, 256)).astype(np.float32)                         # (N, K)
    bands = ((4, vecdot.Q8_K), (12, vecdot.Q8_0))
    parts = [linear(x, w[:4], ((4, vecdot.Q8_K),)), linear(x, w[4:], ((8, vecdot.Q8_0),))]
    expected = np.concatenate(parts, axis=1)                                      # (T, N)
    assert np.array_equal(linear(x, w, bands), expected)
    assert not np.allclose(linear(x, w, bands), linear(x, w), rtol=0, atol=1e-4)


def test_read_model_knows_each_weight_type(tmp_path):
    for dtype, expected in (("q8_0", ((128, vecdot.Q8_0),)), ("f32", ())):
        path = write_random_gguf(tmp_path / f"{dtype}.gguf", "llama", dtype=dtype)
        with read_gguf(path) as gguf_file:
            config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
            model = read_model(gguf_file, config)
        assert model.layers[0].qkv_act == expected            # Q, K, V: 64 + 32 + 32 rows
        assert model.lm_head_act == (((1024, vecdot.Q8_0),) if dtype == "q8_0" else ())


# ggml's kernels: exact for these up to float32 sums; Q4_1/Q5_1 multiply their offset by Q8_1's
# F16 block sum, which a rounding of x alone cannot reproduce (closer than float32, not exact)
EXACT = [Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q4_K, Q.Q6_K, Q.F16, Q.BF16]
CLOSER = [Q.Q4_1, Q.Q5_1]


@pytest.fixture(scope="module")
def ggml_mul_mat(llama_binary) -> GgmlMulMat:
    return GgmlMulMat(llama_binary)


@pytest.mark.parametrize("qtype", EXACT + CLOSER, ids=lambda t: t.name)
def test_linear_equals_ggml_mul_mat(qtype, ggml_mul_mat):
    """model.linear on the dequantised weight, rounding as the weight type says, against ggml's
    mul_mat on the raw weight: equal up to float32 sums (max |diff| ~5e-7 on outputs ~5), where
    float32 activations differ by ~1e-3 (F16) to ~3e-2 (4-bit)."""
    rng = np.random.default_rng(int(qtype))
    n, k = 256, 512
    w = (rng.standard_normal((n, k)) / 16).astype(np.float32)                     # (N, K)
    encode = gguf.quants.quantize if qtype == Q.BF16 else tiny_gguf_tool().encode_tensor
    encoded = encode(w, qtype)
    raw = np.ascontiguousarray(encoded).view(np.uint8)
    weight = dequantize(raw, int(qtype), (n, k))                                   # (N, K) float32
    bands = act_bands([(n, int(qtype))])
    for rows in (1, 12, DECODE_ROWS + 9):                    # the compiled kernel and OpenBLAS
        x = rng.standard_normal((rows, k)).astype(np.float32)                      # (T, K)
        theirs = ggml_mul_mat(raw, int(qtype), (n, k), x)                          # (T, N)
        off_rounded = np.abs(linear(x, weight, bands) - theirs).max()
        off_float32 = np.abs(linear(x, weight) - theirs).max()
        assert off_float32 > 5e-4
        if qtype in EXACT:
            assert off_rounded < 5e-6, (rows, off_rounded, off_float32)
        else:
            assert off_rounded < off_float32 / 4, (rows, off_rounded, off_float32)
