"""The request pipeline around the Service: cache lookup, single-flight, tool-call repair,
cache store. Read top to bottom, it is the data flow of one request:

    lookup (exact, then semantic) -> hit: replay as JSON or SSE
    miss + cacheable -> join or start a Flight -> Service (schedule, route, backend)
                     -> tool-call repair -> record -> store in the cache
    otherwise        -> Service -> tool-call repair
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import AsyncIterator

from ..cache import policy
from ..cache.cache import Lookup, ResponseCache
from ..cache.replay import from_json_response, from_stream_chunks, to_json, to_sse_chunks
from ..cache.store import SNAPSHOT_NAME, encode_snapshot, write_snapshot
from ..config import Config
from ..errors import BackendError, VeloError
from ..log import current_request
from ..metrics import Metrics
from ..sched.keylimits import KeyLedger
from ..wire.chunks import strip_usage
from ..wire.ids import response_id
from ..wire.outcome import Delivery, Outcome, UsageSink
from ..wire.request import GenerateRequest
from ..wire.streams import closing
from .embedder import BackendEmbedder
from .flight import MAX_SHARED_CHUNKS, Flight, FlightTable
from .service import Service
from .toollayer import ToolCallLayer

log = logging.getLogger("velollmd.core.pipeline")
CACHE_HEADER = "x-velollm-cache"
MEMO_SIZE = 4096


class Pipeline:
    def __init__(self, config: Config, service: Service, metrics: Metrics | None = None,
                 ledger: KeyLedger | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        self.ledger = ledger or KeyLedger()             # per-key usage: tokens, cache hits
        self.tools = ToolCallLayer(config.tools, self.metrics)
        self.service = service
        self.registry = service.registry
        self.cache = ResponseCache(config.cache, embedder=self._embedder()) if config.cache.enabled else None
        self.flights = FlightTable()
        self.memo: OrderedDict[str, tuple] = OrderedDict()   # raw request key -> exact key
        self._snapshot_task: asyncio.Task | None = None
        self._snapshot_error = ""                       # the last failure, logged once until it changes

    def _embedder(self):
        cache = self.config.cache
        if cache.embedder != "backend":
            return None                               # the builtin hashed n-gram embedder
        return BackendEmbedder(self.registry, cache.embed_backend, cache.embed_model, cache.embed_dim)

    def configure(self, config: Config) -> None:
        """New settings (a reload): tool-call settings at once; a changed [cache] section makes
        a new cache that takes over the old one's entries (as far as its limits allow)."""
        old, self.config = self.config, config
        self.tools.config = config.tools
        if config.keys != old.keys:
            self.memo.clear()                         # a replay skips the check of a key's models
        if config.cache == old.cache:
            return
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
            self._snapshot_task = None
        state = self.cache.snapshot_state() if self.cache is not None else None
        self.cache = ResponseCache(config.cache, embedder=self._embedder()) if config.cache.enabled else None
        self.memo.clear()
        if self.cache is not None and state is not None:
            self.cache.adopt(state)
        if self.cache is not None and config.cache.path and config.cache.snapshot_interval_s > 0:
            self._snapshot_task = asyncio.ensure_future(self._snapshot_loop())

    # -- one request ---------------------------------------------------------------------

    def replay_memo(self, raw_key: str, request_headers: dict) -> Outcome | None:
        """An exact hit found from the raw request bytes alone (no JSON parse, no validation).

        `raw_key` hashes the path, the body bytes and the API key: the same bytes are the same
        request, so the exact key remembered for them still applies while the serving backend's
        model identity is unchanged. Anything else falls through to the full lookup."""
        memo = self.memo.get(raw_key) if self.cache is not None else None
        if memo is None or policy.client_bypass(request_headers) or "cache-control" in request_headers:
            return None
        key, identity, request = memo
        try:
            backend = self.registry.pick(request.model)
        except VeloError:
            return None
        entry = self.cache.exact.get(key)
        if entry is None or backend.identity(request.model) != identity:
            return None
        self.cache.counters["hits"] += 1
        self.metrics.cache.inc(result="hit-exact")
        self.memo.move_to_end(raw_key)
        return self._replay(request, Lookup("hit-exact", entry=entry, similarity=1.0, key=key))

    def _remember(self, request: GenerateRequest, lookup: Lookup) -> None:
        if request.raw_key and lookup.key:
            self.memo[request.raw_key] = (lookup.key, lookup.model_identity, request)
            if len(self.memo) > MEMO_SIZE:
                self.memo.popitem(last=False)

    async def generate(self, request: GenerateRequest, frames: bool = False) -> Outcome:
        """The answer to `request`. `frames`: the caller writes a stream as OpenAI SSE and takes
        chunks as JSON bytes, so a stream nothing else must read passes through (relay.py)."""
        request = self.registry.aliased(request)
        lookup = await self._lookup(request)
        if lookup.status.startswith("hit"):
            self.metrics.cache.inc(result=lookup.status)
            self.ledger.record_cache_hit(request.key_name)
            if lookup.status == "hit-exact":
                self._remember(request, lookup)
            return self._replay(request, lookup)
        if lookup.status == "miss" and lookup.storable:
            outcome = await self._coalesced(request, lookup)
        elif frames and request.stream and not self.tools.applies(request):
            outcome = await self.service.generate(request, Delivery(request.include_usage,
                                                                    self.usage_sink(request), frames=True))
        else:
            outcome = await self._upstream(request)
            if outcome.chunks is not None:
                outcome.chunks = strip_usage(outcome.chunks, request.include_usage)
        outcome.headers[CACHE_HEADER] = lookup.status
        self.metrics.cache.inc(result=lookup.status)
        return outcome

    async def _lookup(self, request: GenerateRequest) -> Lookup:
        if self.cache is None:
            return Lookup("bypass")
        backend = self.registry.pick(request.model)
        identity = backend.identity(request.model)
        args = dict(endpoint=request.endpoint, model_identity=identity, tenant=request.api_key or None,
                    defaults=backend.defaults)
        try:
            lookup = await self.cache.alookup(request.body, request.headers, **args)
        except VeloError as exc:                      # the embedding backend failed: exact tier only
            log.warning("semantic cache lookup failed", extra={"fields": {"error": exc.message}})
            lookup = self.cache.lookup(request.body, request.headers, **args)
        lookup.model_identity = identity
        return lookup

    def _replay(self, request: GenerateRequest, lookup: Lookup) -> Outcome:
        headers = {CACHE_HEADER: lookup.status}
        if lookup.status == "hit-semantic":
            headers["x-velollm-similarity"] = f"{lookup.similarity:.4f}"
        if not request.stream:
            return Outcome(headers, body=to_json(lookup.entry, _id_for(request), model=request.echo_model,
                                                 endpoint=request.endpoint))
        chunks = to_sse_chunks(lookup.entry, _id_for(request), model=request.echo_model,
                               include_usage=request.include_usage, endpoint=request.endpoint)
        return Outcome(headers, chunks=_iterate(chunks))

    async def _upstream(self, request: GenerateRequest) -> Outcome:
        """The Service call, a stream keeping its usage chunk (counted there) for what follows
        to read, then tool-call repair."""
        outcome = await self.service.generate(request, Delivery(True, self.usage_sink(request)))
        outcome = await self.tools.apply(request, outcome, self.service.generate)
        if outcome.body is not None:
            self.record_usage(request, request.model, outcome.body.get("usage"))
        return outcome

    def record_usage(self, request: GenerateRequest, model: str, usage: dict | None) -> None:
        """An answer's token usage: in the metrics, against the caller's key budgets, and in
        the request's trace (the access log)."""
        self.metrics.record_usage(model, usage)
        self.ledger.record_usage(request.key_name, usage)
        trace = current_request()
        if usage and trace is not None:
            trace.note_usage(usage)

    def usage_sink(self, request: GenerateRequest) -> UsageSink:
        """Where a stream's usage chunk is counted: as record_usage counts a whole answer's."""
        return lambda model, usage: self.record_usage(request, model, usage)

    # -- single-flight and recording ------------------------------------------------------

    async def _coalesced(self, request: GenerateRequest, lookup: Lookup) -> Outcome:
        flight, leader = self.flights.join_or_start(lookup.key, lambda: self._record(request, lookup))
        head = await flight.head()
        headers = dict(head.headers)
        if not leader:
            headers["x-velollm-coalesced"] = "1"
        if request.stream:
            return Outcome(headers, chunks=strip_usage(self._stream_from(flight, request), request.include_usage))
        if head.body is not None:
            flight.leave()
            return Outcome(headers, body={**head.body, "choices": [dict(c) for c in head.body["choices"]]})
        try:
            await flight.wait_done()
        finally:
            flight.leave()
        return Outcome(headers, body=to_json(_recorded(flight), _id_for(request), model=request.echo_model,
                                             endpoint=request.endpoint))

    async def _stream_from(self, flight: Flight, request: GenerateRequest) -> AsyncIterator[dict]:
        """A stream for one consumer: live chunks, or a replay of a whole answer."""
        if flight.outcome.chunks is not None:
            async with closing(flight.replay_chunks()) as source_iter:
                async for chunk in source_iter:
                    yield chunk
            return
        flight.leave()
        entry = from_json_response(flight.outcome.body)
        for chunk in to_sse_chunks(entry, _id_for(request), model=request.echo_model, include_usage=True,
                                   endpoint=request.endpoint):
            yield chunk

    async def _record(self, request: GenerateRequest, lookup: Lookup) -> Outcome:
        outcome = await self._upstream(request)
        if outcome.body is not None:
            self._store(lookup, request, from_json_response(outcome.body))
            return outcome
        outcome.chunks = self._recording(outcome.chunks, lookup, request)
        return outcome

    async def _recording(self, chunks, lookup: Lookup, request: GenerateRequest) -> AsyncIterator[dict]:
        seen: list | None = []                          # None: too long to cache, no longer kept
        async with closing(chunks) as source_iter:
            async for chunk in source_iter:
                if seen is not None:
                    seen.append(chunk)
                    if len(seen) > MAX_SHARED_CHUNKS:
                        seen = None
                yield chunk
        if seen is not None:
            self._store(lookup, request, from_stream_chunks(seen))

    def _store(self, lookup: Lookup, request: GenerateRequest, entry) -> None:
        if self.cache is not None and entry is not None and self.cache.store(lookup, request.body, entry):
            self._remember(request, lookup)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.cache is None or not self.config.cache.path:
            return
        try:
            restored = self.cache.restore()
            log.info("cache restored", extra={"fields": {"entries": restored, "path": self.config.cache.path}})
        except OSError as exc:
            log.warning("cache snapshot unreadable", extra={"fields": {"error": str(exc)}})
        if self.config.cache.snapshot_interval_s > 0:
            self._snapshot_task = asyncio.ensure_future(self._snapshot_loop())

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cache.snapshot_interval_s)
            await self.snapshot()

    async def snapshot(self) -> str | None:
        """Capture the state on the loop, encode and write it in a thread (fsync is slow)."""
        if self.cache is None or not self.config.cache.path:
            return None
        state = self.cache.snapshot_state()              # copies, taken on the loop
        path = self.config.cache.path
        try:
            written = await asyncio.get_running_loop().run_in_executor(
                None, lambda: write_snapshot(path, encode_snapshot(state), SNAPSHOT_NAME))
        except OSError as exc:
            self._snapshot_failed(str(exc))
            return None
        if self._snapshot_error:
            log.info("cache snapshot written again", extra={"fields": {"path": written}})
            self._snapshot_error = ""
        return written

    def _snapshot_failed(self, error: str) -> None:
        """One warning per distinct failure (a full disk or a read-only directory would
        otherwise log a line every interval); the previous snapshot stays as it was."""
        if error != self._snapshot_error:
            log.warning("cache snapshot failed; the previous snapshot is kept",
                        extra={"fields": {"error": error, "path": self.config.cache.path}})
        self._snapshot_error = error

    async def close(self) -> None:
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        await self.snapshot()


def _recorded(flight: Flight):
    entry = from_stream_chunks(flight.chunks)
    if entry is None:
        raise BackendError("the shared upstream stream ended incomplete")
    return entry


async def _iterate(items) -> AsyncIterator:
    for item in items:
        yield item


def _id_for(request: GenerateRequest) -> str:
    """A fresh response id in OpenAI's style for the endpoint: chatcmpl-... or cmpl-..."""
    return response_id("chatcmpl" if request.endpoint == "chat" else "cmpl")
