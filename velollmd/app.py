"""The application: the route table plus the state every route shares.

The daemon builds one App from the Config and hands `App.handle` to the HTTP server.
"""
from __future__ import annotations

import hmac
import time

from .api.admin import AdminRoutes
from .api.ollama import OllamaRoutes
from .api.openai import OpenAIRoutes
from .api.routes import Router
from .backends.registry import Registry
from .config import Config
from .core.pipeline import Pipeline
from .core.service import Service
from .errors import BadRequest, Unauthorized, Unavailable, VeloError
from .http.message import Request, Response
from .metrics import Metrics

PUBLIC_PATHS = frozenset({"/health", "/", "/metrics"})
PRIORITY_HEADER = "x-velollm-priority"


class App:
    def __init__(self, config: Config, registry: Registry | None = None):
        self.config = config
        self.registry = registry or Registry(config.backends)
        self.metrics = Metrics()
        self.service = Service(self.registry, config.scheduler)
        self.pipeline = Pipeline(config, self.service, metrics=self.metrics)
        self.router = Router()
        self.draining = False
        self.started_at = time.time()
        self._api_keys = tuple(k.encode() for k in config.server.api_keys)
        AdminRoutes(self).register(self.router)
        OpenAIRoutes(self).register(self.router)
        OllamaRoutes(self).register(self.router)

    async def start(self) -> None:
        """Start background work (health checks, snapshots); called once the loop runs."""
        await self.registry.start()
        await self.pipeline.start()

    async def close(self) -> None:
        """Stop background work and release backend connections."""
        await self.pipeline.close()
        await self.registry.close()

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            if self._api_keys and request.path not in PUBLIC_PATHS:
                self.check_api_key(request)
            response = await self.router.dispatch(request)
        except VeloError as exc:
            response = Response.error(exc)
        route = request.path if self.router.is_route(request.path) else "other"
        self.metrics.requests.inc(route=route, status=str(response.status))
        self.metrics.latency.observe(time.perf_counter() - started, route=route)
        return response

    def check_api_key(self, request: Request) -> str:
        """The caller's API key (Bearer token or x-api-key); 401 when it is not configured."""
        key = self.api_key_of(request)
        supplied = key.encode()
        if not any(hmac.compare_digest(supplied, k) for k in self._api_keys):
            raise Unauthorized("invalid or missing API key", code="invalid_api_key")
        return key

    def api_key_of(self, request: Request) -> str:
        auth = request.header("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else request.header("x-api-key", "")

    def priority_of(self, request: Request) -> int:
        """x-velollm-priority (0 highest .. 9), else the API key's configured priority."""
        raw = request.header(PRIORITY_HEADER)
        if raw is not None:
            if not (len(raw) == 1 and raw in "0123456789"):
                raise BadRequest(f"{PRIORITY_HEADER} must be a digit 0..9", param=PRIORITY_HEADER)
            return int(raw)
        scheduler = self.config.scheduler
        return scheduler.key_priorities.get(self.api_key_of(request), scheduler.default_priority)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise Unavailable("server is shutting down", headers={"retry-after": "1"})
