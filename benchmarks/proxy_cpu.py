"""velollmd's own CPU per request, with the backend's compute taken out of the picture.

The backend is an instant OpenAI-compatible answerer (a few lines of asyncio in its own
process: a fixed 16-token chat completion, no inference), so every CPU second the daemon
spends is its own: parse, validate, route, admit, call the backend, check, re-encode, write.
`GET /health` on the same daemon is the floor (HTTP server only). Rounds alternate
health, chat, health, chat; CPU comes from /proc (user + system, all threads).

    .venv/bin/python benchmarks/proxy_cpu.py [--rounds 4] [--requests 4000] [--concurrency 64]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from common import Daemon, backend_toml, cpu_seconds, free_port, wait_listening

from velollmd.http.client import HTTPClient

ANSWER = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "tiny",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello " * 16},
                       "finish_reason": "length"}],
          "usage": {"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": 26}}
MODELS = {"object": "list", "data": [{"id": "tiny", "object": "model"}]}
CHAT = {"model": "tiny", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Tell me a story number 1."}]}

INSTANT_BACKEND = r'''
import asyncio, sys
ANSWER, MODELS = sys.argv[2].encode(), sys.argv[3].encode()

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            body = MODELS if b"/models" in head.split(b"\r\n")[0] else ANSWER
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(body) + body)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

asyncio.run(main())
'''


async def batch(url: str, path: str, num_requests: int, concurrency: int, pid: int) -> tuple[float, float]:
    """(requests per second, daemon CPU microseconds per request)."""
    client = HTTPClient(url)
    queue = list(range(num_requests))

    async def worker():
        while queue:
            queue.pop()
            response = await (client.request("POST", path, json=CHAT) if path != "/health"
                              else client.request("GET", path))
            await response.read()
            assert response.status == 200, response.status

    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    await client.close()
    return num_requests / elapsed, cpu * 1e6 / num_requests


async def measure(daemon: Daemon, args) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {"/health": [], "/v1/chat/completions": []}
    for _ in range(args.rounds):
        for path in results:
            results[path].append(await batch(daemon.url, path, args.requests, args.concurrency,
                                             daemon.proc.pid))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    port = free_port()
    backend = subprocess.Popen([sys.executable, "-c", INSTANT_BACKEND, str(port), json.dumps(ANSWER),
                                json.dumps(MODELS)])
    try:
        wait_listening(port)
        config = backend_toml("instant", "openai", f"http://127.0.0.1:{port}", '["tiny*"]',
                              f"slots = {args.concurrency}") + "[cache]\nenabled = false\n"
        with Daemon(config) as daemon:
            results = asyncio.run(measure(daemon, args))
    finally:
        backend.kill()
    print(f"### velollmd CPU per request, instant backend ({args.rounds} rounds x {args.requests} "
          f"requests, concurrency {args.concurrency}, medians)\n")
    print("| request | req/s | daemon CPU us/request |")
    print("|---|---:|---:|")
    for path, rows in results.items():
        rates, cpus = sorted(r for r, _ in rows), sorted(c for _, c in rows)
        print(f"| {path} | {rates[len(rates) // 2]:,.0f} | {cpus[len(cpus) // 2]:.0f} |")


if __name__ == "__main__":
    main()
