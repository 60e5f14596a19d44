"""The application: the route table plus the services the routes share.

The daemon builds one App from the Config and hands `App.handle` to the HTTP server. Each
group of routes gets only the services it uses.
"""
from __future__ import annotations

import asyncio
import logging
import time

from .api.access import Access
from .api.admin import AdminRoutes
from .api.anthropic import AnthropicRoutes, anthropic_error, wants_anthropic_errors
from .api.cors import Cors
from .api.dashboard import DashboardRoutes
from .api.key_snapshots import KeySnapshots
from .api.llamacpp import LlamaCppRoutes
from .api.ollama import OllamaRoutes, ollama_error
from .api.openai import OpenAIRoutes
from .api.response_store import ResponseStore, StoreSnapshots
from .api.responses import ResponsesRoutes
from .api.rerank import RerankRoutes
from .api.routes import Router
from .api.props import PropsRoutes
from .api.router_models import RouterModelsRoutes
from .api.tokenize import TokenizeRoutes
from .backends.base import Backend
from .backends.registry import Registry
from .config import Config
from .core.pipeline import Pipeline
from .core.service import Service
from .errors import VeloError
from .http.message import Request, Response
from .http.writer import refusal
from .log import AccessLog, RequestTrace, current_request
from .looplag import LoopLag
from .metrics import Metrics
from .sched.keylimits import KeyLedger

log = logging.getLogger("velollmd")


class App:
    def __init__(self, config: Config, registry: Registry | None = None):
        self.config = config
        self.registry = registry or Registry(config.backends, scheduler=config.scheduler, aliases=config.aliases)
        self.metrics = Metrics()
        self.ledger = KeyLedger()                            # usage and limits per key name
        self.service = Service(self.registry, config.scheduler, metrics=self.metrics)
        self.pipeline = Pipeline(config, self.service, metrics=self.metrics, ledger=self.ledger)
        self.access = Access(config.server, config.scheduler, config.keys, ledger=self.ledger)
        self.key_snapshots = KeySnapshots(self.ledger, config.key_limits.path, config.key_limits.snapshot_interval_s)
        self.cors = Cors(config.server.allowed_origins)
        self.access_log = AccessLog(config.log.access)
        self.responses = ResponseStore(config.responses.store_max_entries, config.responses.store_max_bytes)
        self.response_snapshots = StoreSnapshots(self.responses, config.responses.path,
                                                 config.responses.snapshot_interval_s)
        self.router = self._routes(config)
        self._retiring: dict[Backend, asyncio.Task] = {}    # backends a reload took out
        self.loop_lag = LoopLag(while_held=True)    # the event loop's lag (velollmd/looplag.py)

    def _routes(self, config: Config) -> Router:
        router = Router()
        services = (self.access, self.registry, self.pipeline, self.service)
        AdminRoutes(*services, self.metrics, config.metrics).register(router)
        DashboardRoutes(*services, self.metrics, self.access_log).register(router)
        openai = OpenAIRoutes(*services, sse_ping_s=config.server.sse_ping_s)
        openai.register(router)
        OllamaRoutes(*services).register(router)
        AnthropicRoutes(*services, openai, sse_ping_s=config.server.sse_ping_s).register(router)
        ResponsesRoutes(self.access, self.pipeline, self.response_snapshots,
                        sse_ping_s=config.server.sse_ping_s).register(router)
        TokenizeRoutes(self.access, self.registry, self.pipeline).register(router)
        PropsRoutes(self.access, self.registry, self.pipeline).register(router)
        RouterModelsRoutes(self.access, self.registry, openai.list_models).register(router)
        RerankRoutes(*services).register(router)
        LlamaCppRoutes(self.access, self.registry, self.pipeline, sse_ping_s=config.server.sse_ping_s).register(router)
        return router

    async def reload(self, config: Config) -> dict:
        """Serve a new (validated) configuration without dropping a connection: backends added,
        removed and changed (a request already on a removed one finishes there; new requests
        see the new set), aliases, cache, tools, scheduler, keys (with their limits: a key whose name
        stays keeps its usage and windows) and routes. Requests already inside
        a handler finish with the settings they started with. Returns what changed."""
        old_names = {b.name for b in self.registry.backends}
        retired = await self.registry.apply(config.backends, config.scheduler, config.aliases)
        self.service.configure(config.scheduler)
        self.pipeline.configure(config)
        self.access.configure(config.server, config.scheduler, config.keys)
        self.key_snapshots.configure(config.key_limits.path, config.key_limits.snapshot_interval_s)
        self.cors = Cors(config.server.allowed_origins)
        self.responses.resize(config.responses.store_max_entries, config.responses.store_max_bytes)
        self.response_snapshots.configure(config.responses.path, config.responses.snapshot_interval_s)
        self.access_log.enabled = config.log.access
        self.router = self._routes(config)
        self.config = config
        for backend in retired:
            self._retiring[backend] = asyncio.ensure_future(self._retire(backend))
        names = {b.name for b in self.registry.backends}
        return {"added": sorted(names - old_names), "removed": sorted(old_names - names),
                "changed": sorted(b.name for b in retired if b.name in names)}

    async def _retire(self, backend: Backend) -> None:
        await self.service.retire(backend)
        self._retiring.pop(backend, None)
        log.info("backend retired", extra={"fields": {"backend": backend.name}})

    @property
    def draining(self) -> bool:
        return self.access.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.access.draining = value

    async def start(self) -> None:
        """Start background work (health checks, snapshots); called once the loop runs."""
        loop = asyncio.get_running_loop()
        self.loop_lag.start(loop)
        self.access_log.start(loop)
        await self.registry.start()
        await self.pipeline.start()
        self.response_snapshots.start()
        self.key_snapshots.start()

    async def close(self) -> None:
        """Stop background work and release backend connections."""
        await self.pipeline.close()
        await self.response_snapshots.close()
        await self.key_snapshots.close()
        await self.registry.close()
        self.loop_lag.stop()
        self.access_log.stop()
        for backend, task in list(self._retiring.items()):
            task.cancel()
            await backend.close()

    def refused(self, head, status: int, message: str) -> Response:
        """The answer to a request the HTTP server refused (413, 431, 408, 503 at the connection
        cap...), in its API's error shape when its head was read; counted and logged as any."""
        request = Request(head.method, head.target, head.headers) if head is not None else Request("", "", [])
        response = error_response(request, refusal(status, message))
        origin = request.header("origin")
        if origin is not None and self.cors.allows(origin):      # a page may read why (as handle)
            self.cors.add_headers(response, origin)
        self._account(request, response)
        return response

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        trace = current_request()
        origin = request.header("origin")
        cross_origin = False                 # a browser page's request, from an allowed origin
        try:
            if origin is not None:
                self.cors.check(origin)
                cross_origin = True
            if cross_origin and self.cors.is_preflight(request):
                response = self.cors.preflight(request)
            else:
                self.access.check(request)
                response = await self.router.dispatch(request)
        except VeloError as exc:
            response = error_response(request, exc)
        except asyncio.CancelledError:        # the client left before the answer: a 499, counted and logged
            route = self._account(request, None, trace)
            self.metrics.latency.observe(time.perf_counter() - started, route=route)
            raise
        if cross_origin:
            self.cors.add_headers(response, origin)
        route = self._account(request, response, trace)
        self.metrics.latency.observe(time.perf_counter() - started, route=route)
        return response

    def _account(self, request: Request, response: Response | None, trace: RequestTrace | None = None) -> str:
        """Count the answer by route and status (`response` None: the client left before there
        was one, a 499), and follow its trace (the current request's) to the access log; the
        route's label."""
        route = request.path if self.router.is_route(request.path) else "other"
        self.metrics.requests.inc(route=route, status="499" if response is None else str(response.status))
        trace = trace or current_request()
        if trace is not None and (self.access_log.enabled or self.config.metrics.enabled):
            self._follow(trace, request, response)
        return route

    def _follow(self, trace: RequestTrace, request: Request, response: Response | None) -> None:
        """What the answer says about the request, read once; the rest when it is sent."""
        if response is not None:
            trace.cache = response.header("x-velollm-cache")
            trace.backend = trace.backend or response.header("x-velollm-backend")
            trace.stream = response.stream is not None
        if self.access_log.enabled:                # a [[keys]] name, else a short hash of the key
            key = self.access.key_of(request)
            trace.key = self.access.key_name_of(request, key) or self.access_log.key_label(key)
        trace.on_done = self._finished

    def _finished(self, trace: RequestTrace) -> None:
        """The answer is sent: its metrics and its access-log line."""
        if self.config.metrics.enabled:
            self.metrics.record_request(trace)
        if self.access_log.enabled:
            self.access_log.write(trace)


def error_response(request: Request, exc: VeloError) -> Response:
    """An error raised before a route's handler (no key, a refused origin, no such route) in
    the shape the request's API answers errors in: Anthropic's, Ollama's or OpenAI's."""
    if wants_anthropic_errors(request):
        return anthropic_error(exc)
    if request.path.startswith("/api/"):
        return ollama_error(exc)
    return Response.error(exc)
