"""Paged decode attention (attention.c) of two builds of velollmd.engine._matmul in one process.

The other build is another checkout's .so (e.g. a worktree at main); the two are called in turn
(A B A B ...) so that the machine's load moves both alike, CPU time of this thread (not wall
time: on a shared 2-vCPU VM the scheduler's waits would swamp a kernel's difference).

1. the kernel alone: B=8 sequences x 8 layers (16 query heads over 4 KV heads, head_dim 64,
   block_size 16, each sequence on shuffled blocks), with its pages "shared" (every sequence
   on the same blocks: they stay in L2, the kernel's arithmetic alone), "L3" (the same calls
   again: 18 MiB of pages) or "cold" (64 MiB touched in between, as the weights a decode step
   streams evict them);
2. with --model: a decode forward at B=1 and B=8 (context 128) of this tree, with the other
   build's vl_decode_attention or this one's (every other kernel this tree's);
3. with --sweep: one layer's call at B = 1, 4, 8, contexts 512 / 2,000 / 4,000, GQA 4:1 and 8:1
   (16 or 32 query heads over 4 KV heads, head_dim 64), warm pages (the same call again) and
   cold (64 MiB touched before each), one thread: the other build, this build with one KV head
   per unit ("per head": each unit walks the sequence's slots for its head alone, as the other
   build did) and this build's default (one unit per sequence, each slot read once); then, with
   --threads 2, wall and process CPU time at B = 1 and 4 of units of every KV head, of half of
   them, of one (threads over heads as well as sequences);
4. with --kv-types (this build alone, no other .so): the f32 KV cache against the f16 one
   (kv_cache_type): one layer's call at B = 1, 2, 4, 8, contexts 512 / 2,000 / 4,000, GQA 4:1
   and 8:1, warm and cold, one thread; with --model, a decode step of that GGUF (B = 1, 2, 4,
   8 sequences each --kv-contexts tokens into a cache of random K/V) on each cache type, and the
   KV bytes per token of both.

Both builds must take vl_decode_attention's arguments of this tree: a build from before its
`starts` and `softcap` arguments (branch qa-swakernel) cannot be compared by this script.

    PYTHONPATH=. .venv/bin/python benchmarks/engine_attention.py /tmp/base/velollmd/engine/_matmul.abi3.so
    ... --model ~/.cache/velollm/bench-models/small-q8_0.gguf
    ... --sweep [--rounds 10] [--threads 2]
    PYTHONPATH=. .venv/bin/python benchmarks/engine_attention.py --kv-types [--model small-q8_0.gguf]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np

from velollmd.ctl.bench.stats import percentile
from velollmd.engine import kernels

B, N_HEAD, N_HEAD_KV, HEAD_DIM, BLOCK_SIZE, LAYERS = 8, 16, 4, 64, 16, 8


def load_build(path: str):
    """Another build of the extension, under a module name of its own."""
    spec = importlib.util.spec_from_file_location("other._matmul", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lib


def evict() -> None:
    np.ones(1 << 24, dtype=np.float32).sum()       # 64 MiB: more than the L3


def kernel_case(context: int, pages: str):
    """A call of the whole batch over every layer with a given lib: (lib) -> out (B, n_head, d)."""
    rng = np.random.default_rng(0)
    max_blocks = context // BLOCK_SIZE + 1
    num_blocks = max(B * max_blocks, 4096 if pages == "cold" else 0)
    shape = (LAYERS, num_blocks, BLOCK_SIZE, N_HEAD_KV, HEAD_DIM)
    k, v = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    tables = rng.permutation(num_blocks)[:B * max_blocks].reshape(B, max_blocks).astype(np.int64)
    if pages == "shared":
        tables[:] = tables[0]
    lens = np.array([context - i for i in range(B)], dtype=np.int64)           # (B,)
    q = rng.standard_normal((B, N_HEAD, HEAD_DIM), dtype=np.float32)            # (B, n_head, d)
    scores = np.empty((B, N_HEAD, max_blocks * BLOCK_SIZE), dtype=np.float32)
    ffi = kernels.ffi

    def run(lib) -> np.ndarray:
        out = np.empty_like(q)
        for layer in range(LAYERS):
            lib.vl_decode_attention(
                ffi.from_buffer("float[]", q), ffi.from_buffer("float[]", k[layer]),
                ffi.from_buffer("float[]", v[layer]), ffi.from_buffer("int64_t[]", tables),
                ffi.from_buffer("int64_t[]", lens), ffi.NULL, ffi.from_buffer("float[]", scores),
                ffi.from_buffer("float[]", out), B, N_HEAD, N_HEAD_KV, HEAD_DIM, BLOCK_SIZE, max_blocks,
                0.125, 0.0, 1)
        return out
    return run


def timed(call, before=None) -> float:
    """CPU ms of call() on this thread."""
    if before is not None:
        before()
    started = time.thread_time()
    call()
    return (time.thread_time() - started) * 1e3


def report(name: str, times: dict[str, list[float]]) -> None:
    other, this = times["other"], times["this"]
    ratios = [o / t for o, t in zip(other, this)]
    print(f"  {name}: other {statistics.median(other):.2f} ms (min {min(other):.2f}), this "
          f"{statistics.median(this):.2f} ms (min {min(this):.2f}); other / this median "
          f"{statistics.median(ratios):.2f} [quartiles {percentile(ratios, 25):.2f}-"
          f"{percentile(ratios, 75):.2f}]", flush=True)


def bench_kernel(libs: dict, rounds: int) -> None:
    for context, pages in ((128, "shared"), (128, "L3"), (128, "cold"), (512, "cold")):
        run = kernel_case(context, pages)
        outs = {name: run(lib) for name, lib in libs.items()}
        diff = float(np.abs(outs["other"] - outs["this"]).max())
        times = {name: [] for name in libs}
        for _ in range(rounds):
            for name, lib in libs.items():
                times[name].append(timed(lambda: run(lib), evict if pages == "cold" else None))
        report(f"kernel B={B} x {LAYERS} layers, context {context}, {pages} pages "
               f"(max |diff| {diff:.1e})", times)


def sweep_case(batch: int, context: int, n_head: int, dtype: type = np.float32):
    """One layer's pages for `batch` sequences of `context` tokens (4 KV heads, head_dim 64, on
    shuffled blocks): (call(lib, threads, heads_per_unit or None for vl_decode_attention), q).
    dtype float16: the pages as f16, each call vl_decode_attention_f16 (heads_per_unit 0 for None)."""
    rng = np.random.default_rng(0)
    max_blocks = context // BLOCK_SIZE + 1
    num_blocks = batch * max_blocks
    shape = (num_blocks, BLOCK_SIZE, N_HEAD_KV, HEAD_DIM)
    k, v = (rng.standard_normal(shape, dtype=np.float32).astype(dtype) for _ in range(2))
    tables = rng.permutation(num_blocks).reshape(batch, max_blocks).astype(np.int64)
    lens = np.array([context - i for i in range(batch)], dtype=np.int64)
    q = rng.standard_normal((batch, n_head, HEAD_DIM), dtype=np.float32)
    scores = np.empty((batch, n_head, max_blocks * BLOCK_SIZE), dtype=np.float32)
    ffi = kernels.ffi

    def call(lib, threads: int = 1, heads_per_unit: int | None = None) -> np.ndarray:
        out = np.empty_like(q)
        pages = "uint16_t[]" if k.dtype == np.float16 else "float[]"
        args = (ffi.from_buffer("float[]", q), ffi.from_buffer(pages, k), ffi.from_buffer(pages, v),
                ffi.from_buffer("int64_t[]", tables), ffi.from_buffer("int64_t[]", lens), ffi.NULL,
                ffi.from_buffer("float[]", scores), ffi.from_buffer("float[]", out), batch, n_head, N_HEAD_KV,
                HEAD_DIM, BLOCK_SIZE, max_blocks, 0.125, 0.0, threads)
        if k.dtype == np.float16:
            lib.vl_decode_attention_f16(*args, heads_per_unit or 0, 0)
        elif heads_per_unit is None:
            lib.vl_decode_attention(*args)
        else:
            lib.vl_decode_attention_split(*args, heads_per_unit)
        return out
    return call


def ranges(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} [{percentile(times, 25):.3f}-{percentile(times, 75):.3f}]"


def bench_sweep(libs: dict, rounds: int) -> None:
    """Thread CPU ms of one layer's call, three variants in turn, median [quartiles]; the ratio
    other / this per round likewise."""
    this = libs["this"]
    variants = {"other": lambda call: call(libs["other"]), "per head": lambda call: call(this, 1, 1),
                "this": lambda call: call(this)}
    print("| B | context | GQA | pages | other ms | per head ms | this ms | other / this | per head / this |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in (1, 4, 8):
        for context in (512, 2000, 4000):
            for n_head in (16, 32):
                call = sweep_case(batch, context, n_head)
                outs = {name: run(call) for name, run in variants.items()}
                assert all(np.array_equal(out, outs["this"]) for out in outs.values())
                for pages in ("warm", "cold"):
                    times = {name: [] for name in variants}
                    for _ in range(rounds):
                        for name, run in variants.items():
                            times[name].append(timed(lambda: run(call), evict if pages == "cold" else None))
                    ratio = {name: [o / t for o, t in zip(times[name], times["this"])] for name in ("other", "per head")}
                    print(f"| {batch} | {context} | {n_head // N_HEAD_KV}:1 | {pages} | " +
                          " | ".join(ranges(times[name]) for name in variants) + " | " +
                          " | ".join(ranges(ratio[name]) for name in ratio) + " |", flush=True)


def bench_threads(libs: dict, rounds: int, threads: int) -> None:
    """Wall and process CPU ms of one layer's call on `threads` threads, cold pages, by the KV
    heads per unit (4: threads over sequences only; 2 and 1: over heads as well)."""
    this = libs["this"]
    print(f"| B | context | GQA | heads per unit ({threads} threads) | wall ms | process CPU ms |")
    print("|---|---|---|---|---|---|")
    for batch in (1, 4):
        for context in (2000, 4000):
            for n_head in (16, 32):
                call = sweep_case(batch, context, n_head)
                splits = (N_HEAD_KV, N_HEAD_KV // 2, 1)
                wall, cpu = {h: [] for h in splits}, {h: [] for h in splits}
                for _ in range(rounds):
                    for h in splits:
                        evict()
                        started, started_cpu = time.perf_counter(), time.process_time()
                        call(this, threads, h)
                        wall[h].append((time.perf_counter() - started) * 1e3)
                        cpu[h].append((time.process_time() - started_cpu) * 1e3)
                for h in splits:
                    print(f"| {batch} | {context} | {n_head // N_HEAD_KV}:1 | {h} | {ranges(wall[h])} | "
                          f"{ranges(cpu[h])} |", flush=True)


def bench_kv_types(rounds: int) -> None:
    """Thread CPU ms of one layer's call over f32 pages and over f16 pages, in turn, median
    [quartiles]; the ratio f32 / f16 per round likewise."""
    lib = kernels.lib
    print("| B | context | GQA | pages | f32 ms | f16 ms | f32 / f16 |")
    print("|---|---|---|---|---|---|---|")
    for batch in (1, 2, 4, 8):
        for context in (512, 2000, 4000):
            for n_head in (16, 32):
                calls = {name: sweep_case(batch, context, n_head, dtype)
                         for name, dtype in (("f32", np.float32), ("f16", np.float16))}
                for pages in ("warm", "cold"):
                    times = {name: [] for name in calls}
                    for _ in range(rounds):
                        for name, call in calls.items():
                            times[name].append(timed(lambda: call(lib), evict if pages == "cold" else None))
                    ratio = [a / b for a, b in zip(times["f32"], times["f16"])]
                    print(f"| {batch} | {context} | {n_head // N_HEAD_KV}:1 | {pages} | {ranges(times['f32'])} | "
                          f"{ranges(times['f16'])} | {ranges(ratio)} |", flush=True)


def bench_kv_types_forward(model_path: str, rounds: int, contexts: list[int]) -> None:
    """A decode step (one token for each of B sequences, each of `contexts` tokens into a cache of
    random K/V) of one loaded model (the same weights: two loads differ by where their weights
    lie, up to 15% at short contexts) on an f32 KV cache and on an f16 one, in turn: thread CPU
    ms and tok/s (B / that time), median [quartiles]; KV bytes per token of both."""
    from velollmd.config import SchedulerConfig
    from velollmd.engine import loader
    from velollmd.engine.kvcache import PagedKVCache
    from velollmd.engine.model import Batch, SeqChunk
    per_seq, max_b = -(-(max(contexts) + 1) // BLOCK_SIZE), 8
    model = loader.load("m", Path(model_path).expanduser(), loader.EngineOptions(num_ctx=16, max_running=1, threads=1),
                        SchedulerConfig()).runner.model
    c, caches = model.config, {}
    for kv_type, dtype in (("f32", np.float32), ("f16", np.float16)):
        kv = caches[kv_type] = PagedKVCache(c.n_layer, max_b * per_seq, BLOCK_SIZE, c.n_head_kv, c.head_dim, dtype)
        rng = np.random.default_rng(0)
        for pages in (kv.k, kv.v):
            for layer in range(pages.shape[0]):
                pages[layer] = rng.standard_normal(pages[layer].shape, dtype=np.float32)
        print(f"  {kv_type}: {kv.nbytes // (kv.num_blocks * kv.block_size)} KV bytes per token", flush=True)
    print("| B | context | f32 ms | f16 ms | f32 tok/s | f16 tok/s | f32 / f16 time |")
    print("|---|---|---|---|---|---|---|")
    for context, batch_size in ((context, b) for context in contexts for b in (1, 2, 4, 8)):
        batch = Batch.pack([SeqChunk([7], context, range(i * per_seq, (i + 1) * per_seq))
                            for i in range(batch_size)])
        times = {kv_type: [] for kv_type in caches}
        for _ in range(rounds):
            for kv_type, kv in caches.items():
                times[kv_type].append(timed(lambda: model.forward(batch, kv)))
        tok_s = {kv_type: [batch_size * 1e3 / t for t in times[kv_type]] for kv_type in caches}
        ratio = [a / b for a, b in zip(times["f32"], times["f16"])]
        print(f"| {batch_size} | {context} | {ranges(times['f32'])} | {ranges(times['f16'])} | "
              f"{ranges(tok_s['f32'])} | {ranges(tok_s['f16'])} | {ranges(ratio)} |", flush=True)


class AttentionFrom:
    """This build's lib, but for vl_decode_attention taken from `other`."""

    def __init__(self, this, other):
        self._this, self.vl_decode_attention = this, other.vl_decode_attention

    def __getattr__(self, name: str):
        return getattr(self._this, name)


def bench_forward(libs: dict, model_path: str, rounds: int) -> None:
    from velollmd.config import SchedulerConfig
    from velollmd.engine import loader
    from velollmd.engine.model import Batch, SeqChunk
    loaded = loader.load("p", Path(model_path).expanduser(),
                         loader.EngineOptions(num_ctx=1024, kv_cache_mb=256, threads=1), SchedulerConfig())
    model, kv = loaded.runner.model, loaded.runner.kv
    num_blocks = -(-129 // kv.block_size)
    batches = {b: Batch.pack([SeqChunk([7], 128, range(i * num_blocks, (i + 1) * num_blocks)) for i in range(b)])
               for b in (1, 8)}
    this = libs["this"]
    libs = {"other": AttentionFrom(this, libs["other"]), "this": this}
    times = {(b, name): [] for b in batches for name in libs}
    for _ in range(rounds):
        for b, batch in batches.items():
            for name, lib in libs.items():
                kernels.lib = lib
                times[b, name].append(timed(lambda: model.forward(batch, kv)))
    kernels.lib = this
    for b in batches:
        report(f"decode forward B={b}, context 128", {name: times[b, name] for name in libs})
    for name in libs:
        print(f"  {name}: B=8 / B=1 (medians) "
              f"{statistics.median(times[8, name]) / statistics.median(times[1, name]):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("other", nargs="?", default="", help="the other build's _matmul .so (not with --kv-types)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--model", default="", help="also a decode forward of this GGUF at B=1 and 8")
    parser.add_argument("--sweep", action="store_true", help="the sweep over B, context, GQA and pages instead")
    parser.add_argument("--threads", type=int, default=0, help="with --sweep: also units over heads on N threads")
    parser.add_argument("--kv-types", action="store_true", help="this build's f32 against its f16 KV cache")
    parser.add_argument("--kv-contexts", default="128,2000",
                        help="with --kv-types --model: tokens in each sequence, comma-separated")
    parser.add_argument("--kv-forward-only", action="store_true", help="with --kv-types --model: no kernel sweep")
    args = parser.parse_args()
    if args.kv_types:
        if not args.kv_forward_only:
            bench_kv_types(args.rounds)
        if args.model:
            bench_kv_types_forward(args.model, args.rounds, [int(c) for c in args.kv_contexts.split(",")])
        return
    libs = {"other": load_build(args.other), "this": kernels.lib}
    if args.sweep:
        bench_sweep(libs, args.rounds)
        if args.threads > 1:
            bench_threads(libs, args.rounds, args.threads)
        return
    bench_kernel(libs, args.rounds)
    if args.model:
        bench_forward(libs, args.model, args.rounds)


if __name__ == "__main__":
    main()
