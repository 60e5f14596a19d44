"""MirrorKernels: kernels.Kernels' methods over numpy arrays, each launch replayed by its numpy
mirror (velollmd/cuda/mirror.py: the kernel's own grid, warps and accumulation order).

The engine's CUDA forward pass (engine/gpu_model.py) takes either, so on a machine without a GPU
its wiring (shapes, strides, which kernel gets which buffer, in-place writes, the decode and
prefill plans) runs through the kernels' algorithms end to end.

The mirror is as strict as the device, where numpy alone would forgive:
- device memory is a DeviceArray: a kernel refuses a host array (pycuda packs an ndarray
  argument as bytes by value), a dtype its .cu does not declare (an int64 table read as int*
  gives every other entry as 0), a non-contiguous view, shapes the build's defines do not fit
  (HEAD_DIM, BLOCK_SIZE, MAX_GROUP), a grid too small for its rows (max_query_len,
  max_context_len), weight bytes of the wrong size; `+=` wants the same shape (GPUArray asserts
  it, numpy would broadcast) and reshape a contiguous array (GPUArray raises, numpy copies);
- every allocation and launch needs the context current on the calling thread (active()), and a
  plain allocation (keep_on_device, zeros) is freed as pycuda frees it
  (cuda.hpp scoped_context_activation): on a thread where the context is current or on the
  thread that made the context, else pycuda warns and the memory leaks; `leaked` records those.
  Pooled allocations (to_device, empty_like, kernel outputs) go back to the pool without a CUDA call.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager

import numpy as np
import psutil

from velollmd.cuda import mirror, sources

F16, F32, I32, I64, U8 = np.float16, np.float32, np.int32, np.int64, np.uint8


class DeviceMisuse(AssertionError):
    """What the real kernels or pycuda would get wrong, fail on or leak."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DeviceMisuse(message)


class DeviceArray(np.ndarray):
    """A numpy array standing for device memory (a pycuda GPUArray)."""

    def reshape(self, *shape, **kwargs):
        _require(self.flags.c_contiguous, "GPUArray.reshape: only a contiguous array reshapes")
        return super().reshape(*shape, **kwargs)

    def __iadd__(self, other):
        _require(isinstance(other, DeviceArray) and other.shape == self.shape and self.flags.c_contiguous
                 and other.flags.c_contiguous,
                 f"GPUArray +=: a contiguous device array of the same shape, not {type(other).__name__} "
                 f"{getattr(other, 'shape', '')} onto {self.shape}")
        return super().__iadd__(other)

    def __getitem__(self, index):
        items = index if isinstance(index, tuple) else (index,)
        _require(not any(isinstance(item, (np.ndarray, list)) for item in items),
                 "GPUArray: no fancy indexing on the device (gather through a kernel)")
        return super().__getitem__(index)


def _root(array: DeviceArray) -> DeviceArray:
    """The allocation a view belongs to."""
    while isinstance(array.base, DeviceArray):
        array = array.base
    return array


class MirrorContext:
    """A CUDA context as pycuda keeps it: current per thread (pushed by active()), and made on
    one thread, the only one where pycuda can push it to free memory itself."""

    def __init__(self):
        self.thread = threading.get_ident()
        self._local = threading.local()

    @property
    def depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextmanager
    def active(self):
        self._local.depth = self.depth + 1
        try:
            yield
        finally:
            self._local.depth -= 1

    def can_free(self) -> bool:
        return self.depth > 0 or threading.get_ident() == self.thread


class MirrorKernels:
    def __init__(self, defines: dict[str, int] | None = None):
        self.defines = dict(defines or {})
        self.context = MirrorContext()          # made where kernels.PrimaryContext would be
        self.launches: dict[str, int] = {}      # kernel -> times launched
        self.live: dict[int, int] = {}          # id of each plain allocation alive -> its bytes
        self.leaked: list[int] = []             # bytes of each plain allocation dropped where pycuda cannot free
        self._finalizers: dict[int, weakref.finalize] = {}

    def _count(self, name: str) -> None:
        self._require_active()
        self.launches[name] = self.launches.get(name, 0) + 1

    def _define(self, name: str, default: int) -> int:
        return int(self.defines.get(name, default))

    def _require_active(self) -> None:
        _require(self.context.depth > 0, "no current CUDA context on this thread (outside ops.active())")

    # ---- memory

    def active(self):
        return self.context.active()

    def _pooled(self, array: np.ndarray) -> DeviceArray:
        self._require_active()
        return np.array(array, copy=True, order="C").view(DeviceArray)

    def _plain(self, array: np.ndarray) -> DeviceArray:
        self._require_active()
        device = np.array(array, copy=True, order="C").view(DeviceArray)
        key = id(device)
        self.live[key] = device.nbytes
        self._finalizers[key] = weakref.finalize(device, self._dropped, key)
        return device

    def _dropped(self, key: int) -> None:
        """A plain allocation's last reference went: pycuda frees it only where it can push the context."""
        nbytes = self.live.pop(key)
        self._finalizers.pop(key, None)
        if not self.context.can_free():
            self.leaked.append(nbytes)

    def compile_all(self) -> None:
        self._count("compile_all")

    def free_bytes(self) -> int:
        self._require_active()
        return psutil.virtual_memory().available

    def to_device(self, array: np.ndarray) -> DeviceArray:
        _require(not isinstance(array, DeviceArray), "to_device: already on the device")
        return self._pooled(array)

    def keep_on_device(self, array: np.ndarray) -> DeviceArray:
        _require(not isinstance(array, DeviceArray), "keep_on_device: already on the device")
        return self._plain(array)

    def to_host(self, array) -> np.ndarray:
        self._device("to_host", array, array.dtype)
        return np.array(array)

    def zeros(self, shape: tuple[int, ...], dtype) -> DeviceArray:
        return self._plain(np.zeros(shape, dtype))

    def empty_like(self, array) -> DeviceArray:
        self._device("empty_like", array, array.dtype)
        return self._pooled(np.full(array.shape, np.nan, array.dtype))   # never read before written

    def free(self, arrays) -> None:
        self._require_active()
        for array in arrays:
            root = _root(array)
            _require(id(root) in self.live, "free: not a live plain allocation (freed twice?)")
            root.freed = True
            self._finalizers.pop(id(root)).detach()
            self.live.pop(id(root))

    def release(self) -> None:
        self._count("release")

    def copy_blocks(self, caches: list, pairs: list[tuple[int, int]]) -> None:
        self._count("copy_blocks")
        for cache in caches:
            cache = self._device("copy_blocks cache", cache, cache.dtype)
            for src, dst in pairs:
                cache[dst] = cache[src]

    # ---- what a launch checks

    def _device(self, what: str, array, dtype, shape: tuple | None = None) -> np.ndarray:
        """The array as the kernel would read it, or DeviceMisuse; returns a plain view (writes land)."""
        _require(isinstance(array, DeviceArray), f"{what}: a host {type(array).__name__}, not device memory")
        _require(not getattr(_root(array), "freed", False), f"{what}: device memory already freed")
        _require(array.dtype == np.dtype(dtype), f"{what}: {array.dtype}, the kernel reads {np.dtype(dtype)}")
        _require(array.flags.c_contiguous, f"{what}: not contiguous")
        if shape is not None:
            _require(array.ndim == len(shape) and all(want in (None, got) for want, got in zip(shape, array.shape)),
                     f"{what}: shape {array.shape}, the kernel reads {shape}")
        return array.view(np.ndarray)

    def _kv_dtype(self):
        return F16 if self._define("KV_F16", 0) else F32

    def _caches(self, k_cache, v_cache, attention: bool) -> tuple[np.ndarray, np.ndarray]:
        head_dim = self._define("HEAD_DIM", sources.HEAD_DIM)
        block_size = self._define("BLOCK_SIZE", sources.BLOCK_SIZE)
        shape = (None, block_size if attention else None, None, head_dim)
        k = self._device("k_cache", k_cache, self._kv_dtype(), shape)
        v = self._device("v_cache", v_cache, self._kv_dtype(), k.shape)
        return k, v

    def _query(self, q, num_kv_heads: int) -> np.ndarray:
        q = self._device("q", q, F32, (None, None, self._define("HEAD_DIM", sources.HEAD_DIM)))
        group = q.shape[1] // num_kv_heads
        _require(q.shape[1] % num_kv_heads == 0 and 1 <= group <= self._define("MAX_GROUP", sources.MAX_GROUP),
                 f"{q.shape[1]} query heads over {num_kv_heads} KV heads: group outside 1..MAX_GROUP")
        return q

    @staticmethod
    def _tables_cover(tables: np.ndarray, lens: np.ndarray, k_cache: np.ndarray) -> None:
        num_blocks, block_size = k_cache.shape[:2]
        _require(tables.size == 0 or (tables.min() >= 0 and tables.max() < num_blocks),
                 "a block id outside the cache (numpy would wrap a negative one)")
        _require(int(lens.min(initial=1)) >= 1, "a context length below 1")
        _require(tables.shape[1] * block_size >= int(lens.max(initial=0)),
                 f"block tables of {tables.shape[1]} blocks do not cover {int(lens.max())} tokens")

    # ---- the launches

    def paged_attention_decode(self, q, k_cache, v_cache, block_tables, context_lens, scale: float,
                               max_context_len: int, partition_size: int | None = None, workspace=None):
        self._count("paged_attention_decode" if partition_size is None else "paged_attention_decode_partitioned")
        k, v = self._caches(k_cache, v_cache, attention=True)
        q = self._query(q, k.shape[2])
        tables = self._device("block_tables", block_tables, I32, (q.shape[0], None))
        lens = self._device("context_lens", context_lens, I32, (q.shape[0],))
        self._tables_cover(tables, lens, k)
        _require(max_context_len >= int(lens.max()), f"max_context_len {max_context_len} < a context of "
                 f"{int(lens.max())}: the grid has too few partitions")
        out = mirror.paged_attention_decode(q, k, v, tables, lens, scale, partition_size,
                                            self._define("NUM_WARPS", sources.NUM_WARPS),
                                            self._define("TOKENS_PER_WARP", sources.TOKENS_PER_WARP))
        return self._pooled(out)

    def reshape_and_cache(self, k_cache, v_cache, key, value, slot_mapping) -> None:
        self._count("reshape_and_cache")
        k, v = self._caches(k_cache, v_cache, attention=False)
        key = self._device("key", key, F32, (None, k.shape[2], k.shape[3]))
        value = self._device("value", value, F32, key.shape)
        slots = self._device("slot_mapping", slot_mapping, I64, (key.shape[0],))
        _require(int(slots.max(initial=-1)) < k.shape[0] * k.shape[1], "a slot past the cache")
        mirror.reshape_and_cache(k, v, key, value, slots)

    def prefill_attention(self, q, k_cache, v_cache, query_start, context_lens, block_tables,
                          scale: float, max_query_len: int):
        self._count("prefill_attention")
        k, v = self._caches(k_cache, v_cache, attention=True)
        q = self._query(q, k.shape[2])
        lens = self._device("context_lens", context_lens, I32, (None,))
        starts = self._device("query_start", query_start, I32, (len(lens) + 1,))
        tables = self._device("block_tables", block_tables, I32, (len(lens), None))
        query_lens = np.diff(starts)
        _require(starts[0] == 0 and starts[-1] == q.shape[0] and bool((query_lens >= 1).all())
                 and bool((query_lens <= lens).all()), "query_start does not pack q's rows")
        _require(max_query_len >= int(query_lens.max()), f"max_query_len {max_query_len} < a query of "
                 f"{int(query_lens.max())} rows: the grid leaves rows uncomputed")
        self._tables_cover(tables, lens, k)
        out = mirror.prefill_attention(q, k, v, starts, lens, tables, scale,
                                       self._define("Q_TILE", sources.Q_TILE))
        return self._pooled(out)

    def rms_norm(self, out, x, weight, eps: float) -> None:
        self._count("rms_norm")
        x = self._device("x", x, F32, (None, None))
        out = self._device("out", out, F32, x.shape)
        weight = self._device("weight", weight, F32, (x.shape[1],))
        out[...] = mirror.rms_norm(x, weight, eps, self._define("NORM_THREADS", sources.NORM_THREADS))

    def rope(self, x, cos, sin, neox: bool) -> None:
        self._count("rope")
        x = self._device("x", x, F32, (None, None, None))
        cos = self._device("cos", cos, F32, (x.shape[0], None))
        sin = self._device("sin", sin, F32, cos.shape)
        _require(2 * cos.shape[1] <= x.shape[2], "n_rot past head_dim")
        x[...] = mirror.rope(x, cos, sin, neox)

    def silu_mul(self, gate_up):
        self._count("silu_mul")
        gate_up = self._device("gate_up", gate_up, F32, (None, None))
        _require(gate_up.shape[1] % 2 == 0, "gate_up: an odd width")
        return self._pooled(mirror.silu_mul(gate_up))

    def embedding(self, table, token_ids):
        self._count("embedding")
        _require(getattr(table, "dtype", None) in (np.dtype(F16), np.dtype(F32)), "embedding: an f16 or f32 table")
        table = self._device("table", table, table.dtype, (None, None))
        ids = self._device("token_ids", token_ids, I32, (None,))
        _require(len(ids) == 0 or (ids.min() >= 0 and ids.max() < table.shape[0]), "a row past the table")
        return self._pooled(mirror.embedding(table, ids))

    def add_bias(self, y, bias) -> None:
        self._count("add_bias")
        y = self._device("y", y, F32, (None, None))
        y += self._device("bias", bias, F32, (y.shape[1],))

    def matmul(self, x, weight_bytes, kind: str, num_out: int):
        self._count(f"matmul_{kind}")
        x = self._device("x", x, F32, (None, None))
        raw = self._device("weight", weight_bytes, U8, (None,))
        k = x.shape[1]
        expected = {"f32": num_out * k * 4, "f16": num_out * k * 2, "q8_0": num_out * (k // 32) * 34}[kind]
        _require(kind != "q8_0" or k % 32 == 0, "q8_0: K not a multiple of 32")
        _require(raw.nbytes == expected, f"{kind} weight of {raw.nbytes} bytes for ({num_out}, {k}): {expected}")
        if x.shape[0] <= self._define("GEMV_MAX_ROWS", sources.GEMV_MAX_ROWS):
            return self._pooled(mirror.gemv(x, raw, kind, num_out))
        return self._pooled(mirror.tiled_matmul(x, raw, kind, num_out))
