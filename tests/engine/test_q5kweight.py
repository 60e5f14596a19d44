"""Q5_K weights kept quantised (engine/q5kweight.py) and their integer kernel (matmul_q5k.c,
Q4_K's tiles with the 5th bit): bit for bit a numpy reference and ggml's own
ggml_vec_dot_q5_K_q8_K, whatever the batch size and thread count; a Q5_K_M file's fused weights
stacked with their Q6_K parts."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from tests.engine.ggml_lib import GgmlMulMat
from tests.engine.q4k_reference import fma_lanes, hsum_float_8, int_lanes, int_min_lanes, unpacked_values
from tests.engine.test_q4kweight import random_x
from tests.engine.weights import write_random_gguf
from tests.rig.llama import tiny_gguf_tool
from velollmd.engine import kernels, quantweight, vecdot
from velollmd.engine.gguf import read_gguf
from velollmd.engine.loader import read_model
from velollmd.engine.model import ModelConfig, embedding_rows, linear
from velollmd.engine.q5kweight import Q5KWeight
from velollmd.engine.q6kweight import Q6KWeight
from velollmd.engine.quants import QuantError, dequantize
from velollmd.engine.quantweight import StackedWeight

Q5_K = int(gguf.GGMLQuantizationType.Q5_K)
Q6_K = int(gguf.GGMLQuantizationType.Q6_K)
pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


def q5k_tensor(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A GGUF's bytes of a random (n, k) Q5_K matrix (make_tiny_gguf's quantiser)."""
    w = (rng.standard_normal((n, k)) / 16).astype(np.float32)
    raw = tiny_gguf_tool().encode_tensor(w, gguf.GGMLQuantizationType.Q5_K)
    return np.ascontiguousarray(raw).view(np.uint8)


def exact_weight(rng: np.random.Generator, n: int, k: int) -> Q5KWeight:
    """Full-range nibbles, high bits, scales and mins (0..63) and power-of-two d, dmin: with x's
    d a power of two too, every float operation is exact, so only the int sums can differ."""
    def uint(high, cols):
        return rng.integers(0, high, (n, cols)).astype(np.uint8)
    powers = [np.exp2(rng.integers(-14, -8, (n, k // 256))).astype(np.float32) for _ in range(2)]
    return Q5KWeight(uint(256, k // 2), uint(64, k // 32), uint(64, k // 32), *powers, uint(256, k // 8))


def values_5bit(w: Q5KWeight) -> np.ndarray:
    """(N, K / 256, 8, 32) values 0..31 from w's bytes, independently of Q5KWeight.values."""
    n = w.qs.shape[0]
    qh = w.qh.reshape(n, -1, 32)                                                  # (N, nb, 32)
    high = np.stack([(qh >> s) & 1 for s in range(8)], axis=2)                    # (N, nb, 8, 32)
    return unpacked_values(w.qs) + 16 * high


def reference_matmul_q5_k(x: tuple[np.ndarray, np.ndarray, np.ndarray], w: Q5KWeight) -> np.ndarray:
    """ggml_vec_dot_q5_K_q8_K on AVX2: Q4_K's 8 scale lanes on the 5-bit values, the 4 mins
    lanes summed as int, summs = fma(dmin, that sum, summs), then hsum_float_8(acc) + summs."""
    xq, xd, bsums = x
    d = xd[:, None, :] * w.d[None, :, :]                                          # (B, N, nb) float32
    dmin = -xd[:, None, :] * w.dmin[None, :, :]
    acc = fma_lanes(d, int_lanes(xq, w, values_5bit(w)))                          # (B, N, 8)
    mins = int_min_lanes(bsums, w)                                                # (B, N, nb, 4)
    pairs = (mins[..., 0] + mins[..., 1]) + (mins[..., 2] + mins[..., 3])         # (B, N, nb)
    summs = fma_lanes(dmin, pairs[..., None])[..., 0]                             # (B, N)
    return hsum_float_8(acc) + summs


@pytest.mark.parametrize("path", kernels.q4_k_paths() if kernels.COMPILED else [])
@pytest.mark.parametrize("batch, k, n", [(1, 256, 7), (3, 512, 70), (5, 1024, 129), (16, 768, 65)])
def test_each_path_equals_the_reference(path, batch, k, n):
    """Exact int sums (power-of-two scales), then the float part: the same bits."""
    rng = np.random.default_rng(batch * 1000 + k)
    x = kernels.quantize_q8_k(random_x(rng, batch, k))
    exact_x = (x[0], np.exp2(rng.integers(-8, -4, x[1].shape)).astype(np.float32), x[2])
    w = exact_weight(rng, n, k)
    assert np.array_equal(w.matmul_quantised(exact_x, path), reference_matmul_q5_k(exact_x, w))
    w = Q5KWeight.from_raw(q5k_tensor(rng, n, k), (n, k))
    y = w.matmul_quantised(x, path)
    assert np.array_equal(y, reference_matmul_q5_k(x, w))
    assert np.array_equal(y, w.matmul_quantised(x, "best"))


def test_the_fifth_bit_counts():
    """The same weight without its high bits multiplies differently (by 16 * sc * d per bit)."""
    rng = np.random.default_rng(7)
    w = exact_weight(rng, 6, 512)
    x = kernels.quantize_q8_k(random_x(rng, 2, 512))
    cleared = Q5KWeight(w.qs, w.sc, w.mn, w.d, w.dmin, np.zeros_like(w.qh))
    assert not np.array_equal(w.matmul_quantised(x), cleared.matmul_quantised(x))
    assert np.array_equal(cleared.matmul_quantised(x), reference_matmul_q5_k(x, cleared))


def test_an_unknown_path_is_refused():
    rng = np.random.default_rng(0)
    w = exact_weight(rng, 1, 256)
    x = kernels.quantize_q8_k(random_x(rng, 1, 256))
    with pytest.raises(KeyError):
        w.matmul_quantised(x, "sse9")
    with pytest.raises(ValueError):
        w.matmul_quantised(x, "vnni")


@pytest.mark.parametrize("k", [256, 1280])
def test_a_row_does_not_depend_on_its_batch_or_the_thread_count(k):
    rng = np.random.default_rng(k)
    x, w = random_x(rng, 21, k), Q5KWeight.from_raw(q5k_tensor(rng, 131, k), (131, k))
    alone = np.concatenate([w.matmul(x[i:i + 1]) for i in range(21)])
    try:
        for threads in (1, 2, 3):
            kernels.set_num_threads(threads)
            for batch in range(1, 22):
                assert np.array_equal(w.matmul(x[:batch]), alone[:batch])
    finally:
        kernels.set_num_threads(1)


def test_a_weight_keeps_the_files_values():
    rng = np.random.default_rng(1)
    raw = q5k_tensor(rng, 40, 512)
    w = Q5KWeight.from_raw(raw, (40, 512))
    expected = dequantize(raw, Q5_K, (40, 512))                                   # (40, 512) float32
    assert w.shape == (40, 512) and w.qh.shape == (40, 64) and w.sc.shape == (40, 16)
    assert w.nbytes == 40 * (256 + 64 + 16 + 16 + 2 * 4 + 2 * 4)
    assert np.array_equal(w.rows(slice(None)), expected)
    assert w.values(slice(None)).max() > 15                                       # the 5th bit is used
    ids = np.array([3, 0, 39, 3])
    assert np.array_equal(embedding_rows(w, ids), expected[ids])
    both = Q5KWeight.concat([w, Q5KWeight.from_raw(raw, (40, 512))])
    assert np.array_equal(both.rows(slice(None)), np.concatenate([expected, expected]))
    assert w.matmul(np.zeros((0, 512), np.float32)).shape == (0, 40)
    with pytest.raises(QuantError):
        Q5KWeight.from_raw(raw[:-1], (40, 512))


def test_without_the_extension_a_weight_multiplies_its_dequantised_values(monkeypatch):
    rng = np.random.default_rng(2)
    w = Q5KWeight.from_raw(q5k_tensor(rng, 64, 512), (64, 512))
    x = rng.standard_normal((3, 512)).astype(np.float32)
    compiled = w.matmul(x)
    monkeypatch.setattr(quantweight.kernels, "COMPILED", False)
    fallback = w.matmul(x)
    assert np.allclose(fallback, compiled, rtol=1e-4, atol=1e-4)
    assert np.array_equal(fallback, vecdot.round_activations(x, vecdot.Q8_K) @ w.rows(slice(None)).T)


@pytest.fixture(scope="module")
def ggml_mul_mat(llama_binary) -> GgmlMulMat:
    return GgmlMulMat(llama_binary)


def test_a_weight_multiplies_as_ggml_does(ggml_mul_mat):
    """ggml's mul_mat of a Q5_K weight against Q5KWeight at 1..21 rows: the same bits, where the
    float32 product of the same rounded values is ~1e-6 off. As for Q4_K (test_q4kweight.py),
    ggml's mul_mat takes its vec_dot for up to 7 rows and another kernel from 8 on, whose rows
    differ from its own one-row results; the engine keeps the vec_dot's arithmetic for every
    row, so from 8 rows on it is compared with ggml one row at a time."""
    rng = np.random.default_rng(3)
    n, k = 130, 1024
    raw = q5k_tensor(rng, n, k)
    w = Q5KWeight.from_raw(raw, (n, k))
    x = rng.standard_normal((21, k)).astype(np.float32)                            # (T, K)
    one_by_one = np.concatenate([ggml_mul_mat(raw, Q5_K, (n, k), x[i:i + 1]) for i in range(21)])
    for rows in range(1, 22):
        ours = linear(x[:rows], w, ((n, vecdot.Q8_K),))
        assert np.array_equal(ours, one_by_one[:rows]), rows
        if rows < 8:
            assert np.array_equal(ours, ggml_mul_mat(raw, Q5_K, (n, k), x[:rows])), rows
    float32 = linear(x, w.rows(slice(None)), ((n, vecdot.Q8_K),))
    assert not np.array_equal(float32, one_by_one)


def test_read_model_keeps_q5_k_matrices_quantised(tmp_path):
    path = write_random_gguf(tmp_path / "q5k.gguf", "llama", dtype="q5_k", n_embd=256, n_ff=512)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
        types = {name: info.ggml_type for name, info in gguf_file.tensors.items()}
    layer = model.layers[0]
    kept = 0
    for weight, names in ((layer.wqkv, ("attn_q", "attn_k", "attn_v")), (layer.wo, ("attn_output",)),
                          (layer.w_gate_up, ("ffn_gate", "ffn_up")), (layer.w_down, ("ffn_down",))):
        all_q5_k = all(types[f"blk.0.{name}.weight"] == Q5_K for name in names)
        assert isinstance(weight, Q5KWeight) == all_q5_k
        kept += all_q5_k
    assert kept >= 2


def test_read_model_stacks_q5_k_and_q6_k_parts(tmp_path, monkeypatch, ggml_mul_mat):
    """A Q5_K_M-like file: V and the down projection Q6_K, the rest Q5_K; the stacked Q/K/V
    multiplies as ggml multiplies each part."""
    tool = tiny_gguf_tool()
    plain = tool.tensor_type

    def q5_k_m(name, array, dtype):
        wanted = plain(name, array, dtype)
        return gguf.GGMLQuantizationType.Q6_K if wanted == gguf.GGMLQuantizationType.Q5_K and (
            "attn_v" in name or "ffn_down" in name) else wanted
    monkeypatch.setattr(tool, "tensor_type", q5_k_m)
    path = write_random_gguf(tmp_path / "q5km.gguf", "llama", dtype="q5_k", n_embd=256, n_ff=512)
    x = np.random.default_rng(4).standard_normal((3, 256)).astype(np.float32)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
        expected = np.concatenate([ggml_mul_mat(gguf_file.raw(f"blk.0.attn_{p}.weight"),
                                                gguf_file.tensors[f"blk.0.attn_{p}.weight"].ggml_type,
                                                gguf_file.tensors[f"blk.0.attn_{p}.weight"].shape, x)
                                   for p in "qkv"], axis=1)
    layer = model.layers[0]
    assert isinstance(layer.wqkv, StackedWeight)
    assert [type(p) for p in layer.wqkv.parts] == [Q5KWeight, Q6KWeight]
    assert layer.wqkv.shape == (model.q_dim + 2 * model.kv_dim, 256)
    assert isinstance(layer.w_down, Q6KWeight) and isinstance(layer.w_gate_up, Q5KWeight)
    assert np.array_equal(layer.wqkv.matmul(x), expected)
