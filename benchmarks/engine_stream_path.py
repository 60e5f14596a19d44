"""The event loop's CPU time per token on the engine's stream path, in-process and without a model.

A fake runner takes the requests; this thread posts their events the way the engine's thread
does (the time spent posting, and in what the backend does there, is timed apart as "worker"),
and `concurrency` streams consume them: the backend's answer_events, the relay (passthrough,
as for /v1/chat/completions), the SSE frames. No sockets, no HTTP: what the engine backend's
part of a token costs the loop, steady enough to compare trees on a busy machine.

    PYTHONPATH=. .venv/bin/python benchmarks/engine_stream_path.py [--concurrency 8] [--tokens 400]
    PYTHONPATH=/tmp/base .venv/bin/python benchmarks/engine_stream_path.py     # another checkout
"""
from __future__ import annotations

import argparse
import asyncio
import time
from types import SimpleNamespace

import uvloop

from velollmd.backends.engine import EngineBackend
from velollmd.config import config_from_table
from velollmd.core.relay import ChunkRelay
from velollmd.engine.runner import Event
from velollmd.engine.sampling import SamplingParams
from velollmd.http.sse import encode_event
from velollmd.wire.outcome import Delivery
from velollmd.wire.request import GenerateRequest


class OneByteTokens:
    def token_bytes(self, token_id: int) -> bytes:
        return b"a"


class FakeRunner:
    """Keeps each request's event callback; the benchmark calls them."""

    def __init__(self):
        self.deliverers = []

    def submit_choices(self, ids, prompt_ids, params, deliverers, **kwargs) -> None:
        self.deliverers.append(deliverers[0])

    def cancel(self, request_id: str) -> None:
        pass


def fake_backend(runner: FakeRunner, num_tokens: int) -> EngineBackend:
    table = {"backends": [{"name": "e", "kind": "engine", "models_dir": "/nonexistent", "ollama_store": False}]}
    backend = EngineBackend(config_from_table(table).backends[0])
    model = SimpleNamespace(name="tiny", tokenizer=OneByteTokens(), runner=runner, last_used=0.0)
    params = SamplingParams(temperature=0.0, max_tokens=num_tokens)

    async def prepare(request, *, chat):
        return model, [1, 2, 3], params
    backend._prepare = prepare
    return backend


async def one_run(concurrency: int, num_tokens: int) -> tuple[float, float]:
    """(loop, worker) CPU microseconds per token."""
    runner = FakeRunner()
    backend = fake_backend(runner, num_tokens)
    request = GenerateRequest("chat", {"model": "tiny", "messages": [], "stream": True})
    frames = []

    async def consume():
        relay = ChunkRelay(backend, "tiny", "chat", Delivery(True, None, frames=True))
        async for batch in backend.answer_events(request):
            frames.extend(map(encode_event, relay.convert_batch(batch)))
    tasks = [asyncio.ensure_future(consume()) for _ in range(concurrency)]
    while len(runner.deliverers) < concurrency:
        await asyncio.sleep(0)
    started, worker = time.thread_time(), 0.0
    for step in range(num_tokens):                     # a step: one token to every stream
        posting = time.thread_time()
        for index, deliver in enumerate(runner.deliverers):
            deliver(Event(f"r{index}", " word", (1,), finish_reason="length" if step == num_tokens - 1 else None,
                          num_prompt_tokens=3, num_output_tokens=step + 1))
        worker += time.thread_time() - posting
        for _ in range(3):                             # the drain, then the streams' turns
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    total = time.thread_time() - started
    num = concurrency * num_tokens
    return (total - worker) / num * 1e6, worker / num * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="8,16")
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        runs = [uvloop.run(one_run(concurrency, args.tokens)) for _ in range(args.repeat)]
        loop_us, worker_us = min(runs)
        print(f"c={concurrency}: loop {loop_us:.2f} us/token, worker {worker_us:.2f} us/token "
              f"(best of {args.repeat})", flush=True)


if __name__ == "__main__":
    main()
