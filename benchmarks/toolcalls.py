"""Tool-call repair benchmark: velollmd's loads_repaired vs json.loads and PyPI json-repair.

Three comparisons, each run side by side, interleaved (A B B A per round, so neither side
always runs first) on the corpus in tests/toolcalls/corpus:
  1. valid JSON documents: loads_repaired vs json.loads          (target: ratio <= 1.2)
  2. broken (repairable) documents: loads_repaired vs json_repair  (target: >= 2x faster,
     success rate >= json-repair's; success = the exact value the case expects)
  3. the whole pipeline (extract + repair + validate) per raw model output, for reference.
Prints a Markdown block for benchmarks/RESULTS.md.

Run: .venv/bin/python benchmarks/toolcalls.py [--rounds N]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json_repair  # noqa: E402  (benchmark-only dependency)

from tests.toolcalls.corpus import load_cases, load_repair_cases  # noqa: E402
from velollmd.ctl.bench.stats import percentile  # noqa: E402
from velollmd.toolcalls.assemble import process_output  # noqa: E402
from velollmd.toolcalls.repair import loads_repaired  # noqa: E402

_now = time.perf_counter_ns


def interleaved(inputs: list[str], fn_a, fn_b, rounds: int) -> tuple[list, list]:
    """Per input, `rounds` A/B pairs in A B B A order; returns per-call ns lists per input."""
    samples_a, samples_b = [], []
    for text in inputs:
        a, b = [], []
        for i in range(rounds):
            order = ((fn_a, a), (fn_b, b)) if i % 2 == 0 else ((fn_b, b), (fn_a, a))
            for fn, out in order:
                start = _now()
                try:
                    fn(text)
                except Exception:
                    pass
                out.append(_now() - start)
        samples_a.append(a)
        samples_b.append(b)
    return samples_a, samples_b


def pct(values: list[int], q: float) -> float:
    """The q-th percentile (0..100) of nanosecond samples, in microseconds."""
    return percentile(values, q) / 1000.0


def summarize(name_a: str, name_b: str, samples_a: list, samples_b: list) -> dict:
    flat_a = [x for s in samples_a for x in s]
    flat_b = [x for s in samples_b for x in s]
    med_a = [statistics.median(s) for s in samples_a]
    med_b = [statistics.median(s) for s in samples_b]
    return {"a": name_a, "b": name_b, "n": len(flat_a), "cases": len(samples_a),
            "a_p50": pct(flat_a, 50), "a_p99": pct(flat_a, 99),
            "b_p50": pct(flat_b, 50), "b_p99": pct(flat_b, 99),
            "total_ratio": sum(med_a) / sum(med_b),
            "median_ratio": statistics.median(a / b for a, b in zip(med_a, med_b))}


def success(cases: list[dict], fn) -> int:
    ok = 0
    for case in cases:
        try:
            ok += fn(case["input"]) == case["expected"]
        except Exception:
            pass
    return ok


def valid_documents() -> list[str]:
    """Valid JSON: every expected repair value, every corpus call, and a few big documents."""
    docs = [json.dumps(c["expected"]) for c in load_repair_cases()]
    for case in load_cases():
        docs += [json.dumps({"name": c["name"], "arguments": c["arguments"]}) for c in case["calls"]]
    big = {"rows": [{"id": i, "name": f"row {i}", "tags": ["a", "b"], "score": i / 7}
                    for i in range(200)]}
    docs += [json.dumps(big), json.dumps(big, indent=2)]
    return docs


def pipeline_times(rounds: int) -> list[int]:
    samples = []
    for case in load_cases():
        for _ in range(rounds):
            start = _now()
            process_output(case["raw"], None, case["tools"], tool_choice=case.get("tool_choice"),
                           messages=case.get("messages"))
            samples.append(_now() - start)
    return samples


def row(label: str, s: dict) -> str:
    return (f"| {label} | {s['cases']} / {s['n']} | {s['a_p50']:.1f} / {s['a_p99']:.1f} | "
            f"{s['b_p50']:.1f} / {s['b_p99']:.1f} | {s['total_ratio']:.2f} | {s['median_ratio']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    repair_cases = load_repair_cases()
    broken = [c["input"] for c in repair_cases]
    valid = valid_documents()

    s_valid = summarize("loads_repaired", "json.loads",
                        *interleaved(valid, loads_repaired, json.loads, args.rounds))
    s_broken = summarize("loads_repaired", "json_repair.loads",
                         *interleaved(broken, loads_repaired, json_repair.loads, args.rounds))
    ours_ok = success(repair_cases, lambda t: loads_repaired(t)[0])
    theirs_ok = success(repair_cases, json_repair.loads)
    pipe = pipeline_times(max(1, args.rounds // 10))

    print(f"### Tool-call repair ({time.strftime('%Y-%m-%d')}, {platform.node()}, "
          f"Python {platform.python_version()}, json-repair {importlib.metadata.version('json_repair')})\n")
    print(f"`.venv/bin/python benchmarks/toolcalls.py --rounds {args.rounds}`; "
          "A/B interleaved (A B B A), times in microseconds per call.\n")
    print("| comparison (A vs B) | cases / samples per side | A p50 / p99 | B p50 / p99 "
          "| A/B total time | A/B median per case |")
    print("|---|---|---|---|---|---|")
    print(row("valid JSON: loads_repaired vs json.loads", s_valid))
    print(row("broken JSON: loads_repaired vs json_repair.loads", s_broken))
    print()
    print(f"- Repair success on {len(repair_cases)} broken documents: loads_repaired "
          f"{ours_ok}/{len(repair_cases)}, json_repair {theirs_ok}/{len(repair_cases)}.")
    print(f"- Speed on broken documents: loads_repaired is {1 / s_broken['total_ratio']:.1f}x "
          f"json_repair (total), {1 / s_broken['median_ratio']:.1f}x (median per case); "
          "target >= 2x.")
    print(f"- Valid JSON overhead vs json.loads: {s_valid['total_ratio']:.2f}x total, "
          f"{s_valid['median_ratio']:.2f}x median per case; target <= 1.2x.")
    print(f"- Whole pipeline (extract + repair + schema) on {len(load_cases())} raw outputs: "
          f"p50 {pct(pipe, 50):.1f} us, p99 {pct(pipe, 99):.1f} us ({len(pipe)} samples).")


if __name__ == "__main__":
    main()
