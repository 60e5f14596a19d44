"""Model: config from metadata, the paged batched forward against a dense one-sequence forward,
chunked prefill, and logits against the real llama-server on the same GGUF files."""
from __future__ import annotations

import dataclasses
import json
import urllib.request

import numpy as np
import pytest

from tests.engine.weights import (
    metadata_of,
    random_metadata,
    random_tensors,
    tensor_names_of,
    tensor_of,
    tensor_types_of,
    unfused_phi3,
    write_random_gguf,
)
from tests.rig.llama import make_tiny_model, tiny_gguf_tool, token_id
from velollmd.engine.kvcache import PagedKVCache
from velollmd.engine.loader import cuda_runs
from velollmd.engine.model import Batch, Model, ModelConfig, SeqChunk, UnsupportedModel
from velollmd.sched.kvblocks import BlockPool

BLOCK_SIZE = 8
LLAMA_ARGS = ["-ctk", "f32", "-ctv", "f32", "--no-repack"]     # as tests/backends/test_engine_parity.py
# (arch, random_tensors/random_metadata options): every supported arch and feature
VARIANTS = {
    "llama": ("llama", {}),
    "llama-rope-scaled": ("llama", {"rope_freqs": True, "rope_scale": 4.0}),
    "qwen2": ("qwen2", {}),
    "qwen3-tied": ("qwen3", {"head_dim": 32, "tied": True}),
    # six layers: five with a sliding window of 5 positions (not a multiple of BLOCK_SIZE) and
    # their own RoPE base, the sixth global with the file's base
    "gemma3": ("gemma3", {"n_layer": 6, "sliding_window": 5, "freq_base": 1e6}),
    # four layers, the even ones over a window of 5 with the one RoPE base; caps small enough that
    # the random weights' scores and logits reach them (gemma2's own are 50 and 30)
    "gemma2": ("gemma2", {"n_layer": 4, "sliding_window": 5, "attn_softcap": 2.0, "final_softcap": 3.0}),
    # fused Q/K/V and gate/up, a window llama.cpp ignores, LongRoPE's short factors (served within
    # the original context) and the long ones (served past it), each with an attention factor
    "phi3": ("phi3", {"sliding_window": 5, "longrope": True, "original_context": 64, "attn_factor": 1.2,
                      "num_ctx": 64}),
    "phi3-long": ("phi3", {"longrope": True, "original_context": 64, "attn_factor": 1.2, "num_ctx": 128}),
}
META_OPTIONS = ("head_dim", "rope_scale", "sliding_window", "freq_base", "attn_softcap", "final_softcap",
                "original_context", "attn_factor")


def random_model(variant: str, seed: int = 0) -> tuple[Model, dict[str, np.ndarray]]:
    arch, options = VARIANTS[variant]
    tensor_opts = {k: v for k, v in options.items() if (k not in META_OPTIONS or k == "head_dim") and k != "num_ctx"}
    tensors = random_tensors(arch, seed, **tensor_opts)
    meta_opts = {k: v for k, v in options.items() if k in META_OPTIONS}
    config = ModelConfig.from_metadata(random_metadata(arch, tensors, **meta_opts), tensors)
    config = config.for_context(options.get("num_ctx", 0))
    return Model(config, tensors.__getitem__), tensors


# --- the oracle: one sequence, no cache, heads repeated, RoPE as complex numbers -----------------

def dense_rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def dense_gelu(x):
    """GELU's tanh approximation in float64, its input and output rounded to F16 as ggml's
    table is (the engine's ops.gelu; without the rounding the logits differ by ~1e-3)."""
    x16 = x.astype(np.float16).astype(np.float64)
    y = (0.5 * x16 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x16 + 0.044715 * x16 ** 3)))).astype(np.float16)
    return np.where(x <= -10, 0.0, np.where(x >= 10, x, y.astype(np.float64)))


def dense_rope(x, positions, config, freq_factors, layer=0):
    """x (T, H, d) float64; pairs as complex numbers rotated by e^(i * pos * theta_j)."""
    n_rot, half = config.n_rot, config.n_rot // 2
    base, scale = config.rope_freq_base, config.rope_freq_scale
    if config.window_of(layer) and config.rope_freq_base_swa:
        base, scale = config.rope_freq_base_swa, 1.0
    theta = scale * base ** (-np.arange(0, n_rot, 2) / n_rot)
    if freq_factors is not None:
        theta = theta / freq_factors
    rot = config.rope_attn_factor * np.exp(1j * positions[:, None, None] * theta)   # (T, 1, n_rot/2)
    out = x.copy()
    if config.rope_style == "norm":
        z = (x[..., 0:n_rot:2] + 1j * x[..., 1:n_rot:2]) * rot
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = z.real, z.imag
    else:
        z = (x[..., :half] + 1j * x[..., half:n_rot]) * rot
        out[..., :half], out[..., half:n_rot] = z.real, z.imag
    return out


def dense_forward(config: ModelConfig, get_tensor, token_ids) -> tuple[np.ndarray, np.ndarray]:
    """(logits (T, n_vocab), final normed hidden (T, n_embd)) in float64 from the raw tensors."""
    c = config
    get_tensor = unfused_phi3(get_tensor, c) if c.fused_tensors else get_tensor
    w = lambda name: np.asarray(get_tensor(name), dtype=np.float64)  # noqa: E731
    num, pos, eps = len(token_ids), np.arange(len(token_ids)), c.rms_norm_eps
    factors = w(c.rope_factors_name()) if c.rope_factors_name() else None
    x = w("token_embd.weight")[token_ids] * c.embd_scale                   # (T, n_embd)
    for layer in range(c.n_layer):
        p = f"blk.{layer}."
        h = dense_rms_norm(x, w(p + "attn_norm.weight"), eps)
        q, k, v = (h @ w(p + f"attn_{n}.weight").T for n in "qkv")
        if c.qkv_bias:
            q, k, v = q + w(p + "attn_q.bias"), k + w(p + "attn_k.bias"), v + w(p + "attn_v.bias")
        q, k, v = (a.reshape(num, -1, c.head_dim) for a in (q, k, v))
        if c.qk_norm:
            q = dense_rms_norm(q, w(p + "attn_q_norm.weight"), eps)
            k = dense_rms_norm(k, w(p + "attn_k_norm.weight"), eps)
        q, k = dense_rope(q, pos, c, factors, layer), dense_rope(k, pos, c, factors, layer)
        group = c.n_head // c.n_head_kv
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)     # (T, n_head, d)
        scores = np.einsum("qhd,khd->hqk", q, k) * (c.attn_scale or 1 / np.sqrt(c.head_dim))  # (n_head, T, T)
        if c.attn_softcap:
            scores = c.attn_softcap * np.tanh(scores / c.attn_softcap)
        scores[:, np.triu(np.ones((num, num), dtype=bool), 1)] = -np.inf
        if c.window_of(layer):                                             # keys a window or more back
            scores[:, pos[:, None] - pos[None, :] >= c.window_of(layer)] = -np.inf
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(num, -1) @ w(p + "attn_output.weight").T
        x = x + (dense_rms_norm(attn, w(p + "post_attention_norm.weight"), eps) if c.post_norms else attn)
        h = dense_rms_norm(x, w(p + "ffn_norm.weight"), eps)
        gate, up = h @ w(p + "ffn_gate.weight").T, h @ w(p + "ffn_up.weight").T
        ffn = ((dense_gelu(gate) if c.ffn_gelu else gate / (1 + np.exp(-gate))) * up) @ w(p + "ffn_down.weight").T
        x = x + (dense_rms_norm(ffn, w(p + "post_ffw_norm.weight"), eps) if c.post_norms else ffn)
    hidden = dense_rms_norm(x, w("output_norm.weight"), eps)
    head = w("token_embd.weight") if c.tied_embeddings else w("output.weight")
    logits = hidden @ head.T
    return (c.final_softcap * np.tanh(logits / c.final_softcap) if c.final_softcap else logits), hidden


# --- config ----------------------------------------------------------------------------------

def test_gemma2_defaults_are_llama_cpps_and_the_27b_scales_queries_by_n_embd_over_n_head():
    """A file without the window and soft-capping keys gets llama.cpp's gemma2 defaults; an
    output.weight in the file is not the LM head (llama.cpp's gemma2 always reads token_embd)."""
    tensors = random_tensors("gemma2", n_layer=2, tied=False)
    tensors["output.weight"] = tensors["token_embd.weight"] * 2
    config = ModelConfig.from_metadata(random_metadata("gemma2", tensors), tensors)
    assert (config.sliding_window, config.attn_softcap, config.final_softcap) == (4096, 50.0, 30.0)
    assert config.tied_embeddings and config.attn_scale == 1 / np.sqrt(16)
    meta = random_metadata("gemma2", tensors) | {"gemma2.block_count": 46, "gemma2.embedding_length": 72}
    names = {name.replace("blk.1.", f"blk.{layer}.") for name in tensors for layer in range(46)}
    big = ModelConfig.from_metadata(meta, names)
    assert big.attn_scale == 1 / np.sqrt(72 // 4) and big.swa_layers[:3] == (True, False, True)


def test_the_cuda_path_refuses_gemma2_gemma3_and_phi3_but_not_the_others(caplog):
    # head_dim 32: the CUDA kernels' other condition holds for all five
    configs = {name: dataclasses.replace(random_model(name)[0].config, head_dim=32)
               for name in ("llama", "qwen2", "gemma2", "gemma3", "phi3")}
    with caplog.at_level("WARNING", logger="velollmd.engine"):
        assert {name: cuda_runs(c) for name, c in configs.items()} == {
            "llama": True, "qwen2": True, "gemma2": False, "gemma3": False, "phi3": False}
    assert sum("does not run gemma2" in r.getMessage() for r in caplog.records) == 1
    assert sum("does not run phi3" in r.getMessage() for r in caplog.records) == 1


def test_config_reads_each_architecture():
    configs = {name: random_model(name)[0].config for name in VARIANTS}
    assert [c.rope_style for c in configs.values()] == ["norm", "norm"] + ["neox"] * 6
    gemma3 = configs["gemma3"]
    assert gemma3.qk_norm and gemma3.post_norms and gemma3.ffn_gelu and gemma3.embd_scale == np.sqrt(np.float32(64))
    assert [gemma3.window_of(layer) for layer in range(6)] == [5, 5, 5, 5, 5, 0]
    assert (gemma3.rope_freq_base, gemma3.rope_freq_base_swa, gemma3.final_softcap) == (1e6, 10000.0, 0.0)
    gemma2 = configs["gemma2"]
    assert gemma2.post_norms and gemma2.ffn_gelu and not gemma2.qk_norm and gemma2.tied_embeddings
    assert [gemma2.window_of(layer) for layer in range(4)] == [5, 0, 5, 0] and gemma2.rope_freq_base_swa == 0
    assert (gemma2.attn_softcap, gemma2.final_softcap, gemma2.attn_scale) == (2.0, 3.0, 0.25)
    assert not any(c.post_norms or c.sliding_window or c.embd_scale != 1 or c.attn_softcap
                   for name, c in configs.items() if not name.startswith("gemma"))
    qwen2, qwen3, scaled = configs["qwen2"], configs["qwen3-tied"], configs["llama-rope-scaled"]
    assert qwen2.qkv_bias and not qwen2.qk_norm and not qwen2.tied_embeddings
    assert qwen3.qk_norm and qwen3.tied_embeddings and qwen3.head_dim == 32 and qwen3.n_embd == 64
    assert scaled.has_rope_freqs and scaled.rope_freq_scale == 0.25
    assert (qwen2.n_vocab, qwen2.n_layer, qwen2.n_head, qwen2.n_head_kv, qwen2.n_ff) == (1024, 2, 4, 2, 128)
    phi3, phi3_long = configs["phi3"], configs["phi3-long"]
    assert phi3.fused_tensors and phi3.longrope and phi3.n_ff == 128 and phi3.rope_attn_factor == np.float32(1.2)
    assert phi3.sliding_window == 0 and phi3.rope_original_context == 64     # the file's window ignored
    assert phi3.rope_factors_name() == "rope_factors_short.weight"
    assert phi3_long.rope_factors_name() == "rope_factors_long.weight"
    assert not any(c.fused_tensors or c.longrope or c.rope_attn_factor != 1
                   for name, c in configs.items() if not name.startswith("phi3"))


def test_config_refuses_what_it_cannot_run():
    tensors = random_tensors("llama")
    meta = random_metadata("llama", tensors)
    with pytest.raises(UnsupportedModel, match="'gpt2' is not supported"):
        ModelConfig.from_metadata({**meta, "general.architecture": "gpt2"}, tensors)
    with pytest.raises(UnsupportedModel, match="missing tensor 'blk.1.ffn_gate.weight'"):
        ModelConfig.from_metadata(meta, [n for n in tensors if n != "blk.1.ffn_gate.weight"])
    with pytest.raises(UnsupportedModel, match="missing tensor 'blk.0.attn_q.bias'"):
        ModelConfig.from_metadata(random_metadata("qwen2", tensors), tensors)
    with pytest.raises(UnsupportedModel, match="missing tensor 'blk.0.post_attention_norm.weight'"):
        ModelConfig.from_metadata(random_metadata("gemma2", tensors), tensors)
    with pytest.raises(UnsupportedModel, match="missing tensor 'blk.0.attn_qkv.weight'"):
        ModelConfig.from_metadata(random_metadata("phi3", tensors), tensors)
    phi3 = random_tensors("phi3", longrope=True)
    with pytest.raises(UnsupportedModel, match="'rope_factors_short.weight' without its LongRoPE counterpart"):
        ModelConfig.from_metadata(random_metadata("phi3", phi3), set(phi3) - {"rope_factors_long.weight"})
    with pytest.raises(UnsupportedModel, match="longrope"):
        ModelConfig.from_metadata({**meta, "llama.rope.scaling.type": "longrope"}, tensors)
    with pytest.raises(UnsupportedModel, match="yarn"):
        ModelConfig.from_metadata({**meta, "llama.rope.scaling.type": "yarn"}, tensors)
    with pytest.raises(UnsupportedModel, match="llama.block_count"):
        ModelConfig.from_metadata({k: v for k, v in meta.items() if k != "llama.block_count"}, tensors)
    config = ModelConfig.from_metadata(meta, tensors)
    wrong = {**tensors, "blk.0.ffn_up.weight": tensors["blk.0.ffn_up.weight"][:, :10]}
    with pytest.raises(UnsupportedModel, match=r"'blk.0.ffn_up.weight' has shape \(128, 10\)"):
        Model(config, wrong.__getitem__)


# --- the paged batched forward against the dense oracle --------------------------------------

class Engine:
    """Just enough of an engine loop: the real allocator's block tables, greedy decode."""

    def __init__(self, model: Model, num_blocks: int = 64):
        self.model, self.pool = model, BlockPool(num_blocks, BLOCK_SIZE)
        c = model.config
        self.kv = PagedKVCache(c.n_layer, num_blocks, BLOCK_SIZE, c.n_head_kv, c.head_dim)
        self.tokens: dict[str, list[int]] = {}

    def prefill(self, prompts: dict[str, list[int]]) -> dict[str, np.ndarray]:
        chunks = []
        for name, prompt in prompts.items():
            allocation = self.pool.allocate(name, prompt)
            cached = allocation.num_cached_tokens
            chunks.append(SeqChunk(prompt[cached:], cached, allocation.block_table))
            self.tokens[name] = list(prompt)
        return dict(zip(prompts, self.model.forward(Batch.pack(chunks), self.kv)))

    def decode(self, next_tokens: dict[str, int]) -> dict[str, np.ndarray]:
        chunks = []
        for name, token in next_tokens.items():
            assert self.pool.append_tokens(name, [token])
            chunks.append(SeqChunk([token], len(self.tokens[name]), self.pool.block_table(name)))
            self.tokens[name].append(token)
        self.kv.copy_blocks(self.pool.pop_copies())
        return dict(zip(next_tokens, self.model.forward(Batch.pack(chunks), self.kv)))

    def fork(self, parent: str, child: str) -> None:
        self.pool.fork(parent, child)
        self.tokens[child] = list(self.tokens[parent])


def dense_atol(config: ModelConfig) -> float:
    """How far the float32 engine may be from the float64 oracle: 1e-4; 1e-3 with GELU, whose F16
    table rounding flips an ulp where float32 and float64 inputs straddle an F16 boundary (a
    wrong window or RoPE base moves logits by 0.1 and more)."""
    return 1e-3 if config.ffn_gelu else 1e-4


def assert_matches_dense(engine: Engine, tensors, logits: dict[str, np.ndarray], report: list[float]) -> None:
    for name, row in logits.items():
        expected = dense_forward(engine.model.config, tensors.__getitem__, engine.tokens[name])[0][-1]
        report.append(float(np.abs(row - expected).max()))
        np.testing.assert_allclose(row, expected, atol=dense_atol(engine.model.config), rtol=0, err_msg=name)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_paged_batched_forward_matches_dense_forward(variant):
    model, tensors = random_model(variant)
    engine, rng, diffs = Engine(model), np.random.default_rng(7), []
    prompts = {name: rng.integers(0, 1024, n).tolist() for name, n in (("a", 19), ("b", 3), ("c", 8))}
    logits = engine.prefill(prompts)                                  # three lengths in one pass
    assert_matches_dense(engine, tensors, logits, diffs)
    # prefix-cache hit: "d" shares a's first two full blocks, only its tail is computed
    logits = engine.prefill({"d": prompts["a"][:16] + [5, 6, 7]})
    assert engine.pool.find_cached_prefix(engine.tokens["d"]) == 16
    assert_matches_dense(engine, tensors, logits, diffs)
    engine.fork("a", "a2")                                            # shares a's partial block
    for step in range(4):
        next_tokens = {name: 7 * step + 100 * i for i, name in enumerate(("a", "a2", "b", "c", "d"))}
        logits = engine.decode(next_tokens)                           # five decodes, one pass
        assert_matches_dense(engine, tensors, logits, diffs)
    assert engine.tokens["a"][:19] == engine.tokens["a2"][:19] and engine.tokens["a"] != engine.tokens["a2"]
    print(f"{variant}: max abs logit difference paged vs dense = {max(diffs):.2e}")
    assert max(diffs) < dense_atol(model.config)


def test_mixed_prefill_and_decode_in_one_pass_and_hidden_states():
    model, tensors = random_model("qwen2")
    engine = Engine(model)
    engine.prefill({"a": [1, 2, 3, 4, 5]})
    engine.pool.allocate("b", [9, 8, 7, 6])
    assert engine.pool.append_tokens("a", [11])
    batch = Batch.pack([SeqChunk([11], 5, engine.pool.block_table("a")),
                        SeqChunk([9, 8, 7, 6], 0, engine.pool.block_table("b"))])
    hidden = model.hidden(batch, engine.kv)                   # (T, n_embd), all five rows
    assert hidden.shape == (5, 64)
    _, dense_b = dense_forward(model.config, tensors.__getitem__, [9, 8, 7, 6])
    _, dense_a = dense_forward(model.config, tensors.__getitem__, [1, 2, 3, 4, 5, 11])
    np.testing.assert_allclose(hidden[1:], dense_b, atol=1e-4)
    np.testing.assert_allclose(hidden[0], dense_a[-1], atol=1e-4)


def test_chunked_prefill_equals_one_pass_prefill():
    model, _ = random_model("qwen3-tied")
    prompt = np.random.default_rng(3).integers(0, 1024, 29).tolist()
    whole = Engine(model).prefill({"p": prompt})["p"]
    engine = Engine(model)
    table = engine.pool.allocate("p", prompt).block_table
    bounds = [0, 11, 20, 29]                                          # three chunks
    for start, stop in zip(bounds, bounds[1:]):
        batch = Batch.pack([SeqChunk(prompt[start:stop], start, table, want_logits=stop == 29)])
        logits = model.forward(batch, engine.kv)
        assert logits.shape == ((1, 1024) if stop == 29 else (0, 1024))
    np.testing.assert_allclose(logits[0], whole, atol=1e-5)


def test_batch_build_equals_pack_and_checks_its_parts():
    model, _ = random_model("llama")
    engine = Engine(model)
    table_a = engine.pool.allocate("a", [1, 2, 3]).block_table
    table_b = engine.pool.allocate("b", [4]).block_table
    packed = Batch.pack([SeqChunk([1, 2, 3], 0, table_a), SeqChunk([4], 0, table_b)])
    built = Batch.build(np.array([1, 2, 3, 4]), np.array([0, 1, 2, 0]), [3, 1], [table_a, table_b], [0, 0],
                        np.array([2, 3]), BLOCK_SIZE)
    np.testing.assert_array_equal(model.forward(built, engine.kv), model.forward(packed, engine.kv))
    with pytest.raises(ValueError, match="query lengths summing to 3"):
        Batch.build(np.array([1, 2]), np.array([0, 1]), [3], [table_a], [0], np.array([1]))
    other_block_size = Batch.build(np.array([4]), np.array([0]), [1], [table_b], [0], np.array([0]), 16)
    with pytest.raises(ValueError, match="block size 16"):
        model.forward(other_block_size, engine.kv)
    assert model.nbytes == sum(a.nbytes for a in random_model("llama")[1].values())


def test_bad_batches_are_refused():
    model, _ = random_model("llama")
    engine = Engine(model, num_blocks=4)
    with pytest.raises(ValueError, match="covers 8"):
        model.forward(Batch.pack([SeqChunk(list(range(9)), 0, [0])]), engine.kv)
    with pytest.raises(ValueError, match="outside the KV cache"):
        model.forward(Batch.pack([SeqChunk([1, 2], 0, [4])]), engine.kv)
    with pytest.raises(ValueError, match="vocabulary"):
        model.forward(Batch.pack([SeqChunk([1024], 0, [0])]), engine.kv)


# --- against the real llama-server -------------------------------------------------------------

def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def server_top_probs(server, prompt: str) -> tuple[list[int], dict[int, float]]:
    """llama-server's token ids for prompt, and its top-10 next-token probabilities: the
    pre-sampling softmax of the raw logits over the whole vocabulary (post_sampling_probs is
    false). The logit_bias only keeps the sampled token off the byte tokens (a lone byte is
    incomplete UTF-8 and the server would hold back the probabilities with it); the reported
    probabilities are computed before any sampler, so byte tokens still appear in them."""
    ids = post(server.url + "/tokenize", {"content": prompt})["tokens"]
    no_bytes = [[token_id("<0x00>") + byte, False] for byte in range(256)]
    reply = post(server.url + "/completion", {"prompt": ids, "n_predict": 1, "n_probs": 10,
                                              "temperature": 0, "cache_prompt": False,
                                              "logit_bias": no_bytes})
    top = reply["completion_probabilities"][0]["top_logprobs"]
    return ids, {entry["id"]: float(np.exp(entry["logprob"])) for entry in top}


def engine_probs(model: Model, config: ModelConfig, ids: list[int]) -> np.ndarray:
    """The model's next-token probabilities after ids (one sequence on a fresh 4 x 16-slot
    cache): (n_vocab,) float64, the softmax of its raw logits."""
    kv = PagedKVCache(config.n_layer, 4, 16, config.n_head_kv, config.head_dim)
    logits = model.forward(Batch.pack([SeqChunk(ids, 0, [0, 1, 2, 3])]), kv)[0].astype(np.float64)
    ours = np.exp(logits - logits.max())
    return ours / ours.sum()


def top10_nmse(ours: np.ndarray, theirs: dict[int, float]) -> float:
    """Normalised MSE of our probabilities on llama-server's top-10 tokens (server_top_probs')."""
    p, q = np.array(list(theirs.values())), ours[list(theirs)]
    return float(np.sum((q - p) ** 2) / np.sum(p ** 2))


def tool_model(arch: str, dtype: str):
    """A file from tools/make_tiny_gguf.py (its tiny shape)."""
    return lambda path: tiny_gguf_tool().build_tiny_gguf(path, seed=5, dtype=dtype, arch=arch)


GGUF_FILES = {
    "tiny-llama": lambda path: make_tiny_model(path, dtype="f32"),
    "tiny-qwen2": tool_model("qwen2", "f32"),
    "tiny-qwen3": tool_model("qwen3", "f32"),
    "tiny-gemma3": tool_model("gemma3", "f32"),
    "tiny-gemma2": tool_model("gemma2", "f32"),
    "tiny-phi3": tool_model("phi3", "f32"),
    "tiny-qwen2-q8_0": tool_model("qwen2", "q8_0"),
    "tiny-llama-q4_k": tool_model("llama", "q4_k"),
    "qwen2": lambda path: write_random_gguf(path, "qwen2", seed=1),
    "qwen3-tied": lambda path: write_random_gguf(path, "qwen3", seed=2, head_dim=32, tied=True),
    "llama-rope-scaled": lambda path: write_random_gguf(path, "llama", seed=3, rope_freqs=True,
                                                        rope_scale=4.0),
    # the prompt's ~12 tokens reach past the window of 5 in five layers of six
    "gemma3": lambda path: write_random_gguf(path, "gemma3", seed=4, n_layer=6, sliding_window=5, freq_base=1e6),
    "gemma3-q8_0": lambda path: write_random_gguf(path, "gemma3", seed=4, n_layer=6, sliding_window=5,
                                                  freq_base=1e6, dtype="q8_0", n_embd=256, n_ff=512),
    # the even layers of four over a window of 5; caps the scores and logits reach (llama.cpp reads them too)
    "gemma2": lambda path: write_random_gguf(path, "gemma2", seed=6, n_layer=4, sliding_window=5,
                                             attn_softcap=2.0, final_softcap=3.0),
    "gemma2-q8_0": lambda path: write_random_gguf(path, "gemma2", seed=6, n_layer=4, sliding_window=5,
                                                  attn_softcap=2.0, final_softcap=3.0, dtype="q8_0",
                                                  n_embd=256, n_ff=512),
    # served at SERVED_CTX: within the original context (the short factors), past it (the long
    # ones); a window of 5 in the file that llama.cpp ignores (the prompt reaches past it)
    "phi3": lambda path: write_random_gguf(path, "phi3", seed=7, sliding_window=5, longrope=True,
                                           original_context=1024, attn_factor=1.2),
    "phi3-long": lambda path: write_random_gguf(path, "phi3", seed=7, longrope=True, original_context=256,
                                                attn_factor=1.2),
    "phi3-q8_0": lambda path: write_random_gguf(path, "phi3", seed=8, longrope=True, original_context=256,
                                                attn_factor=1.2, dtype="q8_0", n_embd=256, n_ff=512),
}
SERVED_CTX = 512


@pytest.mark.parametrize("variant", list(GGUF_FILES))
def test_top10_probabilities_match_llama_server(variant, tmp_path, llama_server_factory):
    path = GGUF_FILES[variant](tmp_path / f"{variant}.gguf")
    config = ModelConfig.from_metadata(metadata_of(path), tensor_names_of(path)).for_context(SERVED_CTX)
    model = Model(config, tensor_of(path), tensor_types_of(path))     # rounding as llama.cpp's
    server = llama_server_factory(model_path=path, parallel=1, ctx_size=SERVED_CTX, extra_args=LLAMA_ARGS)
    ids, theirs = server_top_probs(server, "the world of water and fire is a great story")
    ours = engine_probs(model, config, ids)                          # (n_vocab,)
    top_ids = list(theirs)
    nmse = top10_nmse(ours, theirs)
    print(f"{variant}: {len(ids)} prompt tokens, top-10 normalised MSE vs llama-server = {nmse:.2e}")
    assert len(ids) > 5 and len(theirs) == 10
    assert int(np.argmax(ours)) == top_ids[0]
    assert len(set(np.argsort(-ours)[:10].tolist()) & set(top_ids)) >= 8
    assert nmse < 1e-3
