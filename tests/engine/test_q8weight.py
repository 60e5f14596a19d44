"""Q8_0 weights kept quantised and packed (engine/q8weight.py) and their integer kernel
(matmul_q8.c): bit for bit the numpy reference (tests/engine/q8_reference.py) on every path this
CPU has, each on its own byte format (signed or w + 128), whatever the batch size and thread
count; within float32 ulps of ggml's own mul_mat."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from tests.engine.ggml_lib import GgmlMulMat
from tests.engine.q8_reference import block_sums, reference_matmul_q8_0
from tests.engine.test_vecdot import activations
from tests.engine.weights import write_random_gguf
from tests.rig.llama import tiny_gguf_tool
from velollmd.engine import kernels, q8weight, vecdot
from velollmd.engine.gguf import read_gguf
from velollmd.engine.loader import read_model
from velollmd.engine.model import ModelConfig, embedding_rows, linear
from velollmd.engine.q8weight import Q8Weight, pack_rows, packs_unsigned, quantize_rows
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


def packed_product(xq, xd, wq, wd, path="best"):
    """The kernel's x @ w^T for w given by rows (q, d), packed first for that path."""
    return Q8Weight.from_rows(wq, wd, path).matmul_quantised((xq, xd), path)


VNNI_PATHS = ("vnni", "avxvnni")        # the paths that read unsigned bytes w + 128


@pytest.mark.parametrize("path", kernels.q8_0_paths() if kernels.COMPILED else [])
@pytest.mark.parametrize("batch, k, n", [(1, 32, 7), (3, 288, 70), (6, 480, 9), (5, 1024, 129), (16, 512, 65),
                                         (19, 256, 48)])
def test_each_path_equals_the_reference(path, batch, k, n):
    """Exact int sums (the scales powers of two), then the float part: the same bits."""
    rng = np.random.default_rng(batch * 1000 + k)
    (xq, xd), (wq, wd) = random_q8(rng, batch, k), exact_q8(rng, n, k)
    assert np.array_equal(packed_product(xq, xd, wq, wd, path), reference_matmul_q8_0(xq, xd, wq, wd))
    (xq, xd), (wq, wd) = random_q8(rng, batch, k), random_q8(rng, n, k)
    y = packed_product(xq, xd, wq, wd, path)
    assert np.array_equal(y, reference_matmul_q8_0(xq, xd, wq, wd))
    assert np.array_equal(y, packed_product(xq, xd, wq, wd, "best"))
    for other in kernels.q8_0_paths():          # the weight in the other format: the same bits
        converted = Q8Weight.from_rows(wq, wd, path).for_path(other)
        assert np.array_equal(converted.matmul_quantised((xq, xd), other), y), other


def test_each_path_reads_its_own_byte_format():
    q, d = exact_q8(np.random.default_rng(0), 3, 32)
    for path in kernels.q8_0_paths():
        assert kernels.q8_0_reads_unsigned(path) == (path in VNNI_PATHS), path
        assert Q8Weight.from_rows(q, d, path).unsigned == (path in VNNI_PATHS)
    fastest = kernels.q8_0_paths()[-1]
    assert packs_unsigned("best") == (fastest in VNNI_PATHS) == Q8Weight.from_rows(q, d).unsigned


def test_a_weight_packed_for_the_other_format_is_refused_and_converted():
    """A path given the other format's bytes refuses them (nothing would be right); for_path
    converts; "best" runs the fastest path of the weight's format (signed: AVX2 even on a VNNI CPU)."""
    rng = np.random.default_rng(4)
    (xq, xd), (wq, wd) = random_q8(rng, 3, 64), random_q8(rng, 21, 64)
    expected = reference_matmul_q8_0(xq, xd, wq, wd)
    for path in kernels.q8_0_paths():
        for other in kernels.q8_0_paths():
            w = Q8Weight.from_rows(wq, wd, other)
            if (path in VNNI_PATHS) != (other in VNNI_PATHS):
                with pytest.raises(ValueError, match="for (u?int8) weights"):
                    w.matmul_quantised((xq, xd), path)
                assert w.for_path(path).unsigned != w.unsigned
            assert np.array_equal(w.for_path(path).matmul_quantised((xq, xd), path), expected), (path, other)
            assert np.array_equal(w.matmul_quantised((xq, xd), "best"), expected), (path, other)
            assert w.for_path(other) is w


def test_the_benchmarks_path_override_packs_and_multiplies_for_that_path(monkeypatch):
    rng = np.random.default_rng(10)
    (xq, xd), (wq, wd) = random_q8(rng, 2, 96), random_q8(rng, 33, 96)
    for path in kernels.q8_0_paths():
        monkeypatch.setattr(q8weight, "PATH", path)
        w = Q8Weight.from_rows(wq, wd)
        assert w.unsigned == (path in VNNI_PATHS)
        assert np.array_equal(w.matmul_quantised((xq, xd)), reference_matmul_q8_0(xq, xd, wq, wd))


def test_the_reference_block_sums_are_exact_int_dot_products():
    rng = np.random.default_rng(5)
    (xq, _), (wq, _) = exact_q8(rng, 2, 64), exact_q8(rng, 3, 64)
    sums = block_sums(xq, wq)                                                     # (2, 3, 2)
    assert sums.shape == (2, 3, 2)
    assert np.array_equal(sums.sum(axis=2), xq.astype(np.int64) @ wq.astype(np.int64).T)


def test_extreme_values_sum_exactly():
    """Every weight -128 or 127 against x of +-127 (quantize_rows never makes -128): the int sums'
    extremes (+-32 * 128 * 127 a block), on every path."""
    rng = np.random.default_rng(7)
    wq = rng.choice(np.array([-128, 127], np.int8), (33, 256))
    xq = np.concatenate([np.full((1, 256), 127, np.int8), np.full((1, 256), -127, np.int8),
                         rng.choice(np.array([-127, 127], np.int8), (3, 256))])
    wd, xd = np.full((33, 8), 2.0 ** -10, np.float32), np.full((5, 8), 2.0 ** -7, np.float32)
    exact = (xq.astype(np.int64) @ wq.astype(np.int64).T).astype(np.float64) * 2.0 ** -17
    for path in kernels.q8_0_paths():
        assert np.array_equal(packed_product(xq, xd, wq, wd, path), exact), path


@pytest.mark.parametrize("k", [256, 1056])
def test_a_row_does_not_depend_on_its_batch_or_the_thread_count(k):
    rng = np.random.default_rng(k)
    (xq, xd), (wq, wd) = random_q8(rng, 21, k), random_q8(rng, 200, k)
    alone = np.concatenate([packed_product(xq[i:i + 1], xd[i:i + 1], wq, wd) for i in range(21)])
    try:
        for path in kernels.q8_0_paths()[1:]:       # the SIMD paths (portable: the test above)
            w = Q8Weight.from_rows(wq, wd, path)
            for threads in (1, 2, 3):
                kernels.set_num_threads(threads)
                for batch in range(1, 22):
                    assert np.array_equal(w.matmul_quantised((xq[:batch], xd[:batch]), path), alone[:batch])
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
        packed_product(xq, xd, wq, wd, "sse9")


def test_a_path_this_cpu_lacks_is_refused():
    """E.g. AVX-VNNI (ymm vpdpbusd) on a CPU with only AVX-512 VNNI: named, never run here."""
    rng = np.random.default_rng(0)
    (xq, xd), (wq, wd) = random_q8(rng, 1, 32), random_q8(rng, 17, 32)
    w = Q8Weight.from_rows(wq, wd)
    for path in set(kernels.Q8_PATHS) - set(kernels.q8_0_paths()) - {"best"}:
        with pytest.raises(ValueError, match="not available"):
            kernels.q8_0_reads_unsigned(path)
        for weight in (w, w.with_format(not w.unsigned)):
            with pytest.raises(ValueError, match="not available"):
                weight.matmul_quantised((xq, xd), path)


@pytest.mark.parametrize("unsigned", [False, True])
def test_packing_interleaves_16_rows_by_4_bytes_in_either_format(unsigned):
    rng = np.random.default_rng(8)
    q, d = exact_q8(rng, 21, 64)
    packed, scales = pack_rows(q, d, unsigned)
    offset = 128 if unsigned else 0
    assert packed.dtype == (np.uint8 if unsigned else np.int8)
    assert packed.shape == (2, 2, 8, 16, 4) and scales.shape == (2, 2, 16)
    assert packed[1, 1, 3, 4, 2] == int(q[20, 32 + 14]) + offset and scales[1, 1, 4] == d[20, 1]
    assert np.all(packed[1, :, :, 5:] == offset) and np.all(scales[1, :, 5:] == 0)   # zero padding rows
    w = Q8Weight(packed, scales, 21)
    other = w.with_format(not unsigned)
    assert other.unsigned != unsigned
    assert np.array_equal(other.packed.view(np.uint8), packed.view(np.uint8) ^ 0x80)
    for weight in (w, other):
        for index in (slice(None), np.array([20, 0, 17, 16, 15, 20]), slice(3, 19, 2)):
            got_q, got_d = weight.unpacked(index)
            assert got_q.dtype == np.int8
            assert np.array_equal(got_q, q[index]) and np.array_equal(got_d, d[index])


@pytest.mark.parametrize("part_rows", [(16, 32, 7), (16, 7, 32), (21, 21)])
@pytest.mark.parametrize("formats", [(False, False, False), (True, True, True), (True, False, True),
                                     (False, True, False)])
def test_concat_equals_packing_the_stacked_rows(part_rows, formats):
    """Whole groups stacked as they are, or (a part ending mid-group) repacked: the same arrays,
    in the first part's format."""
    rng = np.random.default_rng(9)
    rows = [exact_q8(rng, n, 64) for n in part_rows]
    both = Q8Weight.concat([Q8Weight(*pack_rows(q, d, unsigned), len(q))
                            for (q, d), unsigned in zip(rows, formats)])
    q, d = np.concatenate([q for q, _ in rows]), np.concatenate([d for _, d in rows])
    expected = Q8Weight(*pack_rows(q, d, formats[0]), len(q))
    assert both.shape == expected.shape == (sum(part_rows), 64)
    assert both.packed.dtype == expected.packed.dtype
    assert np.array_equal(both.packed, expected.packed) and np.array_equal(both.scales, expected.scales)


def q8_tensor(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A GGUF's bytes of a random (n, k) Q8_0 matrix (ggml's own quantiser)."""
    w = (rng.standard_normal((n, k)) / 16).astype(np.float32)
    return np.ascontiguousarray(tiny_gguf_tool().encode_tensor(w, gguf.GGMLQuantizationType.Q8_0)).view(np.uint8)


def test_a_weight_keeps_the_files_values():
    rng = np.random.default_rng(1)
    raw = q8_tensor(rng, 40, 96)
    w = Q8Weight.from_raw(raw, (40, 96))
    expected = dequantize(raw, Q8_0, (40, 96))                                    # (40, 96) float32
    assert w.shape == (40, 96) and w.unsigned == packs_unsigned("best") and w.scales.shape == (3, 3, 16)
    assert w.nbytes == 48 * 96 + 48 * 3 * 4                                        # 40 rows padded to 48
    assert np.array_equal(w.rows(slice(None)), expected)
    ids = np.array([3, 0, 39, 3])
    assert np.array_equal(embedding_rows(w, ids), expected[ids])
    both = Q8Weight.concat([w, Q8Weight.from_raw(raw, (40, 96))])
    assert both.shape == (80, 96)
    assert np.array_equal(both.rows(slice(None)), np.concatenate([expected, expected]))
    x = rng.standard_normal((3, 96)).astype(np.float32)
    assert np.array_equal(both.matmul(x), np.concatenate([w.matmul(x), w.matmul(x)], axis=1))
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
    Q8Weight: the same exact int32 block sums and float32 scale products, added up in float32
    with other roundings (the engine rounds once per block, ggml once per 4-byte lane of each
    block: matmul_q8.h), so not the same bits but within a few float32 ulps of the terms'
    magnitudes, and the engine on average closer to the exact sum of the same terms."""
    rng = np.random.default_rng(3)
    eps = np.finfo(np.float32).eps
    for n, k in ((256, 512), (100, 2816)):
        raw = q8_tensor(rng, n, k)
        w = Q8Weight.from_raw(raw, (n, k))
        wq, wd = w.unpacked(slice(None))
        for rows in (1, 4, 12, 25, 64):
            x = rng.standard_normal((rows, k)).astype(np.float32)                  # (T, K)
            theirs = ggml_mul_mat(raw, Q8_0, (n, k), x)                            # (T, N)
            ours = linear(x, w, ((n, vecdot.Q8_0),))
            xq, xd = quantize_rows(x)
            terms = block_sums(xq, wq) * (wd[None, :, :] * xd[:, None, :]).astype(np.float64)  # (T, N, nb)
            exact, magnitude = terms.sum(axis=-1), np.abs(terms).sum(axis=-1)      # (T, N)
            assert np.all(np.abs(ours - theirs) <= 4 * eps * magnitude), (n, k, rows)
            assert not np.array_equal(ours, theirs)
            assert np.abs(ours - exact).mean() <= np.abs(theirs - exact).mean(), (n, k, rows)


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
