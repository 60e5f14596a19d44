"""Does velollmd's adaptive concurrency limit find the width of a backend that does not state it?

The backend is proxy_overhead's scripted OpenAI-compatible server (its own process), here
degrading past 8 requests in flight: 20 ms per answer while at most 8 are in flight, and every
request's remaining work at half speed while more are (`--model rate`, the default), or twice
as long for a request that arrives while 8 or more are in flight (`--model arrival`, as
tests/sched/limit_sim.py's degrades_past). It states no width, so velollmd (default
configuration, response cache off) runs it under the adaptive limit, starting at 8.

32 closed-loop clients (each sends its next request when its last one is answered) for
`--seconds` through velollmd, with the same clients direct for `--direct-seconds` before and
after. The daemon's limit is read every 100 ms from GET /v1/velollm/queue. Reported: where the
limit settled (median of the second half), its min/max in the second half, the time from which
it stays within +-2 of that, and throughput vs direct. Issue 13's targets: settles within 25 %
of 8 and moves no more than +-2 after settling.

CPUs (2 or more): this process and the backend on CPU 0, velollmd on CPU 1.

    .venv/bin/python benchmarks/adaptive_limit.py [--seconds 25] [--model rate|arrival]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time

import uvloop
from common import Daemon, backend_toml, summary
from proxy_cpu import start
from proxy_overhead import CACHE_OFF, LOAD_CPUS, PROXY_CPUS, SCRIPTED_BACKEND, chat_body, one_request

from velollmd.http.client import HTTPClient

WIDTH, LATENCY_MS, NAME = 8, 20.0, "degrading"
SAMPLE_S = 0.1
BAND = 2                  # the limit may move +-2 around where it settled


async def closed_loop(url: str, num_clients: int, seconds: float, max_tokens: int) -> list[dict]:
    """Each client sends its next request when its last one is answered, until `seconds` pass.
    Every result carries its finish time (`done`, perf_counter)."""
    client = HTTPClient(url)
    deadline = time.perf_counter() + seconds
    results: list[dict] = []

    async def one_client(i: int) -> None:
        while time.perf_counter() < deadline:
            result = await one_request(client, chat_body(max_tokens, False, i))
            results.append({**result, "done": time.perf_counter()})
    await asyncio.gather(*(one_client(i) for i in range(num_clients)))
    await client.close()
    return results


async def sample_limit(url: str, stop: asyncio.Event) -> list[tuple[float, int, int, int]]:
    """(seconds since start, concurrency limit, running, waiting) every SAMPLE_S until `stop`."""
    admin = HTTPClient(url)
    samples, started = [], time.perf_counter()
    while not stop.is_set():
        response = await admin.request("GET", "/v1/velollm/queue")
        backend = (await response.json()).get("backends", {}).get(NAME, {})
        if backend.get("concurrency_limit") is not None:
            samples.append((time.perf_counter() - started, backend["concurrency_limit"],
                            backend.get("num_running", 0), backend.get("num_waiting", 0)))
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
        except asyncio.TimeoutError:
            pass
    await admin.close()
    return samples


async def through_daemon(url: str, args) -> tuple[list[dict], list[tuple], float]:
    """The clients through velollmd while the limit is sampled; (results, samples, start time)."""
    stop = asyncio.Event()
    started = time.perf_counter()
    sampler = asyncio.create_task(sample_limit(url, stop))
    results = await closed_loop(url, args.clients, args.seconds, args.max_tokens)
    stop.set()
    return results, await sampler, started


async def metrics_limit(url: str) -> str | None:
    """velollm_backend_concurrency_limit for the backend, as /metrics says it."""
    client = HTTPClient(url)
    response = await client.request("GET", "/metrics")
    text = (await response.read()).decode()
    await client.close()
    match = re.search(r'^velollm_backend_concurrency_limit\{[^}]*backend="%s"[^}]*\} (\S+)$' % NAME, text, re.M)
    return match.group(1) if match else None


def rate(results: list[dict], since: float = 0.0) -> float:
    """Answers per second among those finished after `since` (perf_counter)."""
    done = sorted(r["done"] for r in results if "error" not in r and r["done"] >= since)
    return (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else 0.0


def settling(samples: list[tuple]) -> dict:
    """Where the limit settled (median of the second half), its range there, and the first
    time from which it stays within +-BAND of that value to the end."""
    limits = [s[1] for s in samples]
    second = limits[len(limits) // 2:]
    settled = statistics.median(second)
    since = None
    for i in range(len(samples) - 1, -1, -1):
        if abs(limits[i] - settled) > BAND:
            break
        since = samples[i][0]
    return {"settled": settled, "min": min(second), "max": max(second), "settle_s": since,
            "first_in_target_s": next((t for t, limit, *_ in samples if 0.75 * WIDTH <= limit <= 1.25 * WIDTH), None),
            "running": statistics.fmean(s[2] for s in samples[len(samples) // 2:]),
            "waiting": statistics.fmean(s[3] for s in samples[len(samples) // 2:]),
            "n": len(samples), "start": limits[0], "peak": max(limits)}


def trace(samples: list[tuple], every_s: float = 1.0) -> str:
    """The limit once a second: how it got where it settled."""
    out, next_t = [], 0.0
    for t, limit, *_ in samples:
        if t >= next_t:
            out.append(str(limit))
            next_t += every_s
    return " ".join(out)


def report(args, direct: list[list[dict]], proxied: list[dict], samples: list[tuple], started: float,
           from_metrics: str | None, log) -> None:
    s = settling(samples)
    half = started + args.seconds / 2
    direct_rate = statistics.fmean(rate(results) for results in direct)
    proxied_rate, settled_rate = rate(proxied), rate(proxied, since=half)
    lat_direct = summary([r["latency"] * 1e3 for results in direct for r in results if "error" not in r])
    lat_proxied = summary([r["latency"] * 1e3 for r in proxied if "error" not in r and r["done"] >= half])
    errors = sum("error" in r for r in proxied) + sum("error" in r for results in direct for r in results)
    best = WIDTH / (LATENCY_MS / 1e3)          # the backend at its width: none degraded
    settle = f"{s['settle_s']:.1f} s" if s["settle_s"] is not None else "never"
    first = f"{s['first_in_target_s']:.1f} s" if s["first_in_target_s"] is not None else "never"
    within = 0.75 * WIDTH <= s["settled"] <= 1.25 * WIDTH
    steady = s["max"] - s["settled"] <= BAND and s["settled"] - s["min"] <= BAND
    print(f"\n### Adaptive concurrency limit: a backend degrading past {WIDTH} in flight "
          f"(model {args.model}, {LATENCY_MS:g} ms unloaded), {args.clients} closed-loop clients\n")
    print(f"velollmd: default configuration, response cache off; {args.seconds:g} s through velollmd, "
          f"{args.direct_seconds:g} s direct before and after; limit sampled every {SAMPLE_S * 1e3:.0f} ms "
          f"(n = {s['n']}).\n")
    print("| settled (median, 2nd half) | min / max (2nd half) | within +-2 from | first within 25 % of 8 "
          "| start / peak | running / waiting (2nd half, mean) |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {s['settled']:g} | {s['min']} / {s['max']} | {settle} | {first} | {s['start']} / {s['peak']} | "
          f"{s['running']:.1f} / {s['waiting']:.1f} |")
    print("\n| path | answers/s | vs direct | latency p50 / p99 ms | n |")
    print("|---|---:|---:|---:|---:|")
    print(f"| direct (all {args.clients} in flight at the backend) | {direct_rate:,.0f} | 100 % | "
          f"{lat_direct['p50']:.1f} / {lat_direct['p99']:.1f} | {lat_direct['n']} |")
    print(f"| velollmd, whole run | {proxied_rate:,.0f} | {proxied_rate / direct_rate * 100:.0f} % | - | "
          f"{sum('error' not in r for r in proxied)} |")
    print(f"| velollmd, 2nd half | {settled_rate:,.0f} | {settled_rate / direct_rate * 100:.0f} % | "
          f"{lat_proxied['p50']:.1f} / {lat_proxied['p99']:.1f} | {lat_proxied['n']} |")
    print(f"\nThe backend at its width ({WIDTH} in flight, {LATENCY_MS:g} ms each) gives {best:,.0f} answers/s; "
          f"velollmd's 2nd half is {settled_rate / best * 100:.0f} % of that. Direct is faster here because this "
          f"backend only doubles its latency past {WIDTH}: {args.clients} in flight at twice the latency still "
          f"answer more per second.")
    print(f"Limit once a second: {trace(samples)}")
    print(f"/metrics at the end: velollm_backend_concurrency_limit = {from_metrics}; failed requests: {errors}")
    print(f"\nTargets: settles within 25 % of {WIDTH} ({0.75 * WIDTH:g}-{1.25 * WIDTH:g}): "
          f"{'met' if within else 'NOT met'}; moves no more than +-{BAND} after settling "
          f"({s['min']}..{s['max']} around {s['settled']:g}): {'met' if steady else 'NOT met'}.")
    print(f"\n(daemon log: {log})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="through velollmd")
    parser.add_argument("--direct-seconds", type=float, default=5.0, help="direct, before and after")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--model", choices=("rate", "arrival"), default="rate")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    pin = len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, LOAD_CPUS)
    backend, port = start(SCRIPTED_BACKEND, str(LATENCY_MS), str(WIDTH), args.model, cpus=LOAD_CPUS if pin else None)
    url = f"http://127.0.0.1:{port}"
    try:
        with Daemon(backend_toml(NAME, "openai", url, '["tiny*"]') + CACHE_OFF,
                    cpus=PROXY_CPUS if pin else None) as daemon:
            direct = [uvloop.run(closed_loop(url, args.clients, args.direct_seconds, args.max_tokens))]
            proxied, samples, started = uvloop.run(through_daemon(daemon.url, args))
            from_metrics = uvloop.run(metrics_limit(daemon.url))
            direct.append(uvloop.run(closed_loop(url, args.clients, args.direct_seconds, args.max_tokens)))
    finally:
        backend.kill()
    report(args, direct, proxied, samples, started, from_metrics, daemon.dir / "daemon.log")


if __name__ == "__main__":
    main()
