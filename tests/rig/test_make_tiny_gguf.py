"""tools/make_tiny_gguf.py: deterministic bytes, atomic writes, a vocab SPM can use."""
import json
import os
import urllib.request

import gguf
import numpy as np
import pytest

from tests.rig.llama import force_tool_call_bias, make_tiny_model, tiny_gguf_tool, token_id


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


# --- variants: arch, quantised dtypes (shape "small" is checked by hand: too big for make test) ---

def build_variant(tmp_path, arch="llama", dtype="f16", seed=0):
    out = tmp_path / f"{arch}-{dtype}.gguf"
    return tiny_gguf_tool().build_tiny_gguf(out, seed=seed, dtype=dtype, arch=arch)


def tensor_types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def test_default_arch_and_shape_keep_the_bytes(tmp_path):
    tool = tiny_gguf_tool()
    explicit = tool.build_tiny_gguf(tmp_path / "a.gguf", seed=5, dtype="f16", arch="llama", shape="tiny")
    assert explicit.read_bytes() == make_tiny_model(tmp_path / "b.gguf", seed=5).read_bytes()


def test_qwen2_has_qkv_biases_and_qwen3_qk_norms(tmp_path):
    qwen2 = gguf.GGUFReader(build_variant(tmp_path, "qwen2"))
    assert qwen2.fields["general.architecture"].contents() == "qwen2"
    assert qwen2.fields["qwen2.block_count"].contents() == 2
    shapes = {t.name: tuple(t.shape.tolist()) for t in qwen2.tensors}
    biases = [shapes[f"blk.1.attn_{x}.bias"] for x in "qkv"]
    assert biases == [(128,), (64,), (64,)]
    qwen3 = gguf.GGUFReader(build_variant(tmp_path, "qwen3"))
    assert qwen3.fields["qwen3.attention.key_length"].contents() == 32
    names = {t.name for t in qwen3.tensors}
    assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= names
    assert not any(name.endswith(".bias") for name in names)
    types = tensor_types(tmp_path / "qwen3-f16.gguf")
    assert types["blk.0.attn_q_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == "F16"


@pytest.mark.parametrize("dtype, inner, ffn_down", [
    ("q8_0", "Q8_0", "Q8_0"), ("q4_0", "Q4_0", "Q4_0"), ("q4_k", "Q5_0", "Q4_K"), ("q5_k", "Q5_1", "Q5_K"),
    ("q6_k", "Q8_0", "Q6_K")])
def test_quantised_types_per_tensor(tmp_path, dtype, inner, ffn_down):
    types = tensor_types(build_variant(tmp_path, dtype=dtype))
    assert types["token_embd.weight"] == types["output.weight"] == "Q8_0"    # the logit-bias tricks
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == inner                              # rows of 128
    assert types["blk.1.ffn_down.weight"] == ffn_down                         # rows of 256


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quantisers_round_trip_through_gguf_py(qtype):
    tool = tiny_gguf_tool()
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 512)).astype(np.float32)   # (rows, cols)
    values[1] = 0.0
    values[2, :64] = 0.0
    quantise = {"Q4_K": tool.quantize_q4_k, "Q5_K": tool.quantize_q5_k, "Q6_K": tool.quantize_q6_k}[qtype]
    decoded = gguf.quants.dequantize(quantise(values), gguf.GGMLQuantizationType[qtype])
    step = {"Q4_K": 0.42, "Q5_K": 0.21, "Q6_K": 0.13}[qtype]   # a 4-, 5- or 6-bit step on N(0, 1)
    assert np.abs(decoded - values).max() < step / 2 + 1e-3
    assert not decoded[1].any()                              # zero rows stay exactly zero
    assert qtype == "Q4_K" or not decoded[2, :64].any()      # Q6_K is symmetric: zeros exact


def chat(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp)


def test_reranker_has_rank_pooling_two_labels_and_a_head(tmp_path):
    """What llama.cpp's qwen3 loader reads for a reranker; the other tensors are qwen3's own."""
    tool = tiny_gguf_tool()
    path = tool.build_tiny_gguf(tmp_path / "rr.gguf", arch="qwen3", reranker=True)
    reranker = gguf.GGUFReader(path)
    assert reranker.fields["qwen3.pooling_type"].contents() == int(gguf.PoolingType.RANK)
    assert reranker.fields["qwen3.classifier.output_labels"].contents() == list(tool.RERANK_LABELS)
    tensors = {t.name: t for t in reranker.tensors}
    assert tuple(tensors["cls.output.weight"].shape.tolist()) == (128, 2)      # ggml order: (n_embd, labels)
    plain = {t.name: t for t in gguf.GGUFReader(build_variant(tmp_path, "qwen3")).tensors}
    assert all(np.array_equal(plain[name].data, tensors[name].data) for name in plain)
    with pytest.raises(ValueError, match="qwen3"):
        tool.build_tiny_gguf(tmp_path / "no.gguf", reranker=True)


def test_gemma3_has_qk_norms_post_norms_and_a_sliding_window(tmp_path):
    tool = tiny_gguf_tool()
    gemma3 = gguf.GGUFReader(build_variant(tmp_path, "gemma3"))
    assert gemma3.fields["gemma3.attention.sliding_window"].contents() == tool.GEMMA3_SLIDING_WINDOW
    names = {t.name for t in gemma3.tensors}
    assert {"blk.1.attn_q_norm.weight", "blk.1.post_attention_norm.weight", "blk.1.post_ffw_norm.weight"} <= names


def test_gemma2_has_post_norms_a_window_soft_caps_and_no_output_weight(tmp_path):
    """gemma2's file as llama.cpp loads it: no output.weight (its LM head is token_embd) and no
    Q/K norms; its logits are compared with llama-server in tests/engine/test_model.py."""
    tool = tiny_gguf_tool()
    gemma2 = gguf.GGUFReader(build_variant(tmp_path, "gemma2"))
    assert gemma2.fields["gemma2.attention.sliding_window"].contents() == tool.GEMMA2_SLIDING_WINDOW
    caps = (gemma2.fields["gemma2.attn_logit_softcapping"].contents(),
            gemma2.fields["gemma2.final_logit_softcapping"].contents())
    assert caps == tool.GEMMA2_SOFTCAPS
    names = {t.name for t in gemma2.tensors}
    assert {"blk.1.post_attention_norm.weight", "blk.1.post_ffw_norm.weight", "token_embd.weight"} <= names
    assert not names & {"output.weight", "blk.0.attn_q_norm.weight"}


def test_phi3_fuses_qkv_and_gate_up_and_carries_longrope(tmp_path):
    """phi3's file as the converter writes it: Q/K/V in attn_qkv, gate then up in one ffn_up of
    2 n_ff rows (the same draws as llama's: the gate half is llama's ffn_gate), LongRoPE's two
    factor sets with the converter's attention factor, and a window llama.cpp ignores."""
    tool = tiny_gguf_tool()
    phi3 = gguf.GGUFReader(build_variant(tmp_path, "phi3"))
    llama = {t.name: t for t in gguf.GGUFReader(build_variant(tmp_path, "llama", dtype="f32")).tensors}
    assert phi3.fields["phi3.rope.scaling.original_context_length"].contents() == tool.CONTEXT_LENGTH // 2
    assert phi3.fields["phi3.rope.scaling.attn_factor"].contents() == pytest.approx(np.sqrt(1 + np.log(2) / np.log(4096)))
    assert phi3.fields["phi3.attention.sliding_window"].contents() == tool.PHI3_SLIDING_WINDOW
    tensors = {t.name: t for t in phi3.tensors}
    assert not set(tensors) & {"blk.0.attn_q.weight", "blk.0.ffn_gate.weight"}
    n_ff, n_embd = tool.N_FF, tool.N_EMBD
    up = gguf.quants.dequantize(tensors["blk.1.ffn_up.weight"].data, tensors["blk.1.ffn_up.weight"].tensor_type)
    assert up.shape == (2 * n_ff, n_embd)
    gate = gguf.quants.dequantize(llama["blk.1.ffn_gate.weight"].data, llama["blk.1.ffn_gate.weight"].tensor_type)
    np.testing.assert_allclose(up[:n_ff], gate, atol=1e-3)     # f16 against f32 draws
    assert tensors["rope_factors_long.weight"].data.shape == (tool.N_EMBD // tool.N_HEAD // 2,)


@pytest.mark.parametrize("arch, dtype", [("qwen2", "f16"), ("qwen3", "f16"), ("gemma3", "f16"), ("llama", "q8_0"),
                                         ("llama", "q4_k"), ("qwen3", "q4_k"), ("llama", "q5_k"), ("phi3", "f16")])
def test_variant_answers_in_real_llama_server(tmp_path, llama_server_factory, arch, dtype):
    server = llama_server_factory(build_variant(tmp_path, arch, dtype), parallel=1)
    reply = chat(server.url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6})
    assert reply["usage"]["completion_tokens"] == 6          # bias tricks: no early end token
    assert reply["choices"][0]["finish_reason"] == "length"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    reply = chat(server.url, {"messages": [{"role": "user", "content": "weather?"}], "max_tokens": 64,
                              "tools": tools, "logit_bias": force_tool_call_bias()})
    assert reply["choices"][0]["finish_reason"] == "tool_calls"
    call = reply["choices"][0]["message"]["tool_calls"][0]["function"]
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "paris"})
