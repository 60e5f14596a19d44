"""Counters and histograms in the Prometheus text format (GET /metrics), no dependencies."""
from __future__ import annotations

import math
from bisect import bisect_left as _bisect_left
from collections import defaultdict

from .looplag import monitor

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
QUEUE_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


MAX_MODEL_SERIES = 256                 # models counted by name in velollm_tokens_total
OTHER_MODELS = "(other)"               # the label of the tokens of every model past them
LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})   # the text format's three


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).translate(LABEL_ESCAPES)}"' for k, v in labels)
    return "{" + inner + "}"


def _header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def number(value: float) -> str:
    """A sample value in full: whole numbers as integers (a token counter past 1e6 must not
    round to six digits as `:g` does), others as Python's shortest exact repr."""
    if math.isfinite(value) and value == int(value) and abs(value) < 2 ** 53:
        return str(int(value))
    return {math.inf: "+Inf", -math.inf: "-Inf"}.get(value, "NaN" if math.isnan(value) else repr(float(value)))


def sampled(name: str, kind: str, help_text: str, samples) -> list[str]:
    """A metric as Prometheus text from `samples`, [(labels dict, value)]: the Counters
    here, and values read at scrape time from state kept elsewhere (gauges, or counters the
    scheduler keeps)."""
    return _header(name, kind, help_text) + [
        f"{name}{_labels(tuple(sorted(labels.items())))} {number(value)}" for labels, value in samples]


class Counter:
    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text
        self.values: dict[tuple, float] = defaultdict(float)    # sorted labels -> value
        self._keys: dict[tuple, tuple] = {}     # labels as passed -> sorted (no sort per inc)

    def inc(self, amount: float = 1.0, **labels) -> None:
        items = tuple(labels.items())
        key = self._keys.get(items)
        if key is None:
            key = self._keys[items] = tuple(sorted(items))
        self.values[key] += amount

    @staticmethod
    def key(**labels) -> tuple:
        """The series of `labels` in `values`: their items sorted."""
        return tuple(sorted(labels.items()))

    def get(self, **labels) -> float:
        return self.values.get(self.key(**labels), 0.0)

    def render(self) -> list[str]:
        return sampled(self.name, "counter", self.help, [(dict(k), v) for k, v in sorted(self.values.items())])


class Histogram:
    def __init__(self, name: str, help_text: str, buckets=LATENCY_BUCKETS_S):
        self.name, self.help, self.buckets = name, help_text, tuple(buckets)
        self.series: dict[tuple, list] = {}     # sorted labels -> [bucket counts..., sum, count]
        self._by_items: dict[tuple, list] = {}  # labels as passed -> their series (no sort per observe)

    def observe(self, value: float, **labels) -> None:
        items = tuple(labels.items())
        series = self._by_items.get(items)
        if series is None:
            series = self._series(items)
        index = _bisect_left(self.buckets, value)
        if index < len(series) - 2:
            series[index] += 1
        series[-2] += value
        series[-1] += 1

    def _series(self, items: tuple) -> list:
        key = tuple(sorted(items))
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [0] * len(self.buckets) + [0.0, 0]
        self._by_items[items] = series
        return series

    def merged(self) -> list:
        """Every series added up: [bucket counts..., +Inf bucket count, sum, count] (the
        counts per bucket, not cumulative), for summaries across labels (the dashboard)."""
        merged = [0] * (len(self.buckets) + 1) + [0.0, 0]
        for series in self.series.values():
            for index, count in enumerate(series[:-2]):
                merged[index] += count
            merged[-2] += series[-2]
            merged[-1] += series[-1]
        merged[len(self.buckets)] = merged[-1] - sum(merged[:len(self.buckets)])
        return merged

    def render(self) -> list[str]:
        lines = _header(self.name, "histogram", self.help)
        for key, series in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip(self.buckets, series):
                cumulative += count
                lines.append(f"{self.name}_bucket{_labels(key + (('le', f'{bound:g}'),))} {cumulative}")
            lines.append(f"{self.name}_bucket{_labels(key + (('le', '+Inf'),))} {series[-1]}")
            lines.append(f"{self.name}_sum{_labels(key)} {series[-2]:.6f}")
            lines.append(f"{self.name}_count{_labels(key)} {series[-1]}")
        return lines


def bucket_quantile(q: float, bounds, counts) -> float | None:
    """The q-quantile (0..1) of observations counted in buckets, as Prometheus's
    histogram_quantile() estimates it: linear within the bucket that holds the rank, the
    highest finite bound when the rank falls in the +Inf bucket. `counts`: per bucket, not
    cumulative, len(bounds) + 1 (the last is +Inf). None when nothing was observed."""
    total = sum(counts)
    if total <= 0:
        return None
    rank, cumulative = q * total, 0
    for index, count in enumerate(counts[:len(bounds)]):
        if count and cumulative + count >= rank:
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - cumulative) / count
        cumulative += count
    return float(bounds[-1])


QUEUE_METRICS = (   # (key in the scheduler's per-backend stats, metric name, type, help)
    ("num_waiting", "velollm_queue_waiting", "gauge", "Requests waiting for a slot, by backend"),
    ("num_running", "velollm_queue_running", "gauge", "Requests holding a slot, by backend"),
    ("concurrency_limit", "velollm_backend_concurrency_limit", "gauge",
     "Requests a backend may run at once: its slots plus those sent ahead, or the adaptive limit"),
    ("block_usage", "velollm_kv_block_usage_ratio", "gauge", "Fraction of the backend's KV block budget held"),
    ("num_admitted", "velollm_queue_admitted_total", "counter", "Requests admitted to a slot"),
    ("num_rejected", "velollm_queue_rejected_total", "counter", "Requests refused with 429, queue full"),
    ("num_timed_out", "velollm_queue_timed_out_total", "counter", "Requests answered 503 after queue_timeout_s"),
    ("num_preempted", "velollm_queue_preempted_total", "counter", "Requests preempted for a priority-0 one"),
)


def scheduler_lines(stats: dict) -> list[str]:
    """Service.stats() as Prometheus text: queues per backend, failovers, routing, tokenize."""
    backends = sorted(stats["backends"].items())
    lines = []
    for key, name, kind, help_text in QUEUE_METRICS:
        lines += sampled(name, kind, help_text, [({"backend": b}, s[key]) for b, s in backends if key in s])
    routing, tokenize = stats["routing"], stats["tokenize"]
    lines += sampled("velollm_failovers_total", "counter", "Requests retried on another backend",
                     [({}, stats["num_failovers"])])
    lines += sampled("velollm_routing_total", "counter", "Requests routed; of them, to the backend or the "
                     "llama.cpp slot holding their prefix", [({"outcome": "routed"}, routing["num_routed"]),
                                                             ({"outcome": "backend_affinity"}, routing["num_affinity_hits"]),
                                                             ({"outcome": "slot_affinity"}, routing["num_slot_hits"])])
    lines += sampled("velollm_tokenize_total", "counter", "Prompt texts tokenized by the backend, or found cached",
                     [({"result": "tokenized"}, tokenize["num_tokenized"]), ({"result": "failed"}, tokenize["num_failed"]),
                      ({"result": "cached"}, tokenize["num_hits"])])
    return lines


class Metrics:
    """Every metric the daemon exports, created in one place so names stay consistent."""

    def __init__(self):
        self.requests = Counter("velollm_http_requests_total", "HTTP requests by route and status")
        self.latency = Histogram("velollm_http_request_duration_seconds", "Time to the response head")
        self.cache = Counter("velollm_cache_lookups_total", "Response cache lookups by result")
        self.tokens = Counter("velollm_tokens_total", "Tokens by kind (prompt, completion) and model")
        self._token_series: dict[str, tuple] = {}    # model -> its (prompt, completion) series of tokens
        self.tool_repairs = Counter("velollm_tool_call_repairs_total", "Tool-call fixes by kind")
        self.tool_loops = Counter("velollm_tool_call_loops_total", "Repeated identical tool calls flagged")
        self.backend_errors = Counter("velollm_backend_errors_total",
                                      "Failed backend requests by backend and kind (error code)")
        self.ttft = Histogram("velollm_time_to_first_token_seconds",
                              "Streamed answers: time from the request head to the first byte of the answer")
        self.upstream = Histogram("velollm_upstream_seconds",
                                  "Time a backend took to answer, by backend (streams: until their end)")
        self.queue_wait = Histogram("velollm_queue_wait_seconds", "Time waiting for a backend slot, by backend",
                                    buckets=QUEUE_BUCKETS_S)
        self.redis_errors = Counter("velollm_cache_redis_errors_total", "Shared-tier (Redis) calls that failed "
                                    "or timed out, by operation: the instance went on with its local tiers")
        self.redis = Counter("velollm_cache_redis_total", "Shared-tier (Redis) results by operation and result")
        self.overhead = Histogram("velollm_overhead_seconds", "Time velollmd itself added to a request "
                                  "answered by a backend or the cache: total minus upstream minus queue wait",
                                  buckets=OVERHEAD_BUCKETS_S)

    def all(self):
        return [self.requests, self.latency, self.cache, self.tokens, self.tool_repairs,
                self.tool_loops, self.backend_errors, self.ttft, self.upstream, self.queue_wait, self.overhead,
                self.redis_errors, self.redis]

    def record_request(self, trace) -> None:
        """A finished generation request's time to first token and overhead (a log.RequestTrace).
        Counted: answers from a backend this request called itself, and cache hits (not a
        request that only shared another one's call: its wait is no overhead)."""
        if trace.upstream_s is None and not (trace.cache or "").startswith("hit"):
            return
        if trace.stream and trace.first_byte_s is not None:
            self.ttft.observe(trace.first_byte_s)
        if trace.status is not None and trace.status < 400:
            self.overhead.observe(trace.overhead_s)

    def record_usage(self, model: str, usage: dict | None) -> None:
        """An answer's tokens by kind, as two tokens.inc() would count them: the model's two
        series found with one lookup (every answer with usage comes here)."""
        if usage:
            series = self._token_series.get(model) or self._new_token_series(model)
            values = self.tokens.values
            values[series[0]] += usage.get("prompt_tokens") or 0
            values[series[1]] += usage.get("completion_tokens") or 0

    def _new_token_series(self, model: str) -> tuple:
        """The two series of a model seen for the first time; past MAX_MODEL_SERIES models, those
        of OTHER_MODELS: a backend serving "*" answers any name a client sends, and each name
        would otherwise be a series of its own for as long as the process lives."""
        if len(self._token_series) >= MAX_MODEL_SERIES:
            model = OTHER_MODELS
            if model in self._token_series:
                return self._token_series[model]
        series = self._token_series[model] = (self.tokens.key(kind="prompt", model=model),
                                              self.tokens.key(kind="completion", model=model))
        return series

    def render(self, extra: list[str] | None = None) -> str:
        lines = [line for metric in self.all() for line in metric.render()]
        return "\n".join(lines + loop_lag_lines() + (extra or [])) + "\n"


def loop_lag_lines() -> list[str]:
    """The running loop's recent lag (velollmd/looplag.py), when a monitor runs on it."""
    current = monitor()
    if current is None:
        return []
    return sampled("velollm_event_loop_lag_seconds", "gauge", "How late the daemon's event loop ran a timer "
                   "due, the largest of the last second: its CPU saturated or taken", [({}, current.recent())])
