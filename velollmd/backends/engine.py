"""The in-process engine backend: a placeholder that answers 501 until the engine lands."""
from __future__ import annotations

from .base import Backend, ModelInfo


class EngineBackend(Backend):
    kind = "engine"

    async def list_models(self) -> list[ModelInfo]:
        return []
