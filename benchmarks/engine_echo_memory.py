"""Memory and time of one 512-token echo request (prompt logprobs) on the engine, this tree
against --before's checkout, side by side: each variant in a fresh process of its own (peak RSS
is a process's high-water mark), A B A B over --rounds.

    .venv/bin/python benchmarks/engine_echo_memory.py --before /tmp/base [--rounds 2] [--vocab 152064]

The model is tools/make_tiny_gguf.py's `small` shape (Q8_0), whose vocabulary is 1024; --vocab N
also runs it with a random float32 LM head of N rows in place of its own (a Qwen-sized 152064:
what the logits of a chunk's prompt rows would cost there). The request: 512 prompt tokens,
prompt_logprobs 1, max_tokens 1, the whole prompt in one step (max_batch_tokens 512).

Reported per variant: tracemalloc's peak over the process's first request (numpy's arrays are
traced: the logits rows among them), the process's peak RSS (the model's load sets it on this
machine: it shows no difference), and the request's wall time (the median of --repeats later
ones, after a warm-up).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUM_PROMPT = 512


def measure(vocab: int, repeats: int) -> dict:
    """In this process (whose velollmd is the variant's): the request's memory and time."""
    import numpy as np

    from velollmd.config import SchedulerConfig
    from velollmd.engine.gguf import read_gguf
    from velollmd.engine.kvcache import PagedKVCache
    from velollmd.engine.loader import read_model
    from velollmd.engine.model import ModelConfig
    from velollmd.engine.runner import Runner
    from velollmd.engine.sampling import SamplingParams
    from velollmd.engine.tokenizer import Tokenizer
    from velollmd.sched.kvblocks import BlockPool
    from velollmd.sched.scheduler import Scheduler

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import model_file

    with read_gguf(model_file("small", "q8_0")) as gguf:
        config = ModelConfig.from_metadata(gguf.metadata, gguf.tensors.keys())
        model = read_model(gguf, config)
        tokenizer = Tokenizer.from_gguf(gguf.metadata)
        own_head = gguf.dequantize("token_embd.weight" if config.tied_embeddings else "output.weight")
    if vocab != config.n_vocab:          # a bigger vocabulary's LM head (the prompt's ids stay < 1024)
        model.config = dataclasses.replace(config, n_vocab=vocab)
        head = np.random.default_rng(0).standard_normal((vocab, config.n_embd), np.float32) * 0.02
        head[:config.n_vocab] = own_head * 100      # the sampled token one the tokenizer can spell
        model.lm_head, model.lm_head_act = head, ()
    c, block_size = model.config, 16
    prompt = np.random.default_rng(1).integers(3, 1000, NUM_PROMPT).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)

    def one_request() -> int:
        kv = PagedKVCache(c.n_layer, 64, block_size, c.n_head_kv, c.head_dim)
        scheduler = Scheduler(SchedulerConfig(block_size=block_size), 4, BlockPool(64, block_size),
                              reserve_output=False)
        runner = Runner(model, kv, scheduler, tokenizer, max_batch_tokens=NUM_PROMPT, num_ctx=1024,
                        clock=lambda: 0.0)
        events = []
        runner.submit("echo", prompt, params, events.append)
        while not events or events[-1].finish_reason is None:
            runner.step()
        carrying = [e.prompt_logprobs for e in events if e.prompt_logprobs is not None]
        assert len(carrying) == 1 and len(carrying[0]) == NUM_PROMPT
        return runner.num_steps

    tracemalloc.start()
    steps = one_request()
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    one_request()                                            # warm-up for the timed ones
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        one_request()
        times.append(time.perf_counter() - started)
    import velollmd
    return {"vocab": vocab, "steps": steps, "velollmd": str(Path(velollmd.__file__).parent.parent), "traced_peak_mib": traced_peak,
            "rss_peak_mib": rss_peak, "seconds": statistics.median(times)}


def run_variant(root: Path, vocab: int, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, __file__, "--child", "--vocab", str(vocab), "--repeats", str(repeats)],
                         cwd=root, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="", help="a checkout of the code before, side by side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed requests per process")
    parser.add_argument("--vocab", type=int, nargs="*", default=[1024, 152064])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.vocab[0], args.repeats)))
        return
    variants = {"this tree": ROOT}
    if args.before:
        variants = {"before": Path(args.before).resolve(), **variants}
    print("| vocab | variant | traced peak MiB | peak RSS MiB | s per request |")
    print("|---|---|---|---|---|")
    for vocab in args.vocab:
        for _ in range(args.rounds):
            for name, root in variants.items():
                r = run_variant(root, vocab, args.repeats)
                assert r["velollmd"] == str(root), (r["velollmd"], root)     # the variant really ran
                print(f"| {vocab} | {name} | {r['traced_peak_mib']:.1f} | "
                      f"{r['rss_peak_mib']:.0f} | {r['seconds']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
