"""What every weight type kept quantised passes (Q4_K, Q5_K, Q6_K: q4kweight.py, q5kweight.py,
q6kweight.py with matmul_q4k.c, matmul_q5k.c, matmul_q6k.c; Q4_0, Q5_0, Q4_1, Q5_1: legacyweight.py
with matmul_legacy.c), each type's specifics as data (quant_harness.CASES): bit for bit its numpy
reference on every path this CPU has and ggml's own mul_mat, whatever the batch size and thread
count; the file's values; a file's matrices kept quantised. Each type's own tests: test_q4kweight.py,
test_q5kweight.py, test_q6kweight.py, test_legacyweight.py."""
from __future__ import annotations

import dataclasses

import gguf
import numpy as np
import pytest

from tests.engine.quant_harness import CASES, encoded_tensor, exact_input, exact_weight, file_weight, random_x
from tests.engine.weights import write_random_gguf
from velollmd.engine import kernels, quantweight, vecdot
from velollmd.engine.gguf import read_gguf
from velollmd.engine.loader import read_model
from velollmd.engine.model import ModelConfig, embedding_rows, linear
from velollmd.engine.q8weight import Q8Weight
from velollmd.engine.quants import QuantError, dequantize

pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


def each_path_and_shape() -> list[tuple[str, str, int, int, int]]:
    """(dtype, path, batch, K, N) for every type, its kernel's paths here and its test shapes."""
    if not kernels.COMPILED:
        return []
    return [(dtype, path, *shape) for dtype, case in CASES.items() for path in case.kernel.paths()
            for shape in case.kernel.shapes]


@pytest.mark.parametrize("dtype, path, batch, k, n", each_path_and_shape())
def test_each_path_equals_the_reference(dtype, path, batch, k, n):
    """Exact int sums (power-of-two scales), then the float part: the same bits."""
    case = CASES[dtype]
    rng = np.random.default_rng(batch * 1000 + k)
    x_float = random_x(rng, batch, k)
    w = exact_weight(rng, case, n, k)
    exact_x = exact_input(rng, w.quantize_input(x_float))
    assert np.array_equal(w.matmul_quantised(exact_x, path), case.reference(exact_x, w))
    w = file_weight(rng, case, n, k)
    x = w.quantize_input(x_float)
    y = w.matmul_quantised(x, path)
    assert np.array_equal(y, case.reference(x, w))
    assert np.array_equal(y, w.matmul_quantised(x, "best"))


@pytest.mark.parametrize("dtype", CASES)
def test_an_unknown_path_is_refused(dtype):
    case = CASES[dtype]
    rng = np.random.default_rng(0)
    w = exact_weight(rng, case, 1, 256)
    x = w.quantize_input(random_x(rng, 1, 256))
    with pytest.raises(KeyError):
        w.matmul_quantised(x, "sse9")
    with pytest.raises(ValueError):
        w.matmul_quantised(x, case.kernel.other_path)


@pytest.mark.parametrize("dtype, k", [(dtype, k) for dtype, case in CASES.items()
                                      for k in case.kernel.row_ks])
def test_a_row_does_not_depend_on_its_batch_or_the_thread_count(dtype, k):
    case = CASES[dtype]
    rng = np.random.default_rng(k)
    x, w = random_x(rng, 21, k), file_weight(rng, case, case.kernel.rows, k)
    alone = np.concatenate([w.matmul(x[i:i + 1]) for i in range(21)])
    try:
        for threads in (1, 2, 3):
            kernels.set_num_threads(threads)
            for batch in range(1, 22):
                assert np.array_equal(w.matmul(x[:batch]), alone[:batch])
    finally:
        kernels.set_num_threads(1)


def layout(w) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {f.name: (getattr(w, f.name).shape, getattr(w, f.name).dtype) for f in dataclasses.fields(w)}


@pytest.mark.parametrize("dtype", CASES)
def test_a_weight_keeps_the_files_values(dtype):
    case = CASES[dtype]
    rng = np.random.default_rng(1)
    n, k = case.kernel.keep_shape
    raw = encoded_tensor(rng, case.ggml_type, n, k)
    w = case.cls.from_raw(raw, (n, k))
    expected = dequantize(raw, case.ggml_type, (n, k))                           # (n, k) float32
    assert w.shape == (n, k) and w.nbytes == n * case.bytes_per_row
    assert layout(w) == layout(exact_weight(rng, case, n, k))                   # every field's shape, dtype
    assert np.array_equal(w.rows(slice(None)), expected)
    ids = np.array([3, 0, n - 1, 3])
    assert np.array_equal(embedding_rows(w, ids), expected[ids])
    both = case.cls.concat([w, case.cls.from_raw(raw, (n, k))])
    assert np.array_equal(both.rows(slice(None)), np.concatenate([expected, expected]))
    assert w.matmul(np.zeros((0, k), np.float32)).shape == (0, n)
    with pytest.raises(QuantError):
        case.cls.from_raw(raw[:-1], (n, k))


@pytest.mark.parametrize("dtype", CASES)
def test_without_the_extension_a_weight_multiplies_its_dequantised_values(dtype, monkeypatch):
    case = CASES[dtype]
    rng = np.random.default_rng(2)
    k = case.kernel.keep_shape[1]
    w = file_weight(rng, case, 64, k)
    x = rng.standard_normal((3, k)).astype(np.float32)
    compiled = w.matmul(x)
    monkeypatch.setattr(quantweight.kernels, "COMPILED", False)
    fallback = w.matmul(x)
    tolerance = case.fallback_tolerance
    assert np.allclose(fallback, compiled, rtol=tolerance, atol=tolerance)
    assert np.array_equal(fallback, vecdot.round_activations(x, w.act_type) @ w.rows(slice(None)).T)


@pytest.mark.parametrize("dtype", CASES)
def test_a_weight_multiplies_as_ggml_mul_mat_does(dtype, ggml_mul_mat):
    """ggml's mul_mat (ggml_vec_dot_q4_K_q8_K, _q5_K_q8_K, _q6_K_q8_K, _q4_0_q8_0, _q5_0_q8_0,
    _q4_1_q8_1, _q5_1_q8_1; llamafile's sgemm for many rows of Q4_0 and Q5_0) against the
    engine's weight at 1..21 rows: the same bits, where the engine's float32 product of the same
    rounded values is ~1e-6 off. For the K-quants ggml's mul_mat takes its vec_dot for up to 7
    rows and another kernel from 8 on, whose rows differ from its own one-row results; the engine
    keeps the vec_dot's arithmetic for every row, so beyond batched_rows it is compared with ggml
    one row at a time."""
    case = CASES[dtype]
    rng = np.random.default_rng(3)
    n, k = 130, 1024
    raw = encoded_tensor(rng, case.ggml_type, n, k)
    w = case.cls.from_raw(raw, (n, k))
    x = rng.standard_normal((21, k)).astype(np.float32)                           # (T, K)
    one_by_one = np.concatenate([ggml_mul_mat(raw, case.ggml_type, (n, k), x[i:i + 1]) for i in range(21)])
    for rows in range(1, 22):
        ours = linear(x[:rows], w, ((n, w.act_type),))                            # (rows, N)
        assert np.array_equal(ours, one_by_one[:rows]), rows
        if rows <= case.batched_rows:
            assert np.array_equal(ours, ggml_mul_mat(raw, case.ggml_type, (n, k), x[:rows])), rows
    float32 = linear(x, w.rows(slice(None)), ((n, w.act_type),))
    assert not np.array_equal(float32, one_by_one)


@pytest.mark.parametrize("dtype", CASES)
def test_read_model_keeps_the_types_matrices_quantised(dtype, tmp_path):
    case = CASES[dtype]
    path = write_random_gguf(tmp_path / f"{dtype}.gguf", "llama", dtype=dtype, n_embd=256, n_ff=512)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
        types = {name: info.ggml_type for name, info in gguf_file.tensors.items()}
    layer = model.layers[0]
    for weight, names in ((layer.wqkv, ("attn_q", "attn_k", "attn_v")), (layer.wo, ("attn_output",)),
                          (layer.w_gate_up, ("ffn_gate", "ffn_up")), (layer.w_down, ("ffn_down",))):
        assert all(types[f"blk.0.{name}.weight"] == case.ggml_type for name in names)
        assert isinstance(weight, case.cls)
    assert isinstance(model.token_embd, Q8Weight)
    assert types["token_embd.weight"] == int(gguf.GGMLQuantizationType.Q8_0)
