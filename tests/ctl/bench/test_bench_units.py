"""Pure parts of the bench: summaries, ticks, workloads, the TTY progress bar."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import pytest

from velollmd.ctl.bench.client import RequestResult
from velollmd.ctl.bench.report import Progress
from velollmd.ctl.bench.run import compare
from velollmd.ctl.bench.stats import distribution, summarize
from velollmd.ctl.bench.svg import nice_ticks, render_chart
from velollmd.ctl.bench.workload import PROFILES, Conversation, Workload
from velollmd.ctl.remote import base_url


def test_distribution_of_nothing_has_every_key():
    assert distribution([]) == {"p50": None, "p90": None, "p99": None, "mean": None, "n": 0}
    assert distribution([3, 1, 2]) == {"p50": 2, "p90": 2.8, "p99": 2.98, "mean": 2, "n": 3}


def test_summarize_counts_tokens_errors_and_hits():
    results = [RequestResult(True, 0.5, 0.1, [0.1, 0.3], 3, cache_hit=True),
               RequestResult(False, 0.2, error="HTTP 429: busy"), RequestResult(False, 0.2, error="HTTP 429: busy")]
    summary = summarize(results, wall_s=1.0)
    assert summary["errors"] == 2 and summary["error_messages"] == ["HTTP 429: busy"]
    assert summary["cache_hits"] == 1 and summary["aggregate_tokens_per_second"] == 3.0
    assert summary["tokens_per_second"]["p50"] == 5.0                # (3 - 1) tokens / (0.5 - 0.1) s
    assert summary["itl_ms"]["n"] == 2 and summary["latency_ms"]["p50"] == 500.0


def test_compare_is_b_over_a():
    def entry(label, tps, ttft):
        return {"label": label, "concurrency": 4, "aggregate_tokens_per_second": tps,
                "ttft_ms": {"p50": ttft}, "latency_ms": {"p50": None}}
    rows = compare([entry("A", 100.0, 10.0), entry("B", 50.0, 30.0)])
    assert rows == [{"concurrency": 4, "throughput_ratio": 0.5, "ttft_p50_ratio": 3.0, "latency_p50_ratio": None}]
    assert compare([entry("A", 1.0, 1.0)]) == []


@pytest.mark.parametrize("max_value, expected", [(4446.6, [0, 1000, 2000, 3000, 4000, 5000]),
                                                 (15.5, [0, 5, 10, 15, 20]), (0.9, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
                                                 (0, [0.0, 1.0])])
def test_nice_ticks(max_value, expected):
    assert nice_ticks(max_value) == pytest.approx(expected)


def test_chart_escapes_text_and_skips_missing_points():
    entry = {"label": "A", "concurrency": 1, "aggregate_tokens_per_second": 10.0, "ttft_ms": {"p50": None}}
    report = {"profile": "short", "max_tokens": 8, "requests_per_level": 1, "rounds": 1, "concurrency": [1, 2],
              "endpoints": [{"label": "A", "endpoint": "http://h/<&>", "api": "openai", "model": "m"}],
              "aggregated": [entry, {**entry, "concurrency": 2, "aggregate_tokens_per_second": 20.0}]}
    root = ET.fromstring(render_chart(report))
    series = [e for e in root.iter() if e.get("class") == "series"]
    assert [len(s.get("points").split()) for s in series] == [2, 0]
    assert any(e.text and "http://h/<&>" in e.text for e in root.iter())


def test_workload_prompts_are_unique_unless_asked():
    workload = Workload(PROFILES["short"], 8, tag="A0c1-")
    assert workload.messages(0) != workload.messages(1)
    same = Workload(PROFILES["short"], 8, same_prompts=True)
    assert same.messages(0) == same.messages(1)


def test_long_context_prompt_scales_with_chars_per_token():
    small = Workload(PROFILES["long-context"], 128, max_context=1024, chars_per_token=2.0)
    large = Workload(PROFILES["long-context"], 128, max_context=8192, chars_per_token=2.0)
    assert len(small.long_text()) == pytest.approx(2.0 * small.long_text_tokens(), rel=0.02)
    assert len(large.long_text()) > 8 * len(small.long_text())


def test_multi_turn_conversation_restarts_after_num_turns():
    workload = Workload(PROFILES["multi-turn"], 8, num_turns=2)
    conv = Conversation()
    assert len(workload.messages(0, conv)) == 2
    workload.record_answer(conv, "answer one")
    second = workload.messages(1, conv)
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"] and second[2]["content"] == "answer one"
    workload.record_answer(conv, "answer two")
    assert len(workload.messages(2, conv)) == 2


def test_base_url_drops_v1():
    assert base_url("http://h:1/v1/") == "http://h:1" and base_url("http://h:1/proxy") == "http://h:1/proxy"


def test_progress_bar_redraws_one_line_on_a_tty():
    stream = io.StringIO()
    progress = Progress(stream, tty=True)
    progress.start_run("A", 4, 0, 2)
    progress.request_done(RequestResult(True, 0.1))
    progress.request_done(RequestResult(False, 0.1, error="x"))
    progress.end_run({"requests": 2, "errors": 1, "aggregate_tokens_per_second": 12.5})
    text = stream.getvalue()
    assert text.count("\n") == 1 and "\r" in text
    assert "A c=4 round 1 [" + "#" * 24 + "] 2/2 errors 1" in text
    assert text.endswith("bench A c=4 round 1: 2 done, 1 errors, 12.5 tok/s\n")
