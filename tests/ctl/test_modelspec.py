"""GGUF headers (ctl/gguf_header.py) and the model specs built from them, from /api/show and from size labels."""
import struct

import pytest

from tests.ctl.ggufs import write_gguf
from velollmd.ctl import modelspec
from velollmd.ctl.gguf_header import ArrayInfo, GGUFError, read_gguf_header


def test_reads_llama_metadata(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", vocab=1234)
    header = read_gguf_header(path)
    assert header.version == 3 and header.tensor_count == 1
    meta = header.metadata
    assert (meta["general.architecture"], meta["llama.block_count"], meta["llama.attention.head_count_kv"]) == ("llama", 32, 8)
    assert meta["llama.embedding_length"] == 4096 and meta["llama.context_length"] == 131072
    assert meta["tokenizer.ggml.tokens"] == ArrayInfo(8, 1234)
    assert header.file_size == (tmp_path / "m.gguf").stat().st_size


def test_model_spec_from_gguf(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", name="Llama-3.1-8B", pad_bytes=3 * 1024 * 1024)
    spec = modelspec.from_gguf(path)
    assert (spec.name, spec.num_layers, spec.num_kv_heads, spec.head_dim) == ("Llama-3.1-8B", 32, 8, 128)
    assert (spec.quant, spec.context_length, spec.weights_mib, spec.path) == ("Q4_K_M", 131072, 3, path)
    assert spec.vocab_key == ("gpt2", 1000, 1, 2)


@pytest.mark.parametrize("data, message", [
    (b"GGML" + b"\0" * 20, "bad magic"),
    (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "version 1"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 5), "truncated"),
])
def test_rejects_bad_files(tmp_path, data, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=message):
        read_gguf_header(str(path))


def test_ollama_show_uses_same_keys():
    show = {"details": {"family": "llama", "parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
            "model_info": {"general.architecture": "llama", "general.parameter_count": 8030261248,
                           "llama.block_count": 32, "llama.attention.head_count": 32,
                           "llama.attention.head_count_kv": 8, "llama.embedding_length": 4096,
                           "llama.context_length": 131072}}
    spec = modelspec.from_ollama_show(show, "llama3.1:8b")
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.quant) == (32, 8, 128, "Q4_K_M")
    assert spec.weights_mib == modelspec.weights_mib(8.030261248, "Q4_K_M")


def test_size_labels():
    assert modelspec.parse_size_label("8B") == 8.0 and modelspec.parse_size_label("500M") == 0.5
    spec = modelspec.from_size("70B", "q8_0")
    assert (spec.num_layers, spec.quant, spec.weights_mib) == (80, "Q8_0", 70929)
    with pytest.raises(ValueError):
        modelspec.from_size("big")
    with pytest.raises(ValueError):
        modelspec.from_size("8B", "Q9_X")
