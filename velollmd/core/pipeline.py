"""The request pipeline around the Service: cache lookup, single-flight, tool-call repair,
cache store. Read top to bottom, it is the data flow of one request:

    lookup (exact, then semantic) -> hit: replay as JSON or SSE
    miss + cacheable -> join or start a Flight -> Service (schedule, route, backend)
                     -> tool-call repair -> record -> store in the cache
    otherwise        -> Service -> tool-call repair
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from typing import AsyncIterator

from ..cache import policy
from ..cache.cache import Lookup, ResponseCache
from ..cache.replay import from_json_response, from_stream_chunks, to_json, to_sse_chunks
from .statewriter import StateWriter
from ..cache.store import SNAPSHOT_NAME, SnapshotState, decode_snapshot, encode_snapshot
from ..config import Config
from ..errors import BackendError, VeloError
from ..log import current_request, note_model
from ..metrics import Metrics
from ..sched.keylimits import KeyLedger
from ..shared.tier import Lease, SharedTier
from ..wire.chunks import strip_usage
from ..wire.ids import response_id
from ..wire.outcome import Delivery, Outcome, UsageSink
from ..wire.request import GenerateRequest
from ..wire.streams import closing
from .embedder import BackendEmbedder
from .flight import MAX_SHARED_CHUNKS, Flight, FlightTable
from .service import Service
from .toollayer import ToolCallLayer, report_headers, report_of_headers

log = logging.getLogger("velollmd.core.pipeline")
CACHE_HEADER = "x-velollm-cache"
DROPPED_HEADER = "x-velollm-dropped"      # request fields validated and dropped (GenerateRequest.dropped)
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
        self.shared = self._shared_tier(config)
        self.flights = FlightTable()
        self.memo: OrderedDict[str, tuple] = OrderedDict()   # raw request key -> exact key
        self.snapshots = StateWriter(SNAPSHOT_NAME, "cache", self._cache_state, encode_snapshot,
                                     generation=lambda: self.cache.exact.generation if self.cache is not None else None,
                                     decode=decode_snapshot, merge=self._merge_snapshot)

    def _embedder(self):
        cache = self.config.cache
        if cache.embedder != "backend":
            return None                               # the builtin hashed n-gram embedder
        return BackendEmbedder(self.registry, cache.embed_backend, cache.embed_model, cache.embed_dim)

    def _shared_tier(self, config: Config) -> SharedTier | None:
        """The Redis tier when [cache] redis_url is set: shared exact entries (with the cache on),
        single-flight and key limits."""
        if not config.cache.redis_url:
            self.ledger.shared = False
            return None
        self.ledger.shared = True
        return SharedTier(config.cache, self.metrics.redis_errors, self.metrics.redis)

    def _retarget_shared(self, old: Config, config: Config) -> None:
        """A reload that changed a redis_* setting: a new tier; the old one closes behind it."""
        redis_fields = [f for f in vars(config.cache) if f.startswith("redis_")]
        if all(getattr(old.cache, f) == getattr(config.cache, f) for f in redis_fields):
            return
        if self.shared is not None:
            asyncio.ensure_future(self.shared.close())
        self.shared = self._shared_tier(config)
        if self.shared is not None:
            self.shared.start()

    def configure(self, config: Config) -> None:
        """New settings (a reload): tool-call settings at once; a changed [cache] section makes
        a new cache that takes over the old one's entries (as far as its limits allow)."""
        old, self.config = self.config, config
        self.tools.config = config.tools
        if config.keys != old.keys:
            self.memo.clear()                         # a replay skips the check of a key's models
        self._retarget_shared(old, config)
        if config.cache == old.cache:
            return
        old_cache, path = self.cache, config.cache.path if config.cache.enabled else ""
        self.snapshots.let_go_unless(path)            # a path given up: the old cache written there last
        self.cache = ResponseCache(config.cache, embedder=self._embedder()) if config.cache.enabled else None
        self.memo.clear()
        self.snapshots.own(path, config.cache.snapshot_interval_s)   # a new path: its entries, older
        if self.cache is not None and old_cache is not None:
            self.cache.adopt(old_cache.snapshot_state())     # after the snapshot's: memory wins
            self.cache.continue_counts(old_cache)
        self.snapshots.changed()                      # another cache: its generations count anew

    # -- one request ---------------------------------------------------------------------

    def replay_memo(self, raw_key: str, request_headers: dict) -> Outcome | None:
        """An exact hit found from the raw request bytes alone (no JSON parse, no validation).

        `raw_key` hashes the path, the body bytes and the API key: the same bytes are the same
        request, so the exact key remembered for them still applies while the serving backend's
        model identity is unchanged. Anything else falls through to the full lookup. The hit
        is counted by `count_memo_hit`, once the key's limits let the request in."""
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
        note_model(request.model)                    # the body was not parsed: the memo knows it
        self.memo.move_to_end(raw_key)
        return self._replay(request, Lookup("hit-exact", entry=entry, similarity=1.0, key=key))

    def count_memo_hit(self, key_name: str) -> None:
        """A replay_memo hit that is served: in the cache's stats, /metrics and the key's usage."""
        if self.cache is not None:                  # (a reload may have turned it off meanwhile)
            self.cache.counters["hits"] += 1
        self.metrics.cache.inc(result="hit-exact")
        self.ledger.record_cache_hit(key_name)

    def _remember(self, request: GenerateRequest, lookup: Lookup) -> None:
        if request.raw_key and lookup.key:
            self.memo[request.raw_key] = (lookup.key, lookup.model_identity, _replay_request(request))
            if len(self.memo) > MEMO_SIZE:
                self.memo.popitem(last=False)

    async def admit(self, key_name: str) -> None:
        """The key's limits, checked across every instance when they are shared (Access.admit
        deferred them here); the local ledger when Redis cannot answer. 429 when over."""
        account = self.ledger.accounts.get(key_name)
        if self.shared is None or account is None:
            return
        limits = account.limits
        waits = await self.shared.limits.admit(key_name, limits) if (
            limits.rpm or limits.tpm or limits.tokens_per_day) else {}
        if waits is None:
            self.ledger.admit(key_name)                # Redis unavailable: this instance's windows
        elif waits:
            raise self.ledger.refuse(key_name, waits)
        else:
            self.ledger.admitted(key_name)

    async def generate(self, request: GenerateRequest, frames: bool = False) -> Outcome:
        """The answer to `request`. `frames`: the caller writes a stream as OpenAI SSE and takes
        chunks as JSON bytes, so a stream nothing else must read passes through (relay.py)."""
        if self.shared is not None:                   # (else Access.admit counted the key's request)
            await self.admit(request.key_name)
        request = self.registry.aliased(request)
        status = "bypass"                             # the cache off: no lookup
        if self.cache is not None:
            lookup = await self._lookup(request)
            status = lookup.status
        self.metrics.cache.inc(result=status)         # counted as looked up, as the cache's stats
        if status.startswith("hit"):
            self.ledger.record_cache_hit(request.key_name)
            if status == "hit-exact":
                self._remember(request, lookup)
            return self._replay(request, lookup)
        if self.cache is not None and lookup.storable:   # a miss, or a no-cache refresh to store
            outcome = await self._coalesced(request, lookup)
        elif frames and request.stream and not self.tools.applies(request):
            outcome = await self.service.generate(request, Delivery(request.include_usage,
                                                                    self.usage_sink(request), frames=True))
        else:
            outcome = await self._upstream(request)
            if outcome.chunks is not None:
                outcome.chunks = strip_usage(outcome.chunks, request.include_usage)
        outcome.headers[CACHE_HEADER] = status
        if request.dropped:
            outcome.headers[DROPPED_HEADER] = request.dropped
        return outcome

    async def _lookup(self, request: GenerateRequest) -> Lookup:
        backend = self.registry.pick(request.model)
        identity = backend.identity(request.model)
        args = dict(endpoint=request.endpoint, model_identity=identity, tenant=request.api_key or None,
                    defaults=backend.defaults)
        try:
            lookup = await self.cache.alookup(request.body, request.headers, **args,
                                              shared=self.shared.get if self.shared is not None else None)
        except VeloError as exc:                      # the embedding backend failed: exact tier only
            log.warning("semantic cache lookup failed", extra={"fields": {"error": exc.message}})
            lookup = self.cache.lookup(request.body, request.headers, **args)
        lookup.model_identity = identity
        return lookup

    def _replay(self, request: GenerateRequest, lookup: Lookup) -> Outcome:
        headers = {CACHE_HEADER: lookup.status}
        if request.dropped:                           # (a memo replay's request keeps it)
            headers[DROPPED_HEADER] = request.dropped
        if lookup.status == "hit-semantic":
            headers["x-velollm-similarity"] = f"{lookup.similarity:.4f}"
        if not request.stream:
            return _whole(lookup.entry, request, headers)
        chunks = to_sse_chunks(lookup.entry, _id_for(request), model=request.echo_model,
                               include_usage=request.include_usage, endpoint=request.endpoint)
        return Outcome(headers, chunks=_iterate(chunks))

    async def _upstream(self, request: GenerateRequest) -> Outcome:
        """The Service call, a stream keeping its usage chunk (counted there) for what follows
        to read, then tool-call repair."""
        delivery = Delivery(True, self.usage_sink(request)) if request.stream else None   # (streams only)
        outcome = await self.service.generate(request, delivery)
        if self.tools.applies(request):
            outcome = await self.tools.apply(request, outcome, self.service.generate)
        if outcome.body is not None:
            self.record_usage(request, request.model, outcome.body.get("usage"))
        return outcome

    def record_usage(self, request: GenerateRequest, model: str, usage: dict | None) -> None:
        """An answer's token usage: in the metrics, against the caller's key budgets, and in
        the request's trace (the access log)."""
        self.metrics.record_usage(model, usage)
        self.record_key_usage(request.key_name, usage)
        trace = current_request()
        if usage and trace is not None:
            trace.note_usage(usage)

    def record_key_usage(self, key_name: str, usage: dict | None) -> None:
        """An answer's tokens against the key's budgets: this instance's, and the shared
        windows when they are shared."""
        self.ledger.record_usage(key_name, usage)
        if self.shared is not None:
            self._share_usage(key_name, usage)

    def _share_usage(self, key_name: str, usage: dict | None) -> None:
        """An answer's tokens to the key's shared token windows (keys with a token limit)."""
        account = self.ledger.accounts.get(key_name)
        if self.shared is None or account is None or not (account.limits.tpm or account.limits.tokens_per_day):
            return
        usage = usage if isinstance(usage, dict) else {}
        tokens = sum(v for v in (usage.get("prompt_tokens"), usage.get("completion_tokens"))
                     if type(v) is int and v > 0)
        if tokens:
            self.shared._spawn(self.shared.limits.record_tokens(key_name, tokens))

    def usage_sink(self, request: GenerateRequest) -> UsageSink:
        """Where a stream's usage chunk is counted: as record_usage counts a whole answer's,
        under the served model (the stream's chunks carry the client's name, an alias too)."""
        return lambda _echoed, usage: self.record_usage(request, request.model, usage)

    # -- single-flight and recording ------------------------------------------------------

    async def _coalesced(self, request: GenerateRequest, lookup: Lookup) -> Outcome:
        flight, leader = self.flights.join_or_start(lookup.key, lambda: self._record(request, lookup))
        head = await flight.head()
        headers = dict(head.headers)
        if not leader:
            headers["x-velollm-coalesced"] = "1"
        own_id = None if leader else _id_for(request)     # a joiner's answer is an answer of its own
        if request.stream:
            return Outcome(headers, chunks=strip_usage(self._stream_from(flight, request, own_id),
                                                       request.include_usage))
        if head.body is not None:
            flight.leave()
            body = {**head.body, "choices": [dict(c) for c in head.body["choices"]]}
            return Outcome(headers, body=body if own_id is None else {**body, "id": own_id})
        try:
            await flight.wait_done()
        finally:
            flight.leave()
        return _whole(_recorded(flight), request, headers)

    async def _stream_from(self, flight: Flight, request: GenerateRequest,
                           own_id: str | None = None) -> AsyncIterator[dict]:
        """A stream for one consumer: live chunks (under `own_id` when given), or a replay of a
        whole answer."""
        if flight.outcome.chunks is not None:
            async with closing(flight.replay_chunks()) as source_iter:
                async for chunk in source_iter:
                    if own_id is not None and "id" in chunk:
                        chunk["id"] = own_id                # (a copy: replay_chunks yields one each)
                    yield chunk
            return
        flight.leave()
        entry = from_json_response(flight.outcome.body, report_of_headers(flight.outcome.headers))
        for chunk in to_sse_chunks(entry, _id_for(request), model=request.echo_model, include_usage=True,
                                   endpoint=request.endpoint):
            yield chunk

    async def _record(self, request: GenerateRequest, lookup: Lookup) -> Outcome:
        """The upstream call of a flight, recorded for the cache. With the shared tier, only the
        instance holding the key's lock calls upstream; the others answer from its entry."""
        lease = None
        if self.shared is not None and lookup.status == "miss":   # (no-cache: never a stored answer)
            lease, found = await self.shared.lead_or_wait(lookup.key)
            if found is not None:
                return self._adopt_shared(request, lookup, *found)
        try:
            outcome = await self._upstream(request)
        except BaseException:
            if lease is not None:
                self.shared.release(lease)
            raise
        if outcome.body is not None:
            self._store(lookup, request, from_json_response(outcome.body, report_of_headers(outcome.headers)), lease)
            return outcome
        outcome.chunks = self._recording(outcome.chunks, lookup, request, lease)
        return outcome

    async def _recording(self, chunks, lookup: Lookup, request: GenerateRequest,
                         lease: Lease | None) -> AsyncIterator[dict]:
        seen: list | None = []                          # None: too long to cache, no longer kept
        stored = False
        try:
            async with closing(chunks) as source_iter:
                async for chunk in source_iter:
                    if seen is not None:
                        seen.append(chunk)
                        if len(seen) > MAX_SHARED_CHUNKS:
                            seen = None
                    yield chunk
            if seen is not None:
                stored = True
                self._store(lookup, request, from_stream_chunks(seen), lease)
        finally:
            if lease is not None and not stored:
                self.shared.release(lease)

    def _store(self, lookup: Lookup, request: GenerateRequest, entry, lease: Lease | None = None) -> None:
        stored = self.cache is not None and entry is not None and self.cache.store(lookup, request.body, entry)
        if stored:
            self._remember(request, lookup)
        if self.shared is not None and (stored or lease is not None):
            self.shared.put(lookup.key, entry if stored else None, self.cache.expires_at(), lease)

    def _adopt_shared(self, request: GenerateRequest, lookup: Lookup, entry, expires_at: float) -> Outcome:
        """Another instance's answer to the same request: kept locally, replayed to this flight."""
        if self.cache is not None and self.cache.exact.put(lookup.key, entry, expires_at=expires_at):
            self._remember(request, lookup)
        headers = {"x-velollm-coalesced": "shared"}
        if not request.stream:
            return _whole(entry, request, headers)
        return Outcome(headers, chunks=_iterate(to_sse_chunks(entry, _id_for(request), model=request.echo_model,
                                                              include_usage=True, endpoint=request.endpoint)))

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.shared is not None:
            self.shared.start()
        if self.cache is None or not self.config.cache.path:
            return
        self.snapshots.own(self.config.cache.path, self.config.cache.snapshot_interval_s)

    def _merge_snapshot(self, state: SnapshotState | None) -> tuple[int, bool]:
        """A snapshot's entries (of a directory just owned) into the cache, before any other
        cache's (a reload adopts the old one's after them: memory wins); the entries restored."""
        was_empty = not len(self.cache.exact)
        return (self.cache.adopt(state) if state is not None else 0), was_empty

    def _cache_state(self):
        """What the snapshot keeps (copies, taken on the loop); None with the cache off."""
        return self.cache.snapshot_state() if self.cache is not None else None

    async def close(self) -> None:
        await self.snapshots.close()
        if self.shared is not None:
            await self.shared.close()


REPLAY_FIELDS = ("model", "stream", "stream_options")


def _replay_request(request: GenerateRequest) -> GenerateRequest:
    """What a replay from the memo reads of a request: not its messages, which would keep up to
    MEMO_SIZE request bodies (each up to max_body_bytes) alive beside the cache's own bound."""
    body = {name: request.body[name] for name in REPLAY_FIELDS if name in request.body}
    return dataclasses.replace(request, body=body, headers={})


def _whole(entry, request: GenerateRequest, headers: dict) -> Outcome:
    """A recorded answer replayed whole, with the headers the tool-call layer gave it."""
    return Outcome({**headers, **report_headers(entry.tool_report)},
                   body=to_json(entry, _id_for(request), model=request.echo_model, endpoint=request.endpoint))


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
