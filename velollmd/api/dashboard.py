"""The dashboard: `GET /` answers a browser with one self-contained page (dashboard.html: inline
CSS and JS, no external URL), and API clients with the daemon's name and version as before.

The page polls `GET /v1/velollm/dashboard`, a snapshot computed from state the daemon keeps
anyway: counters, the histograms' buckets, the access log's ring, the keys' ledger. The page
keeps the time series itself (rates and windowed p50/p99 from the difference of two
snapshots), so the daemon stores nothing for it and any number of viewers cost one snapshot
per poll each.
"""
from __future__ import annotations

import base64
import hashlib
import re
import time
from functools import lru_cache
from importlib import resources

from .. import __version__
from ..backends.registry import Registry
from ..core.pipeline import Pipeline
from ..core.service import Service
from ..http.message import Request, Response
from ..log import AccessLog
from ..metrics import Counter, Histogram, Metrics, bucket_quantile
from .access import Access, accepts_html
from .admin import fresh_backend_rows

FEED_PATH = "/v1/velollm/dashboard"
# Polled by the dashboard itself and by monitors: left out of its request counts and list.
MONITORING_PATHS = frozenset({"/", FEED_PATH, "/health", "/metrics"})
NUM_RECENT = 50
QUEUE_FIELDS = ("num_running", "num_waiting", "num_rejected", "num_timed_out", "breaker")
QUANTILES = (("p50", 0.5), ("p99", 0.99))


class DashboardRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline, service: Service,
                 metrics: Metrics, access_log: AccessLog):
        self.access, self.registry, self.pipeline, self.service = access, registry, pipeline, service
        self.metrics, self.access_log = metrics, access_log

    def register(self, router) -> None:
        router.add("GET", "/", self.root)
        router.add("GET", FEED_PATH, self.feed)

    async def root(self, request: Request) -> Response:
        """The page for a browser (Accept: text/html), the name and version for anyone else."""
        if accepts_html(request):
            return page_response()
        return Response.json({"name": "velollmd", "version": __version__}, headers=[("vary", "accept")])

    async def feed(self, request: Request) -> Response:
        return Response.json(await self.snapshot(), headers=[("cache-control", "no-store")])

    async def snapshot(self) -> dict:
        """What the page shows, as of now: the backends as /health shows them (the engine's
        catalogue brought up to date first, as there), each with its queue: running, waiting,
        rejected; its breaker."""
        errors: dict[str, str] = {}
        backends = await fresh_backend_rows(self.registry, self.service, QUEUE_FIELDS, errors=errors)
        metrics = self.metrics
        return {"errors": errors, "object": "dashboard", "version": __version__, "time": round(time.time(), 3),
                "status": "draining" if self.access.draining else "ok",
                "uptime_s": round(time.time() - self.access.started_at, 3),
                "keys_required": self.access.keys_required,
                "backends": backends,
                "totals": {**request_totals(metrics.requests), **cache_totals(metrics.cache),
                           **token_totals(metrics.tokens)},
                "latency": {"ttft": histogram_summary(metrics.ttft),
                            "overhead": histogram_summary(metrics.overhead),
                            "upstream": histogram_summary(metrics.upstream),
                            "queue_wait": histogram_summary(metrics.queue_wait)},
                "access_log": self.access_log.enabled,
                "recent": recent_requests(self.access_log, NUM_RECENT),
                "keys": self.access.ledger.usage()}


def request_totals(requests: Counter) -> dict:
    """HTTP requests answered since the start, and of them 4xx and 5xx (monitoring left out)."""
    totals = {"requests": 0, "errors_4xx": 0, "errors_5xx": 0}
    for labels, count in requests.values.items():
        route, status = dict(labels).get("route"), dict(labels).get("status", "")
        if route in MONITORING_PATHS:
            continue
        totals["requests"] += int(count)
        if status[:1] in ("4", "5"):
            totals[f"errors_{status[0]}xx"] += int(count)
    return totals


def cache_totals(lookups: Counter) -> dict:
    """Cache lookups that hit (exact or semantic) and that missed; bypasses count as neither."""
    totals = {"cache_hits": 0, "cache_misses": 0}
    for labels, count in lookups.values.items():
        result = dict(labels).get("result", "")
        if result.startswith("hit"):
            totals["cache_hits"] += int(count)
        elif result == "miss":
            totals["cache_misses"] += int(count)
    return totals


def token_totals(tokens: Counter) -> dict:
    totals = {"prompt_tokens": 0, "completion_tokens": 0}
    for labels, count in tokens.values.items():
        kind = dict(labels).get("kind")
        if kind in ("prompt", "completion"):
            totals[f"{kind}_tokens"] += int(count)
    return totals


def histogram_summary(histogram: Histogram) -> dict:
    """All series of `histogram` together: count, sum, p50/p99 since the start, and the bucket
    counts (per bucket, the last one +Inf) from which the page takes windowed quantiles."""
    merged = histogram.merged()
    counts = merged[:-2]                 # (len(bounds) + 1,) observations per bucket
    summary = {"count": merged[-1], "sum": round(merged[-2], 6), "bounds": list(histogram.buckets),
               "counts": counts}
    for name, q in QUANTILES:
        value = bucket_quantile(q, histogram.buckets, counts)
        summary[name] = None if value is None else round(value, 6)
    return summary


def recent_requests(access_log: AccessLog, limit: int) -> list[dict]:
    """The last `limit` requests of the access log's ring, newest first, monitoring left out;
    each with `age_s`, the seconds since its answer was sent."""
    now, rows = time.perf_counter(), []
    for trace in reversed(access_log.ring):
        if trace.path in MONITORING_PATHS:
            continue
        ended = trace.started + (trace.total_s or 0.0)
        rows.append({**trace.entry(), "age_s": round(max(0.0, now - ended), 3)})
        if len(rows) == limit:
            break
    return rows


# -- the page --------------------------------------------------------------------------------

def page_response() -> Response:
    body, policy = page()
    return Response(200, [("content-type", "text/html; charset=utf-8"), ("vary", "accept"),
                          ("cache-control", "no-cache"), ("content-security-policy", policy),
                          ("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer")], body)


@lru_cache(maxsize=1)
def page() -> tuple[bytes, str]:
    """dashboard.html and its Content-Security-Policy: its own inline script and style (by
    hash) and requests to this daemon, nothing else; so the browser itself refuses any
    external URL."""
    text = resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")
    return text.encode(), content_security_policy(text)


def content_security_policy(html: str) -> str:
    scripts = " ".join(_hash_source(s) for s in re.findall(r"<script>(.*?)</script>", html, re.S))
    styles = " ".join(_hash_source(s) for s in re.findall(r"<style>(.*?)</style>", html, re.S))
    return (f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; "
            "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _hash_source(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"
