"""The daemon's own work per request, counted in a way the machine's load does not move.

One process on one uvloop runs the tree's `serve()` (the default configuration, the response
cache off as in proxy_overhead.py) in front of an in-process scripted OpenAI-compatible backend
that answers at once (a fixed 16-token chat completion, or a stream of 16 content chunks plus
finish, usage and [DONE]), driven by raw-socket keep-alive clients. The backend and the clients
are a few lines each, so what is counted is mostly the daemon's path.

    .venv/bin/python benchmarks/request_path.py [--stream] [--clients 4] [--requests 300]
        --profile       cProfile: the daemon's functions by own time, with calls per request
        --callgrind     instructions per request (valgrind's callgrind, user space): the
                        difference of a run of --requests and one of 3x as many, each after the
                        same warm-up, so start-up and warm-up cancel out
        (neither)       wall time and process CPU per request (noisy: for a quick look only)

Instructions are the measure to compare two trees by (`--root DIR`: another checkout, e.g. a
`git worktree`, with its CFFI extensions built): they repeat within a few per cent run to run
(0.5 % on some days, 3-4 % on others: 804k and 827k for one tree) where wall time on these
shared VMs varies 3-5x. Compare with --clients 1 (with more, how many requests queue in
admission while valgrind slows the daemon moves the count by up to 40k), over two runs or more
each, and trust only differences well past that spread.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAT = json.dumps({"model": "tiny", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "Tell me a story number 1."}]}).encode()
STREAM = json.dumps({"model": "tiny", "max_tokens": 16, "stream": True,
                     "messages": [{"role": "user", "content": "Tell me a story number 1."}]}).encode()
ANSWER = json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "tiny",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello " * 16},
                                  "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": 26}}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()
WARMUP = 200


def framed(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def sse_event(choices, **extra) -> bytes:
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": choices, **extra}
    return framed(b"data: " + json.dumps(body).encode() + b"\n\n")


STREAM_CHUNKS = [sse_event([{"index": 0, "delta": {"content": "hello "}, "finish_reason": None}])] * 16
STREAM_END = (sse_event([{"index": 0, "delta": {}, "finish_reason": "length"}])
              + sse_event([], usage={"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": 26})
              + framed(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def backend_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The scripted backend: whole answers at once; a stream's chunks one loop turn apart."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length:\s*(\d+)", head)
            body = await reader.readexactly(int(match.group(1))) if match else b""
            if b"/models" in head.split(b"\r\n", 1)[0]:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n" % len(MODELS) + MODELS)
            elif b'"stream":true' in body.replace(b" ", b""):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for chunk in STREAM_CHUNKS:
                    writer.write(chunk)
                    await asyncio.sleep(0)
                writer.write(STREAM_END)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n" % len(ANSWER) + ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"the daemon answered {head[:200]!r}")
    match = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if match:
        return await reader.readexactly(int(match.group(1)))
    return await reader.readuntil(b"\r\n0\r\n\r\n")     # chunked: up to the last chunk


async def client(port: int, body: bytes, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n" % len(body) + body)
    for _ in range(count):
        writer.write(request)
        await read_answer(reader)
    writer.close()


async def drive(port: int, body: bytes, clients: int, total: int) -> None:
    await asyncio.gather(*(client(port, body, total // clients) for _ in range(clients)))


async def run(args) -> None:
    from velollmd.config import config_from_table
    from velollmd.daemon import serve
    from velollmd.log import setup_logging

    backend = await asyncio.start_server(backend_connection, "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]
    state = tempfile.mkdtemp(prefix="velollm-reqpath-")
    config = config_from_table({
        "server": {"port": 0}, "log": {"level": "warning"}, "cache": {"enabled": False},
        "backends": [{"name": "wide", "kind": "openai", "url": f"http://127.0.0.1:{backend_port}",
                      "models": ["tiny*"]}]})
    log_file = open(os.path.join(state, "daemon.log"), "w")   # the access lines are written, as by the daemon
    setup_logging(config.log.level, stream=log_file, access=config.log.access)
    ready = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    daemon = asyncio.create_task(serve(config, ready=ready.set_result, stop=stop))
    server = await ready
    port = server.sockets[0].getsockname()[1]
    await asyncio.sleep(0.3)                              # the first health refresh of the backend
    body = STREAM if args.stream else CHAT
    await drive(port, body, args.clients, WARMUP)
    started, cpu = time.perf_counter(), time.process_time()
    profile = cProfile.Profile() if args.profile else None
    if profile:
        profile.enable()
    await drive(port, body, args.clients, args.requests)
    if profile:
        profile.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    stop.set()
    await daemon
    backend.close()
    log_file.close()
    shutil.rmtree(state, ignore_errors=True)
    if profile:
        report_profile(profile, args.requests)
    elif not args.quiet:
        print(f"{args.requests} requests: {wall / args.requests * 1e6:.0f} us wall, "
              f"{cpu / args.requests * 1e6:.0f} us CPU each (this process: daemon, backend and clients)")


def report_profile(profile: cProfile.Profile, requests: int, top: int = 40) -> None:
    stats = pstats.Stats(profile)
    rows = []
    for (path, line, name), (_calls, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        if "velollmd" in path:
            rows.append((tottime, ncalls, cumtime, f"{Path(path).relative_to(ROOT)}:{line} {name}"
                         if Path(path).is_relative_to(ROOT) else f"{path}:{line} {name}"))
    total = sum(row[0] for row in rows)
    calls = sum(row[1] for row in rows)
    print(f"velollmd functions: {calls / requests:.0f} calls and {total / requests * 1e6:.0f} us own "
          f"time per request (profiled)\n{'own us':>7} {'calls':>6} {'cum us':>7}  per request")
    for tottime, ncalls, cumtime, where in sorted(rows, reverse=True)[:top]:
        print(f"{tottime / requests * 1e6:7.1f} {ncalls / requests:6.2f} {cumtime / requests * 1e6:7.1f}  {where}")


def callgrind_instructions(args, requests: int) -> int:
    """Instructions (Ir) of one whole run of this script under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                   __file__, "--quiet", "--root", str(args.root), "--clients", str(args.clients),
                   "--requests", str(requests)] + (["--stream"] if args.stream else [])
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as counts:
            return int(re.search(r"^totals:\s*(\d+)", counts.read(), re.M).group(1))


def report_callgrind(args) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("--callgrind needs valgrind (apt install valgrind)")
    short = callgrind_instructions(args, args.requests)
    long = callgrind_instructions(args, 3 * args.requests)
    kind = "16-chunk stream" if args.stream else "whole answer"
    print(f"{args.root}: {(long - short) / (2 * args.requests) / 1e3:.1f}k instructions per {kind} "
          f"({args.clients} clients; the whole process: daemon, backend and clients)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", action="store_true", help="16-chunk streams instead of whole answers")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.root = args.root.resolve()
    if args.callgrind:
        return report_callgrind(args)
    sys.path.insert(0, str(args.root))
    import uvloop
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
