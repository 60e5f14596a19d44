"""The soak (`make soak`, minutes): a real velollmd process under a long mixed load, slowloris,
a 1 GiB request body and backends that never stop talking; one table of what leaked.

Cases (tests/soak/driver.py; tests/soak/test_soak.py runs them small inside `make test`):
  - the mix (chat, streams, cache hits, tool calls, Ollama /api/chat, /v1/messages,
    /v1/responses, client disconnects mid-stream, pipelined requests) over `--connections`
    keep-alive connections, against the scripted fast backend and against the real llama-server;
  - slowloris: `--slow` connections trickling a header byte per second while normal clients run
    (their p99 against a quiet run of the same size, in the notes);
  - a 1 GiB body, with Content-Length and chunked: a 413, bounded RSS;
  - endless backend answers: a 502, an error event, a stream the client leaves;
  - kill -9 while the daemon writes cache snapshots (VELOLLM_SNAPSHOT_KILLS rounds, via pytest).
Leaked fds / tasks are the daemon's after the case minus before it (both idle, after warm-up;
pooled backend connections not counted). The machine is shared and noisy: latencies are
indicative, the leak and status columns are not.

    .venv/bin/python benchmarks/soak.py [--requests 100000] [--connections 256] [--slow 300]
                                        [--llama-requests 5000] [--kills 50]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, start_llama_server, tiny_model

from tests.daemon_process import DaemonProcess
from tests.rig.scripted_backend import ScriptedBackend
from tests.soak import driver

HEADER_TIMEOUT_S = 5
SERVER = f"header_timeout_s = {HEADER_TIMEOUT_S}\nmax_connections = 2048\n"
DAEMON = '[log]\naccess = false\n[cache]\npath = ""\n[scheduler]\nmax_queue = 4096\n'


def scripted_cases(args) -> list[driver.CaseResult]:
    with ScriptedBackend() as backend:
        with DaemonProcess(DAEMON + backend.toml(), Path(tempfile.mkdtemp(prefix="velollm-soak-")), SERVER) as daemon:
            async def run():
                mix = await driver.mixed_load(daemon.url, args.requests, args.connections,
                                              warmup=min(args.requests // 10, 10000))
                mix.case += ", scripted backend"
                slow = await driver.slowloris(daemon.url, args.slow, args.normal, 32, HEADER_TIMEOUT_S)
                return [mix, slow, await driver.huge_body(daemon.url), await driver.endless_backend(daemon.url)]
            return asyncio.run(run())


def llama_case(args) -> driver.CaseResult:
    server = start_llama_server(tiny_model(), parallel=4, ctx_size=4096)
    try:
        toml = DAEMON + (f'[[backends]]\nname = "llama"\nkind = "llamacpp"\nurl = "{server.url}"\n'
                         f'models = ["tiny*"]\n')
        with DaemonProcess(toml, Path(tempfile.mkdtemp(prefix="velollm-soak-")), SERVER) as daemon:
            result = asyncio.run(driver.mixed_load(daemon.url, args.llama_requests, 64, with_tools=False,
                                                   warmup=args.llama_requests // 10))
    finally:
        server.stop()
    result.case += ", real llama-server"
    result.note = "tool calls asked as plain chat (the tiny model's tool calls need a logit bias)"
    return result


def kill_9_case(args) -> driver.CaseResult:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VELOLLM_SNAPSHOT_KILLS": str(args.kills)}
    test = "tests/cache/test_storage_faults.py"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    result = driver.CaseResult(f"storage faults (kill -9 x {args.kills}, full disk, read-only, future format)",
                               requests=args.kills)
    if done.returncode != 0:
        result.unexpected[done.stdout.strip().splitlines()[-1][:160]] += 1
    result.note = done.stdout.strip().splitlines()[-1]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--slow", type=int, default=300, help="slowloris connections")
    parser.add_argument("--normal", type=int, default=3000, help="normal requests in each slowloris run")
    parser.add_argument("--llama-requests", type=int, default=5000)
    parser.add_argument("--kills", type=int, default=50)
    args = parser.parse_args()
    rows = scripted_cases(args) + [llama_case(args), kill_9_case(args)]
    print(driver.TABLE_HEAD)
    for row in rows:
        print(row.row())
    problems = [(row.case, dict(row.unexpected)) for row in rows if row.unexpected]
    for case, unexpected in problems:
        print(f"\n{case}: {unexpected}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
