"""Q8_0 weights kept quantised (engine/q8weight.py) and their integer kernel (matmul_q8.c):
bit for bit the numpy reference (tests/engine/q8_reference.py) and ggml's own mul_mat, on
every path this CPU has, whatever the batch size and thread count."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from tests.engine.ggml_lib import GgmlMulMat
from tests.engine.q8_reference import int_lanes, reference_matmul_q8_0
from tests.engine.test_vecdot import activations
from tests.engine.weights import write_random_gguf
from tests.rig.llama import tiny_gguf_tool
from velollmd.engine import kernels, q8weight, vecdot
from velollmd.engine.gguf import read_gguf
from velollmd.engine.loader import read_model
from velollmd.engine.model import ModelConfig, embedding_rows, linear
from velollmd.engine.q8weight import Q8Weight, quantize_rows
from velollmd.engine.quants import QuantError, dequantize

Q8_0 = int(gguf.GGMLQuantizationType.Q8_0)
pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


def random_q8(rng: np.random.Generator, rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 values and scales of rows (rows, k) of mixed magnitudes, as quantize_rows makes them."""
    x = (rng.standard_normal((rows, k)) * rng.uniform(0.01, 10.0, (rows, 1))).astype(np.float32)
    return quantize_rows(x)


def exact_q8(rng: np.random.Generator, rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-range int8 values (-128 too, which a GGUF may hold) and power-of-two scales: every
    float operation of the kernel is then exact, so only the int sums can make a difference."""
    q = rng.integers(-128, 128, (rows, k)).astype(np.int8)
    d = np.exp2(rng.integers(-12, -6, (rows, k // 32))).astype(np.float32)
    return q, d


@pytest.mark.parametrize("path", kernels.q8_0_paths() if kernels.COMPILED else [])
@pytest.mark.parametrize("batch, k, n", [(1, 32, 7), (3, 288, 70), (5, 1024, 129), (16, 512, 65)])
def test_each_path_equals_the_reference(path, batch, k, n):
    """Exact int sums (the scales powers of two), then the float part: the same bits."""
    rng = np.random.default_rng(batch * 1000 + k)
    (xq, xd), (wq, wd) = random_q8(rng, batch, k), exact_q8(rng, n, k)
    assert np.array_equal(kernels.matmul_q8_0(xq, xd, wq, wd, path), reference_matmul_q8_0(xq, xd, wq, wd))
    (xq, xd), (wq, wd) = random_q8(rng, batch, k), random_q8(rng, n, k)
    y = kernels.matmul_q8_0(xq, xd, wq, wd, path)
    assert np.array_equal(y, reference_matmul_q8_0(xq, xd, wq, wd))
    assert np.array_equal(y, kernels.matmul_q8_0(xq, xd, wq, wd, "best"))


def test_the_reference_lanes_are_exact_int_dot_products():
    rng = np.random.default_rng(5)
    (xq, _), (wq, _) = exact_q8(rng, 2, 64), exact_q8(rng, 3, 64)
    lanes = int_lanes(xq, wq)                                                     # (2, 3, 2, 8)
    assert lanes.shape == (2, 3, 2, 8)
    assert np.array_equal(lanes.sum(axis=(2, 3)), xq.astype(np.int64) @ wq.astype(np.int64).T)


@pytest.mark.parametrize("k", [256, 1056])
def test_a_row_does_not_depend_on_its_batch_or_the_thread_count(k):
    rng = np.random.default_rng(k)
    (xq, xd), (wq, wd) = random_q8(rng, 21, k), random_q8(rng, 200, k)
    alone = np.concatenate([kernels.matmul_q8_0(xq[i:i + 1], xd[i:i + 1], wq, wd) for i in range(21)])
    try:
        for threads in (1, 2, 3):
            kernels.set_num_threads(threads)
            for batch in range(1, 22):
                assert np.array_equal(kernels.matmul_q8_0(xq[:batch], xd[:batch], wq, wd), alone[:batch])
    finally:
        kernels.set_num_threads(1)


def test_the_compiled_quantiser_equals_vecdots():
    """Mixed scales, zero blocks, -0.0, tiny and F16-extreme values, exact halves either side."""
    rng = np.random.default_rng(6)
    halves = np.arange(127, dtype=np.float32) + np.float32(0.5)                  # d = 1 below
    near = (halves.view(np.int32)[None, :] + np.arange(-15, 16, dtype=np.int32)[:, None]).view(np.float32)
    values = np.concatenate([near.ravel(), -near.ravel(), [0.49999997, 0.5, 2.5]]).astype(np.float32)
    values = np.concatenate([values, np.zeros(-values.size % 31, np.float32)]).reshape(-1, 31)
    ties = np.concatenate([np.full((len(values), 1), 127.0, np.float32), values], axis=1)  # (n, 32)
    for x in (activations(rng, 6, 1024), ties, (rng.standard_normal((64, 2816)) * 3).astype(np.float32)):
        d, q = vecdot.quantize_q8_0(x)                                            # (n, 1), (n, 32)
        xq, xd = kernels.quantize_q8_0(x)
        assert np.array_equal(xq, q.reshape(x.shape)) and np.array_equal(xd.ravel(), d.astype(np.float32).ravel())


def test_an_unknown_path_is_refused():
    rng = np.random.default_rng(0)
    (xq, xd), (wq, wd) = random_q8(rng, 1, 32), random_q8(rng, 1, 32)
    with pytest.raises(KeyError):
        kernels.matmul_q8_0(xq, xd, wq, wd, "sse9")


def q8_tensor(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A GGUF's bytes of a random (n, k) Q8_0 matrix (ggml's own quantiser)."""
    w = (rng.standard_normal((n, k)) / 16).astype(np.float32)
    return np.ascontiguousarray(tiny_gguf_tool().encode_tensor(w, gguf.GGMLQuantizationType.Q8_0)).view(np.uint8)


def test_a_weight_keeps_the_files_values():
    rng = np.random.default_rng(1)
    raw = q8_tensor(rng, 40, 96)
    w = Q8Weight.from_raw(raw, (40, 96))
    expected = dequantize(raw, Q8_0, (40, 96))                                    # (40, 96) float32
    assert w.shape == (40, 96) and w.q.dtype == np.int8 and w.d.shape == (40, 3)
    assert w.nbytes == 40 * 96 + 40 * 3 * 4
    assert np.array_equal(w.rows(slice(None)), expected)
    ids = np.array([3, 0, 39, 3])
    assert np.array_equal(embedding_rows(w, ids), expected[ids])
    both = Q8Weight.concat([w, Q8Weight.from_raw(raw, (40, 96))])
    assert np.array_equal(both.rows(slice(None)), np.concatenate([expected, expected]))
    assert w.matmul(np.zeros((0, 96), np.float32)).shape == (0, 40)
    with pytest.raises(QuantError):
        Q8Weight.from_raw(raw[:-1], (40, 96))


def test_without_the_extension_a_weight_multiplies_its_dequantised_values(monkeypatch):
    rng = np.random.default_rng(2)
    w = Q8Weight.from_raw(q8_tensor(rng, 64, 128), (64, 128))
    x = rng.standard_normal((3, 128)).astype(np.float32)
    compiled = w.matmul(x)
    monkeypatch.setattr(q8weight.kernels, "COMPILED", False)
    fallback = w.matmul(x)
    assert np.allclose(fallback, compiled, rtol=1e-5, atol=1e-5) and not np.array_equal(fallback, x @ w.rows(
        slice(None)).T)


@pytest.fixture(scope="module")
def ggml_mul_mat(llama_binary) -> GgmlMulMat:
    return GgmlMulMat(llama_binary)


def test_a_weight_multiplies_as_ggml_mul_mat_does(ggml_mul_mat):
    """ggml_vec_dot_q8_0_q8_0 (and llamafile's sgemm for many rows) against the engine's
    Q8Weight: the same bits, where the engine's float32 product of the same rounded values is
    ~1e-6 off."""
    rng = np.random.default_rng(3)
    n, k = 256, 512
    raw = q8_tensor(rng, n, k)
    w = Q8Weight.from_raw(raw, (n, k))
    for rows in (1, 4, 12, 25, 64):
        x = rng.standard_normal((rows, k)).astype(np.float32)                      # (T, K)
        theirs = ggml_mul_mat(raw, Q8_0, (n, k), x)                                # (T, N)
        assert np.array_equal(linear(x, w, ((n, vecdot.Q8_0),)), theirs), rows
        float32 = linear(x, w.rows(slice(None)), ((n, vecdot.Q8_0),))
        assert not np.array_equal(float32, theirs)


def test_read_model_keeps_q8_0_matrices_quantised(tmp_path):
    path = write_random_gguf(tmp_path / "q8.gguf", "llama", dtype="q8_0", tied=True)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
        types = {name: info.ggml_type for name, info in gguf_file.tensors.items()}
    layer = model.layers[0]
    for weight, name in ((layer.wqkv, "attn_q"), (layer.wo, "attn_output"), (layer.w_gate_up, "ffn_gate"),
                         (layer.w_down, "ffn_down"), (model.token_embd, None)):
        assert isinstance(weight, Q8Weight) == (name is None or types[f"blk.0.{name}.weight"] == Q8_0)
    assert model.lm_head is model.token_embd and isinstance(model.lm_head, Q8Weight)
    assert model.lm_head.shape == (config.n_vocab, config.n_embd)


def test_read_model_dequantises_where_the_integer_kernels_do_not_pay(tmp_path, monkeypatch):
    """No AVX2 (or no compiled extension): every matrix float32, as before the integer kernels."""
    monkeypatch.setattr(kernels, "integer_kernels_pay", lambda: False)
    path = write_random_gguf(tmp_path / "q8.gguf", "llama", dtype="q8_0", tied=True)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
    layer = model.layers[0]
    for weight in (layer.wqkv, layer.wo, layer.w_gate_up, layer.w_down, model.token_embd, model.lm_head):
        assert isinstance(weight, np.ndarray) and weight.dtype == np.float32
