"""What velollmd costs in front of a backend, next to its peers: the same requests direct to
the backend, through velollmd, through a bare byte relay and through nginx, in one run with the
targets in rotated order each round.

Two backends (`--backend llama|wide|both`, default both):
- llama: llama-server on the tiny model (4 slots, which velollmd discovers from /props).
- wide: a scripted OpenAI-compatible server (asyncio + uvloop, its own process) that answers
  every chat completion 20 ms after the request, at any concurrency (a stream spreads the same
  20 ms over its chunks), and says nothing about its width (/get_server_info, /info and
  /metrics are 404), so velollmd runs it under its adaptive concurrency limit.

velollmd runs with the default configuration (no `slots`, no [scheduler] settings) except its
response cache, which is off so that every request reaches the backend. The byte relay is
proxy_cpu's (uvloop, forwards bytes, parses nothing: the floor for a Python proxy); nginx, when
/usr/sbin/nginx exists, is a reverse proxy with an upstream keepalive pool (own prefix and
config, `daemon off`, one worker, proxy_buffering off for SSE).

CPUs, as issue 13 measured it (on a machine with 2 or more): this process (the load generator)
and the scripted backend on CPU 0, velollmd, the relay and nginx on CPU 1; llama-server keeps
every core, or with `--llama-on-load-cpu` runs one thread on CPU 0 beside the load generator as
the issue places its backend (so a proxy's CPU is not taken from inference). Non-stream and stream, at concurrency 1, 16 and 64: throughput vs direct, added
p50/p99, added TTFT, proxy CPU per request, and velollmd's concurrency limit at the end of each
of its batches (GET /v1/velollm/queue).

    .venv/bin/python benchmarks/proxy_overhead.py [--backend both] [--rounds 3] [--max-tokens 16]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import uvloop
from common import (
    Daemon,
    backend_toml,
    cpu_seconds,
    free_port,
    pinned_to,
    process_tree,
    run_concurrently,
    start_llama_server,
    summary,
    tiny_model,
    wait_listening,
)
from proxy_cpu import BYTE_RELAY, start

from velollmd.errors import VeloError
from velollmd.http.client import HTTPClient

CONCURRENCY = (1, 16, 64)
LOAD_CPUS, PROXY_CPUS = {0}, {1}      # the load generator and scripted backend; the proxies
NGINX = Path("/usr/sbin/nginx")
PROXIES = ("velollmd", "relay", "nginx")
CACHE_OFF = "[cache]\nenabled = false\n"

# A scripted OpenAI-compatible backend: python -c SCRIPTED_BACKEND PORT LATENCY_MS WIDTH MODEL.
# Every chat completion takes LATENCY_MS from its request (a stream: its content chunks evenly
# spread over that time, the last one at LATENCY_MS). WIDTH 0: the same at any concurrency.
# WIDTH > 0 (whole answers only): past WIDTH requests in flight the backend degrades, by MODEL
#   rate:    every request's remaining work advances at half speed while more than WIDTH are
#            in flight (20 ms alone, up to 40 ms when overloaded all along);
#   arrival: a request that arrives while WIDTH or more are in flight takes twice as long
#            (tests/sched/limit_sim.py's degrades_past).
# It states no width anywhere: every path but /v1/models and /v1/chat/completions is a 404.
SCRIPTED_BACKEND = r'''
import asyncio, json, sys
import uvloop

LATENCY_S, WIDTH, MODEL = float(sys.argv[2]) / 1e3, int(sys.argv[3]), sys.argv[4]
MODELS = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model", "created": 1,
                                                 "owned_by": "scripted"}]}).encode()
NOT_FOUND = json.dumps({"error": {"message": "not found", "type": "invalid_request_error",
                                  "param": None, "code": None}}).encode()


class Degrading:
    """Requests in flight, each with LATENCY_S of work left at full speed (MODEL rate)."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.left = {}                 # future -> seconds of work left
        self.updated = self.loop.time()
        self.timer = None

    def speed(self):
        return 1.0 if len(self.left) <= WIDTH else 0.5

    def advance(self):
        now = self.loop.time()
        done, self.updated = (now - self.updated) * self.speed(), now
        for future in self.left:
            self.left[future] -= done

    def reschedule(self):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = None
        if self.left:
            delay = max(0.0, min(self.left.values())) / self.speed()
            self.timer = self.loop.call_later(delay, self.tick)

    def tick(self):
        self.advance()
        for future, left in list(self.left.items()):
            if left <= 2e-4:
                del self.left[future]
                future.set_result(None)
        self.reschedule()

    async def work(self):
        self.advance()
        future = self.loop.create_future()
        self.left[future] = LATENCY_S
        self.reschedule()
        try:
            await future
        finally:
            if future in self.left:    # cancelled: the client went away
                self.advance()
                del self.left[future]
                self.reschedule()


class Backend:
    def __init__(self):
        self.num_inflight = 0
        self.degrading = Degrading() if WIDTH and MODEL == "rate" else None

    async def work(self):
        if self.degrading is not None:
            await self.degrading.work()
        elif WIDTH and self.num_inflight > WIDTH:       # MODEL arrival (counting itself)
            await asyncio.sleep(2 * LATENCY_S)
        else:
            await asyncio.sleep(LATENCY_S)

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body, close = await read_body(reader, head)
                target = head.split(b" ", 2)[1]
                if target == b"/v1/models":
                    reply(writer, 200, MODELS)
                elif target == b"/v1/chat/completions":
                    self.num_inflight += 1
                    try:
                        await self.chat(writer, json.loads(body))
                    finally:
                        self.num_inflight -= 1
                else:
                    reply(writer, 404, NOT_FOUND)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        writer.close()

    async def chat(self, writer, request):
        num_tokens = int(request.get("max_tokens") or 16)
        usage = {"prompt_tokens": 10, "completion_tokens": num_tokens, "total_tokens": 10 + num_tokens}
        if not request.get("stream"):
            await self.work()
            answer = {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 1, "model": "tiny",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello " * num_tokens},
                                   "finish_reason": "length"}], "usage": usage}
            return reply(writer, 200, json.dumps(answer).encode())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(num_tokens):
            await asyncio.sleep(max(0.0, started + LATENCY_S * (i + 1) / num_tokens - loop.time()))
            writer.write(event([{"index": 0, "delta": {"content": "hello "}, "finish_reason": None}]))
        tail = event([{"index": 0, "delta": {}, "finish_reason": "length"}])
        if (request.get("stream_options") or {}).get("include_usage"):
            tail += event([], usage=usage)
        writer.write(tail + framed(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def read_body(reader, head):
    """(body, whether the client asked to close)."""
    length, chunked, close = 0, False, False
    for line in head.lower().split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        value = value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if not chunked:
        return (await reader.readexactly(length) if length else b""), close
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")
    return body, close


def reply(writer, status, body):
    reason = b"OK" if status == 200 else b"Not Found"
    writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                 % (status, reason, len(body)) + body)


def event(choices, **extra):
    body = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": choices, **extra}
    return framed(b"data: " + json.dumps(body).encode() + b"\n\n")


def framed(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


async def main():
    backend = Backend()
    server = await asyncio.start_server(backend.handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()

uvloop.run(main())
'''

NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
{user}pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend_port} max_fails=0;   # three times, so that a request may be
        server 127.0.0.1:{backend_port} max_fails=0;   # tried again (see proxy_next_upstream)
        server 127.0.0.1:{backend_port} max_fails=0;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 4s;       # under llama-server's 5 s: else a POST meets a closed one (502)
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
            # llama-server closes its connection a moment after each stream; a request sent on
            # it before the close arrives is tried again, as velollmd's own client does
            proxy_next_upstream error timeout non_idempotent;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""


class Nginx:
    """nginx as a reverse proxy in front of one backend: its own temp prefix and config,
    `daemon off`, one worker with an upstream keepalive pool; stopped (then killed) at the end."""

    def __init__(self, backend_port: int, cpus: set[int] | None):
        self.prefix = Path(tempfile.mkdtemp(prefix="velollm-nginx-"))
        self.port, self.cpus = free_port(), cpus
        user = "user root;\n" if os.geteuid() == 0 else ""      # workers would be nobody, locked out of prefix
        (self.prefix / "nginx.conf").write_text(NGINX_CONF.format(
            user=user, prefix=self.prefix, backend_port=backend_port, port=self.port))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        self.proc = subprocess.Popen(
            [str(NGINX), "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
             "-e", str(self.prefix / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.prefix / "stderr.log", "wb"),
            preexec_fn=pinned_to(self.cpus))
        wait_listening(self.port)
        return self

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = self.pids()
        self.proc.send_signal(signal.SIGTERM)             # fast shutdown: master and workers
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in pids[1:]:                               # a worker left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def chat_body(max_tokens: int, stream: bool, i: int) -> dict:
    return {"model": "tiny", "max_tokens": max_tokens, "temperature": 0, "seed": 1, "stream": stream,
            "messages": [{"role": "user", "content": f"Tell me a story number {i % 4}."}]}


async def one_request(client: HTTPClient, body: dict) -> dict:
    """Latency, TTFT and content chunks of one chat completion; {"error": ...} when it failed."""
    started = time.perf_counter()
    try:
        response = await client.request("POST", "/v1/chat/completions", json=body)
    except VeloError as error:
        return {"error": f"client: {error}"}
    if response.status != 200:
        return {"error": f"{response.status} {(await response.read())[:200]!r}"}
    if not body["stream"]:
        await response.json()
        return {"latency": time.perf_counter() - started, "ttft": None, "chunks": None}
    ttft, contents = None, []
    async for data in response.iter_sse():
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            return {"error": f"in stream: {event['error']}"}
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
    """CPU ms per request of each process group (backend, velollmd, relay, nginx), per target."""

    def __init__(self, pids: dict[str, list[int]]):
        self.pids = pids
        self.totals: dict[str, dict[str, float]] = {}
        self.num_requests: dict[str, int] = {}

    def read(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}

    def add(self, target: str, started: dict[str, float], num_requests: int) -> None:
        totals = self.totals.setdefault(target, dict.fromkeys(self.pids, 0.0))
        for name, seconds in self.read().items():
            totals[name] += seconds - started[name]
        self.num_requests[target] = self.num_requests.get(target, 0) + num_requests

    def per_request_ms(self, target: str) -> dict[str, float]:
        return {name: seconds * 1e3 / max(1, self.num_requests[target])
                for name, seconds in self.totals[target].items()}


async def concurrency_limit(admin: HTTPClient, backend_name: str) -> int | None:
    """velollmd's concurrency limit for the backend now (GET /v1/velollm/queue)."""
    response = await admin.request("GET", "/v1/velollm/queue")
    stats = await response.json()
    return stats.get("backends", {}).get(backend_name, {}).get("concurrency_limit")


def batch_size(backend: str, concurrency: int) -> int:
    """Requests per batch: about 1-2 s of work per batch at each concurrency."""
    if backend == "llama":
        return max(80, concurrency * 8)
    return 100 if concurrency == 1 else concurrency * 32


async def measure(backend: str, urls: dict[str, str], pids: dict[str, list[int]], args) -> list[dict]:
    """Each mode and concurrency: a warm-up batch per target, then `rounds` rounds with the
    targets in rotated order (round r starts at target r)."""
    clients = {target: HTTPClient(url) for target, url in urls.items()}
    admin = HTTPClient(urls["velollmd"])
    rows = []
    for stream in [s for s in (False, True) if args.only in (None, "stream" if s else "non-stream")]:
        for concurrency in CONCURRENCY:
            num_requests = batch_size(backend, concurrency)
            for client in clients.values():
                await run_batch(client, concurrency, 2 * concurrency, stream, args.max_tokens)
            samples = {target: [] for target in clients}
            rates = {target: [] for target in clients}
            limits, cpu = [], CpuMeter(pids)
            names = list(clients)
            for round_no in range(args.rounds):
                shift = round_no % len(names)
                for target in names[shift:] + names[:shift]:
                    started = cpu.read()
                    results, rate = await run_batch(clients[target], concurrency, num_requests, stream,
                                                    args.max_tokens)
                    cpu.add(target, started, num_requests)
                    samples[target] += results
                    rates[target].append(rate)
                    if target == "velollmd":
                        limits.append(await concurrency_limit(admin, backend))
            rows.append(row_of(stream, concurrency, samples, rates, cpu, limits))
    for client in (*clients.values(), admin):
        await client.close()
    return rows


def row_of(stream: bool, concurrency: int, samples: dict, rates: dict, cpu: CpuMeter, limits: list) -> dict:
    """Failed requests are counted (and their first message kept), not timed."""
    errors = {t: [r["error"] for r in samples[t] if "error" in r] for t in samples}
    samples = {t: [r for r in samples[t] if "error" not in r] for t in samples}
    row = {"mode": "stream" if stream else "non-stream", "concurrency": concurrency,
           "errors": {t: (len(e), e[0]) for t, e in errors.items() if e},
           "lat": {t: summary([r["latency"] * 1e3 for r in samples[t]]) for t in samples},
           "rate": {t: sum(rates[t]) for t in rates},
           "cpu": {t: cpu.per_request_ms(t) for t in samples}, "limits": limits}
    if stream:
        row["ttft"] = {t: summary([r["ttft"] * 1e3 for r in samples[t]]) for t in samples}
        row["chunks_equal"] = all(len(r["chunks"]) == len(samples["direct"][0]["chunks"])
                                  for rows in samples.values() for r in rows)
    return row


async def fidelity(direct_url: str, proxy_url: str, max_tokens: int) -> bool:
    """The same deterministic stream direct and proxied: identical chunks, in order."""
    streams = []
    for url in (direct_url, proxy_url):
        client = HTTPClient(url)
        streams.append((await one_request(client, chat_body(max_tokens, True, 0))).get("chunks"))
        await client.close()
    return streams[0] == streams[1] and len(streams[0] or ()) == max_tokens


def added(row: dict, target: str, p: str) -> float:
    return row["lat"][target][p] - row["lat"]["direct"][p]


def ratio(row: dict, target: str) -> float:
    return row["rate"][target] / row["rate"]["direct"]


def report_peers(rows: list[dict], title: str, note: str) -> None:
    """Throughput vs direct, added latency and proxy CPU for every proxy measured."""
    proxies = [p for p in PROXIES if p in rows[0]["rate"]]
    print(f"\n### {title}\n\n{note}\n")
    print("Throughput vs direct (sum of the rounds' rates), and velollmd's concurrency limit at the "
          "end of each of its batches:\n")
    print(f"| mode | conc. | n per target | direct req/s | {' | '.join(proxies)} | velollmd limit |")
    print("|---|---:|---:|---:|" + "---:|" * len(proxies) + "---|")
    for r in rows:
        cells = " | ".join(f"{ratio(r, p) * 100:.1f} %" for p in proxies)
        limits = " / ".join(str(limit) for limit in r["limits"])
        print(f"| {r['mode']} | {r['concurrency']} | {r['lat']['direct']['n']} | "
              f"{r['rate']['direct'] / len(r['limits']):,.0f} | {cells} | {limits} |")
    print("\nAdded latency vs direct, ms (p50 / p99); the last columns divide velollmd's added p50 "
          "by the relay's and by nginx's:\n")
    print(f"| mode | conc. | direct p50 / p99 | {' | '.join(proxies)} | "
          + " | ".join(f"velollmd / {p}" for p in proxies[1:]) + " |")
    print("|---|---:|---:|" + "---:|" * (2 * len(proxies) - 1))
    for r in rows:
        cells = " | ".join(f"{added(r, p, 'p50'):+.2f} / {added(r, p, 'p99'):+.2f}" for p in proxies)
        shares = " | ".join(_times(added(r, "velollmd", "p50"), added(r, p, "p50")) for p in proxies[1:])
        print(f"| {r['mode']} | {r['concurrency']} | {r['lat']['direct']['p50']:.2f} / "
              f"{r['lat']['direct']['p99']:.2f} | {cells} | {shares} |")
    if "ttft" in rows[-1]:
        print("\nAdded time to first token (streams), ms p50: "
              + "; ".join(f"conc. {r['concurrency']}: " + ", ".join(
                  f"{p} {r['ttft'][p]['p50'] - r['ttft']['direct']['p50']:+.2f}" for p in proxies)
                  for r in rows if "ttft" in r))
    print("\nProxy CPU per request, ms (from /proc, the proxy's own batches; /proc counts 10 ms ticks, "
          "so figures under ~0.1 ms at one client are coarse):\n")
    print(f"| mode | conc. | {' | '.join(proxies)} |")
    print("|---|---:|" + "---:|" * len(proxies))
    for r in rows:
        print(f"| {r['mode']} | {r['concurrency']} | "
              + " | ".join(f"{r['cpu'][p][p]:.3f}" for p in proxies) + " |")


def _times(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0.005 else "-"


def report_llama(rows: list[dict], fidelity_ok: bool, args) -> None:
    """The llama-server tables of earlier runs: velollmd (proxy) vs direct, and CPU per request."""
    threads = f"llama-server --threads {args.llama_threads}" if args.llama_threads else "llama-server on every core"
    print(f"\n### Proxy overhead: llama-server direct vs through velollmd (tiny model, max_tokens "
          f"{args.max_tokens}, {args.rounds} rotated rounds, {threads})\n")
    print("| mode | conc. | n | direct p50 ms | proxy p50 ms | added p50 ms | added p99 ms | "
          "throughput proxy/direct | added TTFT p50 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lat = r["lat"]
        ttft = f"{r['ttft']['velollmd']['p50'] - r['ttft']['direct']['p50']:+.2f}" if "ttft" in r else "-"
        print(f"| {r['mode']} | {r['concurrency']} | {lat['velollmd']['n']} | {lat['direct']['p50']:.2f} | "
              f"{lat['velollmd']['p50']:.2f} | {added(r, 'velollmd', 'p50'):+.2f} | "
              f"{added(r, 'velollmd', 'p99'):+.2f} | {ratio(r, 'velollmd') * 100:.1f} % | {ttft} |")
    print("\nCPU per request (ms, from /proc): what the backend's compute gives up to the proxy\n")
    print("| mode | conc. | llama-server direct | llama-server proxied | velollmd | velollmd / llama direct |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        direct, proxied = r["cpu"]["direct"]["backend"], r["cpu"]["velollmd"]["backend"]
        daemon = r["cpu"]["velollmd"]["velollmd"]
        print(f"| {r['mode']} | {r['concurrency']} | {direct:.2f} | {proxied:.2f} | {daemon:.2f} | "
              f"{daemon / direct * 100:.0f} % |")
    report_fidelity(rows, fidelity_ok)


def report_fidelity(rows: list[dict], fidelity_ok: bool) -> None:
    same_counts = all(r.get("chunks_equal", True) for r in rows)
    print(f"\nStreaming fidelity: identical chunks in identical order = {fidelity_ok}; "
          f"every stream had the same chunk count = {same_counts}")
    failed = [f"{r['mode']} conc. {r['concurrency']} {target}: {count} ({first})"
              for r in rows for target, (count, first) in r["errors"].items()]
    print("Failed requests (not timed): " + ("; ".join(failed) if failed else "none"))


def bench_backend(backend: str, url: str, port: int, backend_pids: list[int], kind: str,
                  args, cpus: set[int] | None) -> tuple[list[dict], bool, Path]:
    """Start velollmd (default configuration, cache off), the relay and nginx in front of the
    backend, measure, stop them. Returns the rows, stream fidelity and the daemon's log."""
    slots = f"slots = {args.slots}" if args.slots else ""
    daemon = Daemon(backend_toml(backend, kind, url, '["tiny*"]', slots) + CACHE_OFF + args.daemon_toml,
                    cpus=cpus).start()
    relay, relay_port = start(BYTE_RELAY, str(port), cpus=cpus)
    nginx = Nginx(port, cpus).start() if NGINX.exists() and not args.no_nginx else None
    try:
        urls = {"direct": url, "velollmd": daemon.url, "relay": f"http://127.0.0.1:{relay_port}"}
        pids = {"backend": backend_pids, "velollmd": [daemon.proc.pid], "relay": [relay.pid]}
        if nginx is not None:
            urls["nginx"], pids["nginx"] = f"http://127.0.0.1:{nginx.port}", nginx.pids()
        rows = uvloop.run(measure(backend, urls, pids, args))
        fidelity_ok = uvloop.run(fidelity(url, daemon.url, args.max_tokens))
    finally:
        relay.kill()
        if nginx is not None:
            nginx.stop()
        daemon.stop()
    return rows, fidelity_ok, daemon.dir / "daemon.log"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("llama", "wide", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the wide backend's time per answer")
    parser.add_argument("--llama-threads", type=int, default=0,
                        help="llama-server --threads (0 = its default: every core)")
    parser.add_argument("--llama-on-load-cpu", action="store_true",
                        help="llama-server with one thread on the load generator's CPU 0 (default: every core)")
    parser.add_argument("--slots", type=int, default=0,
                        help="the daemon's [[backends]] slots (0 = not set: the default configuration)")
    parser.add_argument("--only", choices=("stream", "non-stream"), default=None)
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out even when installed")
    parser.add_argument("--daemon-toml", default="",
                        help="TOML appended to velollmd's configuration (for experiments; not the default)")
    parser.add_argument("--relay", action="store_true", help="(kept for old command lines: the relay is always measured)")
    args = parser.parse_args()
    backends = ("llama", "wide") if args.backend == "both" else (args.backend,)
    server = None
    pin = len(os.sched_getaffinity(0)) >= 2
    if pin and args.llama_on_load_cpu:
        os.sched_setaffinity(0, LOAD_CPUS)        # before llama-server starts: it inherits CPU 0
        args.llama_threads = 1
    if "llama" in backends:            # started before this process pins itself: it keeps every core
        extra = ("--threads", str(args.llama_threads)) if args.llama_threads else ()
        server = start_llama_server(tiny_model(), parallel=4, extra_args=extra,
                                    http_threads=64 * 5)        # 64 connections from each target, + slack
    load_cpus, proxy_cpus = (LOAD_CPUS, PROXY_CPUS) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, LOAD_CPUS)
    llama_cpus = "llama-server on CPU 0 (one thread)" if args.llama_on_load_cpu else "llama-server on every core"
    placement = (f"the load generator and the scripted backend on CPU 0, the proxies on CPU 1, {llama_cpus}"
                 if pin else "no CPU pinning (fewer than 2 CPUs)")
    config = (f"configuration + {args.daemon_toml!r}" if args.daemon_toml
              else "default configuration") + (f", slots = {args.slots}" if args.slots else "")
    note = (f"velollmd: {config}, response cache off (every request reaches the backend). "
            f"{args.rounds} rounds, targets rotated; max_tokens {args.max_tokens}; {placement}.")
    try:
        for backend in backends:
            if backend == "llama":
                rows, fidelity_ok, log = bench_backend("llama", server.url, server.port, [server.proc.pid],
                                                       "llamacpp", args, proxy_cpus)
                server.stop()
                report_llama(rows, fidelity_ok, args)
                report_peers(rows, "llama-server (4 slots, discovered): velollmd and its peers", note)
            else:
                wide, port = start(SCRIPTED_BACKEND, str(args.latency_ms), "0", "rate", cpus=load_cpus)
                try:
                    rows, fidelity_ok, log = bench_backend("wide", f"http://127.0.0.1:{port}", port, [wide.pid],
                                                           "openai", args, proxy_cpus)
                finally:
                    wide.kill()
                report_peers(rows, f"Scripted backend of unknown width ({args.latency_ms:g} ms per answer at "
                                   "any concurrency): velollmd and its peers", note)
                report_fidelity(rows, fidelity_ok)
            print(f"\n(daemon log: {log})", flush=True)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
