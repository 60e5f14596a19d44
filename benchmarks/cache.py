"""Cache benchmark, in-process parts (no daemon).

1. Semantic lookup time at N x dim, as effective GB/s (matrix bytes scanned / time), against
   two probes over an equally sized float32 array in the same run, interleaved A B A B:
   `probe.sum()` (a pure streaming read) and the raw BLAS mat-vec `matrix @ q`.
2. Builtin embedder quality on benchmarks/paraphrase_set.json: hit rate on paraphrases,
   wrong-hit rate on near-misses (negations, numbers, entities...), at several thresholds,
   and the embedding time of one query.

3. Exact-hit latency through the daemon (a separate process, in front of the Ollama
   emulator): a cached chat completion vs the /health round trip, interleaved on one
   keep-alive connection each, as a ratio of p50s.
4. Shared hit: two daemons on one private redis-server; B keeps no local entries
   (max_entries = 0), so each of its hits is read from Redis. Interleaved in one run: a local
   hit on A, a shared hit on B, /health on A. Target: shared hit p50 <= 2x local hit p50.

Run: .venv/bin/python benchmarks/cache.py [--quick] [--no-daemon] [--shared-only]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from velollmd.cache.embed import HashingEmbedder  # noqa: E402
from velollmd.cache.semantic import SemanticIndex  # noqa: E402
from velollmd.ctl.bench.stats import percentile  # noqa: E402

PAIRS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paraphrase_set.json")
GB = 1e9


def percentile_ms(samples: list[float], q: float) -> float:
    return percentile(samples, q) * 1e3


def random_unit_rows(num: int, dim: int, rng) -> np.ndarray:
    rows = rng.standard_normal((num, dim), dtype=np.float32)            # (num, dim)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def build_index(num: int, dim: int, dtype: str, rng) -> SemanticIndex:
    """One partition holding all `num` rows: the worst case, a full scan."""
    index = SemanticIndex(num, dim, dtype=dtype, threshold=0.95)
    vectors = random_unit_rows(num, dim, rng)
    for i in range(num):
        index.add("p", f"k{i}", "q", vectors[i])
    return index


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_lookup(num: int, dim: int, dtype: str, reps: int, rng) -> dict:
    index = build_index(num, dim, dtype, rng)
    probe = np.ones((num, dim), np.float32)                             # (num, dim)
    matrix32 = index.vectors[:num].astype(np.float32)                   # (num, dim)
    query = random_unit_rows(1, dim, rng)[0]                            # (dim,)
    cases = {"lookup": lambda: index.search("p", query, "q"),
             "sum": probe.sum, "matvec": lambda: matrix32 @ query}
    times = {name: [] for name in cases}
    for _ in range(3):                                                  # warm up
        for fn in cases.values():
            fn()
    for _ in range(reps):                                               # A B C A B C ...
        for name, fn in cases.items():
            times[name].append(time_once(fn))
    scanned = index.vectors[:num].nbytes
    p50 = {name: percentile(t, 50) for name, t in times.items()}
    return {"num": num, "dim": dim, "dtype": dtype, "reps": reps,
            "p50_ms": p50["lookup"] * 1e3, "p99_ms": percentile_ms(times["lookup"], 99),
            "gbps": scanned / p50["lookup"] / GB,
            "sum_gbps": probe.nbytes / p50["sum"] / GB,
            "matvec_gbps": matrix32.nbytes / p50["matvec"] / GB}


def lookup_table(quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    rows = []
    for dim in (384, 768):
        for num in sizes:
            rows.append(bench_lookup(num, dim, "float32", 300 if num < 100_000 else 40, rng))
    if not quick:
        rows.append(bench_lookup(100_000, 384, "float16", 40, rng))
    return rows


def embedder_quality(thresholds=(0.85, 0.9, 0.95), dim: int = 384) -> dict:
    pairs = json.load(open(PAIRS_PATH))["pairs"]
    embedder = HashingEmbedder(dim)
    result = {"num_pairs": len(pairs), "thresholds": {}, "misses_at": {}}
    for threshold in thresholds:
        hits = wrong = 0
        missed = []
        for pair in pairs:
            index = SemanticIndex(1, dim, threshold=threshold)
            index.add("p", "k", pair["stored"], embedder.embed_one(pair["stored"]))
            found = index.search("p", embedder.embed_one(pair["query"]), pair["query"])
            if pair["expect"] == "hit":
                hits += found is not None
                if found is None:
                    missed.append(pair["kind"])
            else:
                wrong += found is not None
        num_hit = sum(p["expect"] == "hit" for p in pairs)
        result["thresholds"][threshold] = {"hit_rate": hits / num_hit, "hits": hits,
                                           "num_should_hit": num_hit, "wrong_hits": wrong,
                                           "num_should_miss": len(pairs) - num_hit}
        result["misses_at"][threshold] = missed
    return result


def embed_timing(dim: int = 384, reps: int = 2000) -> dict:
    embedder = HashingEmbedder(dim)
    text = "How do I reverse a list in Python without modifying the original list?"
    times = [time_once(lambda: embedder.embed_one(text)) for _ in range(reps)]
    return {"reps": reps, "chars": len(text), "p50_us": percentile(times, 50) * 1e6,
            "p99_us": percentile(times, 99) * 1e6}


def markdown(lookups: list[dict], quality: dict, embed: dict) -> str:
    lines = [f"### Cache (in-process) - {platform.node()}, {time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} CPUs, numpy {np.__version__}",
             "`.venv/bin/python benchmarks/cache.py`", "",
             "Semantic lookup, one partition holding all N rows (full scan), interleaved with "
             "probes on an equally sized float32 array.", "",
             "| N | dim | dtype | reps | lookup p50 ms | p99 ms | lookup GB/s | sum() GB/s "
             "| BLAS matvec GB/s | lookup / sum | lookup / matvec |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in lookups:
        lines.append(f"| {r['num']} | {r['dim']} | {r['dtype']} | {r['reps']} | "
                     f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['gbps']:.1f} | "
                     f"{r['sum_gbps']:.1f} | {r['matvec_gbps']:.1f} | "
                     f"{r['gbps'] / r['sum_gbps']:.0%} | {r['gbps'] / r['matvec_gbps']:.0%} |")
    lines += ["", f"Builtin embedder on {quality['num_pairs']} labelled pairs "
              f"(benchmarks/paraphrase_set.json), one query embed p50 {embed['p50_us']:.0f} us "
              f"/ p99 {embed['p99_us']:.0f} us ({embed['chars']} chars, {embed['reps']} reps).", "",
              "| threshold | hit rate (should hit) | wrong hits (should miss) |", "|---|---|---|"]
    for t, q in quality["thresholds"].items():
        lines.append(f"| {t} | {q['hits']}/{q['num_should_hit']} = {q['hit_rate']:.0%} | "
                     f"{q['wrong_hits']}/{q['num_should_miss']} |")
    return "\n".join(lines)


def daemon_exact_hit(num: int = 2000) -> dict:
    """p50/p99 of a cached chat completion vs GET /health through the daemon, interleaved."""
    import asyncio

    from common import Daemon, backend_toml, summary

    from tests.rig.ollama_emulator import OllamaEmulator
    from velollmd.http.client import HTTPClient

    body = {"model": "llama3.2:latest", "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}

    async def measure(url: str) -> dict:
        hit_client, health_client = HTTPClient(url), HTTPClient(url)
        first = await hit_client.request("POST", "/v1/chat/completions", json=body)
        await first.read()
        times = {"hit": [], "health": []}
        for _ in range(num):
            for name, client, args in (("hit", hit_client, ("POST", "/v1/chat/completions")),
                                       ("health", health_client, ("GET", "/health"))):
                started = time.perf_counter()
                response = await client.request(*args, json=body if name == "hit" else None)
                await response.read()
                times[name].append((time.perf_counter() - started) * 1e3)
                assert name == "health" or response.header("x-velollm-cache") == "hit-exact"
        return {name: summary(values) for name, values in times.items()}

    with OllamaEmulator() as emulator:
        with Daemon(backend_toml("ollama", "ollama", emulator.url, '["llama3*"]')
                    + '[cache]\npath = ""\n') as daemon:
            result = asyncio.run(measure(daemon.url))
        assert emulator.count("/api/chat") == 1
    return result


def daemon_markdown(result: dict) -> str:
    hit, health = result["hit"], result["health"]
    return "\n".join([
        "", "Exact-hit latency through the daemon (separate process, keep-alive, interleaved):", "",
        "| request | n | p50 ms | p99 ms |", "|---|---|---|---|",
        f"| GET /health | {health['n']} | {health['p50']:.3f} | {health['p99']:.3f} |",
        f"| cached chat completion (hit-exact) | {hit['n']} | {hit['p50']:.3f} | {hit['p99']:.3f} |",
        "", f"hit / health p50 ratio: {hit['p50'] / health['p50']:.2f}x"])


def shared_hit(num: int = 1000) -> dict:
    """p50/p99 of a local exact hit (A), a hit read through Redis (B), GET /health (A), interleaved."""
    import asyncio

    from common import Daemon, backend_toml, summary

    from tests.rig.ollama_emulator import OllamaEmulator
    from tests.rig.redis import RedisServer
    from velollmd.http.client import HTTPClient

    body = {"model": "llama3.2:latest", "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of Italy?"}]}

    async def measure(url_a: str, url_b: str) -> dict:
        local, shared, health = HTTPClient(url_a), HTTPClient(url_b), HTTPClient(url_a)
        await (await local.request("POST", "/v1/chat/completions", json=body)).read()
        rows = (("local hit (A)", local, "POST", "/v1/chat/completions", "hit-exact"),
                ("shared hit via Redis (B)", shared, "POST", "/v1/chat/completions", "hit-exact"),
                ("GET /health (A)", health, "GET", "/health", None))
        times = {row[0]: [] for row in rows}
        for _ in range(num):
            for name, client, method, path, expected in rows:
                started = time.perf_counter()
                response = await client.request(method, path, json=body if expected else None)
                await response.read()
                times[name].append((time.perf_counter() - started) * 1e3)
                assert response.header("x-velollm-cache") == expected
        return {name: summary(values) for name, values in times.items()}

    with OllamaEmulator() as emulator, RedisServer() as redis:
        toml = backend_toml("ollama", "ollama", emulator.url, '["llama3*"]')
        cache = f'[cache]\npath = ""\nredis_url = "{redis.url}"\n'
        with Daemon(toml + cache) as a, Daemon(toml + cache + "max_entries = 0\n") as b:
            result = asyncio.run(measure(a.url, b.url))
        assert emulator.count("/api/chat") == 1
    return result


def shared_markdown(result: dict) -> str:
    lines = ["", "Shared hit through Redis vs a local hit vs /health (two daemons, one redis-server, "
             "interleaved):", "", "| request | n | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['n']} | {r['p50']:.3f} | {r['p99']:.3f} |" for name, r in result.items()]
    local, shared = result["local hit (A)"]["p50"], result["shared hit via Redis (B)"]["p50"]
    return "\n".join(lines + ["", f"shared / local hit p50 ratio: {shared / local:.2f}x (target <= 2x)"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip N = 100k")
    parser.add_argument("--no-daemon", action="store_true", help="skip the exact-hit daemon part")
    parser.add_argument("--shared-only", action="store_true", help="only the shared-hit part")
    args = parser.parse_args()
    if args.shared_only:
        print(shared_markdown(shared_hit()))
        return
    quality = embedder_quality()
    embed = embed_timing()
    lookups = lookup_table(args.quick)
    print(markdown(lookups, quality, embed))
    if not args.no_daemon:
        print(daemon_markdown(daemon_exact_hit()))
        print(shared_markdown(shared_hit()))
    for t, kinds in quality["misses_at"].items():
        print(f"\nparaphrases missed at {t}: {', '.join(kinds) or '-'}")


if __name__ == "__main__":
    main()
