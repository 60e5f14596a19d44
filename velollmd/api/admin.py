"""Operator endpoints: /health, /metrics, cache stats and flush, queue stats, usage per key,
the process's own resources (tasks, open files, memory: what the soak watches for leaks).
(`/` and the dashboard's feed are in dashboard.py.)"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, TypeVar

import psutil

from .. import __version__
from ..backends.registry import Registry
from ..config import MetricsConfig
from ..core.pipeline import Pipeline
from ..core.service import Service
from ..errors import VeloError
from ..http.message import Request, Response
from ..looplag import recent_lag
from ..metrics import Metrics, sampled, scheduler_lines
from .access import Access

log = logging.getLogger(__name__)
T = TypeVar("T")
HEALTH_FRESHEN_S = 0.5      # /health waits this long at most for the engine's file check
PART_LOG_EVERY_S = 60.0     # a part of an operator answer that keeps failing: one log line per this
_part_logged_at: dict[str, float] = {}


class AdminRoutes:
    def __init__(self, access: Access, registry: Registry, pipeline: Pipeline, service: Service,
                 metrics: Metrics, metrics_config: MetricsConfig):
        self.access, self.registry, self.pipeline, self.service = access, registry, pipeline, service
        self.metrics, self.metrics_config = metrics, metrics_config

    def register(self, router) -> None:
        router.add("GET", "/health", self.health)
        router.add("GET", "/v1/velollm/cache", self.cache_stats)
        router.add("DELETE", "/v1/velollm/cache", self.cache_flush)
        router.add("GET", "/metrics", self.prometheus)
        router.add("GET", "/v1/velollm/queue", self.queue)
        router.add("GET", "/v1/velollm/usage", self.usage)
        router.add("GET", "/v1/velollm/runtime", self.runtime)

    async def health(self, request: Request) -> Response:
        """Each backend's state; the engine's catalogue first brought up to date as a listing
        does (a stat check), so that a GGUF added, removed or corrupted shows here at once. A
        liveness probe's answer waits at most HEALTH_FRESHEN_S for that (a hung mount: the last
        scan's state), not a listing's whole deadline."""
        draining, errors = self.access.draining, {}
        body = {"status": "draining" if draining else "ok", "version": __version__,
                "uptime_s": round(time.time() - self.access.started_at, 3),
                "backends": await fresh_backend_rows(self.registry, self.service, errors=errors)}
        if self.pipeline.shared is not None:            # Redis down is degraded sharing, still "ok"
            body["redis"] = gathered("redis", self.pipeline.shared.health, errors)
        if errors:                                      # what it knows, still 200: the daemon serves
            body["errors"] = errors
        return Response.json(body, status=503 if draining else 200)

    async def cache_stats(self, request: Request) -> Response:
        cache = self._cache()
        return Response.json({"object": "cache.stats", **cache.stats(),
                              "inflight": len(self.pipeline.flights),
                              "coalesced": self.pipeline.flights.num_coalesced})

    async def cache_flush(self, request: Request) -> Response:
        """Flushing needs a valid API key; with no keys configured, a loopback client."""
        self.access.check_local_or_keyed(request, "flushing the cache")
        body = {"object": "cache.flush", "deleted": self._cache().flush()}
        self.pipeline.snapshots.cleared()                # no snapshot from before comes back on a reload
        await self.pipeline.snapshots.write_soon()       # on disk too: a crash brings nothing back
        if self.pipeline.shared is not None:             # the Redis tier too: one flush for all instances
            body["shared_deleted"] = await self.pipeline.shared.flush()
        return Response.json(body)

    async def runtime(self, request: Request) -> Response:
        """The daemon process's asyncio tasks, open file descriptors, threads and RSS: the
        numbers a leak shows in (less the pooled backend connections, which are open by design). Needs a valid API key; with no keys configured, a loopback client."""
        self.access.check_local_or_keyed(request, "the runtime route")
        process = psutil.Process()
        return Response.json({"object": "runtime", "tasks": len(asyncio.all_tasks()),
                              "open_fds": process.num_fds(), "threads": process.num_threads(),
                              "rss_bytes": process.memory_info().rss, "loop_lag_s": round(recent_lag(), 6),
                              "backend_idle_connections": sum(getattr(b.client, "num_idle", 0)
                                                              for b in self.registry.backends)})

    async def queue(self, request: Request) -> Response:
        """Scheduler state: waiting and running requests per backend, 429s, failovers. A 503
        naming the reason when it cannot be gathered (see `gathered`), not a 500."""
        errors: dict[str, str] = {}
        stats = gathered("queues", self.service.stats, errors)
        if stats is None:
            raise VeloError(f"the queue stats cannot be gathered: {errors['queues']}", status=503,
                            code="stats_unavailable")
        return Response.json({"object": "queue.stats", **stats})

    async def usage(self, request: Request) -> Response:
        """Each configured key's usage since the daemon started (names, never keys): requests,
        prompt and completion tokens, cache hits, refusals by limit, its limits and windows."""
        return Response.json({"object": "usage", "keys": self.access.ledger.usage()})

    async def prometheus(self, request: Request) -> Response:
        if not self.metrics_config.enabled:
            raise VeloError("metrics are disabled ([metrics] enabled = false)", status=404,
                            error_type="invalid_request_error", code="metrics_disabled")
        gauges = sampled("velollm_backend_healthy", "gauge", "1 when the backend's last health check passed",
                         [({"backend": b.name}, int(bool(b.healthy))) for b in self.registry.backends])
        gauges += sampled("velollm_backend_slots", "gauge", "Requests a backend runs at once, as configured or as "
                          "it says (source: config, /props, /info, ...); none when unknown (adaptive limit)",
                          [({"backend": b.name, "source": b.slots_source}, b.num_slots)
                           for b in self.registry.backends if b.slots_source])
        gauges += sampled("velollm_inflight_flights", "gauge", "Upstream calls shared by identical requests",
                          [({}, len(self.pipeline.flights))])
        if self.pipeline.cache is not None:
            stats = self.pipeline.cache.stats()
            gauges += sampled("velollm_cache_entries", "gauge", "Responses cached", [({}, stats["entries"])])
            gauges += sampled("velollm_cache_bytes", "gauge", "Bytes of cached responses", [({}, stats["bytes"])])
        errors: dict[str, str] = {}
        stats = gathered("queues", self.service.stats, errors)
        gauges += scheduler_lines(stats) if stats is not None else []
        gauges += key_usage_lines(self.access.ledger.usage())
        body = (self.metrics.render(gauges) + "".join(f"# velollm: {part} left out: {reason}\n"
                                                      for part, reason in errors.items())).encode()
        return Response(200, [("content-type", "text/plain; version=0.0.4; charset=utf-8")], body)

    def _cache(self):
        cache = self.pipeline.cache
        if cache is None:
            raise VeloError("the response cache is disabled ([cache] enabled = false)", status=404,
                            error_type="invalid_request_error", code="cache_disabled")
        return cache


def gathered(part: str, gather: Callable[[], T], errors: dict[str, str]) -> T | None:
    """gather(), or None with `errors[part]` saying why when it raised: an operator answer
    (/health, the dashboard's feed, /metrics) shows what it knows, never a 500, when one part
    of it breaks (a backend's garbage /props, a bug)."""
    try:
        return gather()
    except Exception as exc:
        part_failed(part, exc, errors)
        return None


def part_failed(part: str, exc: Exception, errors: dict[str, str]) -> None:
    """`errors[part]` says why; one log line (with the traceback) per part per PART_LOG_EVERY_S:
    a monitor polling each second would flood the log."""
    errors[part] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"      # one line: /metrics shows it too
    now = time.monotonic()
    if now - _part_logged_at.get(part, -PART_LOG_EVERY_S) >= PART_LOG_EVERY_S:
        _part_logged_at[part] = now
        log.error(f"operator route: {part} could not be gathered (shown as an error; logged at most "
                  f"once per {PART_LOG_EVERY_S:g} s)", exc_info=exc, extra={"fields": {"part": part}})


async def fresh_backend_rows(registry: Registry, service: Service, queue_fields: tuple[str, ...] = (), *,
                             errors: dict[str, str] | None = None) -> list[dict]:
    """backend_rows with the engine's catalogue first brought up to date, waiting at most
    HEALTH_FRESHEN_S for that (a hung mount: the last scan's state), and the queues as of
    then: what /health and the dashboard's feed show, alike. A part that raises (the
    catalogue's check, the queues, a backend's status) is left out, its reason in `errors`."""
    errors = {} if errors is None else errors
    try:
        await registry.freshen(HEALTH_FRESHEN_S)
    except Exception as exc:
        part_failed("catalogue", exc, errors)
    stats = gathered("queues", service.stats, errors) or {"backends": {}}
    return gathered("backends", lambda: backend_rows(registry, stats, queue_fields), errors) or []


def backend_rows(registry: Registry, stats: dict, queue_fields: tuple[str, ...] = ()) -> list[dict]:
    """Each backend's health, its width and where it was learnt, the limit in force, and the
    `queue_fields` of its queue (`stats`: Service.stats())."""
    queues = stats["backends"]
    statuses = registry.status()
    for status in statuses:
        queue = queues.get(status["name"], {})
        status["concurrency_limit"] = queue.get("concurrency_limit")
        status["adaptive"] = queue.get("adaptive", status["slots_source"] is None)
        status.update({key: queue.get(key) for key in queue_fields})
    return statuses


def key_usage_lines(usage: list[dict]) -> list[str]:
    """The keys' usage (KeyLedger.usage()) as Prometheus counters, labelled by key name."""
    lines = sampled("velollm_key_requests_total", "counter", "Requests let in, by API key name",
                    [({"key": u["name"]}, u["requests"]) for u in usage])
    lines += sampled("velollm_key_tokens_total", "counter", "Tokens used by answers, by key name and kind",
                     [({"key": u["name"], "kind": kind}, u[f"{kind}_tokens"])
                      for u in usage for kind in ("prompt", "completion")])
    lines += sampled("velollm_key_cache_hits_total", "counter", "Requests answered from the cache, by key",
                     [({"key": u["name"]}, u["cache_hits"]) for u in usage])
    lines += sampled("velollm_key_rate_limited_total", "counter", "Requests refused (429) by a key's limit",
                     [({"key": u["name"], "limit": limit}, num) for u in usage
                      for limit, num in u["rate_limited"].items()])
    return lines
