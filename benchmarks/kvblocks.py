"""Block allocator benchmark: CFFI BlockPool vs the pure-Python PyBlockPool, interleaved.

Part 1 times allocate / free / fork (one child, and FORK_CHILDREN children in one call) per block
and append per decoded token (one call per request, and one call per decode step for the whole
batch) on fresh random prompts, rounds alternating C, Python, C, Python..., every call timed on its own.
Part 2 replays a synthetic request-length trace (fixed seed) and reports memory waste:
allocated token slots left unused / allocated, for paged on-demand blocks (the engine), paged
blocks reserving max_tokens (backends), and contiguous per-slot max-context buffers.

Run: .venv/bin/python benchmarks/kvblocks.py [--rounds N]
"""
import argparse
import math
import platform
import random
import statistics
import sys
import time

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])

from tests.sched.pyblocks import PyBlockPool  # noqa: E402
from velollmd.ctl.bench.stats import percentile  # noqa: E402
from velollmd.sched.kvblocks import BlockPool  # noqa: E402

BLOCK_SIZE = 16
NUM_BLOCKS = 4096
REQUESTS_PER_ROUND = 48
PROMPT_TOKENS = 512                 # 32 blocks per request
DECODE_STEPS = 16
FORK_CHILDREN = 4                   # n-way sampling / beam search: one fork call, n children
IMPLS = {"cffi": BlockPool, "python": PyBlockPool}


def pool_blocks(prompt_tokens):
    """NUM_BLOCKS, or room for every request of a round with longer prompts."""
    return max(NUM_BLOCKS, 2 * REQUESTS_PER_ROUND * math.ceil(prompt_tokens / BLOCK_SIZE))


def one_round(pool_cls, prompts, samples):
    """Allocate, fork, decode and free REQUESTS_PER_ROUND requests; ns per block per call."""
    pool = pool_cls(pool_blocks(len(prompts[0])), BLOCK_SIZE)
    clock = time.perf_counter_ns
    num_blocks = math.ceil(len(prompts[0]) / BLOCK_SIZE)
    for i, prompt in enumerate(prompts):
        beams = [("beam", i, n) for n in range(FORK_CHILDREN)]
        t0 = clock(); pool.allocate(i, prompt); t1 = clock()
        pool.fork(i, ("child", i)); t2 = clock()
        pool.fork(i, *beams); t3 = clock()
        samples["allocate"].append((t1 - t0) / num_blocks)
        samples["fork"].append((t2 - t1) / num_blocks)
        samples[f"fork x{FORK_CHILDREN} (one call)"].append((t3 - t2) / (num_blocks * FORK_CHILDREN))
        for beam in beams:
            pool.free(beam)
    for i in range(len(prompts)):
        for step in range(DECODE_STEPS):
            t0 = clock(); pool.append_tokens(i, [step]); t1 = clock()
            samples["append (per token)"].append(t1 - t0)
    everyone = list(range(len(prompts)))
    for step in range(DECODE_STEPS):
        t0 = clock(); pool.append_step(everyone, [step] * len(everyone)); t1 = clock()
        samples["append step (batch, per token)"].append((t1 - t0) / len(everyone))
    for i in range(len(prompts)):
        pool.free(("child", i))
        num_blocks = len(pool.block_table(i))
        t0 = clock(); pool.free(i); t1 = clock()
        samples["free"].append((t1 - t0) / num_blocks)


def bench_ops(rounds, rng, prompt_tokens=PROMPT_TOKENS):
    samples = {name: {op: [] for op in ("allocate", "free", "fork", f"fork x{FORK_CHILDREN} (one call)",
                                        "append (per token)", "append step (batch, per token)")}
               for name in IMPLS}
    for _ in range(rounds):
        for name, pool_cls in IMPLS.items():     # A B A B: the same kind of fresh prompts
            prompts = [[rng.randrange(32000) for _ in range(prompt_tokens)]
                       for _ in range(REQUESTS_PER_ROUND)]
            one_round(pool_cls, prompts, samples[name])
    return samples


def synthetic_trace(num_requests, seed=1234):
    """(prompt_tokens, output_tokens, max_tokens): log-normal, chat-like lengths."""
    rng = random.Random(seed)
    trace = []
    for _ in range(num_requests):
        prompt = min(8000, max(8, int(rng.lognormvariate(math.log(400), 1.0))))
        output = min(2048, max(1, int(rng.lognormvariate(math.log(180), 0.9))))
        max_tokens = rng.choice([256, 512, 1024, 2048])
        trace.append((prompt, max(1, min(output, max_tokens)), max_tokens))
    return trace


def waste(trace, max_ctx=8192 + 2048):
    """Unused / allocated token slots at each request's end, summed over the trace."""
    used = sum(p + o for p, o, _ in trace)
    paged = sum(math.ceil((p + o) / BLOCK_SIZE) * BLOCK_SIZE for p, o, _ in trace)
    reserved = sum(math.ceil((p + m) / BLOCK_SIZE) * BLOCK_SIZE for p, _, m in trace)
    contiguous = max_ctx * len(trace)
    return {name: 1 - used / allocated for name, allocated in
            [("paged, on demand (engine)", paged), ("paged, reserve max_tokens (backends)",
             reserved), ("contiguous, max context per slot", contiguous)]}


def check_trace_against_pool(trace):
    """The paged figure is what the real pool does: replay the trace through BlockPool."""
    pool = BlockPool(NUM_BLOCKS * 4, BLOCK_SIZE)
    rng, allocated = random.Random(7), 0
    for i, (prompt, output, _) in enumerate(trace):
        assert pool.allocate(i, [rng.randrange(32000) for _ in range(prompt)]) is not None
        assert pool.append_tokens(i, [rng.randrange(32000) for _ in range(output)])
        allocated += len(pool.block_table(i)) * BLOCK_SIZE
        pool.free(i)
    return 1 - sum(p + o for p, o, _ in trace) / allocated


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--trace", type=int, default=2000)
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    args = parser.parse_args()
    samples = bench_ops(args.rounds, random.Random(42), args.prompt_tokens)
    trace = synthetic_trace(args.trace)
    waste_by_policy = waste(trace)
    replayed = check_trace_against_pool(trace)
    print(f"### KV block allocator (benchmarks/kvblocks.py, {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, Python {platform.python_version()})\n")
    print(f"block_size={BLOCK_SIZE}, pool={pool_blocks(args.prompt_tokens)} blocks, {REQUESTS_PER_ROUND} requests x "
          f"{args.prompt_tokens} prompt tokens per round, {args.rounds} rounds each, interleaved.\n")
    print("| op | unit | cffi p50 | cffi p99 | python p50 | python p99 | speed-up (p50) | n |")
    print("|---|---|---|---|---|---|---|---|")
    for op in samples["cffi"]:
        c, p = samples["cffi"][op], samples["python"][op]
        unit = "ns/token" if "token" in op else "ns/block"
        print(f"| {op} | {unit} | {percentile(c, 50):.0f} | {percentile(c, 99):.0f} | "
              f"{percentile(p, 50):.0f} | {percentile(p, 99):.0f} | "
              f"{statistics.median(p) / statistics.median(c):.1f}x | {len(c)} |")
    total_c = sum(sum(s) for s in samples["cffi"].values())
    total_p = sum(sum(s) for s in samples["python"].values())
    print(f"\nAll timed calls together: python / cffi = {total_p / total_c:.1f}x.\n")
    used = sum(p + o for p, o, _ in trace)
    print(f"Memory waste on a synthetic trace ({len(trace)} requests, seed 1234, "
          f"{used / len(trace):.0f} tokens per request on average):\n")
    print("| allocation policy | waste (unused / allocated slots) |")
    print("|---|---|")
    for name, value in waste_by_policy.items():
        print(f"| {name} | {100 * value:.2f} % |")
    print(f"\n(Replayed through BlockPool: {100 * replayed:.2f} % waste, on demand.)")


if __name__ == "__main__":
    main()
