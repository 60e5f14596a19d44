"""HTTP server throughput: velollmd's own server vs uvicorn (httptools + uvloop) vs aiohttp.

Each server runs in its own process pinned to CPU 0, serving the same small JSON response
over keep-alive; the load generator (wrk, a separate C process) is pinned to CPU 1. Rounds
are interleaved (A B C A B C ...) so that machine noise hits every server alike; we report
the median requests/s over rounds, the ratio to uvicorn, and wrk's p50/p99 latency.

    .venv/bin/python benchmarks/http_server.py [--rounds 5] [--seconds 3] [--connections 32]
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys

from common import ROOT, free_port, wait_listening

BODY = b'{"message":"hello, world"}'

VELOLLMD = f"""
import asyncio, sys, uvloop
sys.path.insert(0, {str(ROOT)!r})
from velollmd.config import ServerConfig
from velollmd.http.server import HTTPServer
from velollmd.http.message import Response
BODY = {BODY!r}
async def handler(request):
    return Response(200, [("content-type", "application/json")], BODY)
async def main(port):
    server = HTTPServer(handler, ServerConfig(port=port, max_connections=4096))
    await server.start()
    await asyncio.Event().wait()
uvloop.install()
asyncio.run(main(int(sys.argv[1])))
"""

UVICORN = f"""
import sys, uvicorn
BODY = {BODY!r}
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]}})
    await send({{"type": "http.response.body", "body": BODY}})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False, lifespan="off")
"""

AIOHTTP = f"""
import sys, uvloop
from aiohttp import web
BODY = {BODY!r}
async def handler(request):
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_get("/", handler)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

SERVERS = {"velollmd": VELOLLMD, "uvicorn": UVICORN, "aiohttp": AIOHTTP}


def start_server(name: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", SERVERS[name], str(port)])
    wait_listening(port)
    return proc, port


def to_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(port: int, seconds: float, connections: int) -> dict:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    parsed = {k: to_ms(*re.match(r"([\d.]+)(us|ms|s)", v).groups()) for k, v in lat.items()}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": parsed["50"], "p99_ms": parsed["99"], "errors": bool(errors)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (make bench installs it)")
    procs = {name: start_server(name) for name in SERVERS}
    results: dict[str, list[dict]] = {name: [] for name in SERVERS}
    try:
        for name, (_, port) in procs.items():           # warm-up
            run_wrk(port, 1, args.connections)
        for _ in range(args.rounds):
            for name, (_, port) in procs.items():
                results[name].append(run_wrk(port, args.seconds, args.connections))
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait()
    report(results, args)


def report(results: dict[str, list[dict]], args) -> None:
    base = statistics.median(r["rps"] for r in results["uvicorn"])
    print(f"\n### HTTP server: small JSON over keep-alive ({args.connections} connections, "
          f"wrk -t1, {args.rounds} interleaved rounds x {args.seconds:g} s, server on 1 core)\n")
    print("| server | req/s (median) | vs uvicorn | p50 ms (median) | p99 ms (median) | rounds |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        rps = statistics.median(r["rps"] for r in rows)
        p50 = statistics.median(r["p50_ms"] for r in rows)
        p99 = statistics.median(r["p99_ms"] for r in rows)
        flag = " (errors!)" if any(r["errors"] for r in rows) else ""
        print(f"| {name}{flag} | {rps:,.0f} | {rps / base:.2f}x | {p50:.3f} | {p99:.3f} | {len(rows)} |")


if __name__ == "__main__":
    main()
