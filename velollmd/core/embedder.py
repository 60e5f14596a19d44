"""`[cache] embedder = "backend"`: query vectors from a configured backend's embeddings API.

The semantic index is preallocated with `[cache] embed_dim` columns, so that must be the
embedding model's dimension; a backend answering with another size is an error (the lookup
then falls back to the exact tier, see Pipeline._lookup).
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError


class BackendEmbedder:
    def __init__(self, registry, backend_name: str, model: str, dim: int):
        self.registry, self.backend_name, self.model, self.dim = registry, backend_name, model, dim
        self.identity = f"backend:{backend_name}/{model}/{dim}"

    async def embed(self, texts: list[str]) -> np.ndarray:
        backend = next(b for b in self.registry.backends if b.name == self.backend_name)
        answer = await backend.embeddings({"model": self.model, "input": list(texts)})
        rows = np.asarray([item["embedding"] for item in answer.get("data", [])], np.float32)  # (n, dim)
        if rows.shape != (len(texts), self.dim):
            raise BackendError(f"embedding model {self.model!r} on {self.backend_name} returned shape "
                               f"{rows.shape}, expected ({len(texts)}, {self.dim}): set [cache] embed_dim")
        norms = np.linalg.norm(rows, axis=1, keepdims=True)                              # (n, 1)
        return rows / np.maximum(norms, 1e-12)
