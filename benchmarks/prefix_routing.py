"""Prefix-aware routing vs round-robin vs direct, on multi-turn conversations, in one run.

Two llama-servers (tiny model, --parallel 4 each, 4096 tokens per slot, one compute thread
each) and three velollmd processes in front of both: `[scheduler] prefix_routing = true`
(backend and slot chosen by prefix, `id_slot` pinned), the same with `pin_slots = false`
(backend chosen by prefix, llama-server picks the slot), and `prefix_routing = false` (least
load, ties round-robin). 8 concurrent conversations, each
starting from its own ~2,800-token history and growing by a question and an answer per turn,
with a random 0..300 ms think time before each turn (seeded, the same in every mode), are run
through each mode in turn (rotated every round), with fresh conversation texts for
every mode and round so no mode inherits another's cache. "direct" sends conversation i
straight to server i % 2 (a client that pins conversations itself; llama-server picks the
slot): the ideal affinity, without the proxy hop.

`--cache-ram 0` turns off llama-server's host prompt cache (new in recent llama.cpp; older
builds and Ollama have none): then only the slot's own KV cache can serve a prefix. With it on
(the default here), a server can restore a conversation it saw before into any slot.

Measured per streamed turn: time to first token (client side), and the prompt tokens the
server found cached (usage.prompt_tokens_details.cached_tokens). The first turn of each
conversation is cold in every mode and reported apart.

    .venv/bin/python benchmarks/prefix_routing.py [--rounds 3] [--turns 6] [--cache-ram 0]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import urllib.request

from common import Daemon, backend_toml, start_llama_server, summary, tiny_model

from velollmd.http.client import HTTPClient

NUM_CONVERSATIONS = 8
DAEMON_MODES = {              # mode -> [scheduler] settings of its velollmd
    "prefix-aware": "prefix_routing = true",
    "prefix-aware, backend only": "prefix_routing = true\npin_slots = false",
    "round-robin": "prefix_routing = false",
}
MODES = [*DAEMON_MODES, "direct"]
HISTORY_LINES = 110            # ~2,800 tokens of the tiny vocab
MAX_TOKENS = 16


def history(mode: str, round_index: int, index: int) -> str:
    tag = f"{MODES.index(mode)}r{round_index}c{index}"               # fresh text per mode
    return " ".join(f"note {tag} line{i} alpha beta gamma delta" for i in range(HISTORY_LINES))


async def turn(client: HTTPClient, messages: list[dict]) -> tuple[float, int, int, str]:
    """(ttft_s, prompt_tokens, cached_tokens, reply) of one streamed chat turn."""
    body = {"model": "tiny", "messages": messages, "max_tokens": MAX_TOKENS, "stream": True,
            "temperature": 0, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    response = await client.request("POST", "/v1/chat/completions", json=body)
    assert response.status == 200, await response.read()
    ttft, reply, usage = None, [], {}
    async for data in response.iter_sse():
        if data == b"[DONE]":
            break
        event = json.loads(data)
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                ttft = ttft or time.perf_counter() - started
                reply.append(content)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return ttft, usage.get("prompt_tokens", 0), cached, "".join(reply)


async def conversation(client: HTTPClient, text: str, num_turns: int, results: list,
                       think: random.Random, think_ms: float) -> None:
    """Turns of one conversation, a random think time (0..think_ms) before each: real users do
    not answer in lockstep, and lockstep turns would let plain round-robin land every
    conversation on the same server by accident."""
    messages = [{"role": "user", "content": text}]
    for index in range(num_turns):
        await asyncio.sleep(think.uniform(0, think_ms) / 1e3)
        ttft, prompt_tokens, cached, reply = await turn(client, messages)
        results.append({"turn": index, "ttft": ttft, "prompt": prompt_tokens, "cached": cached})
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": f"question {index}: tell me more about line{index * 7}"}]


async def run_mode(mode: str, clients: list[HTTPClient], round_index: int, args) -> list[dict]:
    results: list[dict] = []
    await asyncio.gather(*[
        conversation(clients[i % len(clients)], history(mode, round_index, i), args.turns, results,
                     random.Random(f"{round_index}-{i}"), args.think_ms)
        for i in range(args.conversations)])
    return results


def report(results: dict[str, list[dict]], args) -> str:
    lines = [f"### Prefix-aware routing (2 llama-servers x {args.parallel} slots, tiny model, {args.conversations} "
             f"concurrent conversations x {args.turns} turns x {args.rounds} rounds, cache-ram {args.cache_ram}, "
             f"{args.llama_threads} llama thread(s) per server, think time 0..{args.think_ms:g} ms)",
             "", "| mode | n | mean TTFT ms | p50 ms | p99 ms | cold turn-1 mean ms | cache reuse |",
             "|---|---|---|---|---|---|---|"]
    means = {}
    for mode, rows in results.items():
        later = [r for r in rows if r["turn"] > 0]
        stats = summary([r["ttft"] * 1e3 for r in later])
        cold = statistics.fmean(r["ttft"] * 1e3 for r in rows if r["turn"] == 0)
        reuse = sum(r["cached"] for r in later) / max(1, sum(r["prompt"] for r in later))
        means[mode] = stats["mean"]
        lines.append(f"| {mode} | {stats['n']} | {stats['mean']:.1f} | {stats['p50']:.1f} | "
                     f"{stats['p99']:.1f} | {cold:.1f} | {reuse:.1%} |")
    first_turns = [r["prompt"] for rows in results.values() for r in rows if r["turn"] == 0]
    lines += ["", f"History: {statistics.fmean(first_turns):,.0f} prompt tokens at turn 1 on average.",
              "", f"Mean TTFT of later turns, round-robin / prefix-aware: "
                  f"**{means['round-robin'] / means['prefix-aware']:.2f}x**, "
                  f"round-robin / prefix-aware backend only: "
                  f"**{means['round-robin'] / means['prefix-aware, backend only']:.2f}x**; "
                  f"direct / prefix-aware: {means['direct'] / means['prefix-aware']:.2f}x"]
    return "\n".join(lines)


async def main_async(args, urls: dict[str, list[str]]) -> dict[str, list[dict]]:
    clients = {mode: [HTTPClient(u) for u in mode_urls] for mode, mode_urls in urls.items()}
    results = {mode: [] for mode in urls}
    modes = list(urls)
    for round_index in range(args.rounds):
        order = modes[round_index % len(modes):] + modes[:round_index % len(modes)]
        for mode in order:
            results[mode] += await run_mode(mode, clients[mode], round_index, args)
    for mode_clients in clients.values():
        for client in mode_clients:
            await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--cache-ram", type=int, default=8192,
                        help="llama-server --cache-ram MiB (its host prompt cache; 0 = off)")
    parser.add_argument("--parallel", type=int, default=4, help="slots per llama-server")
    parser.add_argument("--think-ms", type=float, default=300.0,
                        help="each turn waits a random 0..think-ms first (seeded, equal across modes)")
    parser.add_argument("--conversations", type=int, default=NUM_CONVERSATIONS)
    parser.add_argument("--llama-threads", type=int, default=1, help="llama-server --threads for each server")
    args = parser.parse_args()
    model = tiny_model()
    # One compute thread per server: two servers on this 2-core machine with a thread per
    # core each oversubscribe it, and ggml's spinning thread pool then slows every task ~8x
    # whenever both servers compute at once (seen: 5.6 s instead of 0.7 s per turn).
    extra = ["--cache-ram", str(args.cache_ram), "--threads", str(args.llama_threads)]
    servers = [start_llama_server(model, parallel=args.parallel, ctx_size=4096 * args.parallel,
                                  extra_args=extra) for _ in range(2)]
    backends = "".join(backend_toml(f"llama{i}", "llamacpp", s.url) for i, s in enumerate(servers))
    daemons = {mode: Daemon(f"[scheduler]\n{settings}\n{backends}").start()
               for mode, settings in DAEMON_MODES.items()}
    try:
        urls = {**{mode: [daemon.url] for mode, daemon in daemons.items()},
                "direct": [s.url for s in servers]}
        results = asyncio.run(main_async(args, urls))
        routing = queue_stats(daemons["prefix-aware"].url)
    finally:
        for daemon in daemons.values():
            daemon.stop()
        for server in servers:
            server.__exit__(None, None, None)
    print(report(results, args))
    print(f"\nPrefix-aware daemon: routing {json.dumps(routing['routing'])}, "
          f"tokenize {json.dumps(routing['tokenize'])}")


def queue_stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/velollm/queue", timeout=10) as response:
        return json.load(response)


if __name__ == "__main__":
    main()
