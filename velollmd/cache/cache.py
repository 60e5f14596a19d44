"""ResponseCache: the facade the daemon calls. lookup() before the backend, store() after.

    lookup = cache.lookup(request, headers, endpoint=..., model_identity=..., tenant=api_key,
                          defaults=backend_defaults)
    if lookup.status.startswith("hit"):  replay lookup.entry (replay.to_json / to_sse_chunks)
    else:  call the backend, then cache.store(lookup, request, recorded_response)

The exact store holds every response; the semantic index maps query vectors to exact keys,
so the byte bound, TTL and LRU of the exact tier apply to semantic hits too. With an async
(backend) embedder, use `await alookup(...)`: the sync lookup() then skips the semantic tier.
"""
from __future__ import annotations

import inspect
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import CacheConfig
from . import policy
from .embed import HashingEmbedder
from .exact import CachedResponse, ExactCache
from .keys import exact_key, partition_key, query_text
from .semantic import SemanticIndex
from .store import SNAPSHOT_NAME, SnapshotState, encode_snapshot, read_snapshot, write_snapshot

log = logging.getLogger(__name__)

STATUSES = ("hit-exact", "hit-semantic", "miss", "bypass")


@dataclass
class Lookup:
    status: str                       # one of STATUSES
    entry: CachedResponse | None = None
    similarity: float = 0.0           # 1.0 for exact hits
    key: str | None = None
    partition: str | None = None
    query: str | None = None          # last user turn text
    vector: np.ndarray | None = None  # (dim,) float32 query embedding, reused by store()
    storable: bool = False            # request side of the store policy
    model_identity: str = ""          # the backend model identity the key was made with


class ResponseCache:
    def __init__(self, config: CacheConfig, *, embedder=None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.embedder = embedder or HashingEmbedder(config.embed_dim)
        self.embed_is_async = inspect.iscoroutinefunction(self.embedder.embed)
        self.exact = ExactCache(config.max_entries, config.max_bytes, config.ttl_s, clock)
        capacity = config.semantic_max_entries if config.semantic else 0
        self.semantic = SemanticIndex(capacity, self.embedder.dim, dtype=config.semantic_dtype,
                                      threshold=config.semantic_threshold)
        self.counters = dict.fromkeys(
            ("hits", "semantic_hits", "misses", "bypasses", "stores"), 0)

    # -- lookup ------------------------------------------------------------------------
    def _begin(self, request: dict, headers, *, endpoint: str, model_identity: str,
               tenant, defaults) -> Lookup:
        """Keys, policy and the exact tier; status is final unless it is "miss"."""
        cfg = self.config
        if not cfg.enabled:
            return self._count(Lookup("bypass"))
        if not policy.reproducible(request, defaults=defaults, cache_sampled=cfg.cache_sampled):
            return Lookup("bypass")          # nothing to find or to store: no key needed
        ident = dict(endpoint=endpoint, model_identity=model_identity, tenant=tenant,
                     defaults=defaults)
        lookup = Lookup("miss", key=exact_key(request, **ident), query=query_text(request))
        lookup.storable = not policy.client_forbids_store(headers)
        if policy.client_bypass(headers):
            lookup.status = "bypass"
        elif cfg.exact and (entry := self.exact.get(lookup.key)) is not None:
            lookup.status, lookup.entry, lookup.similarity = "hit-exact", entry, 1.0
            return lookup
        lookup.partition = partition_key(request, **ident)     # only misses need it
        return lookup

    def _wants_semantic(self, lookup: Lookup) -> bool:
        return (lookup.status == "miss" and self.semantic.capacity > 0
                and bool(lookup.query and lookup.query.strip()))

    def _finish_semantic(self, lookup: Lookup, vector: np.ndarray) -> Lookup:
        lookup.vector = vector
        match = self.semantic.search(lookup.partition, vector, lookup.query)
        if match is not None:
            entry = self.exact.get(match.key)
            if entry is None:                      # evicted or expired in the exact tier
                self.semantic.remove(match.key)
            else:
                lookup.status, lookup.entry, lookup.similarity = (
                    "hit-semantic", entry, match.similarity)
        return self._count(lookup)

    def lookup(self, request: dict, headers: dict | None = None, *, endpoint: str,
               model_identity: str, tenant: str | None = None,
               defaults: dict | None = None) -> Lookup:
        """`tenant` is the client's API key (hashed into the key, never stored) or None."""
        lookup = self._begin(request, headers, endpoint=endpoint, model_identity=model_identity,
                             tenant=tenant, defaults=defaults)
        if self.embed_is_async or not self._wants_semantic(lookup):
            return self._count(lookup)
        return self._finish_semantic(lookup, self.embedder.embed([lookup.query])[0])

    async def alookup(self, request: dict, headers: dict | None = None, *, endpoint: str,
                      model_identity: str, tenant: str | None = None,
                      defaults: dict | None = None, shared=None) -> Lookup:
        """lookup() for an async embedder (sync embedders work here too). `shared`: an async
        callable, exact key -> (entry, expires_at) or None, asked after a local exact miss and
        before the semantic tier (the shared tier); what it finds is kept locally too."""
        lookup = self._begin(request, headers, endpoint=endpoint, model_identity=model_identity,
                             tenant=tenant, defaults=defaults)
        if shared is not None and lookup.status == "miss" and self.config.exact:
            found = await shared(lookup.key)
            if found is not None:
                self.exact.put(lookup.key, found[0], expires_at=found[1])
                lookup.status, lookup.entry, lookup.similarity = "hit-exact", found[0], 1.0
                return self._count(lookup)
        if not self._wants_semantic(lookup):
            return self._count(lookup)
        vectors = self.embedder.embed([lookup.query])
        if inspect.isawaitable(vectors):
            vectors = await vectors
        return self._finish_semantic(lookup, np.asarray(vectors, np.float32)[0])

    def _count(self, lookup: Lookup) -> Lookup:
        name = {"hit-exact": "hits", "hit-semantic": "semantic_hits",
                "miss": "misses", "bypass": "bypasses"}[lookup.status]
        self.counters[name] += 1
        return lookup

    # -- store -------------------------------------------------------------------------
    def store(self, lookup: Lookup, request: dict, response: CachedResponse | None, *,
              status: int = 200, aborted: bool = False) -> bool:
        """Store a response recorded for `lookup`'s request; returns whether it was stored.

        `request` is the request passed to lookup(); it supplies the query text when the
        lookup skipped the semantic tier (a no-cache refresh)."""
        if not (self.config.enabled and lookup.key and lookup.storable
                and policy.response_storable(response, status=status, aborted=aborted)):
            return False
        if not self.exact.put(lookup.key, response):
            return False
        self.counters["stores"] += 1
        self._index_query(lookup, request)
        return True

    def _index_query(self, lookup: Lookup, request: dict) -> None:
        query = lookup.query if lookup.query is not None else query_text(request)
        if self.semantic.capacity <= 0 or not query or not query.strip():
            return
        vector = lookup.vector
        if vector is None and not self.embed_is_async:
            vector = self.embedder.embed([query])[0]
        if vector is not None:
            self.semantic.add(lookup.partition, lookup.key, query, vector)

    # -- admin -------------------------------------------------------------------------
    def expires_at(self) -> float:
        """When an entry stored now expires (wall clock; inf without a TTL)."""
        return self.exact.clock() + self.config.ttl_s if self.config.ttl_s > 0 else float("inf")

    def stats(self) -> dict:
        ex, sem = self.exact, self.semantic
        return {"entries": len(ex), "bytes": ex.num_bytes, **self.counters,
                "evictions": ex.stats.num_evictions + sem.num_evictions,
                "expired": ex.stats.num_expired, "semantic_entries": len(sem),
                "semantic_guard_rejects": sem.num_guard_rejects}

    def flush(self) -> int:
        """Drop every entry; returns how many there were."""
        num = len(self.exact)
        self.exact.clear()
        self.semantic.clear()
        return num

    # -- persistence -------------------------------------------------------------------
    def snapshot_state(self) -> SnapshotState:
        rows, vectors = self.semantic.export_rows()
        return SnapshotState(self.exact.items(), rows, vectors, self.embedder_identity)

    def snapshot(self, directory: str | None = None) -> str | None:
        """Write the snapshot file; returns its path, None when persistence is off."""
        directory = directory if directory is not None else self.config.path
        if not directory:
            return None
        return write_snapshot(directory, encode_snapshot(self.snapshot_state()), SNAPSHOT_NAME)

    @property
    def embedder_identity(self) -> str:
        return getattr(self.embedder, "identity", type(self.embedder).__name__)

    def _vectors_usable(self, state: SnapshotState) -> bool:
        """Vectors from another embedder (or another dimension) would match wrongly: then only
        the exact entries are restored (they still hit; their paraphrases miss until stored anew)."""
        if state.semantic_vectors is None or not len(state.semantic_rows):
            return False
        if state.embedder != self.embedder_identity or state.semantic_vectors.shape[1:] != (self.semantic.dim,):
            log.warning("cache snapshot vectors come from embedder %r, now %r: semantic rows dropped",
                        state.embedder or "unknown", self.embedder_identity)
            return False
        return True

    def restore(self, directory: str | None = None) -> int:
        """Load the snapshot (if any and intact); returns the number of entries restored."""
        directory = directory if directory is not None else self.config.path
        state = read_snapshot(directory) if directory and os.path.isdir(directory) else None
        return 0 if state is None else self.adopt(state)

    def continue_counts(self, old: "ResponseCache") -> None:
        """Count on from `old`'s hits, misses, stores, evictions... (a reload's new cache), so
        that the stats, like the metrics, count since the start."""
        self.counters = old.counters
        self.exact.stats = old.exact.stats
        self.semantic.num_evictions = old.semantic.num_evictions
        self.semantic.num_guard_rejects = old.semantic.num_guard_rejects

    def adopt(self, state: SnapshotState) -> int:
        """Take the entries of a snapshot (read from disk, or another cache's on a reload) that
        have not expired, within this cache's limits; returns the number of exact entries."""
        now = self.exact.clock()
        for key, entry, expires_at in state.exact:
            if expires_at > now:
                self.exact.put(key, entry, expires_at=expires_at)
        if self._vectors_usable(state):
            keep = [i for i, (_, key, _) in enumerate(state.semantic_rows) if key in self.exact]
            self.semantic.import_rows([state.semantic_rows[i] for i in keep],
                                      state.semantic_vectors[keep])
        return len(self.exact)
