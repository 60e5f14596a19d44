"""engine/gguf.py against gguf-py's GGUFReader on files gguf-py writes; broken files fail clearly."""
import struct

import gguf
import numpy as np
import pytest

from tests.rig.llama import make_tiny_model, tiny_gguf_tool
from velollmd.engine.gguf import GGUFError, read_gguf

Q = gguf.GGMLQuantizationType


def scalar_metadata() -> dict:
    return {
        "test.u8": (200, gguf.GGUFValueType.UINT8), "test.i8": (-100, gguf.GGUFValueType.INT8),
        "test.u16": (60000, gguf.GGUFValueType.UINT16), "test.i16": (-30000, gguf.GGUFValueType.INT16),
        "test.u32": (4_000_000_000, gguf.GGUFValueType.UINT32),
        "test.i32": (-2_000_000_000, gguf.GGUFValueType.INT32),
        "test.u64": (2**63 + 5, gguf.GGUFValueType.UINT64), "test.i64": (-(2**62), gguf.GGUFValueType.INT64),
        "test.f32": (0.1, gguf.GGUFValueType.FLOAT32), "test.f64": (0.1, gguf.GGUFValueType.FLOAT64),
        "test.bool": (True, gguf.GGUFValueType.BOOL),
        "test.str": ("h\u00e9llo \u2581\u4e16", gguf.GGUFValueType.STRING),
    }


def array_metadata() -> dict:
    return {
        "test.arr_i32": ([1, -2, 3], gguf.GGUFValueType.INT32),
        "test.arr_f32": ([0.5, -1.25, 3e-8], gguf.GGUFValueType.FLOAT32),
        "test.arr_u8": ([0, 255, 7], gguf.GGUFValueType.UINT8),
        "test.arr_bool": ([True, False, True], gguf.GGUFValueType.BOOL),
        "test.arr_f64": ([1e300, -0.0], gguf.GGUFValueType.FLOAT64),
        "test.arr_str": (["a", "", "<0x0A>", "\u2581the"], gguf.GGUFValueType.STRING),
    }


def sample_tensors(rng: np.random.Generator) -> list[tuple[str, np.ndarray, Q | None]]:
    """(name, array, raw_dtype): raw_dtype set when array holds already-quantised bytes."""
    q4k = rng.integers(0, 256, size=(3, 2 * 144), dtype=np.uint8)   # (rows, 2 blocks of Q4_K)
    q4k[:, 0:2] = np.float16(0.01).reshape(1).view(np.uint8)         # finite d
    q4k[:, 144:146] = np.float16(0.02).reshape(1).view(np.uint8)
    return [
        ("norm.weight", rng.normal(size=7).astype(np.float32), None),
        ("f16.weight", rng.normal(size=(5, 64)).astype(np.float16), None),
        ("q8.weight", gguf.quants.quantize(rng.normal(size=(4, 64)).astype(np.float32), Q.Q8_0), Q.Q8_0),
        ("q4k.weight", q4k, Q.Q4_K),
        ("cube.weight", rng.normal(size=(2, 3, 32)).astype(np.float32), None),
        ("ids", np.arange(10, dtype=np.int32), None),
    ]


def write_gguf(path, *, alignment: int | None = None, seed: int = 0):
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype) in scalar_metadata().items():
        writer.add_key_value(key, value, vtype)
    for key, (values, sub_type) in array_metadata().items():
        writer.add_key_value(key, values, gguf.GGUFValueType.ARRAY, sub_type=sub_type)
    for name, array, raw_dtype in sample_tensors(np.random.default_rng(seed)):
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def as_plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def assert_matches_gguf_py(path):
    """Every metadata value and tensor info equals what gguf-py's GGUFReader reads."""
    reference = gguf.GGUFReader(path)
    with read_gguf(path) as ours:
        fields = {k: f for k, f in reference.fields.items() if not k.startswith("GGUF.")}
        assert list(ours.metadata) == list(fields)
        for key, field in fields.items():
            assert as_plain(ours.metadata[key]) == field.contents(), key
        assert list(ours.tensors) == [t.name for t in reference.tensors]
        for ref in reference.tensors:
            info = ours.tensors[ref.name]
            assert info.shape == tuple(reversed(ref.shape.tolist()))
            assert info.ggml_type == int(ref.tensor_type)
            assert (info.offset, info.nbytes) == (ref.data_offset, ref.n_bytes)
            assert ours.raw(ref.name).tobytes() == ref.data.tobytes()
        return ours.version, ours.alignment


def test_every_value_type_and_tensor_match_gguf_py(tmp_path):
    assert assert_matches_gguf_py(write_gguf(tmp_path / "a.gguf")) == (3, 32)


def test_custom_alignment(tmp_path):
    path = write_gguf(tmp_path / "a.gguf", alignment=64)
    assert assert_matches_gguf_py(path) == (3, 64)
    with read_gguf(path) as f:
        assert all(info.offset % 64 == 0 for info in f.tensors.values())


def test_python_types_and_numpy_order(tmp_path):
    with read_gguf(write_gguf(tmp_path / "a.gguf")) as f:
        meta = f.metadata
        assert meta["test.u64"] == 2**63 + 5 and meta["test.i8"] == -100
        assert meta["test.bool"] is True and meta["test.str"] == "h\u00e9llo \u2581\u4e16"
        assert meta["test.arr_str"] == ["a", "", "<0x0A>", "\u2581the"]
        assert meta["test.arr_i32"].dtype == np.int32 and meta["test.arr_f32"].dtype == np.float32
        assert meta["test.arr_bool"].dtype == np.bool_
        assert f.tensors["cube.weight"].shape == (2, 3, 32)
        assert f.tensors["q4k.weight"].shape == (3, 512)      # (rows, elements), not bytes
        raw = f.raw("f16.weight")                             # (nbytes,) uint8
        assert raw.dtype == np.uint8 and not raw.flags.writeable
        expected = sample_tensors(np.random.default_rng(0))[1][1].astype(np.float32)
        assert np.array_equal(f.dequantize("f16.weight"), expected)


def test_tiny_model_matches_gguf_py(tmp_path):
    path = make_tiny_model(tmp_path / "tiny.gguf", dtype="f16")
    assert_matches_gguf_py(path)
    with read_gguf(path) as f:
        assert f.architecture == "llama"
        assert f.tensors["blk.0.attn_k.weight"].shape == (64, 128)       # (out, in)
        assert len(f.metadata["tokenizer.ggml.tokens"]) == f.metadata["llama.vocab_size"]


def test_raw_view_outlives_close(tmp_path):
    f = read_gguf(write_gguf(tmp_path / "a.gguf"))
    raw = f.raw("ids")
    f.close()
    assert raw.view(np.int32).tolist() == list(range(10))
    with pytest.raises(GGUFError, match="closed"):
        f.raw("ids")
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        read_gguf(tmp_path / "a.gguf").raw("nope")


# --- broken files -------------------------------------------------------------------------

def test_bad_magic_and_short_files(tmp_path):
    for content in (b"", b"GG", b"GGML" + bytes(40), b"\x00" * 100):
        path = tmp_path / "bad.gguf"
        path.write_bytes(content)
        with pytest.raises(GGUFError, match="not a GGUF file") as err:
            read_gguf(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("version, hint", [(1, ""), (4, ""), (3 << 24, "big-endian")])
def test_unsupported_version(tmp_path, version, hint):
    path = tmp_path / "v.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, 0, 0))
    with pytest.raises(GGUFError, match=f"unsupported GGUF version {version}.*{hint}"):
        read_gguf(path)


def test_every_truncation_before_the_last_tensor_fails(tmp_path):
    data = write_gguf(tmp_path / "a.gguf").read_bytes()
    with read_gguf(tmp_path / "a.gguf") as f:
        data_end = max(info.offset + info.nbytes for info in f.tensors.values())
        header_end = f.data_offset
    cuts = list(range(4, header_end, 7)) + list(range(header_end, data_end, 97)) + [data_end - 1]
    for cut in cuts:
        path = tmp_path / "cut.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match="truncated file") as err:
            read_gguf(path)
        assert str(path) in str(err.value)
    with pytest.raises(GGUFError, match="truncated file: tensor 'ids' data"):
        (tmp_path / "cut.gguf").write_bytes(data[:data_end - 1])
        read_gguf(tmp_path / "cut.gguf")


def patch_after(data: bytes, marker: bytes, skip: int, value: int) -> bytes:
    """Overwrite the uint32 at `skip` bytes after the end of the first `marker`."""
    at = data.index(marker) + len(marker) + skip
    return data[:at] + struct.pack("<I", value) + data[at + 4:]


def test_bad_value_type_code(tmp_path):
    data = write_gguf(tmp_path / "a.gguf").read_bytes()
    path = tmp_path / "bad.gguf"
    path.write_bytes(patch_after(data, b"test.u16", 0, 13))
    with pytest.raises(GGUFError, match="metadata 'test.u16': bad value type code 13"):
        read_gguf(path)
    path.write_bytes(patch_after(data, b"test.arr_i32", 4, 99))     # the array's item type
    with pytest.raises(GGUFError, match="metadata 'test.arr_i32': bad array item type code 99"):
        read_gguf(path)


def test_bad_tensor_type_code_and_dims(tmp_path):
    data = write_gguf(tmp_path / "a.gguf").read_bytes()
    path = tmp_path / "bad.gguf"
    path.write_bytes(patch_after(data, b"norm.weight", 4 + 8, 77))  # after n_dims and one dim
    with pytest.raises(GGUFError, match="tensor 'norm.weight': bad ggml type code 77"):
        read_gguf(path)
    path.write_bytes(patch_after(data, b"norm.weight", 0, 9))       # n_dims
    with pytest.raises(GGUFError, match="tensor 'norm.weight': 9 dimensions"):
        read_gguf(path)


def test_random_garbage_after_a_valid_magic_fails_cleanly(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "garbage.gguf"
    for _ in range(50):
        body = rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        counts = struct.pack("<IQQ", 3, int(rng.integers(0, 4)), int(rng.integers(0, 4)))
        path.write_bytes(b"GGUF" + counts + body)
        try:
            read_gguf(path).close()
        except GGUFError as err:
            assert str(path) in str(err)


@pytest.mark.parametrize("arch, dtype", [("qwen2", "f16"), ("qwen3", "q4_k"), ("llama", "q8_0"),
                                         ("llama", "q4_0"), ("llama", "q6_k"), ("llama", "f32")])
def test_tiny_variants_read_and_dequantise_like_gguf_py(tmp_path, arch, dtype):
    path = tiny_gguf_tool().build_tiny_gguf(tmp_path / "m.gguf", dtype=dtype, arch=arch)
    assert_matches_gguf_py(path)
    reference = {t.name: t for t in gguf.GGUFReader(path).tensors}
    with read_gguf(path) as f:
        assert f.architecture == arch
        for name, info in f.tensors.items():
            expected = gguf.quants.dequantize(reference[name].data, reference[name].tensor_type)
            assert np.array_equal(f.dequantize(name), expected.reshape(info.shape)), name
