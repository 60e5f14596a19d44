"""Paged decode attention bandwidth on a GPU: bytes of K/V read per second.

For each (context length, batch): the paged kernel over a shuffled block table, the same
kernel built with DENSE_LAYOUT=1 over one contiguous (batch, context) cache, and the paged
kernel built with each other --tokens-per-warp U (TOKENS_PER_WARP: U tokens per warp per loop
iteration, one online-softmax update for them), interleaved A B C D ... over --rounds rounds;
each round times --iters launches with CUDA events. Reports p50/p99 GB/s per side, % of the
device's peak memory bandwidth (nvidia-smi's maximum memory clock x the bus width the driver
reports x 2, DDR/HBM), paged / dense (both U = 1) and each U's paged / U = 1's.
Without pycuda or a CUDA device it says why and exits 0 having measured nothing.

    .venv/bin/python benchmarks/kernels.py [--contexts 1024,4096,16384,32768] [--batches 1,8,32,64]
                                           [--tokens-per-warp 1,2,4]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from velollmd.ctl.bench.stats import percentile  # noqa: E402
from velollmd.cuda import kernels, sources  # noqa: E402


def options(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--contexts", type=ints, default=[1024, 4096, 16384, 32768])
    parser.add_argument("--batches", type=ints, default=[1, 8, 32, 64])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--partition-size", type=int, default=512)
    parser.add_argument("--tokens-per-warp", type=ints, default=[1, 2, 4],
                        help="paged decode TOKENS_PER_WARP values to compare (U = 1, the ratios' base, always runs)")
    parser.add_argument("--f32", action="store_true", help="float32 cache (default float16)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--memory-fraction", type=float, default=0.6, help="skip cases needing more of free memory")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if min(args.tokens_per_warp) < 1:
        parser.error(f"--tokens-per-warp takes values >= 1, not {args.tokens_per_warp}")
    return args


def peak_bandwidth_gbs(device) -> tuple[float | None, str]:
    """Peak memory bandwidth in GB/s and how it was found (None when nvidia-smi does not say)."""
    import pycuda.driver as driver
    bus_bits = device.get_attribute(driver.device_attribute.GLOBAL_MEMORY_BUS_WIDTH)
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.memory", "--format=csv,noheader,nounits",
                               "-i", "0"], capture_output=True, text=True, timeout=10).stdout.strip()
        mhz = float(text.splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-smi gave no max memory clock ({exc})"
    return 2 * mhz * 1e6 * bus_bits / 8 / 1e9, f"nvidia-smi clocks.max.memory {mhz:.0f} MHz x {bus_bits}-bit bus x 2"


class Case:
    """GPU arrays of one (context, batch) point, shared by the paged and the dense runs."""

    def __init__(self, args, context_len: int, batch: int, rng: np.random.Generator):
        from pycuda import gpuarray
        dtype = np.float32 if args.f32 else np.uint16                        # halves as their bits
        blocks_per_seq = math.ceil(context_len / args.block_size)
        shape = (batch * blocks_per_seq, args.block_size, args.kv_heads, args.head_dim)
        fill = np.float32(0.01) if args.f32 else np.float16(0.01).view(np.uint16)
        self.k_cache = gpuarray.empty(shape, dtype)
        self.k_cache.fill(fill)
        self.v_cache = gpuarray.empty(shape, dtype)
        self.v_cache.fill(fill)
        tables = rng.permutation(shape[0]).astype(np.int32).reshape(batch, blocks_per_seq)
        self.block_tables = gpuarray.to_gpu(tables)                         # (batch, blocks_per_seq) shuffled
        self.context_lens = gpuarray.to_gpu(np.full(batch, context_len, np.int32))
        self.q = gpuarray.to_gpu(rng.standard_normal((batch, args.heads, args.head_dim)).astype(np.float32))
        self.kv_bytes = 2 * batch * context_len * args.kv_heads * args.head_dim * np.dtype(dtype).itemsize


def time_launches(run, iters: int) -> float:
    """Milliseconds per launch over iters launches, by CUDA events."""
    import pycuda.driver as driver
    start, end = driver.Event(), driver.Event()
    start.record()
    for _ in range(iters):
        run()
    end.record()
    end.synchronize()
    return end.time_since(start) / iters


def side_name(tokens_per_warp: int) -> str:
    """The paged side of one TOKENS_PER_WARP: "paged" for U = 1 (the name the JSON always had)."""
    return "paged" if tokens_per_warp == 1 else f"paged_u{tokens_per_warp}"


def tokens_per_warp_values(args) -> list[int]:
    """--tokens-per-warp with U = 1 first (every ratio's base), each value once."""
    return [1] + sorted(set(args.tokens_per_warp) - {1})


def measure(args, case: Case, context_len: int, builds: dict) -> dict:
    """builds: side name -> Kernels, timed in that order each round."""
    partition = args.partition_size if context_len > args.partition_size else None
    workspace = builds["paged"].decode_workspace(case.q, context_len, partition or context_len)
    scale = 1 / math.sqrt(args.head_dim)
    runs = {name: (lambda built=built: built.paged_attention_decode(
        case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens, scale, context_len,
        partition, workspace)) for name, built in builds.items()}
    for run in runs.values():
        time_launches(run, 2)                                               # compile, warm caches
    gbs = {name: [] for name in runs}
    for _ in range(args.rounds):                                            # A B C A B C ...
        for name, run in runs.items():
            gbs[name].append(case.kv_bytes / (time_launches(run, args.iters) * 1e-3) / 1e9)
    return {name: {"p50": percentile(v, 50), "p99": percentile(v, 99), "n": len(v)} for name, v in gbs.items()}


def gbs_cell(side: dict) -> str:
    return f"{side['p50']:,.0f} ({side['p99']:,.0f})"


def paged_cells(side: dict, base: dict, peak: float | None) -> list[str]:
    """GB/s, % of peak, and the ratio of p50s to base (dense for U = 1, U = 1 for the others)."""
    share = f"{100 * side['p50'] / peak:.0f} %" if peak else "n/a"
    return [gbs_cell(side), share, f"{side['p50'] / base['p50']:.2f}x"]


def main(argv=None) -> int:
    args = options(argv)
    found = kernels.probe()
    if not found.ok:
        print(f"benchmarks/kernels.py: nothing measured: no CUDA device ({found.detail})")
        return 0
    import pycuda.driver as driver
    device = driver.Device(0)
    context = device.make_context()
    try:
        return report(args, device, found.detail)
    finally:
        context.pop()


def report(args, device, name: str) -> int:
    import pycuda.driver as driver
    peak, how = peak_bandwidth_gbs(device)
    group = args.heads // args.kv_heads
    values = tokens_per_warp_values(args)
    defines = {u: sources.engine_defines(args.head_dim, args.block_size, not args.f32, group, u) for u in values}
    builds = {"paged": kernels.Kernels(defines[1]), "dense": kernels.Kernels({**defines[1], "DENSE_LAYOUT": 1})}
    builds.update({side_name(u): kernels.Kernels(defines[u]) for u in values[1:]})
    print(f"device: {name}; peak {peak and f'{peak:,.0f} GB/s'} ({how})")
    print(f"heads {args.heads}/{args.kv_heads}, head_dim {args.head_dim}, block {args.block_size}, "
          f"{'f32' if args.f32 else 'f16'} cache, partitions of {args.partition_size}, "
          f"{args.rounds} rounds x {args.iters} launches, p50 (p99) GB/s; U = TOKENS_PER_WARP\n")
    columns = ["dense GB/s", "paged U=1 GB/s", "U=1 % of peak", "U=1 / dense"]
    columns += [f"{head}" for u in values[1:] for head in (f"paged U={u} GB/s", f"U={u} % of peak", f"U={u} / U=1")]
    print(f"| context | batch | {' | '.join(columns)} |")
    print("|---:|---:|" + "---:|" * len(columns))
    rows, rng = [], np.random.default_rng(0)
    for context_len in args.contexts:
        for batch in args.batches:
            need = 2 * batch * math.ceil(context_len / args.block_size) * args.block_size * args.kv_heads \
                * args.head_dim * (4 if args.f32 else 2)
            if need > args.memory_fraction * driver.mem_get_info()[0]:
                skipped = f"skipped: {need / 2**30:.1f} GiB of K/V"
                print(f"| {context_len} | {batch} | {skipped} |" + " |" * (len(columns) - 1))
                continue
            result = measure(args, Case(args, context_len, batch, rng), context_len, builds)
            cells = [gbs_cell(result["dense"]), *paged_cells(result["paged"], result["dense"], peak)]
            for u in values[1:]:
                cells += paged_cells(result[side_name(u)], result["paged"], peak)
            print(f"| {context_len} | {batch} | {' | '.join(cells)} |", flush=True)
            rows.append({"context": context_len, "batch": batch, **result, "peak_gbs": peak})
    if args.json:
        args.json.write_text(json.dumps({"device": name, "peak": how, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
