"""All configured backends: which one serves a model, background health, merged catalogue."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import Callable, Iterable

from ..config import BackendConfig, SchedulerConfig
from ..errors import BadRequest, NotFound, Unavailable
from ..wire.request import GenerateRequest
from .aliases import ModelAliases
from .base import HEALTH_TIMEOUT_S, Backend, ModelInfo
from .engine import EngineBackend
from .llamacpp import LlamaCppBackend
from .model_names import same_model
from .ollama import OllamaBackend
from .openai import OpenAIBackend

log = logging.getLogger("velollmd.backends")
MAX_GLOB_MEMO = 4096        # model names whose glob matches are remembered
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")     # never in a model name (NUL, CR, LF: logs, paths)
MAX_MODEL_NAME = 1024       # characters; the glob memo keeps up to MAX_GLOB_MEMO names
KINDS = {"ollama": OllamaBackend, "llamacpp": LlamaCppBackend, "openai": OpenAIBackend,
         "engine": EngineBackend}


def make_backend(config: BackendConfig, scheduler: SchedulerConfig | None = None) -> Backend:
    if config.kind == "engine":             # the engine runs its own scheduler: its queue limits
        return EngineBackend(config, scheduler)
    return KINDS[config.kind](config)


class Registry:
    def __init__(self, configs, backends: list[Backend] | None = None, scheduler: SchedulerConfig | None = None,
                 aliases: Iterable[tuple[str, str]] = ()):
        self.aliases = ModelAliases(aliases)
        self.backends: list[Backend] = backends if backends is not None \
            else [make_backend(c, scheduler) for c in configs]
        self._tasks: dict[Backend, asyncio.Task] = {}   # each backend's health loop
        # Called as listener(backend, was_healthy) after every health check (the Service
        # feeds its circuit breakers and drops cache affinity with it).
        self.listeners: list[Callable[[Backend, bool | None], None]] = []
        self._by_glob: dict[str, list[Backend]] = {}    # model -> backends whose globs match it

    async def start(self) -> None:
        """One refresh of every backend now (bounded), then a health loop per backend."""
        await self._start(self.backends)

    async def _start(self, backends: list[Backend]) -> None:
        if backends:
            await asyncio.wait([asyncio.ensure_future(b.refresh()) for b in backends], timeout=5)
        for backend in backends:
            if backend.healthy is False:        # the loop logs changes only: say it once now
                log.warning("backend unhealthy", extra={"fields": {
                    "backend": backend.name, "healthy": False, "error": backend.last_error}})
            self._tasks[backend] = asyncio.ensure_future(self._health_loop(backend))

    async def apply(self, configs, scheduler: SchedulerConfig | None = None,
                    aliases: Iterable[tuple[str, str]] = ()) -> list[Backend]:
        """Serve a new set of backends (a reload). Unchanged ones are kept as they are (health,
        catalogue, loaded models); added and changed ones are made and checked once before they
        take requests. Returns the ones taken out (removed, or replaced by a changed config):
        no new request goes to them, and the caller closes them once their requests are done."""
        current = {b.name: b for b in self.backends}
        kept = {c.name: current[c.name] for c in configs
                if c.name in current and current[c.name].config == c}
        fresh = {c.name: make_backend(c, scheduler) for c in configs if c.name not in kept}
        for backend in kept.values() if scheduler is not None else ():
            backend.configure_scheduler(scheduler)
        await self._start(list(fresh.values()))
        self.backends = [kept.get(c.name) or fresh[c.name] for c in configs]
        self.aliases = ModelAliases(aliases)
        self._by_glob.clear()
        retired = [b for b in current.values() if b not in self.backends]
        for backend in retired:
            backend.retired = True
            task = self._tasks.pop(backend, None)
            if task is not None:
                task.cancel()
        return retired

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for backend in self.backends:
            await backend.close()

    async def _health_loop(self, backend: Backend) -> None:
        while True:
            await asyncio.sleep(backend.config.health_interval_s)
            was = backend.healthy
            await backend.refresh()
            for listener in self.listeners:
                listener(backend, was)
            if was != backend.healthy:
                log.warning("backend health changed", extra={"fields": {
                    "backend": backend.name, "healthy": backend.healthy, "error": backend.last_error}})

    async def freshen(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        """The backends' catalogues up to date where they can tell cheaply (see Backend.freshen):
        listings (/v1/models, /api/tags, /api/show, /api/ps) ask first, rather than show what
        the last health check saw. Bounded by `timeout_s`: on a disk that does not answer (a
        hung network mount) the caller shows the last scan's catalogue, and the scan goes on for
        the next. Only backends with something to check get a task: a listing of servers makes none."""
        checking = [b for b in self.backends if b.freshens]
        if checking:
            await asyncio.wait([asyncio.ensure_future(b.freshen()) for b in checking], timeout=timeout_s)

    def resolve(self, model: str) -> str:
        """The served model for a client's model name: its alias target, else the name."""
        return self.aliases.resolve(model, self.is_listed) if self.aliases else model

    def is_listed(self, model: str) -> bool:
        return any(b.has_model(model) for b in self.backends)

    def aliased(self, request: GenerateRequest) -> GenerateRequest:
        """`request` for the served model, remembering the client's name for the answers."""
        target = self.resolve(request.model)
        if target == request.model:
            return request
        return dataclasses.replace(request, body={**request.body, "model": target}, client_model=request.model)

    def candidates(self, model: str) -> list[Backend]:
        """Backends that may serve `model` (a client's name: aliases apply), best first:
        healthy ones that list it, then by glob."""
        if len(model) > MAX_MODEL_NAME or CONTROL_CHARS.search(model):
            raise BadRequest(f"a model name has at most {MAX_MODEL_NAME} characters and no control "
                             "characters", param="model", code="invalid_model")
        model = self.resolve(model)
        matching = self._matching(model)
        if not matching:
            raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")
        listed = [b for b in matching if b.has_model(model)]
        pool = listed or matching
        alive = [b for b in pool if b.healthy is not False]
        if not alive:
            errors = "; ".join(f"{b.name}: {b.last_error}" for b in pool)
            raise Unavailable(f"no healthy backend serves model '{model}' ({errors})",
                              code="no_healthy_backend", headers={"retry-after": "2"})
        return alive

    def _matching(self, model: str) -> list[Backend]:
        """Backends whose `models` globs match: configuration only, so remembered (every
        request asks two or three times, and fnmatch is not free)."""
        matching = self._by_glob.get(model)
        if matching is None:
            if len(self._by_glob) >= MAX_GLOB_MEMO:
                self._by_glob.clear()
            matching = self._by_glob[model] = [b for b in self.backends if b.matches(model)]
        return matching

    def pick(self, model: str) -> Backend:
        return self.candidates(model)[0]

    def catalogue(self) -> list[ModelInfo]:
        """Models of all healthy backends that their `models` globs route to them (a listed
        model the globs send elsewhere, or nowhere, would be a 404 or another backend's answer),
        first backend wins on a name clash; each exact alias listed after the model it names,
        so that clients' model pickers find it."""
        seen, models = set(), []
        for backend in self.backends:
            if backend.healthy is False:
                continue
            for model in backend.models:
                if model.id not in seen and backend.matches(model.id):
                    seen.add(model.id)
                    models.append(model)
        for model in list(models) if self.aliases else ():
            for alias in self.aliases.aliases_of(model.id):
                if alias not in seen:
                    seen.add(alias)
                    models.append(dataclasses.replace(model, id=alias))
        return models

    def backend_of(self, model: ModelInfo) -> Backend:
        """The backend that listed a catalogue entry."""
        return next(b for b in self.backends if b.name == model.backend)

    def find_model(self, model: str) -> ModelInfo:
        """`model`'s catalogue entry; 503 model_unavailable (with the reason) for one that a
        backend has but cannot serve, as a chat for it answers; else 404."""
        target = self.resolve(model)
        for info in self.catalogue():
            if same_model(target, info.id):
                return info if target == model else dataclasses.replace(info, id=model)
        for backend in self._matching(target):
            if backend.healthy is not False:
                backend.check_servable(target)
        raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")

    def status(self) -> list[dict]:
        return [b.status() for b in self.backends]
