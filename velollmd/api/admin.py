"""Operator endpoints: /health, /metrics, cache stats and flush, queue stats, usage per key,
the process's own resources (tasks, open files, memory: what the soak watches for leaks).
(`/` and the dashboard's feed are in dashboard.py.)"""
from __future__ import annotations

import asyncio
import time

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

HEALTH_FRESHEN_S = 0.5      # /health waits this long at most for the engine's file check


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
        draining = self.access.draining
        body = {"status": "draining" if draining else "ok", "version": __version__,
                "uptime_s": round(time.time() - self.access.started_at, 3),
                "backends": await fresh_backend_rows(self.registry, self.service)}
        if self.pipeline.shared is not None:            # Redis down is degraded sharing, still "ok"
            body["redis"] = self.pipeline.shared.health()
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
        """Scheduler state: waiting and running requests per backend, 429s, failovers."""
        return Response.json({"object": "queue.stats", **self.service.stats()})

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
        gauges += scheduler_lines(self.service.stats())
        gauges += key_usage_lines(self.access.ledger.usage())
        body = self.metrics.render(gauges).encode()
        return Response(200, [("content-type", "text/plain; version=0.0.4; charset=utf-8")], body)

    def _cache(self):
        cache = self.pipeline.cache
        if cache is None:
            raise VeloError("the response cache is disabled ([cache] enabled = false)", status=404,
                            error_type="invalid_request_error", code="cache_disabled")
        return cache


async def fresh_backend_rows(registry: Registry, service: Service, queue_fields: tuple[str, ...] = ()) -> list[dict]:
    """backend_rows with the engine's catalogue first brought up to date, waiting at most
    HEALTH_FRESHEN_S for that (a hung mount: the last scan's state), and the queues as of
    then: what /health and the dashboard's feed show, alike."""
    await registry.freshen(HEALTH_FRESHEN_S)
    return backend_rows(registry, service.stats(), queue_fields)


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
