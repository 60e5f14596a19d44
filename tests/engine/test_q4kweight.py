"""Q4_K weights kept quantised (engine/q4kweight.py) and their integer kernel (matmul_q4k.c):
bit for bit the numpy reference (tests/engine/q4k_reference.py) and ggml's own
ggml_vec_dot_q4_K_q8_K, whatever the batch size and thread count."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from tests.engine.ggml_lib import GgmlMulMat
from tests.engine.q4k_reference import int_lanes, reference_matmul_q4_k, unpacked_values
from tests.engine.test_vecdot import activations
from tests.engine.weights import write_random_gguf
from tests.rig.llama import tiny_gguf_tool
from velollmd.engine import kernels, quantweight, vecdot
from velollmd.engine.gguf import read_gguf
from velollmd.engine.loader import read_model
from velollmd.engine.model import ModelConfig, embedding_rows, linear
from velollmd.engine.q4kweight import Q4KWeight
from velollmd.engine.quants import QuantError, dequantize

Q4_K = int(gguf.GGMLQuantizationType.Q4_K)
pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


def q4k_tensor(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A GGUF's bytes of a random (n, k) Q4_K matrix (ggml's own quantiser)."""
    w = (rng.standard_normal((n, k)) / 16).astype(np.float32)
    return np.ascontiguousarray(tiny_gguf_tool().encode_tensor(w, gguf.GGMLQuantizationType.Q4_K)).view(np.uint8)


def random_x(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    return (rng.standard_normal((rows, k)) * rng.uniform(0.01, 10.0, (rows, 1))).astype(np.float32)


def exact_weight(rng: np.random.Generator, n: int, k: int) -> Q4KWeight:
    """Full-range nibbles, scales and mins (0..63) and power-of-two d, dmin: with x's d a power
    of two too, every float operation is exact, so only the int sums can make a difference."""
    def uint(high, cols):
        return rng.integers(0, high, (n, cols)).astype(np.uint8)
    powers = [np.exp2(rng.integers(-14, -8, (n, k // 256))).astype(np.float32) for _ in range(2)]
    return Q4KWeight(uint(256, k // 2), uint(64, k // 32), uint(64, k // 32), *powers)


@pytest.mark.parametrize("path", kernels.q4_k_paths() if kernels.COMPILED else [])
@pytest.mark.parametrize("batch, k, n", [(1, 256, 7), (3, 512, 70), (5, 1024, 129), (16, 768, 65)])
def test_each_path_equals_the_reference(path, batch, k, n):
    """Exact int sums (power-of-two scales), then the float part: the same bits."""
    rng = np.random.default_rng(batch * 1000 + k)
    x = kernels.quantize_q8_k(random_x(rng, batch, k))
    exact_x = (x[0], np.exp2(rng.integers(-8, -4, x[1].shape)).astype(np.float32), x[2])
    w = exact_weight(rng, n, k)
    assert np.array_equal(w.matmul_quantised(exact_x, path), reference_matmul_q4_k(exact_x, w))
    w = Q4KWeight.from_raw(q4k_tensor(rng, n, k), (n, k))
    y = w.matmul_quantised(x, path)
    assert np.array_equal(y, reference_matmul_q4_k(x, w))
    assert np.array_equal(y, w.matmul_quantised(x, "best"))


def test_an_unknown_path_is_refused():
    rng = np.random.default_rng(0)
    w = exact_weight(rng, 1, 256)
    x = kernels.quantize_q8_k(random_x(rng, 1, 256))
    with pytest.raises(KeyError):
        w.matmul_quantised(x, "sse9")
    with pytest.raises(ValueError):
        w.matmul_quantised(x, "vnni")


def test_the_reference_lanes_are_exact_scaled_dot_products():
    rng = np.random.default_rng(5)
    w = exact_weight(rng, 3, 512)
    xq = rng.integers(-127, 128, (2, 512)).astype(np.int8)
    values = unpacked_values(w.qs).reshape(3, 512).astype(np.int64)               # (N, K)
    scales = np.repeat(w.sc.astype(np.int64), 32, axis=1)                         # (N, K)
    lanes = int_lanes(xq, w)                                                      # (2, 3, 2, 8)
    assert lanes.shape == (2, 3, 2, 8)
    assert np.array_equal(lanes.sum(axis=(2, 3)), xq.astype(np.int64) @ (values * scales).T)


@pytest.mark.parametrize("k", [256, 1280])
def test_a_row_does_not_depend_on_its_batch_or_the_thread_count(k):
    rng = np.random.default_rng(k)
    x, w = random_x(rng, 21, k), Q4KWeight.from_raw(q4k_tensor(rng, 131, k), (131, k))
    alone = np.concatenate([w.matmul(x[i:i + 1]) for i in range(21)])
    try:
        for threads in (1, 2, 3):
            kernels.set_num_threads(threads)
            for batch in range(1, 22):
                assert np.array_equal(w.matmul(x[:batch]), alone[:batch])
    finally:
        kernels.set_num_threads(1)


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


def test_a_weight_keeps_the_files_values():
    rng = np.random.default_rng(1)
    raw = q4k_tensor(rng, 40, 512)
    w = Q4KWeight.from_raw(raw, (40, 512))
    expected = dequantize(raw, Q4_K, (40, 512))                                   # (40, 512) float32
    assert w.shape == (40, 512) and w.qs.dtype == np.uint8 and w.sc.shape == (40, 16)
    assert w.nbytes == 40 * (256 + 16 + 16 + 2 * 4 + 2 * 4)
    assert np.array_equal(w.rows(slice(None)), expected)
    ids = np.array([3, 0, 39, 3])
    assert np.array_equal(embedding_rows(w, ids), expected[ids])
    both = Q4KWeight.concat([w, Q4KWeight.from_raw(raw, (40, 512))])
    assert np.array_equal(both.rows(slice(None)), np.concatenate([expected, expected]))
    assert w.matmul(np.zeros((0, 512), np.float32)).shape == (0, 40)
    with pytest.raises(QuantError):
        Q4KWeight.from_raw(raw[:-1], (40, 512))


def test_without_the_extension_a_weight_multiplies_its_dequantised_values(monkeypatch):
    rng = np.random.default_rng(2)
    w = Q4KWeight.from_raw(q4k_tensor(rng, 64, 512), (64, 512))
    x = rng.standard_normal((3, 512)).astype(np.float32)
    compiled = w.matmul(x)
    monkeypatch.setattr(quantweight.kernels, "COMPILED", False)
    fallback = w.matmul(x)
    assert np.allclose(fallback, compiled, rtol=1e-4, atol=1e-4)
    assert np.array_equal(fallback, vecdot.round_activations(x, vecdot.Q8_K) @ w.rows(slice(None)).T)


@pytest.fixture(scope="module")
def ggml_mul_mat(llama_binary) -> GgmlMulMat:
    return GgmlMulMat(llama_binary)


def test_a_weight_multiplies_as_ggml_vec_dot_does(ggml_mul_mat):
    """ggml_vec_dot_q4_K_q8_K against the engine's Q4KWeight: the same bits, where the float32
    product of the same rounded values is ~1e-6 off. ggml's mul_mat takes vec_dot for up to 7
    rows; from 8 rows on it takes another kernel whose results depend on the row count (its
    rows then differ from its own one-row results), so those are compared one row at a time."""
    rng = np.random.default_rng(3)
    n, k = 130, 1024
    raw = q4k_tensor(rng, n, k)
    w = Q4KWeight.from_raw(raw, (n, k))
    x = rng.standard_normal((21, k)).astype(np.float32)                            # (T, K)
    one_by_one = np.concatenate([ggml_mul_mat(raw, Q4_K, (n, k), x[i:i + 1]) for i in range(21)])
    for rows in range(1, 22):
        ours = linear(x[:rows], w, ((n, vecdot.Q8_K),))
        assert np.array_equal(ours, one_by_one[:rows]), rows
        if rows < 8:
            assert np.array_equal(ours, ggml_mul_mat(raw, Q4_K, (n, k), x[:rows])), rows
    float32 = linear(x, w.rows(slice(None)), ((n, vecdot.Q8_K),))
    assert not np.array_equal(float32, one_by_one)


def test_read_model_keeps_q4_k_matrices_quantised(tmp_path):
    path = write_random_gguf(tmp_path / "q4k.gguf", "llama", dtype="q4_k", n_embd=256, n_ff=512)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
        types = {name: info.ggml_type for name, info in gguf_file.tensors.items()}
    layer = model.layers[0]
    kept = 0
    for weight, names in ((layer.wqkv, ("attn_q", "attn_k", "attn_v")), (layer.wo, ("attn_output",)),
                          (layer.w_gate_up, ("ffn_gate", "ffn_up")), (layer.w_down, ("ffn_down",))):
        all_q4_k = all(types[f"blk.0.{name}.weight"] == Q4_K for name in names)
        assert isinstance(weight, Q4KWeight) == all_q4_k
        kept += all_q4_k
    assert kept >= 2
