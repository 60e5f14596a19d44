"""velollmd's own cost per request, with the backend's compute taken out of the picture.

The backend is an instant OpenAI-compatible answerer (a few lines of asyncio in its own
process, no inference): a fixed 16-token chat completion, or a stream of 16 content chunks
(plus finish, usage and [DONE]) written `--gap-ms` apart, as a model would produce them.

Part 1, whole answers at concurrency 64: daemon CPU per chat request (a one-line question, and
a 16 KB history), the same question as an OpenAI Responses API request (`/v1/responses`:
translated to chat and back, and stored for previous_response_id as by default), with
`GET /health` on the same daemon as the floor (HTTP server only); the
one-line question also through a second daemon with the response cache on, as configured by
default (the request is sampled, so the cache must only see that and step aside).
The one-line question also as an Anthropic Messages request (/v1/messages: translated both ways).
Part 2, streams at concurrency 1: time per stream and proxy CPU per stream for the backend
direct, through a bare byte relay (uvloop, forwards bytes and parses nothing: the floor for
any Python proxy on this machine), and through velollmd, as chat chunks, as Responses events and
as Anthropic Messages events.
Both parts also run a daemon with the access log and the timing metrics off (`[log] access =
false`, `[metrics] enabled = false`) beside the default one (both on): the last lines give
their CPU cost per request. Rounds alternate the targets; CPU comes from /proc (user + system,
all threads). The default daemon writes its access log to a file, one line per request.

    .venv/bin/python benchmarks/proxy_cpu.py [--rounds 4] [--requests 4000] [--streams 300]
                                             [--baseline DIR] [--ops-only]

`--baseline DIR` runs a second daemon from another checkout (e.g. `git worktree add DIR REV`,
with its CFFI extension built) beside this one in the same rounds: a before/after in one run.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import Daemon, backend_toml, cpu_seconds, free_port, pinned_to, run_concurrently, wait_listening

from velollmd.http.client import HTTPClient

CHAT = {"model": "tiny", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Tell me a story number 1."}]}
LONG_CHAT = {"model": "tiny", "max_tokens": 16, "messages": [                 # a 16 KB history
    {"role": "user", "content": " ".join(f"note line{i} alpha beta gamma delta" for i in range(400))},
    {"role": "assistant", "content": "ok " * 20}, {"role": "user", "content": "tell me more"}]}
RESPONSES = {"model": "tiny", "max_output_tokens": 16, "input": "Tell me a story number 1."}
MESSAGES = {"model": "tiny", "max_tokens": 16,                                # the same question, Anthropic's way
            "messages": [{"role": "user", "content": "Tell me a story number 1."}]}
LONG = "/v1/chat/completions, 16 KB history"
ANTHROPIC = "/v1/messages, the same question"
ANTHROPIC_STREAM = "anthropic stream"
CACHE_ON = "/v1/chat/completions, cache on (the default; sampled, so not cacheable)"
OPS_OFF = "/v1/chat/completions, access log + metrics off"
STREAM_OPS_OFF = "velollmd, access log + metrics off"
NUM_CHUNKS = 16

INSTANT_BACKEND = r'''
import asyncio, json, sys
GAP_S = float(sys.argv[2]) / 1e3
MODELS = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()
ANSWER = json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "tiny",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello " * 16},
                 "finish_reason": "length"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": 26}}).encode()

def event(choices, **extra):
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": choices, **extra}
    return framed(b"data: " + json.dumps(body).encode() + b"\n\n")

def framed(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"

async def stream(writer):
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\n\r\n")
    for _ in range(16):
        writer.write(event([{"index": 0, "delta": {"content": "hello "}, "finish_reason": None}]))
        await asyncio.sleep(GAP_S)
    usage = {"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": 26}
    writer.write(event([{"index": 0, "delta": {}, "finish_reason": "length"}]) + event([], usage=usage)
                 + framed(b"data: [DONE]\n\n") + b"0\r\n\r\n")

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length) if length else b""
            if b"/models" in head.split(b"\r\n")[0]:
                reply = MODELS
            elif b'"stream":true' in body:
                await stream(writer)
                continue
            else:
                reply = ANSWER
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(reply) + reply)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

asyncio.run(main())
'''

BYTE_RELAY = r'''
import asyncio, sys, uvloop

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
    except ConnectionError:
        pass
    finally:
        writer.close()

async def handle(reader, writer):
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

uvloop.install()
asyncio.run(main())
'''


def start(script: str, *args: str, cpus: set[int] | None = None) -> tuple[subprocess.Popen, int]:
    """(process, port) of `script` run as `python -c script PORT *args`, pinned to `cpus`."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", script, str(port), *args], preexec_fn=pinned_to(cpus))
    wait_listening(port)
    return proc, port


async def run_requests(url: str, path: str, num_requests: int, concurrency: int,
                       pid: int | None) -> tuple[float, float]:
    """(seconds per request per worker, CPU microseconds per request of `pid`)."""
    client = HTTPClient(url)
    cpu_before, started = cpu_seconds(pid) if pid else 0.0, time.perf_counter()
    await run_concurrently(num_requests, concurrency, lambda i: one(client, path))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    await client.close()
    return elapsed * concurrency / num_requests, cpu * 1e6 / num_requests


async def one(client: HTTPClient, path: str) -> None:
    if path == "/health":
        response = await client.request("GET", path)
        await response.read()
    elif path == ANTHROPIC_STREAM:
        response = await client.request("POST", "/v1/messages", json={**MESSAGES, "stream": True})
        num_events = 0
        async for data in response.iter_sse():
            num_events += 1
            if data == b'{"type":"message_stop"}':
                break
        assert num_events >= NUM_CHUNKS + 4, num_events
    elif path == ANTHROPIC:
        response = await client.request("POST", "/v1/messages", json=MESSAGES)
        await response.read()
    elif path == "stream":
        response = await client.request("POST", "/v1/chat/completions", json={**CHAT, "stream": True})
        num_events = 0
        async for data in response.iter_sse():
            num_events += 1
            if data == b"[DONE]":
                break
        assert num_events >= NUM_CHUNKS + 2, num_events
    elif path == "responses stream":                  # no [DONE]: the stream ends after response.incomplete
        response = await client.request("POST", "/v1/responses", json={**RESPONSES, "stream": True})
        num_events = sum([1 async for _ in response.iter_sse()])
        assert num_events >= NUM_CHUNKS + 8, num_events
    elif path == "/v1/responses":
        response = await client.request("POST", path, json=RESPONSES)
        await response.read()
    else:
        body = LONG_CHAT if path == LONG else CHAT
        response = await client.request("POST", "/v1/chat/completions", json=body)
        await response.read()
    assert response.status == 200, response.status


async def measure(targets: dict[str, tuple[str, str, int | None]], rounds: int, num_requests: int,
                  concurrency: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for round_no in range(rounds):
        names = list(targets) if round_no % 2 == 0 else list(reversed(targets))
        for name in names:
            url, path, pid = targets[name]
            results[name].append(await run_requests(url, path, num_requests, concurrency, pid))
    return results


def medians(rows: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r for r, _ in rows), statistics.median(c for _, c in rows)


def targets_of(daemon: Daemon, paths, suffix: str) -> dict[str, tuple[str, str, int]]:
    """Measured rows for `daemon`: name -> (url, path, pid)."""
    return {path + suffix: (daemon.url, path, daemon.proc.pid) for path in paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4000, help="whole answers per round and target")
    parser.add_argument("--streams", type=int, default=300, help="streams per round and target")
    parser.add_argument("--gap-ms", type=float, default=0.5, help="time between streamed chunks")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout whose velollmd runs beside this one (rows marked 'baseline')")
    parser.add_argument("--ops-only", action="store_true",
                        help="only the access log + metrics on/off rows (more rounds in the same time)")
    args = parser.parse_args()
    backend, port = start(INSTANT_BACKEND, str(args.gap_ms))
    relay, relay_port = start(BYTE_RELAY, str(port))
    try:
        backend_config = backend_toml("instant", "openai", f"http://127.0.0.1:{port}", '["tiny*"]', "slots = 64")
        with contextlib.ExitStack() as stack:
            daemon = stack.enter_context(Daemon(backend_config + "[cache]\nenabled = false\n"))
            cache_on = stack.enter_context(Daemon(backend_config + "[cache]\npath = \"\"\n"))
            ops_off = stack.enter_context(Daemon(backend_config + "[cache]\nenabled = false\n"
                                                 "[metrics]\nenabled = false\n", log_toml="access = false\n"))
            whole_targets = targets_of(daemon, ("/health", "/v1/chat/completions", "/v1/responses", ANTHROPIC,
                                                LONG), "")
            whole_targets[CACHE_ON] = (cache_on.url, "/v1/chat/completions", cache_on.proc.pid)
            whole_targets[OPS_OFF] = (ops_off.url, "/v1/chat/completions", ops_off.proc.pid)
            stream_targets = {"direct": (f"http://127.0.0.1:{port}", "stream", None),
                              "byte relay": (f"http://127.0.0.1:{relay_port}", "stream", relay.pid),
                              "velollmd": (daemon.url, "stream", daemon.proc.pid),
                              "velollmd /v1/responses": (daemon.url, "responses stream", daemon.proc.pid),
                              "velollmd /v1/messages": (daemon.url, ANTHROPIC_STREAM, daemon.proc.pid),
                              STREAM_OPS_OFF: (ops_off.url, "stream", ops_off.proc.pid)}
            if args.baseline is not None:
                before = stack.enter_context(Daemon(backend_config + "[cache]\nenabled = false\n",
                                                    root=args.baseline.resolve()))
                whole_targets |= targets_of(before, ("/health", "/v1/chat/completions", LONG), " (baseline)")
                stream_targets["velollmd (baseline)"] = (before.url, "stream", before.proc.pid)
            if args.ops_only:
                whole_targets = {k: v for k, v in whole_targets.items() if k in ("/v1/chat/completions", OPS_OFF)}
                stream_targets = {k: v for k, v in stream_targets.items()
                                  if k in ("direct", "velollmd", STREAM_OPS_OFF)}
            whole = asyncio.run(measure(whole_targets, args.rounds, args.requests, 64))
            streams = asyncio.run(measure(stream_targets, args.rounds, args.streams, 1))
    finally:
        backend.kill()
        relay.kill()
    report(whole, streams, args)


def report(whole: dict, streams: dict, args) -> None:
    print(f"### Proxy cost with an instant backend ({args.rounds} rounds, medians)\n")
    print(f"Whole answers, concurrency 64, {args.requests} requests per round:\n")
    print("| request | req/s | daemon CPU us/request |")
    print("|---|---:|---:|")
    for path, rows in whole.items():
        seconds, cpu = medians(rows)
        print(f"| {path} | {64 / seconds:,.0f} | {cpu:.0f} |")
    print(f"\nStreams of {NUM_CHUNKS} chunks {args.gap_ms:g} ms apart, concurrency 1, "
          f"{args.streams} per round:\n")
    print("| path | ms per stream | added ms | proxy CPU us/stream | proxy CPU us/chunk |")
    print("|---|---:|---:|---:|---:|")
    direct, _ = medians(streams["direct"])
    for name, rows in streams.items():
        seconds, cpu = medians(rows)
        cpu_cells = "- | -" if name == "direct" else f"{cpu:.0f} | {cpu / (NUM_CHUNKS + 3):.0f}"
        print(f"| {name} | {seconds * 1e3:.2f} | {(seconds - direct) * 1e3:+.2f} | {cpu_cells} |")
    print("\nAccess log + metrics on (the default) vs off, daemon CPU per request (target: <= +5 %):\n")
    for label, on, off in (("whole answers", whole["/v1/chat/completions"], whole[OPS_OFF]),
                           ("streams", streams["velollmd"], streams[STREAM_OPS_OFF])):
        cpu_on, cpu_off = medians(on)[1], medians(off)[1]
        per_round = sorted(a[1] / b[1] for a, b in zip(on, off))
        print(f"- {label}: {cpu_on:.0f} vs {cpu_off:.0f} us, {cpu_on / cpu_off - 1:+.1%} "
              f"(per round: {', '.join(f'{r - 1:+.1%}' for r in per_round)})")


if __name__ == "__main__":
    main()
