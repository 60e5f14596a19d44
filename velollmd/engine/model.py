"""The transformer forward pass in numpy float32 over a packed batch and the paged KV cache.

    config = ModelConfig.from_metadata(metadata, tensor_names)
    model = Model(config, get_tensor, tensor_types)    # get_tensor(name) -> float32 (out, in)
    batch = Batch.pack([SeqChunk(prompt_ids, 0, block_table), SeqChunk([tok], 37, table2)])
    logits = model.forward(batch, kv)                  # (num_logits, n_vocab)
    logits, hidden = model.run(batch, kv)              # and (num_hidden, n_embd) of hidden_indices
    logits = model.head(hidden[:64])                   # the LM head over some of those rows

The rows whose next-token distribution a prompt's logprobs need (every prompt row of a chunk)
come back as final hidden states (`Batch.hidden_indices`, n_embd floats each), not logits: the
caller applies `head` to a slice of them at a time, so no more than a slice's n_vocab rows
exist at once whatever the chunk (a 512-row chunk of a 152k vocabulary would be 311 MB).

Architectures: llama (and mistral), qwen2 (Q/K/V biases), qwen3 (per-head Q/K RMSNorm), gemma3
(Q/K RMSNorm, post-norms, GELU, scaled embeddings, sliding-window layers with their own RoPE
base: ModelConfig.window_of), gemma2 (gemma3's post-norms, GELU and scaled embeddings, every other
layer over a sliding window, attention and final logit soft-capping, no Q/K norms), phi3 (Q/K/V
and gate/up fused in the file, LongRoPE's short or long factors by the served context:
ModelConfig.for_context; its sliding_window ignored as llama.cpp does); tied embeddings when
output.weight is absent (gemma2: always). Every matrix is stored as the GGUF
holds it, (out, in) contiguous float32 (Q, K, V fused; gate and up fused), and all T rows of a batch (prefill
tokens of several sequences and single decode tokens alike) go through one matmul per weight:
`linear` below, OpenBLAS for a prefill's many rows, the compiled kernel (kernels.py) for a
decode step's few. Only attention is per sequence, and all decoding sequences share one padded
attention call.

Given each tensor's ggml type (tensor_types, as loader.read_model passes them), `linear` first
rounds its input rows the way llama.cpp's CPU backend does for that weight type (vecdot.py:
Q8_0 blocks for Q8_0/Q4_0/Q5_0 weights, Q8_K for K-quants, F16 for F16), so that the engine's
logits are llama.cpp's; the multiplication itself stays float32. Without types, no rounding.

Given get_quantised too (the loader's), a weight whose parts (token_embd, the LM head, a fused
Q/K/V...) are all of KEPT_WEIGHTS' types stays quantised (q8weight.Q8Weight, ~1.1 bytes a value
instead of 4; q4kweight.Q4KWeight, ~0.6; q5kweight.Q5KWeight, ~0.7; q6kweight.Q6KWeight, ~1.1;
legacyweight's Q4_0, Q5_0, Q4_1, Q5_1 weights, ~0.6-0.9) and is multiplied with integer dot
products per block, as ggml's vec_dot for its type does, for prefill and decode rows alike; parts
of different kept types (a Q4_K_M or Q5_K_M file's Q/K/V with a Q6_K V) stack as a
quantweight.StackedWeight. A part of another type makes the whole weight float32.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from velollmd.engine import kernels, ops, vecdot
from velollmd.engine.kvcache import PagedKVCache, slot_mapping
from velollmd.engine.legacyweight import Q40Weight, Q41Weight, Q50Weight, Q51Weight
from velollmd.engine.q4kweight import Q4KWeight
from velollmd.engine.q5kweight import Q5KWeight
from velollmd.engine.q6kweight import Q6KWeight
from velollmd.engine.q8weight import Q8Weight
from velollmd.engine.quants import GGML_TYPES
from velollmd.engine.quantweight import QuantWeight, StackedWeight

ROPE_STYLE_OF_ARCH = {"llama": ops.ROPE_NORM, "mistral": ops.ROPE_NORM,
                      "qwen2": ops.ROPE_NEOX, "qwen3": ops.ROPE_NEOX, "gemma2": ops.ROPE_NEOX,
                      "gemma3": ops.ROPE_NEOX, "phi3": ops.ROPE_NEOX}
LAYER_TENSORS = ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                 "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                 "ffn_down.weight")
QKV_BIAS_TENSORS = ("attn_q.bias", "attn_k.bias", "attn_v.bias")
QK_NORM_TENSORS = ("attn_q_norm.weight", "attn_k_norm.weight")
POST_NORM_TENSORS = ("post_attention_norm.weight", "post_ffw_norm.weight")
# phi3's layers: Q/K/V fused in attn_qkv, gate and up fused in ffn_up (gate the first n_ff rows)
PHI3_LAYER_TENSORS = ("attn_norm.weight", "attn_qkv.weight", "attn_output.weight", "ffn_norm.weight",
                      "ffn_up.weight", "ffn_down.weight")
LAYER_TENSORS_OF_ARCH = {"phi3": PHI3_LAYER_TENSORS}
# LongRoPE's per-dimension frequency divisors (phi3): the long ones when the served context
# exceeds the original one, as llama.cpp's get_rope_factors chooses
ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT = "rope_factors_long.weight", "rope_factors_short.weight"
REQUIRED_OF_ARCH = {"qwen2": QKV_BIAS_TENSORS, "qwen3": QK_NORM_TENSORS, "gemma2": POST_NORM_TENSORS,
                    "gemma3": QK_NORM_TENSORS + POST_NORM_TENSORS}
# gemma3 (llama.cpp's hparams for it): every SWA_PATTERN-th layer attends globally, the others over
# a sliding window with their own RoPE base; 62 layers is the 27B, whose queries scale by n_embd / n_head
GEMMA3_SWA_PATTERN = 6
GEMMA3_SWA_FREQ_BASE = 10000.0
GEMMA3_27B_LAYERS = 62
# gemma2 (llama.cpp's hparams for it): even layers over a sliding window (4096 when the file names
# none), odd layers global, one RoPE base; attention and final logits soft-capped (50 and 30 when
# the file names none); 46 layers is the 27B, whose queries scale by n_embd // n_head
GEMMA2_SWA_PATTERN = 2
GEMMA2_SLIDING_WINDOW = 4096
GEMMA2_ATTN_SOFTCAP = 50.0
GEMMA2_FINAL_SOFTCAP = 30.0
GEMMA2_27B_LAYERS = 46
_MISSING = object()
Q8_0 = vecdot.Q8_0
# ggml type -> the class that keeps a weight of that type quantised
KEPT_WEIGHTS: dict[int, type[QuantWeight]] = {Q8_0: Q8Weight, GGML_TYPES["Q4_K"]: Q4KWeight,
                                              GGML_TYPES["Q6_K"]: Q6KWeight,
                                              GGML_TYPES["Q5_K"]: Q5KWeight,
                                              GGML_TYPES["Q4_0"]: Q40Weight, GGML_TYPES["Q5_0"]: Q50Weight,
                                              GGML_TYPES["Q4_1"]: Q41Weight, GGML_TYPES["Q5_1"]: Q51Weight}
Matrix = np.ndarray | QuantWeight | StackedWeight   # a weight (out, in): float32, or kept quantised
QUANTISED = (QuantWeight, StackedWeight)


class UnsupportedModel(ValueError):
    """The GGUF describes a model this engine cannot run (architecture, tensor, metadata)."""


def check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """A tensor of the shape its model needs, else UnsupportedModel naming it (both engines' loaders)."""
    if tuple(shape) != tuple(expected):
        raise UnsupportedModel(f"tensor {name!r} has shape {tuple(shape)}, expected {tuple(expected)}")


def check_token_ids(batch: "Batch", n_vocab: int) -> None:
    """Every token id of the batch inside the vocabulary (both engines' forward passes)."""
    if batch.token_ids.min() < 0 or batch.token_ids.max() >= n_vocab:
        raise ValueError(f"Batch: a token id is outside the vocabulary (0..{n_vocab - 1})")


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int                 # leading dims of each head that RoPE rotates
    n_ff: int
    rms_norm_eps: float
    rope_freq_base: float
    rope_freq_scale: float     # 1 / linear scaling factor
    rope_style: str            # ops.ROPE_NORM (llama) or ops.ROPE_NEOX (qwen2/qwen3)
    has_rope_freqs: bool       # llama3-style per-dimension factors in rope_freqs.weight
    context_length: int
    qkv_bias: bool
    qk_norm: bool
    tied_embeddings: bool      # no output.weight: the LM head is token_embd.weight
    # gemma2's and gemma3's features (the defaults: none)
    embd_scale: float = 1.0    # token embeddings times this (gemma: sqrt(n_embd))
    attn_scale: float = 0.0    # queries times this before softmax; 0: 1 / sqrt(head_dim)
    post_norms: bool = False   # RMSNorm of the attention's and the FFN's outputs before each residual add
    ffn_gelu: bool = False     # gelu(gate) * up instead of silu(gate) * up
    sliding_window: int = 0    # > 0: the layers of swa_layers attend over the last this many positions
    swa_layers: tuple[bool, ...] = ()
    rope_freq_base_swa: float = 0.0   # the sliding-window layers' RoPE base (scale 1); 0: rope_freq_base
    final_softcap: float = 0.0        # > 0: logits = cap * tanh(logits / cap)
    attn_softcap: float = 0.0         # > 0 (gemma2): attention scores = cap * tanh(scores / cap)
    # phi3's: fused Q/K/V and gate/up tensors, LongRoPE's two factor sets and its attention factor
    fused_tensors: bool = False       # attn_qkv.weight and a (2 n_ff, n_embd) ffn_up.weight
    longrope: bool = False            # rope_factors_long/short.weight in the file
    rope_original_context: int = 0    # LongRoPE's original context; a longer served one takes the long factors
    rope_long: bool = False           # the long factors are in use (for_context)
    rope_attn_factor: float = 1.0     # cos and sin times this (so Q and K): rope.scaling.attn_factor

    def for_context(self, num_ctx: int) -> "ModelConfig":
        """This config served at num_ctx positions a sequence: LongRoPE's long factors when that
        exceeds the original context (llama.cpp: n_ctx_seq > n_ctx_orig_yarn), else the short ones."""
        return dataclasses.replace(self, rope_long=self.longrope and num_ctx > self.rope_original_context)

    def rope_factors_name(self) -> str | None:
        """The tensor of per-dimension RoPE frequency divisors in use, or None."""
        if self.has_rope_freqs:
            return "rope_freqs.weight"
        if self.longrope:
            return ROPE_FACTORS_LONG if self.rope_long else ROPE_FACTORS_SHORT
        return None

    def window_of(self, layer: int) -> int:
        """The sliding window of a layer; 0: it attends over the whole context."""
        return self.sliding_window if self.swa_layers and self.swa_layers[layer] else 0

    @classmethod
    def from_metadata(cls, metadata: dict, tensor_names: Sequence[str] | set[str]) -> "ModelConfig":
        names = set(tensor_names)
        arch = metadata.get("general.architecture")
        if arch not in ROPE_STYLE_OF_ARCH:
            raise UnsupportedModel(f"architecture {arch!r} is not supported "
                                   f"(supported: {', '.join(ROPE_STYLE_OF_ARCH)})")
        def key(name: str, default: object = _MISSING) -> object:
            return _metadata_value(metadata, f"{arch}.{name}", default)
        n_embd, n_head = int(key("embedding_length")), int(key("attention.head_count"))
        head_dim = int(key("attention.key_length", n_embd // n_head))
        n_layer = int(key("block_count"))
        _check_tensors(arch, names, n_layer)
        features = ARCH_FEATURES[arch](metadata, n_embd, n_head, head_dim, n_layer) if arch in ARCH_FEATURES else {}
        return cls(
            arch=arch, n_vocab=_vocab_size(metadata, arch), n_embd=n_embd, n_layer=n_layer,
            n_head=n_head, n_head_kv=_uniform(key("attention.head_count_kv", n_head), "head_count_kv"),
            head_dim=head_dim, n_rot=int(key("rope.dimension_count", head_dim)),
            n_ff=_uniform(key("feed_forward_length"), "feed_forward_length"),
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_freq_base=float(key("rope.freq_base", 10000.0)),
            rope_freq_scale=_rope_freq_scale(metadata, arch), rope_style=ROPE_STYLE_OF_ARCH[arch],
            has_rope_freqs="rope_freqs.weight" in names,
            context_length=int(key("context_length", 4096)),
            qkv_bias="blk.0.attn_q.bias" in names, qk_norm="blk.0.attn_q_norm.weight" in names,
            longrope=_longrope(names),
            **{"tied_embeddings": "output.weight" not in names, **features})


def _gemma3_features(metadata: dict, n_embd: int, n_head: int, head_dim: int, n_layer: int) -> dict:
    """ModelConfig's gemma3 fields, as llama.cpp reads the file: a sliding window (when the file
    names one) on all but every GEMMA3_SWA_PATTERN-th layer, embeddings scaled by sqrt(n_embd),
    post-norms, GELU, and the final logit soft-capping of a file that has it and no window
    (llama.cpp's graph without sliding windows is the one that caps)."""
    window = int(metadata.get("gemma3.attention.sliding_window", 0) or 0)
    return dict(
        _gemma_features(n_embd),
        attn_scale=float(1.0 / np.sqrt(n_embd / n_head if n_layer == GEMMA3_27B_LAYERS else head_dim)),
        sliding_window=window, swa_layers=_swa_layers(n_layer, window, GEMMA3_SWA_PATTERN),
        rope_freq_base_swa=GEMMA3_SWA_FREQ_BASE if window > 0 else 0.0,
        final_softcap=0.0 if window else float(metadata.get("gemma3.final_logit_softcapping", 0.0) or 0.0))


def _gemma2_features(metadata: dict, n_embd: int, n_head: int, head_dim: int, n_layer: int) -> dict:
    """ModelConfig's gemma2 fields, as llama.cpp reads the file: gemma3's scaled embeddings,
    post-norms and GELU; a sliding window on the even layers with the file's one RoPE base;
    attention and final logit soft-capping; the LM head is always token_embd.weight (llama.cpp
    loads no output.weight for gemma2)."""
    def value(name: str, default: float) -> float:
        return float(metadata.get(f"gemma2.{name}", default) or default)
    window = int(value("attention.sliding_window", GEMMA2_SLIDING_WINDOW))
    return dict(
        _gemma_features(n_embd),
        # llama.cpp divides n_embd by n_head as integers for the 27B
        attn_scale=float(1.0 / np.sqrt(n_embd // n_head if n_layer == GEMMA2_27B_LAYERS else head_dim)),
        sliding_window=window, swa_layers=_swa_layers(n_layer, window, GEMMA2_SWA_PATTERN),
        attn_softcap=value("attn_logit_softcapping", GEMMA2_ATTN_SOFTCAP),
        final_softcap=value("final_logit_softcapping", GEMMA2_FINAL_SOFTCAP), tied_embeddings=True)


def _gemma_features(n_embd: int) -> dict:
    """What gemma2 and gemma3 share: embeddings scaled by sqrt(n_embd) (in float32, as ggml's
    sqrtf), post-norms, GELU."""
    return dict(embd_scale=float(np.sqrt(np.float32(n_embd))), post_norms=True, ffn_gelu=True)


def _phi3_features(metadata: dict, n_embd: int, n_head: int, head_dim: int, n_layer: int) -> dict:
    """ModelConfig's phi3 fields, as llama.cpp (b11434) reads the file: fused tensors, LongRoPE's
    factors and original context (default: the trained one) and rope.scaling.attn_factor (1 when
    absent: llama.cpp computes none; the converter writes sqrt(1 + ln(scale) / ln(original))).
    A phi3.attention.sliding_window is read and ignored, as llama.cpp does ("Phi SWA is currently
    disabled"): every layer attends over the whole context."""
    def value(name: str, default: float) -> float:
        return float(metadata.get(f"phi3.{name}", default) or default)
    original = int(value("rope.scaling.original_context_length", value("context_length", 4096)))
    return dict(fused_tensors=True, rope_original_context=original,
                rope_attn_factor=value("rope.scaling.attn_factor", 1.0))


def _swa_layers(n_layer: int, window: int, pattern: int) -> tuple[bool, ...]:
    """llama.cpp's set_swa_pattern: layer il slides when il % pattern < pattern - 1 (every
    pattern-th layer global); none slides without a window."""
    return tuple(window > 0 and layer % pattern < pattern - 1 for layer in range(n_layer))


# architecture -> its ModelConfig fields beyond the common ones
ARCH_FEATURES = {"gemma2": _gemma2_features, "gemma3": _gemma3_features, "phi3": _phi3_features}


def _metadata_value(metadata: dict, name: str, default: object = _MISSING) -> object:
    value = metadata.get(name, default)
    if value is _MISSING:
        raise UnsupportedModel(f"GGUF metadata has no {name!r}")
    return value


def _uniform(value: object, what: str) -> int:
    """A per-layer array key (some GGUFs store head_count_kv per layer) must be one value."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UnsupportedModel(f"{what} differs between layers ({sorted(set(value))})")
        value = value[0]
    return int(value)


def _vocab_size(metadata: dict, arch: str) -> int:
    if f"{arch}.vocab_size" in metadata:
        return int(metadata[f"{arch}.vocab_size"])
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedModel(f"GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    return len(tokens)


def _rope_freq_scale(metadata: dict, arch: str) -> float:
    """1 / the RoPE scaling factor (as llama.cpp reads it, whatever the type says); yarn needs
    more than a factor and is unsupported, longrope too but on phi3 (its factor tensors)."""
    kind = metadata.get(f"{arch}.rope.scaling.type", "linear")
    if kind not in ("none", "linear") and (kind, arch) != ("longrope", "phi3"):
        raise UnsupportedModel(f"{arch}.rope.scaling.type {kind!r} is not supported (only linear)")
    legacy = metadata.get(f"{arch}.rope.scale_linear", 0.0)
    factor = float(metadata.get(f"{arch}.rope.scaling.factor", legacy))
    return 1.0 / factor if factor > 0 else 1.0


def _longrope(names: set[str]) -> bool:
    """Whether the file carries LongRoPE's factors: both sets, or neither (plain RoPE)."""
    present = {ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT} & names
    if len(present) == 1:
        raise UnsupportedModel(f"tensor {present.pop()!r} without its LongRoPE counterpart")
    return bool(present)


def _check_tensors(arch: str, names: set[str], n_layer: int) -> None:
    required = ["token_embd.weight", "output_norm.weight"]
    per_layer = LAYER_TENSORS_OF_ARCH.get(arch, LAYER_TENSORS) + REQUIRED_OF_ARCH.get(arch, ())
    required += [f"blk.{layer}.{name}" for layer in range(n_layer) for name in per_layer]
    missing = [name for name in required if name not in names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UnsupportedModel(f"{arch} model is missing tensor {missing[0]!r}{more}")


class SeqChunk(NamedTuple):
    """One sequence's share of a batch: its new tokens after num_computed cached ones."""
    token_ids: Sequence[int]
    num_computed: int
    block_table: Sequence[int]
    want_logits: bool = True   # logits for its last new token (False: a non-final prefill chunk)


@dataclass
class Batch:
    """Several sequences packed into one pass; sequence i owns rows query_start[i]:query_start[i+1]."""
    token_ids: np.ndarray        # (T,) int32
    positions: np.ndarray        # (T,) int32
    query_start: np.ndarray      # (num_seqs + 1,) int64
    block_tables: list[list[int]]
    num_computed: list[int]      # per sequence: tokens already in the KV cache before this pass
    logits_indices: np.ndarray   # (num_logits,) int64: rows whose logits forward() returns
    block_size: int = 0          # the KV cache's block size the tables were made for (0: not checked)
    # (num_hidden,) int64: rows whose final normed hidden states run() returns too (prompt logprobs)
    hidden_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # per sequence (or empty: none): its positions below this already hold these very tokens' K/V in
    # the cache (a cached prefix recomputed for its logits) and are not written again: the blocks may
    # be shared, and another batch's float32 sums need not give the same bits
    num_kept: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, token_ids: np.ndarray, positions: np.ndarray, query_lens: Sequence[int],
              block_tables: Sequence[Sequence[int]], num_computed: Sequence[int],
              logits_indices: np.ndarray, block_size: int = 0, *,
              hidden_indices: Sequence[int] = (), num_kept: Sequence[int] = ()) -> "Batch":
        """A batch from its parts, as an engine loop gathers them (the runner's constructor)."""
        query_start = np.concatenate([[0], np.cumsum(np.asarray(query_lens, dtype=np.int64))])
        if query_start[-1] != len(token_ids) or len(positions) != len(token_ids):
            raise ValueError(f"Batch: {len(token_ids)} token ids, {len(positions)} positions, "
                             f"query lengths summing to {query_start[-1]}")
        return cls(np.asarray(token_ids, dtype=np.int32), np.asarray(positions, dtype=np.int32),
                   query_start, [list(t) for t in block_tables], [int(n) for n in num_computed],
                   np.asarray(logits_indices, dtype=np.int64), block_size,
                   np.asarray(hidden_indices, dtype=np.int64), [int(n) for n in num_kept])

    @classmethod
    def pack(cls, chunks: Sequence[SeqChunk]) -> "Batch":
        if not chunks or any(len(chunk.token_ids) == 0 for chunk in chunks):
            raise ValueError("Batch.pack: needs at least one sequence, each with >= 1 new token")
        query_lens = np.array([len(chunk.token_ids) for chunk in chunks], dtype=np.int64)  # (num_seqs,)
        query_start = np.concatenate([[0], np.cumsum(query_lens)])                         # (num_seqs + 1,)
        positions = np.concatenate([np.arange(chunk.num_computed, chunk.num_computed + n)
                                    for chunk, n in zip(chunks, query_lens)]).astype(np.int32)
        return cls(
            token_ids=np.concatenate([np.asarray(c.token_ids, dtype=np.int32) for c in chunks]),
            positions=positions, query_start=query_start,
            block_tables=[list(chunk.block_table) for chunk in chunks],
            num_computed=[int(chunk.num_computed) for chunk in chunks],
            logits_indices=(query_start[1:] - 1)[[chunk.want_logits for chunk in chunks]])

    @property
    def num_seqs(self) -> int:
        return len(self.num_computed)

    def query_lens(self) -> np.ndarray:
        return np.diff(self.query_start)                            # (num_seqs,)

    def seq_lens(self) -> np.ndarray:
        return np.asarray(self.num_computed) + self.query_lens()    # (num_seqs,) context after this pass


class AttentionPlan:
    """Per-pass bookkeeping shared by all layers: cache slots, the decode group, prefill sequences."""

    def __init__(self, batch: Batch, block_size: int, num_blocks: int):
        seq_lens, query_lens = batch.seq_lens(), batch.query_lens()
        if batch.block_size and batch.block_size != block_size:
            raise ValueError(f"Batch: block tables for block size {batch.block_size}, "
                             f"the KV cache has {block_size}")
        slots = []
        for i, table in enumerate(batch.block_tables):
            if len(table) * block_size < seq_lens[i]:
                raise ValueError(f"Batch: sequence {i} has {seq_lens[i]} tokens but its block table "
                                 f"covers {len(table) * block_size}")
            rows = slice(batch.query_start[i], batch.query_start[i + 1])
            slots.append(slot_mapping(table, batch.positions[rows], block_size))
        self.slots = np.concatenate(slots)                              # (T,) int64; -1: not written
        if self.slots.max() >= num_blocks * block_size or self.slots.min() < 0:
            raise ValueError("Batch: a block table holds a block id outside the KV cache")
        if batch.num_kept:
            kept = np.repeat(np.asarray(batch.num_kept, dtype=np.int64), batch.query_lens())   # (T,)
            self.slots[batch.positions < kept] = -1
        decode = np.flatnonzero(query_lens == 1)                        # (num_decode,) seq indices
        self.decode_rows = batch.query_start[decode]                    # (num_decode,) row of each
        self.decode_lens = seq_lens[decode]                             # (num_decode,)
        self.decode_tables = padded_tables([batch.block_tables[i] for i in decode],
                                            -(-int(self.decode_lens.max(initial=0)) // block_size))
        self.prefill = [i for i in range(batch.num_seqs) if query_lens[i] > 1]


def padded_tables(tables: list[list[int]], num_blocks: int) -> np.ndarray:
    """(num_seqs, num_blocks) int64 block ids, short tables padded with block 0 (masked anyway)."""
    padded = np.zeros((len(tables), num_blocks), dtype=np.int64)
    for row, table in enumerate(tables):
        used = table[:num_blocks]
        padded[row, :len(used)] = used
    return padded


# How the input of one (possibly fused) weight is rounded: (stop_row, activation ggml type) for
# consecutive bands of its output rows, each band one weight type's vecdot.activation_type;
# () when the input stays float32 as it is (F32 weights, or types unknown).
ActBands = tuple[tuple[int, int], ...]


@dataclass
class LayerWeights:
    attn_norm: np.ndarray           # (n_embd,)
    wqkv: Matrix                    # (q_dim + 2 * kv_dim, n_embd): Q, K, V fused
    bqkv: np.ndarray | None         # (q_dim + 2 * kv_dim,) qwen2
    q_norm: np.ndarray | None       # (head_dim,) qwen3
    k_norm: np.ndarray | None       # (head_dim,) qwen3
    wo: Matrix                      # (n_embd, q_dim)
    ffn_norm: np.ndarray            # (n_embd,)
    w_gate_up: Matrix               # (2 * n_ff, n_embd): gate then up, fused
    w_down: Matrix                  # (n_embd, n_ff)
    qkv_act: ActBands = ()          # the activation rounding of each weight (see ActBands)
    wo_act: ActBands = ()
    gate_up_act: ActBands = ()
    down_act: ActBands = ()
    attn_post_norm: np.ndarray | None = None   # (n_embd,) gemma3: the attention's output normed
    ffn_post_norm: np.ndarray | None = None    # (n_embd,) gemma3: the FFN's output normed


# Up to this many rows a matmul reads each weight row once (kernels.matmul_nt). Measured on the
# small model (benchmarks/RESULTS.md, Engine), a whole decode step against OpenBLAS: 0.94-1.02x
# at 1 row, 1.79-1.87x at 8, 1.40-1.44x at 16. Up to the default max_running a decoding sequence's logits then
# do not depend on what it is batched with.
DECODE_ROWS = 16


def linear(x: np.ndarray, w: Matrix, act: ActBands = ()) -> np.ndarray:
    """x (T, in) @ w (out, in)^T -> (T, out), x first rounded as llama.cpp would for w's type
    (act, one rounding per band of w's rows; () none). A QuantWeight rounds x itself."""
    if isinstance(w, QUANTISED):
        return w.matmul(x)
    if len(act) <= 1:
        return _matmul(vecdot.round_activations(x, act[0][1]) if act else x, w)
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)                  # (T, out)
    rounded: dict[int, np.ndarray] = {}
    start = 0
    for stop, act_type in act:
        if act_type not in rounded:
            rounded[act_type] = vecdot.round_activations(x, act_type)
        out[:, start:stop] = _matmul(rounded[act_type], w[start:stop])
        start = stop
    return out


def _matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A decode step's few rows: the compiled kernel, which reads the weights once (OpenBLAS's
    sgemm would first pack all of them); a prefill's many rows: OpenBLAS, which computes faster
    once the packing pays off."""
    if x.shape[0] <= DECODE_ROWS:
        return kernels.matmul_nt(x, w)
    return x @ w.T


def _silu_mul(gate_up: np.ndarray, n_ff: int) -> np.ndarray:
    """silu(gate) * up (T, n_ff) from gate_up (T, 2 n_ff): the compiled kernel (one pass, no
    temporaries) when built, else ops.silu, its reference."""
    if kernels.COMPILED and gate_up.shape[1] == 2 * n_ff:
        return kernels.silu_mul(np.ascontiguousarray(gate_up, dtype=np.float32))
    return ops.silu(gate_up[:, :n_ff]) * gate_up[:, n_ff:]


def embedding_rows(table: Matrix, token_ids: np.ndarray) -> np.ndarray:
    """The rows of token ids (T,) as a new float32 array (T, n_embd)."""
    return table.rows(token_ids) if isinstance(table, QUANTISED) else table[token_ids]


def act_bands(bands: Sequence[tuple[int, int]]) -> ActBands:
    """ActBands of a fused weight from (num_rows, weight ggml type) of its parts in order:
    neighbours with the same activation type merged; () when every part stays float32."""
    merged: list[tuple[int, int]] = []
    stop = 0
    for num_rows, weight_type in bands:
        stop += num_rows
        act_type = vecdot.activation_type(weight_type)
        if merged and merged[-1][1] == act_type:
            merged[-1] = (stop, act_type)
        else:
            merged.append((stop, act_type))
    return () if all(act_type == vecdot.F32 for _, act_type in merged) else tuple(merged)


class Model:
    """The weights of one model and its forward pass; stateless between calls (the KV
    cache is the caller's)."""

    def __init__(self, config: ModelConfig, get_tensor: Callable[[str], np.ndarray],
                 tensor_types: Mapping[str, int] | None = None,
                 get_quantised: Callable[[str], QuantWeight] | None = None):
        """tensor_types: each tensor's ggml type (GGUFFile.tensors[name].ggml_type), so that
        linear rounds activations as llama.cpp does for it; None: float32 throughout.
        get_quantised: a tensor of a KEPT_WEIGHTS type kept quantised (with tensor_types), for
        matrices whose parts are all of one such type."""
        self.config = config
        self._get_tensor, self._get_quantised = get_tensor, get_quantised
        self._types = tensor_types or {}
        c = config
        self.q_dim, self.kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        self.token_embd = self._matrix(("token_embd.weight", c.n_vocab), cols=c.n_embd)  # (n_vocab, n_embd)
        self.layers = [self._load_layer(layer) for layer in range(c.n_layer)]
        self.output_norm = self._load("output_norm.weight", (c.n_embd,))        # (n_embd,)
        # (n_vocab, n_embd); tied: token_embd itself, no copy
        self.lm_head = (self.token_embd if c.tied_embeddings
                        else self._matrix(("output.weight", c.n_vocab), cols=c.n_embd))
        head_name = "token_embd.weight" if c.tied_embeddings else "output.weight"
        self.lm_head_act = self._act((head_name, c.n_vocab))
        factors_name = c.rope_factors_name()
        factors = self._load(factors_name, (c.n_rot // 2,)) if factors_name else None
        self.inv_freq = ops.rope_inv_freq(c.n_rot, c.rope_freq_base, c.rope_freq_scale, factors)  # (n_rot/2,)
        # (n_rot/2,) the sliding-window layers' own RoPE (gemma3), or None: as the others
        self.inv_freq_swa = ops.rope_inv_freq(c.n_rot, c.rope_freq_base_swa) if c.rope_freq_base_swa else None
        self.attn_scale = c.attn_scale or 1.0 / np.sqrt(c.head_dim)
        self._get_tensor = self._get_quantised = self._types = None  # do not keep the loader (and its mapping) alive

    def _load(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = np.ascontiguousarray(self._get_tensor(name), dtype=np.float32)
        check_shape(name, array.shape, shape)
        return array

    def _matrix(self, *parts: tuple[str, int], cols: int) -> Matrix:
        """A weight fused from (tensor name, rows) parts stacked by rows, each (rows, cols):
        kept quantised when get_quantised is given and every part is of a KEPT_WEIGHTS type (runs
        of one type concatenated, a StackedWeight of the runs when there are several), else float32."""
        if self._get_quantised is None or any(self._types.get(name) not in KEPT_WEIGHTS for name, _ in parts):
            arrays = [self._load(name, (num_rows, cols)) for name, num_rows in parts]
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        weights = [self._get_quantised(name) for name, _ in parts]
        for (name, num_rows), weight in zip(parts, weights):
            check_shape(name, weight.shape, (num_rows, cols))
        runs: list[list[QuantWeight]] = []
        for weight in weights:
            if runs and type(runs[-1][0]) is type(weight):
                runs[-1].append(weight)
            else:
                runs.append([weight])
        stacked = [run[0] if len(run) == 1 else type(run[0]).concat(run) for run in runs]
        return stacked[0] if len(stacked) == 1 else StackedWeight(tuple(stacked))

    def _act(self, *parts: tuple[str, int]) -> ActBands:
        """ActBands of a weight fused from (tensor name, rows) parts; () when types are unknown."""
        if not self._types:
            return ()
        return act_bands([(num_rows, self._types[name]) for name, num_rows in parts])

    def _load_layer(self, layer: int) -> LayerWeights:
        c, p = self.config, f"blk.{layer}."
        qkv, gate_up = self._fused_parts(p)
        bqkv = None
        if c.qkv_bias:
            bqkv = np.concatenate([self._load(p + "attn_q.bias", (self.q_dim,)),
                                   self._load(p + "attn_k.bias", (self.kv_dim,)),
                                   self._load(p + "attn_v.bias", (self.kv_dim,))])
        return LayerWeights(
            attn_norm=self._load(p + "attn_norm.weight", (c.n_embd,)),
            wqkv=self._matrix(*qkv, cols=c.n_embd), bqkv=bqkv,
            q_norm=self._load(p + "attn_q_norm.weight", (c.head_dim,)) if c.qk_norm else None,
            k_norm=self._load(p + "attn_k_norm.weight", (c.head_dim,)) if c.qk_norm else None,
            wo=self._matrix((p + "attn_output.weight", c.n_embd), cols=self.q_dim),
            ffn_norm=self._load(p + "ffn_norm.weight", (c.n_embd,)),
            w_gate_up=self._matrix(*gate_up, cols=c.n_embd),
            w_down=self._matrix((p + "ffn_down.weight", c.n_embd), cols=c.n_ff),
            qkv_act=self._act(*qkv), wo_act=self._act((p + "attn_output.weight", c.n_embd)),
            gate_up_act=self._act(*gate_up),
            down_act=self._act((p + "ffn_down.weight", c.n_embd)),
            attn_post_norm=self._load(p + "post_attention_norm.weight", (c.n_embd,)) if c.post_norms else None,
            ffn_post_norm=self._load(p + "post_ffw_norm.weight", (c.n_embd,)) if c.post_norms else None)

    def _fused_parts(self, p: str) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
        """(tensor name, rows) parts of a layer's fused Q/K/V and gate/up weights: phi3's file
        holds each fused already (ffn_up's first n_ff rows the gate: ggml's swiglu), the others
        as separate tensors."""
        c = self.config
        if c.fused_tensors:
            return ((p + "attn_qkv.weight", self.q_dim + 2 * self.kv_dim),), ((p + "ffn_up.weight", 2 * c.n_ff),)
        return (((p + "attn_q.weight", self.q_dim), (p + "attn_k.weight", self.kv_dim),
                 (p + "attn_v.weight", self.kv_dim)),
                ((p + "ffn_gate.weight", c.n_ff), (p + "ffn_up.weight", c.n_ff)))

    def release(self) -> None:
        """Nothing to do: host memory goes with the last reference (gpu_model.GpuModel frees device memory here)."""

    def forward(self, batch: Batch, kv: PagedKVCache) -> np.ndarray:
        """Run the batch, write its K/V into kv; logits of the logits_indices rows (num_logits, n_vocab)."""
        return self.run(batch, kv)[0]

    def run(self, batch: Batch, kv: PagedKVCache) -> tuple[np.ndarray, np.ndarray]:
        """forward's logits (num_logits, n_vocab), and the final normed hidden states of the
        hidden_indices rows (num_hidden, n_embd), for `head` to turn into logits a slice at a time."""
        x = self._residual(batch, kv)                                     # (T, n_embd)
        eps = self.config.rms_norm_eps
        hidden = ops.rms_norm(x[batch.hidden_indices], self.output_norm, eps)       # (num_hidden, n_embd)
        h = ops.rms_norm(x[batch.logits_indices], self.output_norm, eps)            # (num_logits, n_embd)
        return self.head(h), hidden

    def head(self, h: np.ndarray) -> np.ndarray:
        """The LM head: final normed hidden states (rows, n_embd) -> logits (rows, n_vocab)."""
        logits = linear(h, self.lm_head, self.lm_head_act)
        cap = self.config.final_softcap
        if cap:
            ops.soft_cap_(logits, cap)                                   # (rows, n_vocab), in place
        return logits

    @property
    def nbytes(self) -> int:
        """Bytes of the weights held (a tied LM head counted once)."""
        arrays = [self.token_embd, self.output_norm]
        arrays += [a for layer in self.layers for a in vars(layer).values() if isinstance(a, Matrix)]
        return sum(a.nbytes for a in arrays) + (0 if self.config.tied_embeddings else self.lm_head.nbytes)

    def hidden(self, batch: Batch, kv: PagedKVCache) -> np.ndarray:
        """Final normed hidden states of all T rows (T, n_embd), e.g. for mean-pooled embeddings."""
        return ops.rms_norm(self._residual(batch, kv), self.output_norm, self.config.rms_norm_eps)

    def _residual(self, batch: Batch, kv: PagedKVCache) -> np.ndarray:
        check_token_ids(batch, self.config.n_vocab)
        plan = AttentionPlan(batch, kv.block_size, kv.num_blocks)
        rope = ops.rope_cos_sin(batch.positions, self.inv_freq, self.config.rope_attn_factor)  # cos, sin (T, n_rot/2)
        rope_swa = rope if self.inv_freq_swa is None else ops.rope_cos_sin(batch.positions, self.inv_freq_swa)
        x = embedding_rows(self.token_embd, batch.token_ids)             # (T, n_embd)
        if self.config.embd_scale != 1.0:
            x *= np.float32(self.config.embd_scale)
        for index, layer in enumerate(self.layers):
            window = self.config.window_of(index)
            cos, sin = rope_swa if window else rope
            x += self._attention_block(index, layer, x, cos, sin, batch, plan, kv)
            x += self._ffn_block(layer, x)
        return x

    def _attention_block(self, index: int, layer: LayerWeights, x: np.ndarray, cos: np.ndarray,
                         sin: np.ndarray, batch: Batch, plan: AttentionPlan, kv: PagedKVCache) -> np.ndarray:
        c, num_tokens = self.config, x.shape[0]
        h = ops.rms_norm(x, layer.attn_norm, c.rms_norm_eps)             # (T, n_embd)
        qkv = linear(h, layer.wqkv, layer.qkv_act)                       # (T, q_dim + 2 * kv_dim)
        if layer.bqkv is not None:
            qkv += layer.bqkv
        v = qkv[:, self.q_dim + self.kv_dim:].reshape(num_tokens, c.n_head_kv, c.head_dim)
        if layer.q_norm is None:     # Q's and K's heads side by side: one rotation for both
            qk = ops.apply_rope(qkv[:, :self.q_dim + self.kv_dim].reshape(num_tokens, -1, c.head_dim), cos, sin,
                                c.rope_style)                            # (T, n_head + n_head_kv, head_dim)
            q, k = qk[:, :c.n_head], qk[:, c.n_head:]
        else:
            q = qkv[:, :self.q_dim].reshape(num_tokens, c.n_head, c.head_dim)
            k = qkv[:, self.q_dim:self.q_dim + self.kv_dim].reshape(num_tokens, c.n_head_kv, c.head_dim)
            q = ops.apply_rope(ops.rms_norm(q, layer.q_norm, c.rms_norm_eps), cos, sin, c.rope_style)
            k = ops.apply_rope(ops.rms_norm(k, layer.k_norm, c.rms_norm_eps), cos, sin, c.rope_style)
        kv.write(index, plan.slots, k, v)
        out = self._attention(index, q, batch, plan, kv)                 # (T, n_head, head_dim)
        out = linear(out.reshape(num_tokens, self.q_dim), layer.wo, layer.wo_act)  # (T, n_embd)
        return out if layer.attn_post_norm is None else ops.rms_norm(out, layer.attn_post_norm, c.rms_norm_eps)

    def _attention(self, index: int, q: np.ndarray, batch: Batch, plan: AttentionPlan,
                   kv: PagedKVCache) -> np.ndarray:
        """All decoding sequences in one padded call, each prefilling sequence on its own."""
        out = np.empty_like(q)                                           # (T, n_head, head_dim)
        window, softcap = self.config.window_of(index), self.config.attn_softcap
        if plan.decode_rows.size:
            out[plan.decode_rows] = kv.decode_attention(index, q[plan.decode_rows], plan.decode_tables,
                                                        plan.decode_lens, self.attn_scale, window, softcap)
        for seq in plan.prefill:
            rows = slice(batch.query_start[seq], batch.query_start[seq + 1])
            num_computed = batch.num_computed[seq]
            k, v = kv.gather(index, batch.block_tables[seq], num_computed + rows.stop - rows.start)
            out[rows] = ops.causal_attention(q[rows], k, v, num_computed, self.attn_scale, window, softcap)
        return out

    def _ffn_block(self, layer: LayerWeights, x: np.ndarray) -> np.ndarray:
        h = ops.rms_norm(x, layer.ffn_norm, self.config.rms_norm_eps)    # (T, n_embd)
        gate_up = linear(h, layer.w_gate_up, layer.gate_up_act)          # (T, 2 * n_ff)
        n_ff = self.config.n_ff
        if self.config.ffn_gelu:
            act = ops.gelu(gate_up[:, :n_ff]) * gate_up[:, n_ff:]        # (T, n_ff)
        else:
            act = _silu_mul(gate_up, n_ff)                               # (T, n_ff)
        out = linear(act, layer.w_down, layer.down_act)                  # (T, n_embd)
        return out if layer.ffn_post_norm is None else ops.rms_norm(out, layer.ffn_post_norm, self.config.rms_norm_eps)
