"""The engine on a CUDA device next to the same engine on the CPU, in-process, in one run.

No HTTP and no llama-server (a GPU machine here may reach no registry to build one): the real
loader, runner, scheduler and CFFI allocator, stepped directly.

1. Greedy parity: tools/make_tiny_gguf.py's tiny model in F32 (the CPU engine then rounds no
   activation, so both compute the same float32 math), --prompts prompts of 4 to 60 tokens,
   --max-tokens each, all at once on each device: how many answers are token-identical, and for
   any that is not, the first step where they part.
2. Decode throughput on the device: aggregate generated tok/s at each --concurrency (every
   request a 32-token prompt and exactly --max-tokens tokens), for --shapes in --dtype; the CPU
   engine at concurrency 1 and 8 beside it for scale (--cpu-shapes).

    python benchmarks/engine_device.py [--shapes tiny,small] [--dtype q8_0] [--concurrency 1,4,16,64]
    python benchmarks/engine_device.py --parity-only
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import model_file  # noqa: E402  (puts the repository on sys.path)
from velollmd.config import SchedulerConfig  # noqa: E402
from velollmd.cuda import kernels as cuda_kernels  # noqa: E402
from velollmd.engine import loader  # noqa: E402
from velollmd.engine.gpu_model import GpuModel  # noqa: E402
from velollmd.engine.sampling import SamplingParams  # noqa: E402


def load(path: Path, device: str, max_running: int) -> loader.LoadedModel:
    options = loader.EngineOptions(num_ctx=512, kv_cache_mb=max(64, 4 * max_running), max_running=max_running,
                                   max_batch_tokens=512, device=device)
    model = loader.load(path.stem, path, options, SchedulerConfig())
    on_device = isinstance(model.runner.model, GpuModel)
    if on_device != (device == "cuda"):
        raise SystemExit(f"{path.name}: asked for {device}, the loader chose the other (see the log)")
    return model


def run(model: loader.LoadedModel, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], float]:
    """Every prompt at once, greedy, exactly max_tokens each: (tokens per prompt, seconds)."""
    tokens: list[list[int]] = [[] for _ in prompts]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    for i, prompt in enumerate(prompts):
        model.runner.submit(f"r{i}-{time.monotonic_ns()}", prompt, params,
                            lambda event, out=tokens[i]: out.extend(event.token_ids))
    start = time.perf_counter()
    while model.runner.step():
        pass
    return tokens, time.perf_counter() - start


def parity(args) -> None:
    import random
    path = model_file("tiny", "f32")
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 1000) for _ in range(rng.randrange(4, 61))] for _ in range(args.prompts)]
    got, _ = run(load(path, "cuda", len(prompts)), prompts, args.max_tokens)
    want, _ = run(load(path, "cpu", len(prompts)), prompts, args.max_tokens)
    equal = sum(g == w for g, w in zip(got, want))
    print(f"== greedy parity, tiny F32, {len(prompts)} prompts x {args.max_tokens} tokens: "
          f"{equal}/{len(prompts)} token-identical", flush=True)
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            step = next(k for k, (a, b) in enumerate(zip(g, w)) if a != b)
            print(f"  prompt {i}: parts at step {step} (cuda {g[step]}, cpu {w[step]})", flush=True)


def throughput(shape: str, device: str, concurrency: list[int], args) -> None:
    path = model_file(shape, args.dtype)
    model = load(path, device, max(concurrency))
    run(model, [[5] * 8], 4)                                              # compile and warm up
    for c in concurrency:
        rates = []
        for _ in range(args.rounds):
            prompts = [[3 + (i * 7 + j) % 900 for j in range(32)] for i in range(c)]
            tokens, seconds = run(model, prompts, args.max_tokens)
            rates.append(sum(map(len, tokens)) / seconds)
        print(f"  {shape} {args.dtype} {device}: c={c:<3} {min(rates):9.1f} .. {max(rates):9.1f} tok/s "
              f"(aggregate, {args.rounds} rounds, {args.max_tokens} tokens each)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="tiny,small")
    parser.add_argument("--cpu-shapes", default="tiny", help="shapes also run on the CPU at c=1,8 ('' for none)")
    parser.add_argument("--dtype", default="q8_0")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parity-only", action="store_true")
    args = parser.parse_args()
    found = cuda_kernels.probe()
    if not found.ok:
        raise SystemExit(f"no CUDA device: {found.detail}")
    print(f"CUDA device: {found.detail}", flush=True)
    parity(args)
    if args.parity_only:
        return
    print("== decode throughput (in-process)", flush=True)
    for shape in args.shapes.split(","):
        throughput(shape, "cuda", [int(c) for c in args.concurrency.split(",")], args)
    for shape in filter(None, args.cpu_shapes.split(",")):
        throughput(shape, "cpu", [1, 8], args)


if __name__ == "__main__":
    main()
