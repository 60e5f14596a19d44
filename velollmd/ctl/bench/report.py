"""What `velollmctl bench` shows people: a live progress bar and the result tables.

On a terminal the progress bar redraws one line on stderr (`\\r`); anywhere else (CI logs,
pipes, tests) it writes one plain line when a run starts and one when it ends.
"""
from __future__ import annotations

import time

from ..report import format_columns

BAR_WIDTH = 24


class Progress:
    def __init__(self, stream, tty: bool | None = None):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.label = ""
        self.total = 0
        self.num_done = 0
        self.num_errors = 0
        self._last_draw = 0.0

    def start_run(self, label: str, concurrency: int, round_index: int, total: int) -> None:
        self.label = f"{label} c={concurrency} round {round_index + 1}"
        self.total, self.num_done, self.num_errors = total, 0, 0
        if self.tty:
            self._draw(force=True)
        else:
            self._line(f"bench {self.label}: {total} requests ...")

    def request_done(self, result) -> None:
        self.num_done += 1
        self.num_errors += not result.ok
        if self.tty:
            self._draw(force=self.num_done == self.total)

    def end_run(self, summary: dict) -> None:
        text = (f"bench {self.label}: {summary['requests']} done, {summary['errors']} errors, "
                f"{summary['aggregate_tokens_per_second']:.1f} tok/s")
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self._line(text)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        filled = BAR_WIDTH * self.num_done // max(self.total, 1)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r\x1b[2K{self.label} [{bar}] {self.num_done}/{self.total}"
                          + (f" errors {self.num_errors}" if self.num_errors else ""))
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_endpoints(report: dict) -> str:
    head = (f"profile {report['profile']}, max_tokens {report['max_tokens']}, "
            f"{report['requests_per_level']} requests per level and round, {report['rounds']} round(s)")
    lines = [head] + [f"  {e['label']} = {describe_endpoint(e)}" for e in report["endpoints"]]
    return "\n".join(lines) + "\n"


def describe_endpoint(endpoint: dict) -> str:
    """`name: URL (api, model M)`, or without the name when none was given."""
    text = f"{endpoint['endpoint']} ({endpoint['api']}, model {endpoint['model']})"
    return f"{endpoint['name']}: {text}" if endpoint.get("name") else text


def format_results(report: dict) -> str:
    """One row per endpoint and concurrency level (rounds merged)."""
    rows = [["endpoint", "conc", "reqs", "errors", "cache", "agg tok/s", "req tok/s p50",
             "TTFT p50", "TTFT p99", "ITL p50", "lat p50", "lat p99"]]
    for entry in report["aggregated"]:
        rows.append([entry["label"], str(entry["concurrency"]), str(entry["requests"]),
                     str(entry["errors"]), str(entry["cache_hits"]),
                     _num(entry["aggregate_tokens_per_second"]), _num(entry["tokens_per_second"]["p50"]),
                     _num(entry["ttft_ms"]["p50"]), _num(entry["ttft_ms"]["p99"]),
                     _num(entry["itl_ms"]["p50"], 2), _num(entry["latency_ms"]["p50"]),
                     _num(entry["latency_ms"]["p99"])])
    lines = format_columns(rows, right=set(range(1, len(rows[0]))))
    lines.append("(times in ms; agg tok/s = completion tokens of the level / its wall time)")
    return "\n".join(lines) + "\n" + _format_errors(report)


def _format_errors(report: dict) -> str:
    lines = []
    for entry in report["aggregated"]:
        for message in entry["error_messages"]:
            lines.append(f"  {entry['label']} c={entry['concurrency']}: {message}")
    return "errors:\n" + "\n".join(lines) + "\n" if lines else ""


def format_comparison(report: dict) -> str:
    """B/A ratios per level: > 1 is better for throughput, < 1 is better for the times."""
    if not report["comparison"]:
        return ""
    rows = [["conc", "throughput B/A", "TTFT p50 B/A", "latency p50 B/A"]]
    for row in report["comparison"]:
        rows.append([str(row["concurrency"]), _num(row["throughput_ratio"], 3),
                     _num(row["ttft_p50_ratio"], 3), _num(row["latency_p50_ratio"], 3)])
    return "\n".join(["B/A ratios (throughput > 1 and times < 1 mean B is faster)"]
                     + format_columns(rows, right={0, 1, 2, 3})) + "\n"
