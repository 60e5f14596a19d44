"""The `velollmctl bench` verb: arguments, endpoints, run, then tables / JSON / SVG.

Exit codes: 0 when at least one request succeeded, 1 when an endpoint cannot be used or every
request failed, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys

from ..remote import API_KEY_ENV, DAEMON_URL
from .client import APIS, Endpoint, EndpointError
from .report import Progress, format_comparison, format_endpoints, format_results
from .run import BenchPlan, run_bench
from .svg import render_chart
from .workload import PROFILES


def concurrency_levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be integers >= 1, e.g. 1,4,16")
    return levels


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:                      # nan fails too
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0: {text!r}")
    return value


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DAEMON_URL, help=f"endpoint A (default the daemon, {DAEMON_URL})")
    parser.add_argument("--api", choices=APIS, default="auto",
                        help="openai (SSE) or ollama (NDJSON /api/chat); auto tries /v1/models, then /api/tags")
    parser.add_argument("--model", help="model name (default: the endpoint's first model)")
    parser.add_argument("--name", help="a name for endpoint A in tables and the chart")
    parser.add_argument("--compare", metavar="URL2", help="endpoint B, run interleaved A B A B")
    parser.add_argument("--compare-api", choices=APIS, help="API of URL2 (default: as --api)")
    parser.add_argument("--compare-name", help="a name for endpoint B")
    parser.add_argument("--compare-model", help="model name at URL2 (default: --model, else its first)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short",
                        help="; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()))
    parser.add_argument("--concurrency", type=concurrency_levels, default=(1, 4, 16),
                        help="comma-separated levels (default 1,4,16)")
    parser.add_argument("--requests", type=positive_int, default=16, help="requests per level and round (default 16)")
    parser.add_argument("--max-tokens", type=positive_int, help="completion tokens per request (default: the profile's)")
    parser.add_argument("--max-context", type=positive_int, default=4096, help="context size for long-context (default 4096)")
    parser.add_argument("--turns", type=positive_int, default=4, help="turns per multi-turn conversation (default 4)")
    parser.add_argument("--rounds", type=positive_int, help="rounds per level (default 2 with --compare, else 1)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured requests per endpoint first (default 1)")
    parser.add_argument("--same-prompts", action="store_true", help="identical prompts (exercises the response cache)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"Bearer token (default ${API_KEY_ENV})")
    parser.add_argument("--request-timeout", type=positive_seconds, default=300.0, help="seconds of silence before a request fails")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE ('-' for stdout)")
    parser.add_argument("--svg", metavar="FILE", help="write a throughput / TTFT chart to FILE")
    parser.set_defaults(func=cmd_bench)


def plan_from_args(args) -> BenchPlan:
    rounds = args.rounds or (2 if args.compare else 1)
    return BenchPlan(args.profile, args.concurrency, args.requests, args.max_tokens, args.max_context,
                     args.turns, rounds, max(args.warmup, 0), args.same_prompts)


def endpoints_from_args(args) -> list[Endpoint]:
    endpoints = [Endpoint(args.url, "A", args.api, args.model, args.api_key, args.request_timeout, args.name)]
    if args.compare:
        endpoints.append(Endpoint(args.compare, "B", args.compare_api or args.api, args.compare_model or args.model,
                                  args.api_key, args.request_timeout, args.compare_name))
    return endpoints


async def _bench(args, endpoints: list[Endpoint]) -> dict:
    try:
        for endpoint in endpoints:
            await endpoint.open()
        return await run_bench(endpoints, plan_from_args(args), Progress(sys.stderr))
    finally:
        for endpoint in endpoints:
            await endpoint.close()


def cmd_bench(args) -> int:
    try:
        endpoints = endpoints_from_args(args)
    except ValueError as exc:
        print(f"velollmctl bench: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_bench(args, endpoints))
    except EndpointError as exc:
        print(f"velollmctl bench: {exc}", file=sys.stderr)
        return 1
    if args.json != "-":
        sys.stdout.write("\n" + format_endpoints(report) + "\n" + format_results(report))
        comparison = format_comparison(report)
        sys.stdout.write("\n" + comparison if comparison else "")
    return _write_outputs(args, report)


def _write_outputs(args, report: dict) -> int:
    try:
        if args.json == "-":
            print(json.dumps(report, indent=2))
        elif args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        if args.svg:
            with open(args.svg, "w", encoding="utf-8") as f:
                f.write(render_chart(report))
    except OSError as exc:
        print(f"velollmctl bench: cannot write: {exc}", file=sys.stderr)
        return 1
    num_ok = sum(entry["requests"] - entry["errors"] for entry in report["aggregated"])
    return 0 if num_ok else 1
