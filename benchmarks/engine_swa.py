"""Decode tok/s of gemma3 and gemma2 files at a context well past their sliding window, this tree
next to a --before checkout, in one run.

The files: tools/make_tiny_gguf.py's gemma3 / gemma2 in the given shapes, written once to
~/.cache/velollm/bench-models/ with the sliding window set to --window (gemma3: every layer but
the sixth over it; gemma2: the even layers over it, attention scores soft-capped at 50 on every
layer). Each measurement is a fresh process of one checkout (PYTHONPATH its root): the model is
loaded, its KV cache filled with random K/V (fill_cache), then B sequences each with --context
tokens already in the KV cache decode one token,
--steps times (the same step again: the K/V read are the same each time, their values do not
change the work), after 2 warm-up steps. tok/s = B x steps / the process's CPU time, on one
thread by default (--threads): on a shared 2-vCPU VM wall time swings 100x with the other
processes' load (a descheduled OpenMP thread stalls each barrier), CPU time of one thread does
not. Rounds run the checkouts in turn (A B A B ...), so the machine's load moves both alike.

    PYTHONPATH=. .venv/bin/python benchmarks/engine_swa.py --before /tmp/base [--shapes tiny,small]
        [--archs gemma3,gemma2] [--context 2000] [--window 512] [--batch 1,4] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

THIS = Path(__file__).resolve()
WINDOW_CONSTANTS = {"gemma3": "GEMMA3_SLIDING_WINDOW", "gemma2": "GEMMA2_SLIDING_WINDOW"}


def model_path(arch: str, shape: str, window: int, dtype: str) -> Path:
    """The file, built once: make_tiny_gguf's arch and shape with its sliding window set to `window`."""
    from common import MODELS_DIR, tiny_gguf_tool
    path = MODELS_DIR / f"{shape}-{arch}-w{window}-{dtype}.gguf"
    if not path.exists():
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        tool = tiny_gguf_tool()
        setattr(tool, WINDOW_CONSTANTS[arch], window)
        partial = path.with_suffix(".partial")
        tool.build_tiny_gguf(partial, dtype=dtype, shape=shape, arch=arch)
        partial.rename(path)
    return path


def fill_cache(kv, num_blocks: int) -> None:
    """Random K/V in the first num_blocks blocks of every layer. Never-written pages of the cache
    are the kernel's one shared zero page: read from it, every context is one page in cache and
    the measurement says nothing about the memory traffic of real contexts."""
    import numpy as np
    rng = np.random.default_rng(0)
    for pages in (kv.k, kv.v):
        for layer in range(pages.shape[0]):
            pages[layer, :num_blocks] = rng.standard_normal(pages[layer, :num_blocks].shape, dtype=np.float32)


def time_attention(times: dict[str, list[float]]) -> None:
    """PagedKVCache.decode_attention wrapped: the CPU ms of each call appended to times["window"]
    (a sliding-window layer) or times["global"]."""
    from velollmd.engine.kvcache import PagedKVCache
    original = PagedKVCache.decode_attention

    def timed(self, layer, q, block_tables, context_lens, scale, window=0, softcap=0.0):
        started = time.process_time()
        out = original(self, layer, q, block_tables, context_lens, scale, window, softcap)
        times["window" if window else "global"].append((time.process_time() - started) * 1e3)
        return out
    PagedKVCache.decode_attention = timed


def worker(path: str, context: int, batch_sizes: list[int], steps: int, threads: int) -> dict:
    """In the checkout on sys.path: {"tok_s": {B: decode tok/s (per CPU second)}, "attention_ms":
    {B: {"window" / "global": median CPU ms of one layer's decode_attention}}} of B sequences at
    `context` cached tokens."""
    import statistics

    from velollmd.config import SchedulerConfig
    from velollmd.engine import loader
    from velollmd.engine.model import Batch, SeqChunk
    options = loader.EngineOptions(num_ctx=context + 64, kv_cache_mb=1024, max_running=max(batch_sizes),
                                   threads=threads)
    loaded = loader.load("swa", Path(path), options, SchedulerConfig())
    model, kv = loaded.runner.model, loaded.runner.kv
    num_blocks = -(-(context + 1) // kv.block_size)
    fill_cache(kv, max(batch_sizes) * num_blocks)
    tok_s, attention_ms, times = {}, {}, {"window": [], "global": []}
    time_attention(times)
    for batch_size in batch_sizes:
        batch = Batch.pack([SeqChunk([7], context, range(i * num_blocks, (i + 1) * num_blocks))
                            for i in range(batch_size)])
        for _ in range(2):
            model.forward(batch, kv)
        for kind in times.values():
            kind.clear()
        started = time.process_time()
        for _ in range(steps):
            model.forward(batch, kv)
        tok_s[batch_size] = batch_size * steps / (time.process_time() - started)
        attention_ms[batch_size] = {kind: statistics.median(ms) for kind, ms in times.items() if ms}
    return {"tok_s": tok_s, "attention_ms": attention_ms}


def measure(root: Path, path: Path, args) -> dict:
    """worker() in a process of its own, the checkout at `root` first on its path."""
    command = [sys.executable, str(THIS), "--worker", str(path), "--context", str(args.context),
               "--batch", args.batch, "--steps", str(args.steps), "--threads", str(args.threads)]
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(root)}, cwd=root,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    return {"tok_s": {int(b): v for b, v in result["tok_s"].items()},
            "attention_ms": {int(b): v for b, v in result["attention_ms"].items()}}


def fmt_range(values: list[float], digits: int = 1) -> str:
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}-{high}"


def bench_file(arch: str, shape: str, args) -> None:
    path = model_path(arch, shape, args.window, args.dtype)
    variants = {"before": Path(args.before).resolve(), "this tree": THIS.parent.parent}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    print(f"\n== {arch} {shape} ({path.name}), context {args.context}, window {args.window}", flush=True)
    for round_index in range(args.rounds):
        for name, root in variants.items():
            runs[name].append(measure(root, path, args))
            print(f"  round {round_index + 1} {name}: " +
                  ", ".join(f"B={b} {v:.1f} tok/s" for b, v in runs[name][-1]["tok_s"].items()), flush=True)
    batch_sizes = list(runs["this tree"][0]["tok_s"])
    kinds = list(runs["this tree"][0]["attention_ms"][batch_sizes[0]])
    columns = [f"B={b} tok/s" for b in batch_sizes] + [f"B={b} {kind} layer ms" for b in batch_sizes for kind in kinds]
    print(f"\n| {arch} {shape} | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, rs in runs.items():
        cells = [fmt_range([r["tok_s"][b] for r in rs]) for b in batch_sizes]
        cells += [fmt_range([r["attention_ms"][b][kind] for r in rs], 3) for b in batch_sizes for kind in kinds]
        print(f"| {name} | " + " | ".join(cells) + " |")
    ratios = [fmt_range([a["tok_s"][b] / o["tok_s"][b] for a, o in zip(runs["this tree"], runs["before"])], 2)
              for b in batch_sizes]
    print("| this tree / before, per round | " + " | ".join(ratios) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="a checkout (built) to compare against")
    parser.add_argument("--shapes", default="tiny,small")
    parser.add_argument("--archs", default="gemma3,gemma2")
    parser.add_argument("--dtype", default="q8_0")
    parser.add_argument("--context", type=int, default=2000)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch", default="1,4", help="batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.context, [int(b) for b in args.batch.split(",")], args.steps, args.threads)
        print(json.dumps(result))
        return
    if not args.before:
        parser.error("--before is required")
    for shape in args.shapes.split(","):
        for arch in args.archs.split(","):
            bench_file(arch, shape, args)


if __name__ == "__main__":
    main()
