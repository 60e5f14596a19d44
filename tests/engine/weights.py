"""Test helper: GGUF files read with the `gguf` package (test-only), and small random models of
every supported architecture written with it (the tiny vocab of tools/make_tiny_gguf.py, so
the real llama-server loads them).

    metadata_of(path) -> dict of plain Python values
    tensor_of(path)   -> get_tensor(name) -> float32 array, (out, in) for matrices
    tensor_types_of(path) -> {name: ggml type} (Model's tensor_types)
    write_random_gguf(path, arch="qwen2", seed=0, ...) -> path
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from tests.rig.llama import tiny_gguf_tool


@functools.cache
def _reader(path: str) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)


def metadata_of(path: str | os.PathLike) -> dict:
    """Every key-value of the file (not the GGUF.* header fields) as str / int / float / list."""
    reader = _reader(str(path))
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def tensor_names_of(path: str | os.PathLike) -> list[str]:
    return [tensor.name for tensor in _reader(str(path)).tensors]


def tensor_types_of(path: str | os.PathLike) -> dict[str, int]:
    return {tensor.name: int(tensor.tensor_type) for tensor in _reader(str(path)).tensors}


def tensor_of(path: str | os.PathLike) -> Callable[[str], np.ndarray]:
    """get_tensor(name): the tensor dequantised to float32, in numpy (out, in) order."""
    tensors = {tensor.name: tensor for tensor in _reader(str(path)).tensors}

    def get_tensor(name: str) -> np.ndarray:
        tensor = tensors[name]
        return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    return get_tensor


def random_tensors(arch: str, seed: int = 0, *, n_vocab: int = 1024, n_embd: int = 64, n_layer: int = 2,
                   n_head: int = 4, n_head_kv: int = 2, head_dim: int | None = None, n_ff: int = 128,
                   tied: bool = False, rope_freqs: bool = False, longrope: bool = False) -> dict[str, np.ndarray]:
    """Weights scaled so that attention is sharp and logits spread (a wrong RoPE or mask shows).

    phi3: the same draws, Q/K/V fused into attn_qkv and gate/up into ffn_up (gate first);
    longrope: LongRoPE's long and short factor sets (n_rot/2 each, far apart)."""
    rng = np.random.default_rng(seed)
    head_dim = head_dim or n_embd // n_head

    def normal(*shape: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    def norm_weight(dim: int) -> np.ndarray:
        return (1.0 + normal(dim, std=0.1)).astype(np.float32)

    tied = tied or arch == "gemma2"   # llama.cpp loads no output.weight for gemma2 (and refuses a file with one)
    # tied: token_embd is also the LM head, scaled like output.weight (logits of std ~3); gemma2's
    # rows also enter the residual scaled by sqrt(n_embd): at that std each token's own row would
    # dominate its final hidden state (the next token the last one again, p ~ 1), so 1 / sqrt(n_embd)
    embd_std = (1.0 if arch == "gemma2" else 3.0) / np.sqrt(n_embd) if tied else 1.0
    tensors = {"token_embd.weight": normal(n_vocab, n_embd, std=embd_std)}
    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    for layer in range(n_layer):
        p = f"blk.{layer}."
        tensors.update({
            p + "attn_norm.weight": norm_weight(n_embd),
            p + "attn_q.weight": normal(q_dim, n_embd, std=1.5 / np.sqrt(n_embd)),
            p + "attn_k.weight": normal(kv_dim, n_embd, std=1.5 / np.sqrt(n_embd)),
            p + "attn_v.weight": normal(kv_dim, n_embd, std=1.0 / np.sqrt(n_embd)),
            p + "attn_output.weight": normal(n_embd, q_dim, std=1.0 / np.sqrt(q_dim)),
            p + "ffn_norm.weight": norm_weight(n_embd),
            p + "ffn_gate.weight": normal(n_ff, n_embd, std=1.0 / np.sqrt(n_embd)),
            p + "ffn_up.weight": normal(n_ff, n_embd, std=1.0 / np.sqrt(n_embd)),
            p + "ffn_down.weight": normal(n_embd, n_ff, std=0.7 / np.sqrt(n_ff)),
        })
        if arch == "qwen2":
            for name, dim in (("attn_q.bias", q_dim), ("attn_k.bias", kv_dim), ("attn_v.bias", kv_dim)):
                tensors[p + name] = normal(dim, std=0.3)
        if arch in ("qwen3", "gemma3"):
            tensors[p + "attn_q_norm.weight"] = norm_weight(head_dim)
            tensors[p + "attn_k_norm.weight"] = norm_weight(head_dim)
        if arch in ("gemma2", "gemma3"):
            tensors[p + "post_attention_norm.weight"] = norm_weight(n_embd)
            tensors[p + "post_ffw_norm.weight"] = norm_weight(n_embd)
    tensors["output_norm.weight"] = norm_weight(n_embd)
    if not tied:
        tensors["output.weight"] = normal(n_vocab, n_embd, std=3.0 / np.sqrt(n_embd))
    if rope_freqs:
        tensors["rope_freqs.weight"] = np.geomspace(1.0, 8.0, head_dim // 2).astype(np.float32)
    if longrope:
        tensors["rope_factors_long.weight"] = np.geomspace(1.0, 16.0, head_dim // 2).astype(np.float32)
        tensors["rope_factors_short.weight"] = np.geomspace(1.0, 1.5, head_dim // 2).astype(np.float32)
    return fuse_phi3(tensors, n_layer) if arch == "phi3" else tensors


def fuse_phi3(tensors: dict[str, np.ndarray], n_layer: int) -> dict[str, np.ndarray]:
    """tensors with each layer's Q/K/V as one attn_qkv.weight and gate/up as one ffn_up.weight
    of 2 n_ff rows (the gate first), as phi3's GGUF holds them."""
    for layer in range(n_layer):
        p = f"blk.{layer}."
        tensors[p + "attn_qkv.weight"] = np.concatenate([tensors.pop(p + f"attn_{n}.weight") for n in "qkv"])
        gate = tensors.pop(p + "ffn_gate.weight")
        tensors[p + "ffn_up.weight"] = np.concatenate([gate, tensors[p + "ffn_up.weight"]])
    return tensors


def unfused_phi3(get_tensor, config) -> object:
    """get_tensor for phi3's fused file that also answers the separate Q/K/V and gate/up names
    (slices of attn_qkv and ffn_up), so an oracle reads every architecture alike."""
    q_dim, kv_dim, n_ff = config.n_head * config.head_dim, config.n_head_kv * config.head_dim, config.n_ff
    parts = {"attn_q.weight": ("attn_qkv.weight", 0, q_dim), "attn_k.weight": ("attn_qkv.weight", q_dim, kv_dim),
             "attn_v.weight": ("attn_qkv.weight", q_dim + kv_dim, kv_dim),
             "ffn_gate.weight": ("ffn_up.weight", 0, n_ff), "ffn_up.weight": ("ffn_up.weight", n_ff, n_ff)}

    def get(name: str) -> np.ndarray:
        layer, _, short = name.removeprefix("blk.").partition(".")
        if not name.startswith("blk.") or short not in parts:
            return get_tensor(name)
        fused, start, rows = parts[short]
        return get_tensor(f"blk.{layer}.{fused}")[start:start + rows]
    return get


def random_metadata(arch: str, tensors: dict[str, np.ndarray], *, n_head: int = 4, n_head_kv: int = 2,
                    head_dim: int | None = None, context_length: int = 4096, freq_base: float = 10000.0,
                    rope_scale: float | None = None, sliding_window: int = 0, attn_softcap: float = 0.0,
                    final_softcap: float = 0.0, original_context: int = 0, attn_factor: float = 0.0) -> dict:
    """The metadata keys a loader reads, matching tensors (as metadata_of would return them);
    the soft-capping keys (gemma2's) and LongRoPE's (phi3's) only when given."""
    n_vocab, n_embd = tensors["token_embd.weight"].shape
    n_layer = sum(1 for name in tensors if name.endswith("attn_norm.weight"))
    head_dim = head_dim or n_embd // n_head
    meta = {"general.architecture": arch, f"{arch}.context_length": context_length,
            f"{arch}.embedding_length": n_embd, f"{arch}.block_count": n_layer,
            f"{arch}.feed_forward_length": tensors["blk.0.ffn_down.weight"].shape[1],
            f"{arch}.attention.head_count": n_head, f"{arch}.attention.head_count_kv": n_head_kv,
            f"{arch}.attention.key_length": head_dim, f"{arch}.attention.value_length": head_dim,
            f"{arch}.rope.dimension_count": head_dim, f"{arch}.rope.freq_base": freq_base,
            f"{arch}.attention.layer_norm_rms_epsilon": 1e-6, f"{arch}.vocab_size": n_vocab}
    if sliding_window:
        meta[f"{arch}.attention.sliding_window"] = sliding_window
    if attn_softcap:
        meta[f"{arch}.attn_logit_softcapping"] = float(attn_softcap)
    if final_softcap:
        meta[f"{arch}.final_logit_softcapping"] = float(final_softcap)
    if original_context:
        meta[f"{arch}.rope.scaling.original_context_length"] = original_context
    if attn_factor:
        meta[f"{arch}.rope.scaling.attn_factor"] = float(attn_factor)
    if rope_scale:
        meta[f"{arch}.rope.scaling.type"] = "linear"
        meta[f"{arch}.rope.scaling.factor"] = rope_scale
    return meta


def write_random_gguf(path: str | os.PathLike, arch: str = "qwen2", seed: int = 0, *, tied: bool = False,
                      head_dim: int | None = None, rope_freqs: bool = False,
                      rope_scale: float | None = None, dtype: str = "f32", vocab: str = "spm",
                      n_embd: int = 64, n_ff: int = 128, chat_template: str | None = None,
                      add_bos: bool | None = None, rounded_as: str | None = None, n_layer: int = 2,
                      sliding_window: int = 0, freq_base: float = 10000.0, attn_softcap: float = 0.0,
                      final_softcap: float = 0.0, longrope: bool = False, original_context: int = 0,
                      attn_factor: float = 0.0) -> Path:
    """A GGUF of random_tensors(...) with a tiny vocab of tools/make_tiny_gguf.py (1024 tokens).

    dtype: as make_tiny_gguf's (f32, f16, q8_0, q4_k...), with its rules: 1-D tensors stay F32,
    token_embd/output are Q8_0 in quantised files, rows that are not whole blocks fall back.
    vocab: "spm" or "bpe[:pre]"; chat_template / add_bos override the vocab's defaults.
    rounded_as: weights quantised to that dtype and back first (with dtype "f32": the same
    weights as the `rounded_as` file, which llama.cpp then multiplies without quantised kernels).
    """
    tool = tiny_gguf_tool()
    tensors = random_tensors(arch, seed, head_dim=head_dim, tied=tied, rope_freqs=rope_freqs,
                             n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, longrope=longrope)
    meta = random_metadata(arch, tensors, head_dim=head_dim, rope_scale=rope_scale,
                           sliding_window=sliding_window, freq_base=freq_base, attn_softcap=attn_softcap,
                           final_softcap=final_softcap, original_context=original_context,
                           attn_factor=attn_factor)
    writer = gguf.GGUFWriter(str(path), arch)
    try:
        for key, value in meta.items():
            if key != "general.architecture":
                _add_value(writer, key, value)
        writer.add_file_type(int(tool.DTYPES[dtype][1]))
        tool.add_tokenizer(writer, vocab, chat_template=chat_template or tool.CHAT_TEMPLATE, add_bos=add_bos)
        if rounded_as:
            tensors = {name: _rounded(tool, name, array, rounded_as) for name, array in tensors.items()}
        tool.write_tensors(writer, tensors, dtype)
    finally:
        writer.close()
    return Path(path)


def _rounded(tool, name: str, array: np.ndarray, dtype: str) -> np.ndarray:
    """array as a `dtype` file stores it, dequantised back to float32 (same shape)."""
    qtype = tool.tensor_type(name, array, dtype)
    encoded = tool.encode_tensor(array, qtype)
    if encoded.dtype != np.uint8:
        return encoded.astype(np.float32)
    return gguf.quants.dequantize(encoded, qtype).astype(np.float32).reshape(array.shape)


def _add_value(writer: gguf.GGUFWriter, key: str, value: object) -> None:
    if isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_uint32(key, int(value))
