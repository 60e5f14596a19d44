"""The application: the route table plus the services the routes share.

The daemon builds one App from the Config and hands `App.handle` to the HTTP server. Each
group of routes gets only the services it uses.
"""
from __future__ import annotations

import time

from .api.access import Access
from .api.admin import AdminRoutes
from .api.ollama import OllamaRoutes
from .api.openai import OpenAIRoutes
from .api.routes import Router
from .backends.registry import Registry
from .config import Config
from .core.pipeline import Pipeline
from .core.service import Service
from .errors import VeloError
from .http.message import Request, Response
from .log import AccessLog, RequestTrace, current_request
from .metrics import Metrics


class App:
    def __init__(self, config: Config, registry: Registry | None = None):
        self.config = config
        self.registry = registry or Registry(config.backends, scheduler=config.scheduler)
        self.metrics = Metrics()
        self.service = Service(self.registry, config.scheduler, metrics=self.metrics)
        self.pipeline = Pipeline(config, self.service, metrics=self.metrics)
        self.access = Access(config.server, config.scheduler)
        self.access_log = AccessLog(config.log.access)
        self.router = Router()
        services = (self.access, self.registry, self.pipeline, self.service)
        AdminRoutes(*services, self.metrics, config.metrics).register(self.router)
        OpenAIRoutes(*services, sse_ping_s=config.server.sse_ping_s).register(self.router)
        OllamaRoutes(*services).register(self.router)

    @property
    def draining(self) -> bool:
        return self.access.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.access.draining = value

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
        trace = current_request()
        try:
            self.access.check(request)
            response = await self.router.dispatch(request)
        except VeloError as exc:
            response = Response.error(exc)
        route = request.path if self.router.is_route(request.path) else "other"
        self.metrics.requests.inc(route=route, status=str(response.status))
        self.metrics.latency.observe(time.perf_counter() - started, route=route)
        if trace is not None and (self.access_log.enabled or self.config.metrics.enabled):
            self._follow(trace, request, response)
        return response

    def _follow(self, trace: RequestTrace, request: Request, response: Response) -> None:
        """What the answer says about the request, read once; the rest when it is sent."""
        trace.cache = response.header("x-velollm-cache")
        trace.backend = trace.backend or response.header("x-velollm-backend")
        trace.stream = response.stream is not None
        if self.access_log.enabled:
            trace.key = self.access_log.key_label(self.access.key_of(request))
        trace.on_done = self._finished

    def _finished(self, trace: RequestTrace) -> None:
        """The answer is sent: its metrics and its access-log line."""
        if self.config.metrics.enabled:
            self.metrics.record_request(trace)
        if self.access_log.enabled:
            self.access_log.write(trace)
