"""Operator endpoints: /health, cache stats and flush."""
from __future__ import annotations

import time

from .. import __version__
from ..errors import Unauthorized, VeloError
from ..http.message import Request, Response

LOOPBACK = ("127.0.0.1", "::1")


class AdminRoutes:
    def __init__(self, app):
        self.app = app

    def register(self, router) -> None:
        router.add("GET", "/health", self.health)
        router.add("GET", "/", self.root)
        router.add("GET", "/v1/velollm/cache", self.cache_stats)
        router.add("DELETE", "/v1/velollm/cache", self.cache_flush)

    async def health(self, request: Request) -> Response:
        app = self.app
        body = {"status": "draining" if app.draining else "ok", "version": __version__,
                "uptime_s": round(time.time() - app.started_at, 3), "backends": app.registry.status()}
        return Response.json(body, status=503 if app.draining else 200)

    async def root(self, request: Request) -> Response:
        return Response.json({"name": "velollmd", "version": __version__})

    async def cache_stats(self, request: Request) -> Response:
        cache = self._cache()
        return Response.json({"object": "cache.stats", **cache.stats(),
                              "inflight": len(self.app.pipeline.flights),
                              "coalesced": self.app.pipeline.flights.num_coalesced})

    async def cache_flush(self, request: Request) -> Response:
        """Flushing needs a valid API key; with no keys configured, a loopback client."""
        if not self.app.config.server.api_keys and (request.client or ("",))[0] not in LOOPBACK:
            raise Unauthorized("flushing the cache needs an API key or a loopback client")
        return Response.json({"object": "cache.flush", "deleted": self._cache().flush()})

    def _cache(self):
        cache = self.app.pipeline.cache
        if cache is None:
            raise VeloError("the response cache is disabled ([cache] enabled = false)", status=404,
                            error_type="invalid_request_error", code="cache_disabled")
        return cache
