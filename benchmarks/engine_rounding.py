"""What the activation rounding (velollmd/engine/vecdot.py) costs the engine, in one process.

The same loaded model runs each pass three ways, A B C A B C ...: as loader.load makes it
("rounded": matrices of model.KEPT_WEIGHTS' types kept quantised and multiplied with integer dot
products, q8weight.py, q4kweight.py, q5kweight.py, q6kweight.py, legacyweight.py; the other types'
activations rounded as their ActBands say),
"dequantised" (every kept-quantised weight replaced by its float32 values, activations still rounded: the
engine before Q8Weight / Q4KWeight) and
"float32" (dequantised, no rounding at all: every ActBands emptied): a decode step at B = 1, 8, 16 (context 128) and a prefill of --prefill tokens. Also
the rounding alone on the decode step's inputs (round_activations per call, x its real shape).

    .venv/bin/python benchmarks/engine_rounding.py [--shapes small] [--dtype q8_0] [--threads 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
from common import ROOT  # noqa: F401  (puts the repository on sys.path)
from engine import fmt_range, model_file

from velollmd.config import SchedulerConfig
from velollmd.engine import loader, vecdot
from velollmd.engine.model import QUANTISED, Batch, Model, SeqChunk

ACT_FIELDS = ("qkv_act", "wo_act", "gate_up_act", "down_act")


WEIGHT_FIELDS = ("wqkv", "wo", "w_gate_up", "w_down")


def dequantised(model: Model) -> Model:
    """A shallow copy of model with every kept-quantised weight as its float32 values (ActBands kept)."""
    def plain(w):
        return w.rows(slice(None)) if isinstance(w, QUANTISED) else w
    copy = Model.__new__(Model)
    copy.__dict__.update(model.__dict__)
    copy.layers = [dataclasses.replace(layer, **{f: plain(getattr(layer, f)) for f in WEIGHT_FIELDS})
                   for layer in model.layers]
    copy.token_embd = plain(model.token_embd)
    copy.lm_head = copy.token_embd if model.lm_head is model.token_embd else plain(model.lm_head)
    return copy


def without_rounding(model: Model) -> Model:
    """dequantised(model), every ActBands emptied."""
    plain = dequantised(model)
    plain.layers = [dataclasses.replace(layer, **{f: () for f in ACT_FIELDS}) for layer in plain.layers]
    plain.lm_head_act = ()
    return plain


def timed_ms(run, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def compare(label: str, passes: dict, rounds: int) -> None:
    """passes: name -> callable; A B A B over rounds; median ms and the ratio per round."""
    times = {name: [] for name in passes}
    for _ in range(rounds):
        for name, run in passes.items():
            times[name] += timed_ms(run, 1)
    first, *others = passes
    parts = [f"{name} {fmt_range(times[name], 1)} ms" for name in passes]
    for name in others:
        ratios = [a / b for a, b in zip(times[first], times[name])]
        parts.append(f"{first}/{name} {fmt_range(ratios, 3)} (median {statistics.median(ratios):.3f})")
    print(f"  {label}: " + ", ".join(parts), flush=True)


def rounding_alone(model: Model, batch_size: int, rounds: int) -> float:
    """ms per decode step spent in round_activations alone, on inputs of the step's shapes."""
    c = model.config
    rng = np.random.default_rng(0)
    calls = []
    for layer in model.layers:
        for act, width in ((layer.qkv_act, c.n_embd), (layer.wo_act, model.q_dim),
                           (layer.gate_up_act, c.n_embd), (layer.down_act, c.n_ff)):
            calls += [(rng.standard_normal((batch_size, width)).astype(np.float32), t) for _, t in act]
    head_input = rng.standard_normal((batch_size, c.n_embd)).astype(np.float32)
    calls += [(head_input, t) for _, t in model.lm_head_act]
    times = timed_ms(lambda: [vecdot.round_activations(x, t) for x, t in calls], rounds)
    return statistics.median(times)


def bench(shape: str, args) -> None:
    path = model_file(shape, args.dtype)
    options = loader.EngineOptions(num_ctx=1024, kv_cache_mb=256, threads=args.threads)
    loaded = loader.load("r", path, options, SchedulerConfig())
    model, kv = loaded.runner.model, loaded.runner.kv
    models = {"rounded": model, "dequantised": dequantised(model), "float32": without_rounding(model)}
    print(f"== {shape} {args.dtype}: threads {args.threads}, layer 0 Q/K/V bands {model.layers[0].qkv_act}",
          flush=True)
    num_blocks = -(-129 // kv.block_size)
    for batch_size in (1, 8, 16):
        batch = Batch.pack([SeqChunk([7], 128, range(i * num_blocks, (i + 1) * num_blocks))
                            for i in range(batch_size)])
        compare(f"decode step B={batch_size}",
                {name: (lambda m=m: m.forward(batch, kv)) for name, m in models.items()}, args.rounds)
        alone = rounding_alone(model, batch_size, args.rounds)
        print(f"    round_activations alone: {alone:.2f} ms per step", flush=True)
    prompt = list(np.random.default_rng(1).integers(10, 200, size=args.prefill))
    table = range(-(-args.prefill // kv.block_size))
    prefill = Batch.pack([SeqChunk(prompt, 0, table)])
    compare(f"prefill {args.prefill} tokens", {name: (lambda m=m: m.forward(prefill, kv))
                                               for name, m in models.items()}, max(2, args.rounds // 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small")
    parser.add_argument("--dtype", default="q8_0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--prefill", type=int, default=256)
    args = parser.parse_args()
    print(f"load average {open('/proc/loadavg').read().split()[:3]}")
    for shape in args.shapes.split(","):
        bench(shape, args)


if __name__ == "__main__":
    main()
