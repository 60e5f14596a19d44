"""`velollmctl bench`: load an OpenAI-compatible or Ollama endpoint and measure it.

For each concurrency level, `concurrency` workers send `num_requests` streaming chat requests
(closed loop: a worker sends its next request when the previous one ends). With a second
endpoint the runs interleave A B A B per level (`num_rounds` rounds), so that a noisy,
shared machine hurts both sides alike; the report then carries B/A ratios per level.
The result is one JSON-able dict (schema "velollm.bench/1"): `runs` (one per endpoint, level
and round), `aggregated` (rounds merged, one per endpoint and level) and `comparison`.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .client import Endpoint, RequestResult
from .stats import ratio, summarize
from .workload import DEFAULT_CHARS_PER_TOKEN, PROFILES, Conversation, Workload, synthetic_text

SCHEMA = "velollm.bench/1"
CALIBRATION_CHARS = 1200


@dataclass(frozen=True)
class BenchPlan:
    profile: str = "short"
    concurrency: tuple[int, ...] = (1, 4, 16)
    num_requests: int = 16
    max_tokens: int | None = None          # None = the profile's default
    max_context: int = 4096
    num_turns: int = 4
    num_rounds: int = 1
    num_warmup: int = 1
    same_prompts: bool = False

    def workload(self, tag: str, chars_per_token: float | None = None) -> Workload:
        profile = PROFILES[self.profile]
        return Workload(profile, self.max_tokens or profile.max_tokens, self.max_context, self.num_turns,
                        self.same_prompts, tag, chars_per_token or DEFAULT_CHARS_PER_TOKEN)


async def run_level(endpoint: Endpoint, workload: Workload, concurrency: int, num_requests: int,
                    on_done=None) -> tuple[list[RequestResult], float]:
    """`num_requests` requests by `concurrency` workers; returns the results and the wall time."""
    next_index = iter(range(num_requests))
    results: list[RequestResult] = []

    async def worker() -> None:
        conversation = Conversation() if workload.profile.name == "multi-turn" else None
        for index in next_index:
            messages = workload.messages(index, conversation)
            result = await endpoint.stream_chat(messages, workload.max_tokens)
            workload.record_answer(conversation, result.text)
            results.append(result)
            if on_done is not None:
                on_done(result)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, num_requests))))
    return results, time.perf_counter() - start


def _run_entry(endpoint: Endpoint, plan: BenchPlan, concurrency: int) -> dict:
    return {"endpoint": endpoint.url, "label": endpoint.label, "api": endpoint.api,
            "model": endpoint.model, "profile": plan.profile, "concurrency": concurrency}


async def calibrate(endpoint: Endpoint, max_context: int) -> None:
    """Measure the endpoint's characters per token from the prompt token counts of two
    1-token requests (with and without a sample text), so that long-context prompts fill
    --max-context whatever the tokenizer. Left unset when the server reports no counts."""
    sample = synthetic_text(min(CALIBRATION_CHARS, max_context))
    base = await endpoint.stream_chat([{"role": "user", "content": "Hi"}], 1)
    full = await endpoint.stream_chat([{"role": "user", "content": "Hi " + sample}], 1)
    if base.num_prompt_tokens and full.num_prompt_tokens and full.num_prompt_tokens > base.num_prompt_tokens:
        endpoint.chars_per_token = len(sample) / (full.num_prompt_tokens - base.num_prompt_tokens)


async def warm_up(endpoints: list[Endpoint], plan: BenchPlan) -> None:
    """Unmeasured requests first: model load, connection setup, first-call paths."""
    for endpoint in endpoints:
        if plan.profile == "long-context":
            await calibrate(endpoint, plan.max_context)
        workload = plan.workload(f"warmup-{endpoint.label}-", endpoint.chars_per_token)
        for index in range(plan.num_warmup):
            await endpoint.stream_chat(workload.messages(index, Conversation()), workload.max_tokens)


async def run_bench(endpoints: list[Endpoint], plan: BenchPlan, progress=None) -> dict:
    """Every level, every round, every endpoint in turn (A B A B); returns the report dict."""
    await warm_up(endpoints, plan)
    runs: list[dict] = []
    merged: dict[tuple[str, int], tuple[list[RequestResult], float]] = {}
    for concurrency in plan.concurrency:
        for round_index in range(plan.num_rounds):
            for endpoint in endpoints:
                key = (endpoint.label, concurrency)
                workload = plan.workload(f"{endpoint.label}{round_index}c{concurrency}-",
                                         endpoint.chars_per_token)
                if progress is not None:
                    progress.start_run(endpoint.label, concurrency, round_index, plan.num_requests)
                results, wall_s = await run_level(endpoint, workload, concurrency, plan.num_requests,
                                                  progress.request_done if progress else None)
                summary = summarize(results, wall_s)
                if progress is not None:
                    progress.end_run(summary)
                runs.append({**_run_entry(endpoint, plan, concurrency), "round": round_index, **summary})
                done, total_s = merged.get(key, ([], 0.0))
                merged[key] = (done + results, total_s + wall_s)
    aggregated = [{**_run_entry(e, plan, c), "rounds": plan.num_rounds, **summarize(*merged[(e.label, c)])}
                  for e in endpoints for c in plan.concurrency]
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "profile": plan.profile, "max_tokens": plan.workload("").max_tokens,
            "max_context": plan.max_context, "requests_per_level": plan.num_requests,
            "rounds": plan.num_rounds, "concurrency": list(plan.concurrency),
            "endpoints": [{"label": e.label, "name": e.name, "endpoint": e.url, "api": e.api, "model": e.model,
                           "chars_per_token": e.chars_per_token and round(e.chars_per_token, 3)}
                          for e in endpoints],
            "runs": runs, "aggregated": aggregated, "comparison": compare(aggregated)}


def compare(aggregated: list[dict]) -> list[dict]:
    """B/A per concurrency level: throughput, TTFT p50, latency p50 (empty without a B)."""
    by_label: dict[str, dict[int, dict]] = {}
    for entry in aggregated:
        by_label.setdefault(entry["label"], {})[entry["concurrency"]] = entry
    if set(by_label) != {"A", "B"}:
        return []
    rows = []
    for concurrency, a in by_label["A"].items():
        b = by_label["B"][concurrency]
        rows.append({"concurrency": concurrency,
                     "throughput_ratio": ratio(b["aggregate_tokens_per_second"], a["aggregate_tokens_per_second"]),
                     "ttft_p50_ratio": ratio(b["ttft_ms"]["p50"], a["ttft_ms"]["p50"]),
                     "latency_p50_ratio": ratio(b["latency_ms"]["p50"], a["latency_ms"]["p50"])})
    return rows
