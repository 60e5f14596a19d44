"""The in-process engine next to llama.cpp's llama-server on the same GGUF files, in one run.

Models: tools/make_tiny_gguf.py's `tiny` and `small` shapes (--dtype, default q8_0), written once
to ~/.cache/velollm/bench-models/. For each model, both servers are up at once with the same
thread count (--threads, default: physical cores) and 16 sequences at a time: llama-server with
--parallel 16 (continuous batching, its default), velollmd with one `kind = "engine"` backend
(max_running 16, response cache off). Requests are streaming chats with `ignore_eos`, so each
generates max_tokens (the counts are reported, from each server's own usage chunk).

1. Decode: aggregate generated tok/s and TTFT p50/p99 at concurrency 1, 4, 8, 16; each
   (concurrency, round) runs engine then llama-server (A B A B ...); ratios per round.
2. Second-turn TTFT on a ~2,000-token conversation: cold (a history no cache has seen) vs the
   same conversation's next turn (prefix cache hit); both servers.
3. /health p99 of the daemon idle vs while the engine serves concurrency 8.
4. RSS: the daemon before and after its model is loaded, llama-server's.
5. KV waste (in-process, the real runner, scheduler and allocator): allocated block tokens vs
   tokens held, every step of 16 concurrent requests of mixed lengths.

6. --profile (only this): the decode step in-process, per op, at B = 1, 8, 16, and the compiled
   matmul against OpenBLAS on the same steps (A B A B ...).

7. --health-only (only this): /health idle vs under load, the daemon of this tree next to a
   --before checkout and/or this tree under other --switch-intervals, A B A B over --rounds;
   --health-floor 1,2 adds the machine's own floor: /health while 1 or 2 CPU-bound processes
   run instead of the engine's load (no GIL, no loop work, no load generator).

8. --scaling-only (only this): the engine's tok/s at c=1 and c=8 and their ratio, the same
   variants A B A B (no llama-server: for a machine where it cannot run, and for a before/after).

    .venv/bin/python benchmarks/engine.py [--quick] [--shapes tiny,small] [--rounds 2] [--threads N]
    .venv/bin/python benchmarks/engine.py --profile --shapes small
    .venv/bin/python benchmarks/engine.py --health-only --shapes tiny --rounds 4 --before /tmp/base
    .venv/bin/python benchmarks/engine.py --scaling-only --shapes small --rounds 4 --before /tmp/base
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import time
from pathlib import Path

import uvloop
from common import ROOT, Daemon, model_file, run_concurrently, start_llama_server, summary, thread_cpu_seconds

from tests.rig.llama import tiny_gguf_tool
from velollmd.config import SchedulerConfig
from velollmd.engine import kernels, loader
from velollmd.engine.gguf import read_gguf
from velollmd.engine.sampling import SamplingParams
from velollmd.engine.tokenizer import Tokenizer
from velollmd.errors import VeloError
from velollmd.http.client import HTTPClient

PARALLEL = 16
NUM_CTX = 4096
HISTORY_TOKENS = 2000
TARGETS = ("engine", "llama")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---- requests ----

def chat_body(model: str, messages: list[dict], max_tokens: int) -> dict:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}


async def stream_chat(client: HTTPClient, body: dict) -> dict:
    """TTFT, latency, the text and the usage of one streaming chat; {"error": ...} on failure."""
    started = time.perf_counter()
    try:
        response = await client.request("POST", "/v1/chat/completions", json=body)
    except VeloError as error:
        return {"error": f"client: {error}"}
    if response.status != 200:
        return {"error": f"{response.status} {(await response.read())[:300]!r}"}
    ttft, text, usage = None, [], {}
    async for data in response.iter_sse():
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            return {"error": f"in stream: {event['error']}"}
        usage = event.get("usage") or usage
        for choice in event.get("choices", []):
            content = choice.get("delta", {}).get("content")
            if content:
                ttft = ttft or time.perf_counter() - started
                text.append(content)
    return {"ttft": ttft, "latency": time.perf_counter() - started, "text": "".join(text),
            "completion_tokens": usage.get("completion_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)}


def checked(results: list[dict], what: str) -> list[dict]:
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"{what}: {len(errors)} request(s) failed, e.g. {errors[0]}")
    return results


async def decode_batch(client: HTTPClient, model: str, concurrency: int, max_tokens: int) -> dict:
    """`concurrency` streams at once (each its own short prompt), twice over: tok/s and TTFTs."""
    num_requests = 2 * concurrency

    def one(i: int):
        messages = [{"role": "user", "content": f"Tell me a story, number {i}."}]
        return stream_chat(client, chat_body(model, messages, max_tokens))
    started = time.perf_counter()
    results = checked(await run_concurrently(num_requests, concurrency, one), f"c={concurrency}")
    elapsed = time.perf_counter() - started
    tokens = [r["completion_tokens"] for r in results]
    return {"tok_s": sum(tokens) / elapsed, "ttft_ms": [r["ttft"] * 1e3 for r in results],
            "tokens": sorted(set(tokens)), "num_tokens": sum(tokens)}


async def measure_decode(urls: dict[str, str], model: str, args) -> list[dict]:
    rows = []
    for concurrency in args.concurrency:
        per_target = {t: [] for t in TARGETS}
        for _ in range(args.rounds):
            for target in TARGETS:
                client = HTTPClient(urls[target])
                per_target[target].append(await decode_batch(client, model, concurrency, args.max_tokens))
        rows.append({"concurrency": concurrency, "runs": per_target})
        engine, llama = (per_target[t] for t in TARGETS)
        print(f"  c={concurrency:2d}: engine {fmt_range([r['tok_s'] for r in engine])} tok/s, "
              f"llama-server {fmt_range([r['tok_s'] for r in llama])} tok/s, ratio "
              f"{fmt_range([e['tok_s'] / max(l['tok_s'], 1e-9) for e, l in zip(engine, llama)], 2)}",
              flush=True)
    return rows


def history(tokenizer: Tokenizer, seed: int, num_tokens: int) -> list[dict]:
    """A conversation of about num_tokens tokens (chat template aside), words from the model's
    own vocabulary in an order no other call makes."""
    words = list(tiny_gguf_tool().WORDS)
    rng = random.Random(seed)
    messages, total = [], 0
    while total < num_tokens:
        text = " ".join(rng.choice(words) for _ in range(60))
        total += len(tokenizer.encode(text, add_special=False)) + 5
        messages.append({"role": "user" if len(messages) % 2 == 0 else "assistant", "content": text})
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": "and then?"})
    return messages


async def measure_second_turn(urls: dict[str, str], model: str, tokenizer: Tokenizer, args) -> dict:
    """Per target: TTFT of a cold 2,000-token history, then of its next turn (a prefix hit)."""
    out = {t: {"cold": [], "hit": [], "cached": [], "prompt": []} for t in TARGETS}
    for sample in range(args.history_samples):
        for target in TARGETS:
            client = HTTPClient(urls[target])
            messages = history(tokenizer, seed=hash((target, sample, time.time())), num_tokens=HISTORY_TOKENS)
            first = checked([await stream_chat(client, chat_body(model, messages, 8))], "cold turn")[0]
            follow = messages + [{"role": "assistant", "content": first["text"]},
                                 {"role": "user", "content": "Go on."}]
            second = checked([await stream_chat(client, chat_body(model, follow, 8))], "second turn")[0]
            out[target]["cold"].append(first["ttft"] * 1e3)
            out[target]["hit"].append(second["ttft"] * 1e3)
            out[target]["cached"].append(second["cached_tokens"])
    for target in TARGETS:
        r = out[target]
        print(f"  {target}: cold TTFT {fmt_range(r['cold'])} ms, hit {fmt_range(r['hit'])} ms "
              f"(cached tokens {sorted(set(r['cached']))}), speedup "
              f"{fmt_range([c / h for c, h in zip(r['cold'], r['hit'])], 1)}x", flush=True)
    return out


async def health_latencies(client: HTTPClient, num: int) -> list[float]:
    samples = []
    for _ in range(num):
        started = time.perf_counter()
        response = await client.request("GET", "/health")
        await response.read()
        samples.append((time.perf_counter() - started) * 1e3)
        await asyncio.sleep(0.01)
    return samples


def probe_health(url: str, num_taken, stop, results) -> None:
    """In a process of its own (the load's SSE parsing must not delay the probe's reads): GET
    /health every 10 ms until `stop` is set, counting in `num_taken`; the samples to `results`."""
    async def probe() -> list[float]:
        client, samples = HTTPClient(url), []
        while not stop.is_set():
            samples += await health_latencies(client, 1)
            num_taken.value = len(samples)
        return samples
    results.put(uvloop.run(probe()))


class HealthProbe:
    """`with HealthProbe(url) as probe:` samples /health in a child process meanwhile."""

    def __init__(self, url: str):
        context = multiprocessing.get_context("spawn")
        self.num_taken, self.stop, self.results = context.Value("i", 0), context.Event(), context.Queue()
        self.process = context.Process(target=probe_health, args=(url, self.num_taken, self.stop, self.results))
        self.samples: list[float] = []

    def __enter__(self) -> HealthProbe:
        self.process.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.samples = self.results.get(timeout=60)
        self.process.join()


async def sampled_health(url: str, num: int) -> list[float]:
    """`num` /health latencies (ms) from a probe process, nothing else running meanwhile."""
    with HealthProbe(url) as probe:
        while probe.num_taken.value < num:
            await asyncio.sleep(0.05)
    return probe.samples


async def measure_health(url: str, model: str, args, quiet: bool = False, pid: int | None = None,
                         concurrency: int = 8) -> dict:
    """GET /health p50/p99 (from another process) idle, then while the engine streams at
    `concurrency` (batches of 2 x concurrency requests until as many samples as idle); tok/s
    meanwhile and, given the daemon's pid, its event loop's CPU time per generated token (the
    main thread's: the engine computes in a thread of its own)."""
    idle = await sampled_health(url, args.health_samples)
    loop_cpu = thread_cpu_seconds(pid) if pid else 0.0
    with HealthProbe(url) as loaded:
        tok_s, num_tokens = [], 0
        while loaded.num_taken.value < args.health_samples:
            batch = await decode_batch(HTTPClient(url), model, concurrency, args.max_tokens)
            tok_s.append(batch["tok_s"])
            num_tokens += batch["num_tokens"]
    result = {"idle": summary(idle), "load": summary(loaded.samples), "tok_s": statistics.median(tok_s)}
    result["ratio"] = result["load"]["p99"] / result["idle"]["p99"]
    result["loop_us"] = (thread_cpu_seconds(pid) - loop_cpu) / num_tokens * 1e6 if pid else float("nan")
    if not quiet:
        print(f"  /health ms: idle p50 {result['idle']['p50']:.2f} p99 {result['idle']['p99']:.2f} "
              f"(n={len(idle)}); engine at c={concurrency} p50 {result['load']['p50']:.2f} p99 "
              f"{result['load']['p99']:.2f} (n={len(loaded.samples)}); p99 ratio {result['ratio']:.2f}", flush=True)
    return result


def spin() -> None:
    while True:
        pass


async def measure_health_floor(url: str, args, hogs: int) -> dict:
    """GET /health p50/p99 idle, then while `hogs` processes each keep a core busy: the
    engine's compute without its GIL, its event-loop work and the load generator. What this
    machine's scheduler alone does to /health under that much CPU load."""
    idle = await sampled_health(url, args.health_samples)
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=spin, daemon=True) for _ in range(hogs)]
    for process in spinners:
        process.start()
    try:
        loaded = await sampled_health(url, args.health_samples)
    finally:
        for process in spinners:
            process.kill()
            process.join()
    result = {"idle": summary(idle), "load": summary(loaded), "tok_s": 0.0,
              "loop_us": float("nan")}
    result["ratio"] = result["load"]["p99"] / result["idle"]["p99"]
    return result


def bench_health(shape: str, args) -> None:
    """--health-only: /health idle vs under engine load for each daemon variant (this tree,
    --before's checkout, this tree with each --switch-intervals value), measured in turn, at
    each --health-concurrency."""
    for concurrency in args.health_concurrency:
        print(f"\n== {shape}: /health idle vs engine at c={concurrency}, {args.rounds} rounds, "
              f"threads {args.threads}", flush=True)

        def describe(run: dict) -> str:
            return (f"idle p99 {run['idle']['p99']:.2f} ms, load p50/p99 {run['load']['p50']:.2f}/"
                    f"{run['load']['p99']:.2f} ms, ratio {run['ratio']:.2f}, {run['tok_s']:.0f} tok/s, "
                    f"loop {run['loop_us']:.1f} us/token (load average {os.getloadavg()[0]:.1f})")

        variants, floors = daemon_variants(shape, args), {}
        for hogs in args.health_floor:
            daemon = Daemon(engine_toml(model_file(shape, args.dtype), args))
            floors[id(daemon)] = hogs
            variants[f"floor: this tree, {hogs} CPU-bound process{'es' if hogs > 1 else ''}, no engine load"] = daemon

        def measure(daemon: Daemon, concurrency: int = concurrency) -> dict:
            if id(daemon) in floors:
                return uvloop.run(measure_health_floor(daemon.url, args, floors[id(daemon)]))
            return uvloop.run(measure_health(daemon.url, "tiny", args, quiet=True, pid=daemon.proc.pid,
                                             concurrency=concurrency))
        runs = run_rounds(variants, args.rounds, measure, describe)
        print(f"\n| {shape}, c={concurrency} | idle p50 / p99 ms | load p50 / p99 ms | load p99 / idle p99 "
              "| tok/s | loop us/token |")
        print("|---|---|---|---|---|---|")
        for name, rs in runs.items():
            print(f"| {name} | {fmt_range([r['idle']['p50'] for r in rs], 2)} / {fmt_range([r['idle']['p99'] for r in rs], 2)} "
                  f"| {fmt_range([r['load']['p50'] for r in rs], 2)} / {fmt_range([r['load']['p99'] for r in rs], 2)} "
                  f"| **{fmt_range([r['ratio'] for r in rs], 2)}** | {fmt_range([r['tok_s'] for r in rs])} "
                  f"| {fmt_range([r['loop_us'] for r in rs], 1)} |")


def daemon_variants(shape: str, args) -> dict[str, Daemon]:
    """The engine daemons to compare (not started): this tree, --before's checkout, this tree
    with each --switch-intervals value."""
    toml = engine_toml(model_file(shape, args.dtype), args)
    variants = {"this tree": Daemon(toml)}
    if args.before:
        variants["before"] = Daemon(toml, root=Path(args.before).resolve())
    for interval in args.switch_intervals:
        variants[f"this tree, switch interval {interval * 1e3:g} ms"] = Daemon(toml, switch_interval=interval)
    return variants


def run_rounds(variants: dict[str, Daemon], rounds: int, measure, describe) -> dict[str, list]:
    """Start and warm every variant, then `rounds` times measure(daemon) for each in turn (A B A
    B ...), printing describe(result); the daemons are stopped at the end. {name: [result, ...]}."""
    runs: dict[str, list] = {name: [] for name in variants}
    try:
        for daemon in variants.values():
            daemon.start()
            uvloop.run(decode_batch(HTTPClient(daemon.url), "tiny", 1, 4))     # loads the model
        for round_index in range(rounds):
            for name, daemon in variants.items():
                runs[name].append(measure(daemon))
                print(f"  round {round_index + 1} {name}: {describe(runs[name][-1])}", flush=True)
    finally:
        for daemon in variants.values():
            daemon.stop()
    return runs


def bench_scaling(shape: str, args) -> None:
    """--scaling-only: the engine's tok/s at c=1 and c=8 and c=8 / c=1 (issue 14's target) for each
    daemon variant, A B A B: every round runs each variant's c=1 then its c=8 (no llama-server),
    then reads the daemon's RSS (its model loaded)."""
    print(f"\n== {shape}: engine c=1 and c=8, {args.rounds} rounds, threads {args.threads}", flush=True)

    def measure(daemon: Daemon) -> tuple[float, float, float]:
        c1, c8 = (uvloop.run(decode_batch(HTTPClient(daemon.url), "tiny", c, args.max_tokens))["tok_s"]
                  for c in (1, 8))
        return c1, c8, rss_mb(daemon.proc.pid)

    def describe(run: tuple[float, float, float]) -> str:
        c1, c8, rss = run
        return (f"c=1 {c1:.1f} tok/s, c=8 {c8:.1f} tok/s, c=8 / c=1 {c8 / c1:.2f}, RSS {rss:.0f} MiB "
                f"(load average {os.getloadavg()[0]:.1f})")
    runs = run_rounds(daemon_variants(shape, args), args.rounds, measure, describe)
    print(f"\n| {shape} | c=1 tok/s | c=8 tok/s | c=8 / c=1 | RSS MiB |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        print(f"| {name} | {fmt_range([c1 for c1, _, _ in rs], 1)} | {fmt_range([c8 for _, c8, _ in rs], 1)} "
              f"| **{fmt_range([c8 / c1 for c1, c8, _ in rs], 2)}** | {fmt_range([r for _, _, r in rs], 0)} |")


# ---- KV waste, in-process ----

def measure_kv_waste(path: Path, args) -> dict:
    """Allocated block tokens vs tokens held, at every step of 16 requests of mixed lengths."""
    options = loader.EngineOptions(num_ctx=2048, kv_cache_mb=args.kv_cache_mb, max_running=PARALLEL, threads=args.threads)
    model = loader.load("kv", path, options, SchedulerConfig())
    runner, rng = model.runner, random.Random(0)
    for i in range(PARALLEL):      # prompts of 32 to 1,500 tokens, answers of 16 to 256 (no eos)
        prompt = [rng.randrange(300, 900) for _ in range(rng.randrange(32, 1500))]
        params = SamplingParams(temperature=0, max_tokens=rng.randrange(16, 256))
        runner.submit(f"r{i}", prompt, params, lambda event: None)
    allocated, held = 0, 0
    pool, block_size = runner.scheduler.pool, runner.block_size
    while runner.step():
        for request_id in runner.scheduler.running:
            seq = runner._seqs[request_id]
            allocated += len(pool.block_table(request_id)) * block_size
            held += seq.request.num_tokens       # written, or the sampled token written next step
    waste = 1 - held / allocated
    print(f"  KV waste: {waste * 100:.2f} % of allocated block tokens unused "
          f"(block_size {block_size}, {PARALLEL} requests, summed over {runner.num_steps} steps)", flush=True)
    return {"waste": waste, "steps": runner.num_steps}


# ---- the decode step, in-process ----

PROFILED = ("linear", "_attention", "decode_attention", "gather_padded", "rms_norm", "apply_rope",
            "silu", "write", "__init__", "rope_cos_sin")


BATCH_SIZES = (1, 8, 16)


def profile_decode(path: Path, args) -> None:
    """Per-op ms of one decode step at B = 1, 8 and 16 (context 128), and the compiled matmul vs
    OpenBLAS for the same steps (model.DECODE_ROWS B: the compiled kernel, 0: OpenBLAS). The
    steps of all batch sizes and both variants are interleaved, so that the machine's load moves
    them alike; then each B's step over B=1's (issue 14: c=8 / c=1 is about 8 / that ratio).
    A Q8_0 file's matrices are Q8Weights, which take their integer kernel for any number of rows:
    there the two variants differ only in the matrices of other types."""
    import cProfile
    import pstats

    from velollmd.engine import model as model_module
    from velollmd.engine.model import Batch, SeqChunk
    loaded = loader.load("p", path, loader.EngineOptions(num_ctx=1024, kv_cache_mb=256, threads=args.threads),
                         SchedulerConfig())
    model, kv = loaded.runner.model, loaded.runner.kv
    num_blocks, default_rows = -(-129 // kv.block_size), model_module.DECODE_ROWS
    batches = {b: Batch.pack([SeqChunk([7], 128, range(i * num_blocks, (i + 1) * num_blocks)) for i in range(b)])
               for b in BATCH_SIZES}
    times = {(b, name): [] for b in BATCH_SIZES for name in ("compiled", "openblas")}
    for _ in range(args.rounds * 3):                       # A B A B ..., every B in each round
        for batch_size, batch in batches.items():
            for name, rows in (("compiled", batch_size), ("openblas", 0)):
                model_module.DECODE_ROWS = rows
                started = time.perf_counter()
                model.forward(batch, kv)
                times[batch_size, name].append((time.perf_counter() - started) * 1e3)
    model_module.DECODE_ROWS = default_rows
    for batch_size, batch in batches.items():
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [model.forward(batch, kv) for _ in range(10)])
        stats = pstats.Stats(profiler).stats
        per_op = {func[2]: cum / 10 * 1e3 for func, (_, _, _, cum, _) in stats.items() if func[2] in PROFILED
                  and ("engine" in func[0])}
        compiled, openblas = times[batch_size, "compiled"], times[batch_size, "openblas"]
        print(f"  decode step B={batch_size}: compiled {fmt_range(compiled, 1)} ms, OpenBLAS only "
              f"{fmt_range(openblas, 1)} ms (ratio {fmt_range([o / c for o, c in zip(openblas, compiled)], 2)}); "
              "per op ms: " + ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(per_op.items(), key=lambda x: -x[1])),
              flush=True)
    one = times[1, "compiled"]
    for batch_size in BATCH_SIZES[1:]:
        many = times[batch_size, "compiled"]
        print(f"  step B={batch_size} / B=1, compiled: {statistics.median(many) / statistics.median(one):.2f} "
              f"(medians), {min(many) / min(one):.2f} (minimums)", flush=True)


# ---- one model ----

def engine_toml(path: Path, args) -> str:
    return (f'[[backends]]\nname = "engine"\nkind = "engine"\nmodel = "{path}"\nalias = "tiny"\n'
            f'ollama_store = false\nthreads = {args.threads}\nmax_running = {PARALLEL}\n'
            f'num_ctx = {NUM_CTX}\nkv_cache_mb = {args.kv_cache_mb}\n[cache]\nenabled = false\n')


def bench_model(shape: str, args) -> dict:
    path = model_file(shape, args.dtype)
    print(f"\n== {shape} ({path.name}, {path.stat().st_size / 2**20:.0f} MiB), threads {args.threads}", flush=True)
    with read_gguf(path) as gguf:
        tokenizer = Tokenizer.from_gguf(gguf.metadata)
    llama = start_llama_server(path, parallel=PARALLEL, ctx_size=PARALLEL * NUM_CTX,
                               extra_args=("--threads", str(args.threads), "--threads-batch", str(args.threads),
                                           "--cont-batching"))
    daemon = Daemon(engine_toml(path, args)).start()
    try:
        urls = {"engine": daemon.url, "llama": llama.url}
        result = {"shape": shape, "file_mb": path.stat().st_size / 2**20, "rss_idle_mb": rss_mb(daemon.proc.pid)}
        warm = uvloop.run(decode_batch(HTTPClient(daemon.url), "tiny", 1, 4))  # loads the model
        result["rss_loaded_mb"] = rss_mb(daemon.proc.pid)
        uvloop.run(decode_batch(HTTPClient(llama.url), "tiny", 1, 4))
        print(f"  warm-up tokens {warm['tokens']}", flush=True)
        result["decode"] = uvloop.run(measure_decode(urls, "tiny", args))
        if not args.skip_history:
            result["second_turn"] = uvloop.run(measure_second_turn(urls, "tiny", tokenizer, args))
        result["health"] = uvloop.run(measure_health(daemon.url, "tiny", args))
        result["rss_after_mb"] = rss_mb(daemon.proc.pid)
        result["rss_llama_mb"] = rss_mb(llama.proc.pid)
        print(f"  RSS MiB: daemon idle {result['rss_idle_mb']:.0f}, model loaded {result['rss_loaded_mb']:.0f}, "
              f"after the runs {result['rss_after_mb']:.0f}; llama-server {result['rss_llama_mb']:.0f}", flush=True)
    finally:
        daemon.stop()
        llama.stop()
    return result


# ---- report ----

def fmt_range(values: list[float], digits: int = 0) -> str:
    """median [min-max] of the runs."""
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def report(results: list[dict], kv: dict, args) -> None:
    print(f"\n## Summary (threads {args.threads}, max_tokens {args.max_tokens}, {args.rounds} rounds, "
          f"{args.dtype}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, extension compiled: "
          f"{kernels.COMPILED})")
    for result in results:
        print(f"\n### {result['shape']}\n")
        print("| c | engine tok/s | llama-server tok/s | engine / llama | engine TTFT p50 / p99 ms "
              "| llama TTFT p50 / p99 ms | tokens per request (engine; llama) |")
        print("|---|---|---|---|---|---|---|")
        base = None
        for row in result["decode"]:
            engine, llama = row["runs"]["engine"], row["runs"]["llama"]
            e_ttft = summary([x for r in engine for x in r["ttft_ms"]])
            l_ttft = summary([x for r in llama for x in r["ttft_ms"]])
            print(f"| {row['concurrency']} | {fmt_range([r['tok_s'] for r in engine])} "
                  f"| {fmt_range([r['tok_s'] for r in llama])} "
                  f"| {fmt_range([e['tok_s'] / l['tok_s'] for e, l in zip(engine, llama)], 2)} "
                  f"| {e_ttft['p50']:.0f} / {e_ttft['p99']:.0f} | {l_ttft['p50']:.0f} / {l_ttft['p99']:.0f} "
                  f"| {sorted({t for r in engine for t in r['tokens']})}; "
                  f"{sorted({t for r in llama for t in r['tokens']})} |")
            if row["concurrency"] == 1:
                base = statistics.median(r["tok_s"] for r in engine)
            if row["concurrency"] == 8 and base:
                c8 = [r["tok_s"] for r in engine]
                print(f"|  | engine c=8 / c=1: {fmt_range([v / base for v in c8], 2)} |  |  |  |  |  |")
        if "second_turn" in result:
            for target, r in result["second_turn"].items():
                print(f"\n{target} second turn of a ~{HISTORY_TOKENS}-token history: cold TTFT "
                      f"{fmt_range(r['cold'])} ms, prefix hit {fmt_range(r['hit'])} ms, speedup "
                      f"{fmt_range([c / h for c, h in zip(r['cold'], r['hit'])], 1)}x "
                      f"(cached tokens {sorted(set(r['cached']))})")
        h = result["health"]
        print(f"\n/health p50/p99 ms: idle {h['idle']['p50']:.2f}/{h['idle']['p99']:.2f}, engine at c=8 "
              f"{h['load']['p50']:.2f}/{h['load']['p99']:.2f} (p99 ratio {h['load']['p99'] / h['idle']['p99']:.2f})")
        print(f"RSS MiB: daemon {result['rss_idle_mb']:.0f} idle -> {result['rss_loaded_mb']:.0f} loaded -> "
              f"{result['rss_after_mb']:.0f} after the runs; llama-server {result['rss_llama_mb']:.0f}")
    print(f"\nKV waste: {kv['waste'] * 100:.2f} % of allocated block tokens unused ({kv['steps']} steps)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny only, 1 round, fewer tokens and samples")
    parser.add_argument("--shapes", default="tiny,small")
    parser.add_argument("--dtype", default="q8_0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--threads", type=int, default=0, help="both servers' threads (0: physical cores)")
    parser.add_argument("--kv-cache-mb", type=int, default=1024)
    parser.add_argument("--history-samples", type=int, default=2)
    parser.add_argument("--health-samples", type=int, default=200)
    parser.add_argument("--health-concurrency", default="8", help="--health-only: the load's concurrency, e.g. 8,16")
    parser.add_argument("--skip-history", action="store_true")
    parser.add_argument("--profile", action="store_true", help="only the in-process decode-step profile")
    parser.add_argument("--health-only", action="store_true",
                        help="only /health idle vs under load, A B A B over the variants below")
    parser.add_argument("--scaling-only", action="store_true",
                        help="only the engine's c=8 / c=1 tok/s, A B A B over the variants below")
    parser.add_argument("--before", default="",
                        help="--health-only, --scaling-only: a checkout of the code before, side by side")
    parser.add_argument("--health-floor", default="",
                        help="--health-only: also /health idle vs N CPU-bound processes (no engine load), e.g. 1,2")
    parser.add_argument("--switch-intervals", default="",
                        help="--health-only, --scaling-only: also this tree with sys.setswitchinterval(s), e.g. 0.001,0.0005")
    args = parser.parse_args()
    if args.quick:
        args.shapes, args.rounds, args.max_tokens = "tiny", 1, 16
        args.history_samples, args.health_samples = 1, 50
    args.threads = args.threads or kernels.default_num_threads()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.health_concurrency = [int(c) for c in args.health_concurrency.split(",")]
    args.switch_intervals = [float(s) for s in args.switch_intervals.split(",") if s]
    args.health_floor = [int(n) for n in args.health_floor.split(",") if n]
    os.chdir(ROOT)
    if args.health_only:
        for shape in args.shapes.split(","):
            bench_health(shape, args)
        return
    if args.scaling_only:
        for shape in args.shapes.split(","):
            bench_scaling(shape, args)
        return
    if args.profile:
        for shape in args.shapes.split(","):
            print(f"== {shape}: decode step in-process, threads {args.threads}")
            profile_decode(model_file(shape, args.dtype), args)
        return
    results = [bench_model(shape, args) for shape in args.shapes.split(",")]
    print("\n== KV waste (tiny model: waste depends on lengths and block size, not on weights)")
    kv = measure_kv_waste(model_file("tiny", args.dtype), args)
    report(results, kv, args)


if __name__ == "__main__":
    main()
