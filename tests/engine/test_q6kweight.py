"""Q6_K weights kept quantised (engine/q6kweight.py) and their integer kernel (matmul_q6k.c):
bit for bit a numpy reference and ggml's own ggml_vec_dot_q6_K_q8_K, whatever the batch size
and thread count."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from tests.engine.ggml_lib import GgmlMulMat
from tests.engine.test_q4kweight import q4k_tensor, random_x
from tests.engine.weights import write_random_gguf
from tests.rig.llama import tiny_gguf_tool
from velollmd.engine import kernels, quantweight, vecdot
from velollmd.engine.gguf import read_gguf
from velollmd.engine.loader import read_model
from velollmd.engine.model import ModelConfig, linear
from velollmd.engine.q4kweight import Q4KWeight
from velollmd.engine.q6kweight import Q6KWeight
from velollmd.engine.quants import QuantError, dequantize
from velollmd.engine.quantweight import StackedWeight

Q6_K = int(gguf.GGMLQuantizationType.Q6_K)
pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


def q6k_tensor(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A GGUF's bytes of a random (n, k) Q6_K matrix (make_tiny_gguf's quantiser)."""
    w = (rng.standard_normal((n, k)) / 16).astype(np.float32)
    return np.ascontiguousarray(tiny_gguf_tool().encode_tensor(w, gguf.GGMLQuantizationType.Q6_K)).view(np.uint8)


def exact_weight(rng: np.random.Generator, n: int, k: int) -> Q6KWeight:
    """Full-range values (0..63) and scales (-128..127), power-of-two d: with x's d a power of
    two too, every float operation is exact, so only the int sums can make a difference."""
    return Q6KWeight(rng.integers(0, 64, (n, k)).astype(np.uint8), rng.integers(-128, 128, (n, k // 16)).astype(np.int8),
                     np.exp2(rng.integers(-16, -10, (n, k // 256))).astype(np.float32))


def reference_matmul_q6_k(x: tuple[np.ndarray, np.ndarray, np.ndarray], w: Q6KWeight) -> np.ndarray:
    """Per super-block 8 int lanes (lane l: sum over chunks k of sc[2k + l / 4] times the dot of
    values 32k + 4l .. + 3, minus 32 * (sc[2l] * bsums[2l] + sc[2l + 1] * bsums[2l + 1])),
    acc = fma(d, lane, acc) in float64 then float32, hsum_float_8."""
    xq, xd, bsums = x
    batch, k = xq.shape
    n = w.q.shape[0]
    dots = (xq.reshape(batch, 1, k // 256, 8, 2, 4, 4).astype(np.int64)
            * w.q.reshape(1, n, k // 256, 8, 2, 4, 4).astype(np.int64)).sum(axis=-1)  # (B, N, nb, 8, 2, 4)
    scales = w.sc.reshape(1, n, k // 256, 8, 2, 1).astype(np.int64)
    lanes = (scales * dots).sum(axis=3).reshape(batch, n, k // 256, 8)            # lane = half * 4 + l
    offset = (w.sc.reshape(1, n, k // 256, 8, 2).astype(np.int64)
              * bsums.reshape(batch, 1, k // 256, 8, 2).astype(np.int64)).sum(axis=-1)  # (B, N, nb, 8)
    lanes = lanes - 32 * offset
    d = xd[:, None, :] * w.d[None, :, :]                                           # (B, N, nb)
    acc = np.zeros((batch, n, 8), dtype=np.float32)
    for i in range(lanes.shape[2]):
        lane = lanes[:, :, i].astype(np.float32).astype(np.float64)
        acc = (d[:, :, i, None].astype(np.float64) * lane + acc).astype(np.float32)
    a = acc[..., :4] + acc[..., 4:]
    return (a[..., 0] + a[..., 2]) + (a[..., 1] + a[..., 3])


@pytest.mark.parametrize("path", kernels.q4_k_paths() if kernels.COMPILED else [])
@pytest.mark.parametrize("batch, k, n", [(1, 256, 7), (3, 512, 70), (5, 1024, 129), (16, 768, 65)])
def test_each_path_equals_the_reference(path, batch, k, n):
    rng = np.random.default_rng(batch * 1000 + k)
    x = kernels.quantize_q8_k(random_x(rng, batch, k))
    exact_x = (x[0], np.exp2(rng.integers(-8, -4, x[1].shape)).astype(np.float32), x[2])
    w = exact_weight(rng, n, k)
    assert np.array_equal(w.matmul_quantised(exact_x, path), reference_matmul_q6_k(exact_x, w))
    w = Q6KWeight.from_raw(q6k_tensor(rng, n, k), (n, k))
    y = w.matmul_quantised(x, path)
    assert np.array_equal(y, reference_matmul_q6_k(x, w))
    assert np.array_equal(y, w.matmul_quantised(x, "best"))


@pytest.mark.parametrize("k", [256, 1280])
def test_a_row_does_not_depend_on_its_batch_or_the_thread_count(k):
    rng = np.random.default_rng(k)
    x, w = random_x(rng, 21, k), Q6KWeight.from_raw(q6k_tensor(rng, 131, k), (131, k))
    alone = np.concatenate([w.matmul(x[i:i + 1]) for i in range(21)])
    try:
        for threads in (1, 2, 3):
            kernels.set_num_threads(threads)
            for batch in range(1, 22):
                assert np.array_equal(w.matmul(x[:batch]), alone[:batch])
    finally:
        kernels.set_num_threads(1)


def test_a_weight_keeps_the_files_values(monkeypatch):
    rng = np.random.default_rng(1)
    raw = q6k_tensor(rng, 40, 512)
    w = Q6KWeight.from_raw(raw, (40, 512))
    expected = dequantize(raw, Q6_K, (40, 512))                                   # (40, 512) float32
    assert w.shape == (40, 512) and w.q.dtype == np.uint8 and w.nbytes == 40 * (512 + 32 + 2 * 4)
    assert np.array_equal(w.rows(slice(None)), expected)
    both = Q6KWeight.concat([w, w])
    assert np.array_equal(both.rows(np.array([41, 0])), expected[[1, 0]])
    with pytest.raises(QuantError):
        Q6KWeight.from_raw(raw[:-1], (40, 512))
    x = rng.standard_normal((3, 512)).astype(np.float32)
    monkeypatch.setattr(quantweight.kernels, "COMPILED", False)
    assert np.array_equal(w.matmul(x), vecdot.round_activations(x, vecdot.Q8_K) @ expected.T)


@pytest.fixture(scope="module")
def ggml_mul_mat(llama_binary) -> GgmlMulMat:
    return GgmlMulMat(llama_binary)


def test_a_weight_multiplies_as_ggml_vec_dot_does(ggml_mul_mat):
    """As test_q4kweight's: ggml's vec_dot for up to 7 rows, its one-row results beyond."""
    rng = np.random.default_rng(3)
    n, k = 130, 1024
    raw = q6k_tensor(rng, n, k)
    w = Q6KWeight.from_raw(raw, (n, k))
    x = rng.standard_normal((21, k)).astype(np.float32)                            # (T, K)
    one_by_one = np.concatenate([ggml_mul_mat(raw, Q6_K, (n, k), x[i:i + 1]) for i in range(21)])
    for rows in range(1, 22):
        ours = linear(x[:rows], w, ((n, vecdot.Q8_K),))
        assert np.array_equal(ours, one_by_one[:rows]), rows
        if rows < 8:
            assert np.array_equal(ours, ggml_mul_mat(raw, Q6_K, (n, k), x[:rows])), rows
    assert not np.array_equal(linear(x, w.rows(slice(None)), ((n, vecdot.Q8_K),)), one_by_one)


def test_a_stacked_weight_is_its_parts_side_by_side(ggml_mul_mat):
    rng = np.random.default_rng(4)
    raws = q4k_tensor(rng, 64, 512), q6k_tensor(rng, 32, 512)
    parts = Q4KWeight.from_raw(raws[0], (64, 512)), Q6KWeight.from_raw(raws[1], (32, 512))
    w = StackedWeight(parts)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    expected = np.concatenate([ggml_mul_mat(raws[0], int(gguf.GGMLQuantizationType.Q4_K), (64, 512), x),
                               ggml_mul_mat(raws[1], Q6_K, (32, 512), x)], axis=1)
    assert w.shape == (96, 512) and w.nbytes == parts[0].nbytes + parts[1].nbytes
    assert np.array_equal(linear(x, w), expected)
    assert np.array_equal(w.rows(np.array([65, 1])), np.concatenate([p.rows(slice(None)) for p in parts])[[65, 1]])


def test_read_model_stacks_q4_k_and_q6_k_parts(tmp_path, monkeypatch):
    """A Q4_K_M-like file: V and the down projection Q6_K, the rest Q4_K."""
    tool = tiny_gguf_tool()
    plain = tool.tensor_type

    def q4_k_m(name, array, dtype):
        wanted = plain(name, array, dtype)
        return gguf.GGMLQuantizationType.Q6_K if wanted == gguf.GGMLQuantizationType.Q4_K and (
            "attn_v" in name or "ffn_down" in name) else wanted
    monkeypatch.setattr(tool, "tensor_type", q4_k_m)
    path = write_random_gguf(tmp_path / "q4km.gguf", "llama", dtype="q4_k", n_embd=256, n_ff=512)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
    layer = model.layers[0]
    assert isinstance(layer.wqkv, StackedWeight)
    assert [type(p) for p in layer.wqkv.parts] == [Q4KWeight, Q6KWeight]
    assert layer.wqkv.shape == (model.q_dim + 2 * model.kv_dim, 256)
    assert isinstance(layer.w_down, Q6KWeight) and isinstance(layer.w_gate_up, Q4KWeight)
