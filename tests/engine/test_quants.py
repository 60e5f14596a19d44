"""engine/quants.py: bit-exact against gguf-py's gguf.quants.dequantize on random data."""
import gguf
import numpy as np
import pytest

from velollmd.engine.quants import (
    GGML_BLOCK_SIZES,
    GGML_TYPE_NAMES,
    SUPPORTED_TYPES,
    QuantError,
    UnsupportedTensorType,
    dequantize,
    type_nbytes,
)

Q = gguf.GGMLQuantizationType
QUANTISABLE = [Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]   # gguf-py can quantise these
K_QUANTS = [Q.Q4_K, Q.Q5_K, Q.Q6_K]                               # gguf-py only dequantises these
# byte ranges of each block's float16 scales (d, dmin), kept finite in the "valid" data
F16_FIELDS = {Q.BF16: [], Q.F16: [], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
              Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}


def bits(array: np.ndarray) -> np.ndarray:
    """float32 values as their bit patterns: equal means equal incl. -0.0 and NaN payloads."""
    return np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)


def assert_bit_exact(raw: np.ndarray, qtype: Q, shape: tuple[int, ...]):
    ours = dequantize(raw, int(qtype), shape)
    reference = gguf.quants.dequantize(raw.reshape(shape[:-1] + (-1,)), qtype)
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.array_equal(bits(ours), bits(reference.reshape(shape)))
    return ours


def random_floats(rng: np.random.Generator, shape) -> np.ndarray:
    values = rng.normal(0, 1, size=shape).astype(np.float32)   # (rows, cols)
    values[0, :4] = [0.0, -0.0, 1e-30, -65504.0]                 # zero, -0, tiny, f16 extreme
    values[-1] = 0.0                                              # an all-zero row: scale 0
    return values


@pytest.mark.parametrize("qtype", QUANTISABLE, ids=lambda t: t.name)
def test_quantised_random_floats_match_gguf_py(qtype):
    rng = np.random.default_rng(int(qtype))
    values = random_floats(rng, (5, 96))
    raw = gguf.quants.quantize(values, qtype)                # (5, row bytes) uint8
    ours = assert_bit_exact(raw, qtype, (5, 96))
    assert np.abs(ours - values)[1:].max() < 0.5              # it really decodes the values
    assert not ours[-1].any()


def random_blocks(rng: np.random.Generator, qtype: Q, num_blocks: int, finite: bool) -> np.ndarray:
    block_size, type_size = GGML_BLOCK_SIZES[int(qtype)]
    raw = rng.integers(0, 256, size=(num_blocks, type_size), dtype=np.uint8)   # (blocks, bytes)
    if finite:
        for at in F16_FIELDS[qtype]:
            scale = rng.uniform(-0.1, 0.1, size=num_blocks).astype(np.float16)   # (blocks,)
            raw[:, at:at + 2] = scale.view(np.uint8).reshape(num_blocks, 2)
    return raw.reshape(-1)


@pytest.mark.parametrize("qtype", K_QUANTS + QUANTISABLE[1:], ids=lambda t: t.name)
def test_random_blocks_with_valid_scales_match_gguf_py(qtype):
    rng = np.random.default_rng(100 + int(qtype))
    block_size = GGML_BLOCK_SIZES[int(qtype)][0]
    shape = (6, 3 * max(block_size, 256))
    raw = random_blocks(rng, qtype, shape[0] * shape[1] // block_size, finite=True)
    ours = assert_bit_exact(raw, qtype, shape)
    assert np.isfinite(ours).all() and np.unique(ours).size > 100


@pytest.mark.parametrize("qtype", K_QUANTS + QUANTISABLE + [Q.F16], ids=lambda t: t.name)
def test_fully_random_bytes_incl_nan_and_inf_scales_match_gguf_py(qtype):
    rng = np.random.default_rng(200 + int(qtype))
    block_size = GGML_BLOCK_SIZES[int(qtype)][0]
    shape = (64, max(block_size, 256))
    raw = random_blocks(rng, qtype, shape[0] * shape[1] // block_size, finite=False)
    with np.errstate(invalid="ignore", over="ignore"):
        assert_bit_exact(raw, qtype, shape)


def test_f32_f16_bf16_special_values():
    values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.5, -2.25, 65504.0], dtype=np.float32)
    assert np.array_equal(bits(dequantize(values.view(np.uint8), 0, (8,))), bits(values))
    halves = values.astype(np.float16)
    assert_bit_exact(halves.view(np.uint8), Q.F16, (8,))
    assert_bit_exact(gguf.quants.quantize(values, Q.BF16), Q.BF16, (8,))
    assert np.signbit(dequantize(halves.view(np.uint8), 1, (8,))[1])     # -0.0 stays -0.0


def test_large_tensor_is_decoded_in_chunks_without_seams():
    rng = np.random.default_rng(3)
    shape = (40, 4096)                                        # 81920 Q4_0 blocks > CHUNK_BLOCKS
    raw = gguf.quants.quantize(rng.normal(size=shape).astype(np.float32), Q.Q4_0)
    assert_bit_exact(raw, Q.Q4_0, shape)


def test_type_tables_match_gguf_py():
    for qtype in Q:
        assert GGML_TYPE_NAMES[int(qtype)] == qtype.name
        assert GGML_BLOCK_SIZES[int(qtype)] == gguf.GGML_QUANT_SIZES[qtype]
    assert type_nbytes(int(Q.Q4_K), 512) == 288
    assert type_nbytes(int(Q.F16), 3) == 6
    assert {GGML_TYPE_NAMES[t] for t in SUPPORTED_TYPES} == {
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}


def test_unsupported_and_bad_input():
    with pytest.raises(UnsupportedTensorType, match=r"ggml type 16 \(IQ2_XXS\) cannot be dequantised"):
        dequantize(np.zeros(66, np.uint8), 16, (256,))
    with pytest.raises(UnsupportedTensorType, match=r"ggml type 99 \(unknown\)"):
        type_nbytes(99, 10)
    with pytest.raises(QuantError, match="row length 48 is not a multiple of the Q8_0 block size 32"):
        dequantize(np.zeros(51, np.uint8), 8, (1, 48))
    with pytest.raises(QuantError, match=r"33 bytes for \(1, 32\) Q8_0, expected 34"):
        dequantize(np.zeros(33, np.uint8), 8, (1, 32))
    with pytest.raises(QuantError, match="not whole blocks"):
        type_nbytes(int(Q.Q4_K), 100)
