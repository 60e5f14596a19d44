"""Q4_0, Q5_0, Q4_1 and Q5_1 weights kept quantised (engine/legacyweight.py) and their integer
kernels (matmul_legacy.c): bit for bit the numpy reference (ggml's vec_dot arithmetic, `reference`
below) and ggml's own mul_mat, on every path this CPU has, whatever the batch size and thread
count; such models' logits against the real llama-server."""
from __future__ import annotations

import dataclasses

import gguf
import numpy as np
import pytest

from tests.engine.ggml_lib import GgmlMulMat
from tests.engine.test_model import LLAMA_ARGS, server_top_probs
from tests.engine.weights import write_random_gguf
from tests.rig.llama import tiny_gguf_tool
from velollmd.engine import kernels, quantweight, vecdot
from velollmd.engine.gguf import read_gguf
from velollmd.engine.kvcache import PagedKVCache
from velollmd.engine.legacyweight import (
    LegacyMinWeight,
    LegacyWeight,
    Q40Weight,
    Q41Weight,
    Q50Weight,
    Q51Weight,
    quantize_rows_q8_1,
)
from velollmd.engine.loader import read_model
from velollmd.engine.model import Batch, ModelConfig, SeqChunk, embedding_rows, linear
from velollmd.engine.q4kweight import Q4KWeight
from velollmd.engine.q8weight import Q8Weight, quantize_rows
from velollmd.engine.quants import QuantError, dequantize
from velollmd.engine.quantweight import StackedWeight

Q = gguf.GGMLQuantizationType
Q8_0 = int(Q.Q8_0)
TYPES = {"q4_0": (Q40Weight, int(Q.Q4_0)), "q5_0": (Q50Weight, int(Q.Q5_0)),     # dtype -> (class,
         "q4_1": (Q41Weight, int(Q.Q4_1)), "q5_1": (Q51Weight, int(Q.Q5_1))}     # ggml type)
pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


def tensor(rng: np.random.Generator, ggml_type: int, n: int, k: int) -> np.ndarray:
    """A GGUF's bytes of a random (n, k) matrix of ggml_type (ggml's own quantiser)."""
    w = (rng.standard_normal((n, k)) / 16).astype(np.float32)
    encoded = tiny_gguf_tool().encode_tensor(w, gguf.GGMLQuantizationType(ggml_type))
    return np.ascontiguousarray(encoded).view(np.uint8)


def weight(rng: np.random.Generator, dtype: str, n: int, k: int) -> LegacyWeight:
    cls, ggml_type = TYPES[dtype]
    return cls.from_raw(tensor(rng, ggml_type, n, k), (n, k))


def random_x(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    return (rng.standard_normal((rows, k)) * rng.uniform(0.01, 10.0, (rows, 1))).astype(np.float32)


def exact_weight(rng: np.random.Generator, dtype: str, n: int, k: int) -> LegacyWeight:
    """Every nibble byte and fifth bit, and power-of-two scales and mins: with x's d and sums
    powers of two too, every float operation is exact, so only the int sums can make a difference."""
    def powers(low, high):
        return np.exp2(rng.integers(low, high, (n, k // 32))).astype(np.float32)
    arrays = {"qs": rng.integers(0, 256, (n, k // 2)).astype(np.uint8),
              "qh": rng.integers(0, 256, (n, k // 8)).astype(np.uint8),
              "d": powers(-12, -6), "m": powers(-10, -4)}
    cls = TYPES[dtype][0]
    return cls(**{f.name: arrays[f.name] for f in dataclasses.fields(cls)})


def quantize_input(x: np.ndarray, w: LegacyWeight) -> tuple[np.ndarray, ...]:
    return quantize_rows_q8_1(x) if isinstance(w, LegacyMinWeight) else quantize_rows(x)


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c with one rounding, emulated in float64 (the product is exact there; the
    sum is rounded twice, so within 1 ulp, and exact whenever the float arithmetic is)."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def reference(x: tuple[np.ndarray, ...], w: LegacyWeight) -> np.ndarray:
    """ggml's vec_dot for the weight's type, per (input, row): per block j, 8 exact int32 lanes
    (lane l: values 4l..4l+3 of integer * x), acc = fma(wd * xd, lane, acc) per lane; then
    hsum_float_8 of acc, plus (Q4_1, Q5_1) the min term summs = fma(m, s, summs) per block."""
    xq, xd = x[0], x[1]
    batch, k = xq.shape
    values = w.values(slice(None)).reshape(1, w.shape[0], k // 32, 8, 4).astype(np.int32)
    lanes = (xq.reshape(batch, 1, k // 32, 8, 4).astype(np.int32) * values).sum(axis=-1)  # (B, N, nb, 8)
    d = w.d[None, :, :] * xd[:, None, :]                                          # (B, N, nb) float32
    acc = np.zeros((batch, w.shape[0], 8), dtype=np.float32)                       # (B, N, 8)
    summs = np.zeros((batch, w.shape[0]), dtype=np.float32)                        # (B, N)
    for j in range(k // 32):
        acc = fma32(d[:, :, j, None], lanes[:, :, j].astype(np.float32), acc)
        if isinstance(w, LegacyMinWeight):
            summs = fma32(x[2][:, None, j], w.m[None, :, j], summs)
    a = acc[..., :4] + acc[..., 4:]                                               # (B, N, 4)
    y = (a[..., 0] + a[..., 2]) + (a[..., 1] + a[..., 3])                         # ggml's hsum_float_8
    return y + summs if isinstance(w, LegacyMinWeight) else y


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("path", kernels.legacy_paths() if kernels.COMPILED else [])
@pytest.mark.parametrize("batch, k, n", [(1, 32, 7), (3, 288, 70), (5, 1024, 129), (16, 512, 65)])
def test_each_path_equals_the_reference(dtype, path, batch, k, n):
    """Exact int sums (power-of-two scales), then the float part: the same bits."""
    rng = np.random.default_rng(batch * 1000 + k)
    w = exact_weight(rng, dtype, n, k)
    x = quantize_input(random_x(rng, batch, k), w)
    exact_x = (x[0], *(np.exp2(rng.integers(-8, -4, a.shape)).astype(np.float32) for a in x[1:]))
    assert np.array_equal(w.matmul_quantised(exact_x, path), reference(exact_x, w))
    w = weight(rng, dtype, n, k)
    y = w.matmul_quantised(x, path)
    assert np.array_equal(y, reference(x, w))
    assert np.array_equal(y, w.matmul_quantised(x, "best"))


@pytest.mark.parametrize("dtype, low, high", [("q4_0", -8, 7), ("q5_0", -16, 15), ("q4_1", 0, 15),
                                              ("q5_1", 0, 31)])
def test_the_values_are_the_files_integers(dtype, low, high):
    """Low nibbles first, then high ones (with their fifth bits), minus the offset: dequantize's
    values (less the mins) divided by the scales, over the whole range."""
    rng = np.random.default_rng(4)
    cls, ggml_type = TYPES[dtype]
    raw = tensor(rng, ggml_type, 64, 256)
    w = cls.from_raw(raw, (64, 256))
    values = w.values(slice(None))                                                # (64, 8, 32) int8
    assert values.dtype == np.int8 and values.min() == low and values.max() == high
    scales = np.repeat(w.d, 32, axis=1)                                           # (64, 256)
    scaled = scales * values.reshape(64, 256).astype(np.float32)
    if isinstance(w, LegacyMinWeight):
        scaled += np.repeat(w.m, 32, axis=1)
    assert np.array_equal(scaled, dequantize(raw, ggml_type, (64, 256)))


def test_an_unknown_path_is_refused():
    rng = np.random.default_rng(0)
    w = exact_weight(rng, "q5_0", 1, 32)
    x = quantize_rows(random_x(rng, 1, 32))
    with pytest.raises(KeyError):
        w.matmul_quantised(x, "sse9")


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("k", [256, 1056])
def test_a_row_does_not_depend_on_its_batch_or_the_thread_count(dtype, k):
    rng = np.random.default_rng(k)
    x, w = random_x(rng, 21, k), weight(rng, dtype, 200, k)
    alone = np.concatenate([w.matmul(x[i:i + 1]) for i in range(21)])
    try:
        for threads in (1, 2, 3):
            kernels.set_num_threads(threads)
            for batch in range(1, 22):
                assert np.array_equal(w.matmul(x[:batch]), alone[:batch])
    finally:
        kernels.set_num_threads(1)


@pytest.mark.parametrize("dtype, bytes_per_row", [("q4_0", 48 + 3 * 4), ("q5_0", 48 + 12 + 3 * 4),
                                                  ("q4_1", 48 + 2 * 3 * 4), ("q5_1", 48 + 12 + 2 * 3 * 4)])
def test_a_weight_keeps_the_files_values(dtype, bytes_per_row):
    rng = np.random.default_rng(1)
    cls, ggml_type = TYPES[dtype]
    raw = tensor(rng, ggml_type, 40, 96)
    w = cls.from_raw(raw, (40, 96))
    expected = dequantize(raw, ggml_type, (40, 96))                               # (40, 96) float32
    assert w.shape == (40, 96) and w.qs.dtype == np.uint8 and w.d.shape == (40, 3)
    assert w.nbytes == 40 * bytes_per_row
    assert np.array_equal(w.rows(slice(None)), expected)
    ids = np.array([3, 0, 39, 3])
    assert np.array_equal(embedding_rows(w, ids), expected[ids])
    both = cls.concat([w, cls.from_raw(raw, (40, 96))])
    assert np.array_equal(both.rows(slice(None)), np.concatenate([expected, expected]))
    assert w.matmul(np.zeros((0, 96), np.float32)).shape == (0, 40)
    with pytest.raises(QuantError):
        cls.from_raw(raw[:-1], (40, 96))


@pytest.mark.parametrize("dtype", TYPES)
def test_without_the_extension_a_weight_multiplies_its_dequantised_values(dtype, monkeypatch):
    rng = np.random.default_rng(2)
    w = weight(rng, dtype, 64, 128)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    compiled = w.matmul(x)
    monkeypatch.setattr(quantweight.kernels, "COMPILED", False)
    fallback = w.matmul(x)
    # Q4_1, Q5_1: vecdot's Q8_1 rounding sums the rounded values exactly, ggml's an F16 d * sum
    tolerance = 5e-3 if isinstance(w, LegacyMinWeight) else 1e-4
    assert np.allclose(fallback, compiled, rtol=tolerance, atol=tolerance)
    assert np.array_equal(fallback, vecdot.round_activations(x, w.act_type) @ w.rows(slice(None)).T)


def test_legacy_parts_stack_with_q8_0_and_q4_k_parts_on_one_rounding_of_x_per_type():
    """A fused weight of these parts is each part's product side by side (Q4_0, Q5_0 and Q8_0
    share a Q8_0 x, Q4_1 and Q5_1 a Q8_1 x; a Q4_K part, as in a Q4_K_M file with Q5_0
    fallbacks, a Q8_K x)."""
    rng = np.random.default_rng(7)
    parts = (weight(rng, "q4_0", 48, 256), weight(rng, "q5_1", 8, 256), weight(rng, "q5_0", 8, 256),
             Q8Weight.from_raw(tensor(rng, Q8_0, 16, 256), (16, 256)), weight(rng, "q4_1", 8, 256),
             Q4KWeight.from_raw(tensor(rng, int(Q.Q4_K), 8, 256), (8, 256)))
    x = random_x(rng, 5, 256)
    stacked = StackedWeight(parts)
    assert stacked.shape == (96, 256)
    assert np.array_equal(stacked.matmul(x), np.concatenate([part.matmul(x) for part in parts], axis=1))


@pytest.fixture(scope="module")
def ggml_mul_mat(llama_binary) -> GgmlMulMat:
    return GgmlMulMat(llama_binary)


@pytest.mark.parametrize("dtype", TYPES)
def test_a_weight_multiplies_as_ggml_mul_mat_does(dtype, ggml_mul_mat):
    """ggml_vec_dot_q4_0_q8_0, _q5_0_q8_0, _q4_1_q8_1, _q5_1_q8_1 (and llamafile's sgemm for
    many rows, for Q4_0 and Q5_0) against the engine's weights at 1..21 rows: the same bits, where
    the engine's float32 product of the same rounded values is ~1e-6 off."""
    rng = np.random.default_rng(3)
    n, k = 130, 1024
    cls, ggml_type = TYPES[dtype]
    raw = tensor(rng, ggml_type, n, k)
    w = cls.from_raw(raw, (n, k))
    x = rng.standard_normal((21, k)).astype(np.float32)                            # (T, K)
    for rows in range(1, 22):
        theirs = ggml_mul_mat(raw, ggml_type, (n, k), x[:rows])                    # (T, N)
        assert np.array_equal(linear(x[:rows], w, ((n, w.act_type),)), theirs), rows
    float32 = linear(x, w.rows(slice(None)), ((n, w.act_type),))
    assert not np.array_equal(float32, ggml_mul_mat(raw, ggml_type, (n, k), x))


@pytest.mark.parametrize("dtype", TYPES)
def test_read_model_keeps_legacy_matrices_quantised(dtype, tmp_path):
    path = write_random_gguf(tmp_path / f"{dtype}.gguf", "llama", dtype=dtype, n_embd=256, n_ff=512)
    cls, ggml_type = TYPES[dtype]
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
        types = {name: info.ggml_type for name, info in gguf_file.tensors.items()}
    layer = model.layers[0]
    for weight, names in ((layer.wqkv, ("attn_q", "attn_k", "attn_v")), (layer.wo, ("attn_output",)),
                          (layer.w_gate_up, ("ffn_gate", "ffn_up")), (layer.w_down, ("ffn_down",))):
        assert all(types[f"blk.0.{name}.weight"] == ggml_type for name in names)
        assert isinstance(weight, cls)
    assert isinstance(model.token_embd, Q8Weight) and types["token_embd.weight"] == Q8_0


@pytest.mark.parametrize("arch, dtype", [("llama", "q4_0"), ("qwen2", "q4_0"), ("llama", "q5_0"),
                                         ("qwen2", "q5_0"), ("llama", "q4_1"), ("qwen2", "q5_1")])
def test_top10_probabilities_match_llama_server(arch, dtype, tmp_path, llama_server_factory):
    """make_tiny_gguf's file of the type, its matrices kept quantised, against llama-server (no
    repacking: its repacked Q4_0 kernels are host-dependent)."""
    path = tiny_gguf_tool().build_tiny_gguf(tmp_path / f"{arch}-{dtype}.gguf", seed=5, dtype=dtype, arch=arch)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
    assert isinstance(model.layers[0].w_gate_up, TYPES[dtype][0])
    server = llama_server_factory(model_path=path, parallel=1, ctx_size=512, extra_args=LLAMA_ARGS)
    ids, theirs = server_top_probs(server, "the world of water and fire is a great story")
    kv = PagedKVCache(config.n_layer, 4, 16, config.n_head_kv, config.head_dim)
    logits = model.forward(Batch.pack([SeqChunk(ids, 0, [0, 1, 2, 3])]), kv)[0].astype(np.float64)
    ours = np.exp(logits - logits.max())
    ours /= ours.sum()                                                            # (n_vocab,)
    top_ids = list(theirs)
    p, q = np.array([theirs[i] for i in top_ids]), ours[top_ids]
    nmse = float(np.sum((q - p) ** 2) / np.sum(p ** 2))
    print(f"{arch} {dtype}: top-10 normalised MSE vs llama-server = {nmse:.2e}")
    assert len(theirs) == 10 and int(np.argmax(ours)) == top_ids[0]
    assert nmse < 1e-3
