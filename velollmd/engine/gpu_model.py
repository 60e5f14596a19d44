"""The engine's forward pass on a CUDA device: the kernels of velollmd/cuda over weights and a
paged KV cache in device memory, behind the same forward / hidden / config / nbytes as model.Model,
so the runner, the scheduler and the block allocator do not know which one they drive.

    ops = kernels.Kernels(sources.engine_defines(...), kernels.PrimaryContext())
    model = GpuModel.load(gguf, config, ops)
    kv = GpuKVCache(ops, config.n_layer, num_blocks, block_size, config.n_head_kv, config.head_dim)
    logits = model.forward(batch, kv)                   # (num_logits, n_vocab) numpy, for sampling
    logits, hidden = model.run(batch, kv)               # and model.Model.run's hidden rows, on the host

Weights go to the device as the GGUF holds them where a kernel multiplies that type directly
(F32, F16, Q8_0: matmul.cu); any other type is dequantised and stored as F16 (a K-quant's values
rounded to half precision). Q, K and V are three products (their outputs must be separate
contiguous arrays for RoPE and the cache write); gate and up stay fused for silu_mul. Activations
are float32 throughout, so unlike the CPU engine no activation is rounded the way llama.cpp's CPU
backend rounds it: logits agree with the CPU engine's float32 forward pass (`Model` built without
tensor types) to float32 summation order.

`ops` is a kernels.Kernels on a device, or tests/cuda/mirror_kernels.MirrorKernels, the same
methods over numpy arrays replaying each kernel's thread decomposition: the wiring below is
tested on every machine, the kernels themselves on a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gguf import GGUFFile
from .kvcache import kv_bytes_per_token
from .model import AttentionPlan, Batch, ModelConfig, check_shape, check_token_ids, padded_tables
from .ops import ROPE_NEOX, rope_inv_freq, rope_cos_sin
from .quants import GGML_TYPES

KIND_OF_TYPE = {GGML_TYPES["F32"]: "f32", GGML_TYPES["F16"]: "f16", GGML_TYPES["Q8_0"]: "q8_0"}
DECODE_PARTITION = 512      # tokens per partition of the decode kernel, for longer contexts
F32, I32 = np.float32, np.int32


@dataclass
class DeviceMatrix:
    """A weight (rows, cols) on the device as matmul.cu reads it: raw bytes of one kind."""
    data: object        # device uint8 array
    kind: str           # f32 | f16 | q8_0
    rows: int
    nbytes: int


@dataclass
class DeviceLayer:
    attn_norm: object               # (n_embd,) f32
    wq: DeviceMatrix                # (q_dim, n_embd)
    wk: DeviceMatrix                # (kv_dim, n_embd)
    wv: DeviceMatrix                # (kv_dim, n_embd)
    biases: tuple | None            # qwen2: (q_dim,), (kv_dim,), (kv_dim,) f32
    q_norm: object | None           # qwen3: (head_dim,) f32
    k_norm: object | None
    wo: DeviceMatrix                # (n_embd, q_dim)
    ffn_norm: object                # (n_embd,) f32
    w_gate_up: DeviceMatrix         # (2 * n_ff, n_embd): gate then up
    w_down: DeviceMatrix            # (n_embd, n_ff)


class GpuKVCache:
    """K and V per layer, each (num_blocks, block_size, num_kv_heads, head_dim) float32 on the
    device; the same block ids as kvcache.PagedKVCache, from the same CFFI allocator."""

    def __init__(self, ops, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int):
        if min(num_layers, num_blocks, block_size, num_kv_heads, head_dim) < 1:
            raise ValueError("GpuKVCache: every dimension must be >= 1")
        self.ops = ops
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        with ops.active():
            self.k = [ops.zeros(shape, F32) for _ in range(num_layers)]
            self.v = [ops.zeros(shape, F32) for _ in range(num_layers)]

    @classmethod
    def like(cls, other: "GpuKVCache", num_blocks: int) -> "GpuKVCache":
        return cls(other.ops, other.num_layers, num_blocks, other.block_size, other.num_kv_heads, other.head_dim)

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.block_size * kv_bytes_per_token(self.num_layers, self.num_kv_heads,
                                                                      self.head_dim)

    def copy_blocks(self, pairs) -> None:
        """Copy-on-write: block src -> block dst in every layer (kvcache.PagedKVCache.copy_blocks)."""
        if pairs:
            with self.ops.active():
                self.ops.copy_blocks(self.k + self.v, [(int(src), int(dst)) for src, dst in pairs])

    def release(self) -> None:
        """Free the device memory now, from any thread (kernels.Kernels.free says why); the
        cache is not used after this."""
        with self.ops.active():
            self.ops.free(self.k + self.v)
        self.k, self.v = [], []


class GpuModel:
    """One model's weights on the device and its forward pass; stateless between calls."""

    def __init__(self, config: ModelConfig, ops, token_embd, layers: list[DeviceLayer], output_norm,
                 lm_head: DeviceMatrix, inv_freq: np.ndarray, nbytes: int):
        self.config, self.ops = config, ops
        self.token_embd, self.layers, self.output_norm, self.lm_head = token_embd, layers, output_norm, lm_head
        self.inv_freq = inv_freq                                         # (n_rot/2,) host
        self.attn_scale = 1.0 / np.sqrt(config.head_dim)
        self.q_dim, self.kv_dim = config.n_head * config.head_dim, config.n_head_kv * config.head_dim
        self.nbytes = nbytes
        self.released = False

    @classmethod
    def load(cls, gguf: GGUFFile, config: ModelConfig, ops) -> "GpuModel":
        with ops.active():
            ops.compile_all()
            return _Uploader(gguf, config, ops).model()

    def release(self) -> None:
        """Free the weights' device memory, the pool's and the kernels' now, from any thread
        (kernels.Kernels.free says why); the model runs no pass after this."""
        if self.released:
            return
        with self.ops.active():
            self.ops.free(self._device_arrays())
            self.ops.release()
        self.released = True
        self.token_embd = self.output_norm = self.lm_head = None
        self.layers = []

    def _device_arrays(self) -> list:
        matrices = [self.lm_head] + [getattr(layer, name) for layer in self.layers
                                     for name in ("wq", "wk", "wv", "wo", "w_gate_up", "w_down")]
        vectors = [self.token_embd, self.output_norm] + [
            vector for layer in self.layers
            for vector in (layer.attn_norm, layer.ffn_norm, layer.q_norm, layer.k_norm, *(layer.biases or ()))]
        return [matrix.data for matrix in matrices] + [vector for vector in vectors if vector is not None]

    def forward(self, batch: Batch, kv: GpuKVCache) -> np.ndarray:
        """Run the batch, write its K/V into kv; logits of the logits_indices rows (num_logits, n_vocab)."""
        return self.run(batch, kv)[0]

    def run(self, batch: Batch, kv: GpuKVCache) -> tuple[np.ndarray, np.ndarray]:
        """model.Model.run: forward's logits (num_logits, n_vocab) and the final normed hidden
        states of the hidden_indices rows (num_hidden, n_embd), both on the host."""
        with self.ops.active():
            x = self._residual(batch, kv)                                                  # (T, n_embd)
            hidden = self._normed_rows(x, batch.hidden_indices)                            # (num_hidden, n_embd)
            h = self._normed_rows(x, batch.logits_indices)                                 # (num_logits, n_embd)
            logits = (np.zeros((0, self.config.n_vocab), F32) if h is None
                      else self.ops.to_host(self._linear(h, self.lm_head)))               # (num_logits, n_vocab)
            return logits, (np.zeros((0, self.config.n_embd), F32) if hidden is None else self.ops.to_host(hidden))

    def head(self, h: np.ndarray) -> np.ndarray:
        """The LM head: final normed hidden states (rows, n_embd) on the host -> logits (rows, n_vocab)."""
        with self.ops.active():
            return self.ops.to_host(self._linear(self.ops.to_device(h.astype(F32, copy=False)),
                                                 self.lm_head))

    def _normed_rows(self, x, indices: np.ndarray):
        """The final norm of x's rows at indices, on the device; None for no rows (no empty launch:
        a step of non-final prefill chunks only, or no prompt logprobs asked)."""
        if not len(indices):
            return None
        return self._rms_norm(self.ops.embedding(x, self.ops.to_device(indices.astype(I32))), self.output_norm)

    def hidden(self, batch: Batch, kv: GpuKVCache) -> np.ndarray:
        """Final normed hidden states of all T rows (T, n_embd), e.g. for mean-pooled embeddings."""
        with self.ops.active():
            return self.ops.to_host(self._rms_norm(self._residual(batch, kv), self.output_norm))

    def _residual(self, batch: Batch, kv: GpuKVCache):
        c, ops = self.config, self.ops
        if self.released:
            raise RuntimeError("GpuModel: its device memory was released (the model was unloaded)")
        check_token_ids(batch, c.n_vocab)
        plan = _DevicePlan(batch, kv, ops)
        cos, sin = (ops.to_device(a) for a in rope_cos_sin(batch.positions, self.inv_freq))  # (T, n_rot/2)
        x = ops.embedding(self.token_embd, ops.to_device(batch.token_ids.astype(I32, copy=False)))  # (T, n_embd)
        for index, layer in enumerate(self.layers):
            x += self._attention_block(index, layer, x, cos, sin, plan, kv)
            x += self._ffn_block(layer, x)
        return x

    def _attention_block(self, index: int, layer: DeviceLayer, x, cos, sin, plan: "_DevicePlan", kv: GpuKVCache):
        c, ops, num_tokens = self.config, self.ops, x.shape[0]
        h = self._rms_norm(x, layer.attn_norm)                                           # (T, n_embd)
        q, k, v = (self._linear(h, w) for w in (layer.wq, layer.wk, layer.wv))          # (T, q_dim), (T, kv_dim) x 2
        if layer.biases is not None:
            for y, bias in zip((q, k, v), layer.biases):
                ops.add_bias(y, bias)
        q = q.reshape(num_tokens, c.n_head, c.head_dim)
        k = k.reshape(num_tokens, c.n_head_kv, c.head_dim)
        if layer.q_norm is not None:
            q = self._rms_norm(q.reshape(-1, c.head_dim), layer.q_norm).reshape(q.shape)
            k = self._rms_norm(k.reshape(-1, c.head_dim), layer.k_norm).reshape(k.shape)
        neox = c.rope_style == ROPE_NEOX
        ops.rope(q, cos, sin, neox)
        ops.rope(k, cos, sin, neox)
        ops.reshape_and_cache(kv.k[index], kv.v[index], k, v.reshape(num_tokens, c.n_head_kv, c.head_dim),
                              plan.slots)
        out = plan.attention(ops, q, kv.k[index], kv.v[index], self.attn_scale)         # (T, n_head, head_dim)
        return self._linear(out.reshape(num_tokens, self.q_dim), layer.wo)               # (T, n_embd)

    def _ffn_block(self, layer: DeviceLayer, x):
        h = self._rms_norm(x, layer.ffn_norm)                                            # (T, n_embd)
        act = self.ops.silu_mul(self._linear(h, layer.w_gate_up))                        # (T, n_ff)
        return self._linear(act, layer.w_down)                                           # (T, n_embd)

    def _rms_norm(self, x, weight):
        out = self.ops.empty_like(x)
        self.ops.rms_norm(out, x, weight, self.config.rms_norm_eps)
        return out

    def _linear(self, x, w: DeviceMatrix):
        return self.ops.matmul(x, w.data, w.kind, w.rows)


class _DevicePlan:
    """One pass's attention inputs on the device: cache slots, and either the decode kernel's
    tables (every sequence decodes one token) or the prefill kernel's packed layout."""

    def __init__(self, batch: Batch, kv: GpuKVCache, ops):
        plan = AttentionPlan(batch, kv.block_size, kv.num_blocks)      # checks tables, lengths, block ids
        self.slots = ops.to_device(plan.slots)                           # (T,) int64
        self.decode_only = not plan.prefill
        if self.decode_only:
            self.max_len = int(plan.decode_lens.max())
            self.tables = ops.to_device(plan.decode_tables.astype(I32))  # (B, max_blocks)
            self.lens = ops.to_device(plan.decode_lens.astype(I32))      # (B,)
        else:
            seq_lens = batch.seq_lens()                                  # (num_seqs,)
            max_blocks = -(-int(seq_lens.max()) // kv.block_size)
            self.tables = ops.to_device(padded_tables(batch.block_tables, max_blocks).astype(I32))
            self.lens = ops.to_device(seq_lens.astype(I32))
            self.query_start = ops.to_device(batch.query_start.astype(I32))   # (num_seqs + 1,)
            self.max_query_len = int(batch.query_lens().max())

    def attention(self, ops, q, k_cache, v_cache, scale: float):
        if self.decode_only:
            partition = DECODE_PARTITION if self.max_len > DECODE_PARTITION else None
            return ops.paged_attention_decode(q, k_cache, v_cache, self.tables, self.lens, scale, self.max_len,
                                              partition)
        return ops.prefill_attention(q, k_cache, v_cache, self.query_start, self.lens, self.tables, scale,
                                     self.max_query_len)


class _Uploader:
    """Reads a GGUF's tensors and puts them on the device in the form the kernels take."""

    def __init__(self, gguf: GGUFFile, config: ModelConfig, ops):
        self.gguf, self.config, self.ops = gguf, config, ops
        self.nbytes = 0

    def model(self) -> GpuModel:
        c = self.config
        if self.gguf.tensors["token_embd.weight"].ggml_type == GGML_TYPES["F16"]:   # the table as stored
            embd = self.gguf.raw("token_embd.weight").view(np.float16).reshape(c.n_vocab, c.n_embd)
        else:
            embd = self._float("token_embd.weight", (c.n_vocab, c.n_embd))
        token_embd = self._put(embd)                                    # (n_vocab, n_embd) f32 or f16
        head = "token_embd.weight" if c.tied_embeddings else "output.weight"
        lm_head = self._matrix((head, c.n_vocab), cols=c.n_embd)
        factors = self._float("rope_freqs.weight", (c.n_rot // 2,)) if c.has_rope_freqs else None
        inv_freq = rope_inv_freq(c.n_rot, c.rope_freq_base, c.rope_freq_scale, factors)
        layers = [self._layer(layer) for layer in range(c.n_layer)]
        output_norm = self._put(self._float("output_norm.weight", (c.n_embd,)))
        return GpuModel(c, self.ops, token_embd, layers, output_norm, lm_head, inv_freq, self.nbytes)

    def _layer(self, layer: int) -> DeviceLayer:
        c, p = self.config, f"blk.{layer}."
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        vector = lambda name, size: self._put(self._float(p + name, (size,)))      # noqa: E731
        return DeviceLayer(
            attn_norm=vector("attn_norm.weight", c.n_embd),
            wq=self._matrix((p + "attn_q.weight", q_dim), cols=c.n_embd),
            wk=self._matrix((p + "attn_k.weight", kv_dim), cols=c.n_embd),
            wv=self._matrix((p + "attn_v.weight", kv_dim), cols=c.n_embd),
            biases=(vector("attn_q.bias", q_dim), vector("attn_k.bias", kv_dim), vector("attn_v.bias", kv_dim))
            if c.qkv_bias else None,
            q_norm=vector("attn_q_norm.weight", c.head_dim) if c.qk_norm else None,
            k_norm=vector("attn_k_norm.weight", c.head_dim) if c.qk_norm else None,
            wo=self._matrix((p + "attn_output.weight", c.n_embd), cols=q_dim),
            ffn_norm=vector("ffn_norm.weight", c.n_embd),
            w_gate_up=self._matrix((p + "ffn_gate.weight", c.n_ff), (p + "ffn_up.weight", c.n_ff), cols=c.n_embd),
            w_down=self._matrix((p + "ffn_down.weight", c.n_embd), cols=c.n_ff))

    def _float(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = self.gguf.dequantize(name)
        check_shape(name, array.shape, shape)
        return array

    def _matrix(self, *parts: tuple[str, int], cols: int) -> DeviceMatrix:
        """A weight of (tensor name, rows) parts stacked by rows: their raw bytes when all are of
        one kind matmul.cu reads, else all dequantised and stored as F16."""
        kinds = {KIND_OF_TYPE.get(self.gguf.tensors[name].ggml_type) for name, _ in parts}
        rows = sum(num_rows for _, num_rows in parts)
        if len(kinds) == 1 and None not in kinds:
            for name, num_rows in parts:
                check_shape(name, self.gguf.tensors[name].shape, (num_rows, cols))
            raw = np.concatenate([self.gguf.raw(name) for name, _ in parts])
            return DeviceMatrix(self._put(raw), kinds.pop(), rows, raw.nbytes)
        halves = np.concatenate([self._float(name, (num_rows, cols)) for name, num_rows in parts]).astype(np.float16)
        return DeviceMatrix(self._put(halves.view(np.uint8).reshape(-1)), "f16", rows, halves.nbytes)

    def _put(self, array: np.ndarray):
        self.nbytes += array.nbytes
        return self.ops.keep_on_device(array)

