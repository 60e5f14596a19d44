"""What velollmd costs in front of a backend: the same requests direct to llama-server and
through velollmd, interleaved in one run (direct, proxy, proxy, direct, ...).

Non-stream and stream, at concurrency 1, 16 and 64: added p50/p99 latency, throughput ratio,
added time-to-first-token, and streaming fidelity (chunks in = chunks out, same content, same
order). The daemon runs with its response cache off, so every request reaches the backend.
The load generator is this process (asyncio + velollmd's raw-socket client); the
daemon and llama-server are separate processes.

    .venv/bin/python benchmarks/proxy_overhead.py [--rounds 3] [--max-tokens 16]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from common import (
    Daemon,
    backend_toml,
    cpu_seconds,
    run_concurrently,
    start_llama_server,
    summary,
    tiny_model,
)

from velollmd.http.client import HTTPClient

CONCURRENCY = (1, 16, 64)


def chat_body(max_tokens: int, stream: bool, i: int) -> dict:
    return {"model": "tiny", "max_tokens": max_tokens, "temperature": 0, "seed": 1, "stream": stream,
            "messages": [{"role": "user", "content": f"Tell me a story number {i % 4}."}]}


async def one_request(client: HTTPClient, body: dict) -> dict:
    started = time.perf_counter()
    response = await client.request("POST", "/v1/chat/completions", json=body)
    if not body["stream"]:
        answer = await response.json()
        assert response.status == 200, answer
        return {"latency": time.perf_counter() - started, "ttft": None, "chunks": None}
    ttft, contents = None, []
    async for data in response.iter_sse():
        if data == b"[DONE]":
            break
        event = json.loads(data)
        assert "error" not in event, event
        for choice in event.get("choices", []):
            content = choice.get("delta", {}).get("content")
            if content:
                ttft = ttft or time.perf_counter() - started
                contents.append(content)
    return {"latency": time.perf_counter() - started, "ttft": ttft, "chunks": contents}


async def run_batch(client: HTTPClient, concurrency: int, num_requests: int, stream: bool, max_tokens: int):
    started = time.perf_counter()
    results = await run_concurrently(num_requests, concurrency,
                                     lambda i: one_request(client, chat_body(max_tokens, stream, i)))
    return results, num_requests / (time.perf_counter() - started)


class CpuMeter:
    """CPU ms per request of llama-server and the daemon, per target (direct / proxy)."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.totals: dict[str, dict[str, float]] = {}
        self.num_requests: dict[str, int] = {}

    def start(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self, target: str, started: dict[str, float], num_requests: int) -> None:
        totals = self.totals.setdefault(target, dict.fromkeys(self.pids, 0.0))
        for name, pid in self.pids.items():
            totals[name] += cpu_seconds(pid) - started[name]
        self.num_requests[target] = self.num_requests.get(target, 0) + num_requests

    def per_request_ms(self, target: str, name: str) -> float:
        return self.totals[target][name] * 1e3 / max(1, self.num_requests[target])


async def measure(urls: dict[str, str], args, pids: dict[str, int]) -> list[dict]:
    """Each mode and concurrency: every target (direct, proxy, maybe relay) in rotated order."""
    clients = {target: HTTPClient(url) for target, url in urls.items()}
    rows = []
    for stream in [s for s in (False, True) if args.only in (None, "stream" if s else "non-stream")]:
        for concurrency in CONCURRENCY:
            num_requests = max(40, concurrency * 4)
            samples = {target: [] for target in clients}
            rates = {target: [] for target in clients}
            cpu = CpuMeter(pids)
            for round_no in range(args.rounds):
                order = list(clients) if round_no % 2 == 0 else list(reversed(clients))
                for target in order:
                    started = cpu.start()
                    results, rate = await run_batch(clients[target], concurrency, num_requests, stream,
                                                    args.max_tokens)
                    cpu.stop(target, started, num_requests)
                    samples[target] += results
                    rates[target].append(rate)
            rows.append(row_of(stream, concurrency, samples, rates) | cpu_of(cpu))
    for client in clients.values():
        await client.close()
    return rows


def row_of(stream: bool, concurrency: int, samples: dict, rates: dict) -> dict:
    lat = {t: summary([r["latency"] * 1e3 for r in samples[t]]) for t in samples}
    row = {"mode": "stream" if stream else "non-stream", "concurrency": concurrency,
           "n": lat["proxy"]["n"], "direct_p50": lat["direct"]["p50"], "proxy_p50": lat["proxy"]["p50"],
           "added_p50": lat["proxy"]["p50"] - lat["direct"]["p50"],
           "added_p99": lat["proxy"]["p99"] - lat["direct"]["p99"],
           "throughput_ratio": sum(rates["proxy"]) / sum(rates["direct"])}
    if "relay" in samples:
        row["relay_added_p50"] = lat["relay"]["p50"] - lat["direct"]["p50"]
        row["relay_throughput_ratio"] = sum(rates["relay"]) / sum(rates["direct"])
    if stream:
        ttft = {t: summary([r["ttft"] * 1e3 for r in samples[t]]) for t in samples}
        row["added_ttft_p50"] = ttft["proxy"]["p50"] - ttft["direct"]["p50"]
        row["chunks_equal"] = all(len(r["chunks"]) == len(samples["direct"][0]["chunks"])
                                  for rows in samples.values() for r in rows)
    return row


def cpu_of(cpu: CpuMeter) -> dict:
    return {"llama_cpu_direct": cpu.per_request_ms("direct", "llama"),
            "llama_cpu_proxy": cpu.per_request_ms("proxy", "llama"),
            "daemon_cpu": cpu.per_request_ms("proxy", "daemon")}


async def fidelity(direct_url: str, proxy_url: str, max_tokens: int) -> bool:
    """The same deterministic stream direct and proxied: identical chunks, in order."""
    streams = []
    for url in (direct_url, proxy_url):
        client = HTTPClient(url)
        streams.append((await one_request(client, chat_body(max_tokens, True, 0)))["chunks"])
        await client.close()
    return streams[0] == streams[1] and len(streams[0]) == max_tokens


def report(rows: list[dict], fidelity_ok: bool, args) -> None:
    threads = f"llama-server --threads {args.llama_threads}" if args.llama_threads else "llama-server on every core"
    print(f"\n### Proxy overhead: llama-server direct vs through velollmd (tiny model, max_tokens "
          f"{args.max_tokens}, {args.rounds} interleaved rounds, {threads})\n")
    print("| mode | conc. | n | direct p50 ms | proxy p50 ms | added p50 ms | added p99 ms | "
          "throughput proxy/direct | added TTFT p50 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ttft = f"{r['added_ttft_p50']:+.2f}" if "added_ttft_p50" in r else "-"
        print(f"| {r['mode']} | {r['concurrency']} | {r['n']} | {r['direct_p50']:.2f} | {r['proxy_p50']:.2f} | "
              f"{r['added_p50']:+.2f} | {r['added_p99']:+.2f} | {r['throughput_ratio'] * 100:.1f} % | {ttft} |")
    print("\nCPU per request (ms, from /proc): what the backend's compute gives up to the proxy\n")
    print("| mode | conc. | llama-server direct | llama-server proxied | velollmd | velollmd / llama direct |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['concurrency']} | {r['llama_cpu_direct']:.2f} | {r['llama_cpu_proxy']:.2f} | "
              f"{r['daemon_cpu']:.2f} | {r['daemon_cpu'] / r['llama_cpu_direct'] * 100:.0f} % |")
    if "relay_throughput_ratio" in rows[0]:
        print("\nThe same through a bare uvloop byte relay (parses nothing; the floor for a Python proxy):\n")
        print("| mode | conc. | relay added p50 ms | relay throughput / direct | velollmd throughput / direct |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['mode']} | {r['concurrency']} | {r['relay_added_p50']:+.2f} | "
                  f"{r['relay_throughput_ratio'] * 100:.1f} % | {r['throughput_ratio'] * 100:.1f} % |")
    same_counts = all(r.get("chunks_equal", True) for r in rows)
    print(f"\nStreaming fidelity: identical chunks in identical order = {fidelity_ok}; "
          f"every stream had the same chunk count = {same_counts}")


def start_relay(backend_port: int):
    """(process, port) of proxy_cpu's bare byte relay in front of the backend."""
    from proxy_cpu import BYTE_RELAY, start
    return start(BYTE_RELAY, str(backend_port))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--llama-threads", type=int, default=0,
                        help="llama-server --threads (0 = its default: every core)")
    parser.add_argument("--slots", type=int, default=0, help="the daemon's [[backends]] slots (0 = discover)")
    parser.add_argument("--only", choices=("stream", "non-stream"), default=None)
    parser.add_argument("--relay", action="store_true",
                        help="also measure a bare byte relay in front of llama-server")
    args = parser.parse_args()
    extra = ("--threads", str(args.llama_threads)) if args.llama_threads else ()
    server = start_llama_server(tiny_model(), parallel=4, extra_args=extra)
    try:
        daemon_config = backend_toml("llama", "llamacpp", server.url, '["tiny*"]', f"slots = {args.slots}") + "[cache]\nenabled = false\n"
        with Daemon(daemon_config) as daemon:
            pids = {"llama": server.proc.pid, "daemon": daemon.proc.pid}
            urls = {"direct": server.url, "proxy": daemon.url}
            relay = start_relay(server.port) if args.relay else None
            if relay is not None:
                urls["relay"] = f"http://127.0.0.1:{relay[1]}"
            try:
                rows = asyncio.run(measure(urls, args, pids))
            finally:
                if relay is not None:
                    relay[0].kill()
            fidelity_ok = asyncio.run(fidelity(server.url, daemon.url, args.max_tokens))
    finally:
        server.stop()
    report(rows, fidelity_ok, args)


if __name__ == "__main__":
    main()
