"""All configured backends: which one serves a model, background health, merged catalogue."""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Callable

from ..config import BackendConfig, SchedulerConfig
from ..errors import BadRequest, NotFound, Unavailable
from .base import Backend, ModelInfo
from .engine import EngineBackend
from .llamacpp import LlamaCppBackend
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
    def __init__(self, configs, backends: list[Backend] | None = None, scheduler: SchedulerConfig | None = None):
        self.backends: list[Backend] = backends if backends is not None \
            else [make_backend(c, scheduler) for c in configs]
        self._tasks: list[asyncio.Task] = []
        # Called as listener(backend, was_healthy) after every health check (the Service
        # feeds its circuit breakers and drops cache affinity with it).
        self.listeners: list[Callable[[Backend, bool | None], None]] = []
        self._by_glob: dict[str, list[Backend]] = {}    # model -> backends whose globs match it

    async def start(self) -> None:
        """One refresh of every backend now (bounded), then a health loop per backend."""
        if self.backends:
            await asyncio.wait([asyncio.ensure_future(b.refresh()) for b in self.backends], timeout=5)
        self._tasks = [asyncio.ensure_future(self._health_loop(b)) for b in self.backends]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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

    def candidates(self, model: str) -> list[Backend]:
        """Backends that may serve `model`, best first: healthy ones that list it, then by glob."""
        if len(model) > MAX_MODEL_NAME or CONTROL_CHARS.search(model):
            raise BadRequest(f"a model name has at most {MAX_MODEL_NAME} characters and no control "
                             "characters", param="model", code="invalid_model")
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
        """Models of all healthy backends, first backend wins on a name clash."""
        seen, models = set(), []
        for backend in self.backends:
            if backend.healthy is False:
                continue
            for model in backend.models:
                if model.id not in seen:
                    seen.add(model.id)
                    models.append(model)
        return models

    def find_model(self, model: str) -> ModelInfo:
        for info in self.catalogue():
            if info.id == model or info.id == f"{model}:latest":
                return info
        raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")

    def status(self) -> list[dict]:
        return [b.status() for b in self.backends]
