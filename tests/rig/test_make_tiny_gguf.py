"""tools/make_tiny_gguf.py: deterministic bytes, atomic writes, a vocab SPM can use."""
import json
import os
import urllib.request

import gguf

from tests.rig.llama import make_tiny_model, tiny_gguf_tool, token_id


def test_same_seed_gives_identical_bytes(tmp_path):
    first = make_tiny_model(tmp_path / "a.gguf", seed=7)
    second = make_tiny_model(tmp_path / "b.gguf", seed=7)
    assert first.read_bytes() == second.read_bytes()


def test_other_seed_changes_weights(tmp_path):
    first = make_tiny_model(tmp_path / "a.gguf", seed=1).read_bytes()
    second = make_tiny_model(tmp_path / "b.gguf", seed=2).read_bytes()
    assert len(first) == len(second)
    assert first != second


def test_rewrite_replaces_by_rename_and_leaves_no_temp_file(tmp_path):
    path = make_tiny_model(tmp_path / "m.gguf")
    inode = os.stat(path).st_ino
    make_tiny_model(path, seed=3)
    assert os.stat(path).st_ino != inode      # a new file: a server's mapping stays intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_metadata_and_shapes(tmp_path):
    reader = gguf.GGUFReader(make_tiny_model(tmp_path / "m.gguf", dtype="f32"))
    fields = {name: field for name, field in reader.fields.items()}
    assert fields["llama.block_count"].parts[-1][0] == 2
    assert fields["llama.attention.head_count"].parts[-1][0] == 4
    assert fields["llama.attention.head_count_kv"].parts[-1][0] == 2
    assert bool(fields["tokenizer.ggml.add_space_prefix"].parts[-1][0]) is False
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert "<tool_call>" in template and "<tools>" in template and "<tool_response>" in template
    tensors = {t.name: t for t in reader.tensors}
    assert tuple(tensors["blk.0.attn_k.weight"].shape) == (128, 64)   # ggml order: (in, out)
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_vocab_layout():
    tool = tiny_gguf_tool()
    tokens, types, scores = tool.tiny_vocab()
    assert len(tokens) == len(set(tokens)) == tool.VOCAB_SIZE
    assert types.count(int(gguf.TokenType.BYTE)) == 256
    assert types[token_id("<tool_call>")] == gguf.TokenType.USER_DEFINED
    assert types[token_id("<|im_end|>")] == gguf.TokenType.CONTROL
    word = "\u2581sentence"
    assert all(word[:end] in tokens for end in range(2, len(word) + 1))   # SPM merges reach it
    assert scores[token_id(word)] == len(word)


def test_loads_in_real_llama_server(llama_server, tiny_model_path):
    with urllib.request.urlopen(llama_server.url + "/props") as resp:
        props = json.load(resp)
    assert props["model_path"] == str(tiny_model_path)
    assert props["total_slots"] == 4
    with urllib.request.urlopen(llama_server.url + "/v1/models") as resp:
        assert [m["id"] for m in json.load(resp)["data"]] == ["tiny"]
