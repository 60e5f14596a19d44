"""One request through the daemon, whatever API it came in by.

`Service.generate` takes a GenerateRequest and returns an Outcome: a whole OpenAI response
or a stream of OpenAI chunks, plus response headers. In order:

1. route: the model's healthy backends whose circuit is closed, ranked by the PrefixRouter
   (longest cached prefix, then least load); the rest of the ranking is the failover order.
   The prompt's fingerprint carries real token ids when a llama.cpp backend is among them
   (sched/tokens.py: /tokenize, cached per message), estimates otherwise;
2. admit: wait for a slot and KV budget on that backend (sched/admission.py: priorities,
   429 when the queue is full, 503 after queue_timeout_s, preemption);
3. pin: on llama.cpp, send `id_slot` + `cache_prompt` for the slot that holds the prefix;
4. call the backend. A failure before the first byte reaches the client (connection
   refused/reset, a 5xx from the backend: BackendError) counts against the backend's circuit
   breaker and is retried once on the next backend.

A stream is primed (its first chunk awaited) before the Outcome is returned, so that a
backend failing before its first byte still gets a proper HTTP error status (or a retry),
and the queue wait happens inside that first await. The slot is held until the stream ends
or the client goes away (the server closes the stream / cancels the handler).

Timings go to the metrics and to the current request's trace (log.py): the wait for a slot
(`velollm_queue_wait_seconds`) and the backend's own time, from the call to its answer or
the end of its stream (`velollm_upstream_seconds`). Every failed backend call is counted in
`velollm_backend_errors_total{backend,kind}`: before the first byte (retried), a timeout,
or a stream that broke after output flowed.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from array import array
from typing import AsyncIterator, Awaitable, Callable, Iterable, TypeVar

from ..backends.base import BUSY_STATUSES, Backend
from ..backends.registry import Registry
from ..config import SchedulerConfig
from ..errors import (CONTEXT_LENGTH_EXCEEDED, BackendBusy, BackendError, BackendTimeout, BadRequest,
                      Unavailable, VeloError)
from ..log import current_request
from ..metrics import Metrics
from ..sched.admission import Admission, Preempted, Slot
from ..sched.breaker import CircuitBreaker
from ..sched.fingerprint import Fingerprint, fingerprint_of
from ..sched.request import SchedRequest
from ..sched.router import PrefixRouter
from ..sched.tokens import TokenCache, tokenizer_of
from ..wire.outcome import Delivery, Outcome
from ..wire.request import GenerateRequest, max_tokens_of
from ..wire.shape import UNREADABLE, check_answer, check_embeddings, check_rerank
from ..wire.streams import closing, prime
from .relay import ChunkRelay

log = logging.getLogger("velollmd.core.service")
MAX_ATTEMPTS = 2                 # the first backend, then one retry on another
DEFAULT_MAX_TOKENS = 256         # reserved in the KV budget when the request sets none
T = TypeVar("T")


class Service:
    def __init__(self, registry: Registry, config: SchedulerConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None):
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.config = config or SchedulerConfig()
        self.clock = clock
        self.admission = Admission(self.config, clock)
        self.router = PrefixRouter(self.config.prefix_routing, pin_slots=self.config.pin_slots)
        self.tokens = TokenCache()
        self.breakers: dict[str, CircuitBreaker] = {}
        self.num_failovers = 0
        self._ids = itertools.count()
        registry.listeners.append(self.on_health)

    # ---- generation ----

    async def generate(self, request: GenerateRequest, delivery: Delivery | None = None) -> Outcome:
        """The answer from the best backend. A stream follows `delivery` (relay.py): its usage
        chunk kept and counted, its chunks JSON bytes when they go straight to the SSE writer;
        by default, dicts with usage as the request asked."""
        allowed = _answering_n(_seeing(self._allowed(request.model), request), request)
        tokenizer = self._tokenizer(allowed)
        fingerprint = fingerprint_of(request) if tokenizer is None \
            else await self._fingerprint(request, tokenizer)   # no coroutine without /tokenize
        ranked = self.router.rank(allowed, fingerprint, self.admission.load)
        try:
            return await self._failover(request.model, ranked,
                                        lambda backend: self._generate_on(backend, request, fingerprint, delivery))
        except BadRequest as exc:
            if exc.code == CONTEXT_LENGTH_EXCEEDED and exc.param is None:   # the prompt: name its field
                exc.param = "messages" if request.endpoint == "chat" else "prompt"
            raise

    async def _failover(self, model: str, backends: Iterable[Backend],
                        attempt: Callable[[Backend], Awaitable[T]]) -> T:
        """`attempt` on each backend in turn until one answers, MAX_ATTEMPTS tries at most. A
        backend whose circuit is half-open with its one probe out is skipped; a BackendError
        (raised before any byte reached the client) counts against that backend's breaker, but
        BackendBusy (its own queue full: a 429 or 503 it answered) does not."""
        last_error: BackendError | None = None
        num_attempts = 0
        for backend in backends:
            if num_attempts >= MAX_ATTEMPTS:
                break
            if backend.retired or not self.breaker(backend).allow(self.clock()):
                continue
            num_attempts += 1
            self.num_failovers += num_attempts > 1
            try:
                result = await attempt(backend)
            except BackendBusy as exc:              # its own queue is full: busy, not failing
                self.breaker(backend).release_probe()
                self.count_error(backend, exc)
                last_error = exc
                continue
            except BackendError as exc:             # BackendTimeout too
                self._failed(backend, exc)
                last_error = exc
                continue
            except BaseException:                   # no verdict on the backend (client gone, 4xx)
                self.breaker(backend).release_probe()
                raise
            self.breaker(backend).record_success()
            return result
        raise last_error or Unavailable(f"no backend for model '{model}' accepts requests now",
                                        code="no_healthy_backend", headers={"retry-after": "1"})

    async def _generate_on(self, backend: Backend, request: GenerateRequest, fingerprint: Fingerprint,
                           delivery: Delivery | None) -> Outcome:
        scheduled = self._sched_request(backend, request, fingerprint)
        headers = {"x-velollm-backend": backend.name}
        if request.stream:
            relay = ChunkRelay(backend, request.echo_model, request.endpoint,
                               delivery or Delivery(request.include_usage))
            chunks = await prime(self._stream(backend, request, scheduled, fingerprint, relay))
            return Outcome(headers, chunks=chunks)
        body = await self._complete(backend, request, scheduled, fingerprint)
        body["model"] = request.echo_model
        return Outcome(headers, body=body)

    async def _complete(self, backend: Backend, request: GenerateRequest, scheduled: SchedRequest,
                        fingerprint: Fingerprint) -> dict:
        call = backend.chat if request.endpoint == "chat" else backend.completion
        while True:
            try:
                async with self._admitted(backend, scheduled):
                    with self._pinned(backend, request, fingerprint, scheduled) as pinned:
                        started = time.perf_counter()
                        try:
                            body = await call(pinned)
                        except UNREADABLE as exc:       # a converter could not read the native reply
                            raise BackendError(f"backend {backend.name} sent an answer velollmd cannot "
                                               f"read: {exc!r}", code="bad_backend_response") from None
                        except BaseException:           # the client left, the backend failed
                            self._spent(backend, time.perf_counter() - started)
                            raise
                        body = check_answer(body, request.endpoint, backend.name)
                        self._answered(backend, time.perf_counter() - started)
                    scheduled.num_output_tokens = (body.get("usage") or {}).get("completion_tokens")
                    return body
            except Preempted:
                continue                   # back in the queue; wait for a slot again

    async def _stream(self, backend: Backend, request: GenerateRequest, scheduled: SchedRequest,
                      fingerprint: Fingerprint, relay: ChunkRelay) -> AsyncIterator[dict | bytes]:
        """The stream's chunks; a request taken back before its first output (preempted, or
        withdrawn from the backend's queue for a more urgent one) waits for a slot again. A
        stream that ends without its usage chunk (the client left) is counted as estimated."""
        num_yielded, started = 0, None
        try:
            while True:
                try:
                    async with self._admitted(backend, scheduled):
                        with self._pinned(backend, request, fingerprint, scheduled) as pinned:
                            started = time.perf_counter()
                            async with closing(backend.answer_events(pinned)) as batches:
                                try:
                                    async for batch in batches:
                                        scheduled.generating = True
                                        for chunk in relay.convert_batch(batch):
                                            num_yielded += 1
                                            yield chunk
                                except UNREADABLE as exc:    # a converter could not read the native stream
                                    error = BackendError(f"backend {backend.name} sent a stream velollmd cannot "
                                                         f"read: {exc!r}", code="bad_backend_response")
                                    self._broke(backend, error, num_yielded)
                                    raise error from None
                                except (BackendError, BackendTimeout) as exc:
                                    self._broke(backend, exc, num_yielded)
                                    raise
                            if not scheduled.generating:       # not one event: no answer, not an empty one
                                raise BackendError(f"backend {backend.name} ended the stream without any event",
                                                   code="bad_backend_response")
                            self._answered(backend, time.perf_counter() - started)
                            started = None
                        scheduled.num_output_tokens = relay.num_output_tokens
                    return
                except Preempted:
                    if scheduled.generating:       # never chosen once output flowed; be sure
                        raise BackendError(f"backend {backend.name}: a started stream was preempted",
                                           code="backend_error") from None
        finally:
            relay.count_unfinished(fingerprint.total_tokens)
            if started is not None:                 # cut short: the client left, the backend failed
                self._spent(backend, time.perf_counter() - started)

    def _admitted(self, backend: Backend, scheduled: SchedRequest) -> Slot:
        """admission.slot(), its wait measured (a preempted request measures each wait)."""
        return self.admission.slot(backend, scheduled, self._waited)

    def _waited(self, backend: Backend, seconds: float) -> None:
        """A request waited `seconds` for its slot on `backend`."""
        self.metrics.queue_wait.observe(seconds, backend=backend.name)
        trace = current_request()
        if trace is not None:
            trace.note_queue_wait(seconds)

    def _answered(self, backend: Backend, seconds: float) -> None:
        """The backend answered (a whole answer, or a stream to its end) in `seconds`."""
        self.metrics.upstream.observe(seconds, backend=backend.name)
        self._spent(backend, seconds)

    def _spent(self, backend: Backend, seconds: float) -> None:
        """A backend call took `seconds`: the request's upstream time (its access line); one that
        did not end in an answer goes only there, not into the upstream metric (_answered)."""
        trace = current_request()
        if trace is not None:
            trace.note_upstream(backend.name, seconds)

    def _pinned(self, backend: Backend, request: GenerateRequest, fingerprint: Fingerprint,
                scheduled: SchedRequest | None = None) -> _Pinned:
        """The request with `id_slot` for the llama.cpp slot holding its prefix (if any), and
        with the time `scheduled` (admitted) waited in the daemon's queue: a backend's own queue
        (the engine's) waits only what queue_timeout_s has left, not that much again."""
        waited_s = scheduled.started_at - scheduled.queued_at if scheduled is not None else 0.0
        if waited_s > 0:
            request = dataclasses.replace(request, queue_waited_s=waited_s)
        return _Pinned(self.router, backend, request, fingerprint, self.clock())

    def _sched_request(self, backend: Backend, request: GenerateRequest,
                       fingerprint: Fingerprint) -> SchedRequest:
        max_tokens = min(max_tokens_of(request.body) or DEFAULT_MAX_TOKENS, backend.context_size())
        token_ids = fingerprint.token_ids() or array("i", [0])   # no prompt (Ollama's "load"): one position
        if request.body.get("truncate") is True:       # Ollama's: the backend cuts the prompt to its context
            token_ids = token_ids[-backend.context_size(request.model, request.body.get("num_ctx")):]
        return SchedRequest(f"req-{next(self._ids)}", request.model, token_ids,
                            max_tokens, arrival_time=self.clock(), priority=request.priority,
                            stream=request.stream, num_parallel=backend.num_parallel(request))

    # ---- reload ----

    def configure(self, config: SchedulerConfig) -> None:
        """New scheduler settings: routing, queue limits and breakers' thresholds at once, a
        queue's width and block size once it is empty (Admission.queue_of)."""
        self.config = config
        self.admission.configure(config)
        self.router.prefix_routing, self.router.pin_slots = config.prefix_routing, config.pin_slots
        for breaker in self.breakers.values():
            breaker.num_failures, breaker.cooldown_s = config.breaker_failures, config.breaker_cooldown_s

    async def retire(self, backend: Backend) -> None:
        """Close a backend a reload took out once its requests are done, however long they
        stream; what was kept about it goes unless a changed successor carries its name."""
        await self.admission.drained(backend)
        await backend.close()
        if all(b.name != backend.name for b in self.registry.backends):
            self.admission.forget(backend.name)
            self.breakers.pop(backend.name, None)
        self.router.forget(backend)

    # ---- routing and health ----

    async def _fingerprint(self, request: GenerateRequest, tokenizer: Backend | None) -> Fingerprint:
        """The prompt's fingerprint; its long texts carry the real token ids of `tokenizer`
        (_tokenizer), if there is one."""
        if tokenizer is None:
            return fingerprint_of(request)
        return fingerprint_of(request, await self.tokens.for_request(request, tokenizer))

    def _tokenizer(self, backends: list[Backend]) -> Backend | None:
        """With prefix routing and `[scheduler] tokenize` on, the backend among `backends`
        whose real token ids the prompt's fingerprint carries (a healthy llama.cpp), or None."""
        if not (self.config.prefix_routing and self.config.tokenize):
            return None
        return tokenizer_of(backends)

    def _allowed(self, model: str) -> list[Backend]:
        """Candidates whose circuit lets requests through (404/503 when none)."""
        now = self.clock()
        candidates = self.registry.candidates(model)
        allowed = [b for b in candidates if self.breaker(b).would_allow(now)]
        if not allowed:
            raise Unavailable(f"every backend for model '{model}' is failing; retry later",
                              code="no_healthy_backend",
                              headers={"retry-after": str(max(1, round(self._cooldown_left(candidates, now))))})
        return allowed

    def breaker(self, backend: Backend) -> CircuitBreaker:
        breaker = self.breakers.get(backend.name)
        if breaker is None:
            breaker = self.breakers[backend.name] = CircuitBreaker(
                self.config.breaker_failures, self.config.breaker_cooldown_s)
        return breaker

    def count_error(self, backend: Backend, exc: VeloError) -> None:
        kind = exc.code or ("timeout" if isinstance(exc, BackendTimeout) else "backend_error")
        self.metrics.backend_errors.inc(backend=backend.name, kind=kind)

    def _broke(self, backend: Backend, exc: VeloError, num_yielded: int) -> None:
        """A stream failed: counted here once output flowed (no retry follows); before that,
        the failover counts it."""
        if num_yielded:
            self.count_error(backend, exc)
            log.warning("backend stream broke", extra={"fields": {
                "backend": backend.name, "error": exc.message, "num_chunks_sent": num_yielded}})

    def _failed(self, backend: Backend, exc: BackendError) -> None:
        self.count_error(backend, exc)
        if self.breaker(backend).record_failure(self.clock()):
            self.router.forget(backend)
        log.warning("backend request failed", extra={"fields": {
            "backend": backend.name, "error": exc.message, "breaker": self.breaker(backend).state.value}})

    def on_health(self, backend: Backend, was_healthy: bool | None) -> None:
        """Registry hook after each health check: feeds the breaker; a change of health (down,
        or back up after a restart) drops what we believed the backend caches."""
        if backend.healthy:
            self.breaker(backend).record_success()
        elif self.breaker(backend).record_failure(self.clock()):
            self.router.forget(backend)
        if was_healthy is not None and was_healthy != backend.healthy:
            self.router.forget(backend)

    def _cooldown_left(self, backends: list[Backend], now: float) -> float:
        return min(self.breaker(b).opened_at + self.breaker(b).cooldown_s - now for b in backends)

    async def native(self, request: GenerateRequest, path: str, body: dict) -> tuple[Backend, AsyncIterator]:
        """An Ollama-native request passed through the best of the model's Ollama backends,
        ranked and failed over as generate() does, under admission (priorities, backpressure).
        Returns that backend and an iterator that yields the upstream ClientResponse first,
        then its body bytes; the slot is held until the body ends or the client goes away."""
        tokenizer = self._tokenizer(self.registry.candidates(request.model))
        fingerprint = await self._fingerprint(request, tokenizer)
        ranked = self.router.rank([b for b in self._allowed(request.model) if b.native_ollama],
                                  fingerprint, self.admission.load)
        return await self._failover(request.model, ranked,
                                    lambda backend: self._native_on(backend, request, fingerprint, path, body))

    async def _native_on(self, backend: Backend, request: GenerateRequest, fingerprint: Fingerprint,
                         path: str, body: dict) -> tuple[Backend, AsyncIterator]:
        scheduled = self._sched_request(backend, request, fingerprint)
        return backend, await prime(self._native_relay(backend, request, scheduled, fingerprint, path, body))

    async def _native_relay(self, backend: Backend, request: GenerateRequest, scheduled: SchedRequest,
                            fingerprint: Fingerprint, path: str, body: dict) -> AsyncIterator:
        """The upstream response, then its body bytes. An error status (5xx: the backend
        failed, before any byte reached the client; 429: busy) is a BackendError for the
        failover, a busy one with its Retry-After (BackendBusy)."""
        async with self._admitted(backend, scheduled):
            with self._pinned(backend, request, fingerprint):      # the router's affinity
                started = time.perf_counter()
                upstream = await backend.native("POST", path, body)
                try:
                    if upstream.status >= 500 or upstream.status in BUSY_STATUSES:
                        raise await backend.error_from(upstream, body.get("model"))
                    yield upstream
                    async for data in upstream.iter_raw():
                        yield data
                    self._answered(backend, time.perf_counter() - started)
                finally:
                    upstream.close()

    # ---- embeddings and stats ----

    async def embeddings(self, body: dict) -> Outcome:
        """Embeddings need no slot, but get the same health, breaker and one-retry failover."""
        model = body["model"]
        body = {**body, "model": self.registry.resolve(model)}
        backend, answer = await self._failover(model, self.registry.candidates(model),
                                               lambda backend: self._embed_on(backend, body))
        answer = check_embeddings(answer, backend.name)
        answer["model"] = model
        return Outcome({"x-velollm-backend": backend.name}, body=answer)

    @staticmethod
    async def _embed_on(backend: Backend, body: dict) -> tuple[Backend, dict]:
        return backend, await backend.embeddings(body)

    async def rerank(self, body: dict) -> Outcome:
        """Reranking, served as embeddings are (no slot; health, breaker, failover), by the
        model's backends that can rerank (none: the first one's 501 saying how)."""
        model = body["model"]
        body = {**body, "model": self.registry.resolve(model)}
        candidates = self.registry.candidates(model)
        able = [backend for backend in candidates if backend.serves_rerank]
        if not able:
            raise candidates[0].rerank_unavailable(model)
        backend, answer = await self._failover(model, able, lambda backend: self._rerank_on(backend, body))
        answer = check_rerank(answer, len(body["documents"]), backend.name)
        answer["model"] = model
        return Outcome({"x-velollm-backend": backend.name}, body=answer)

    @staticmethod
    async def _rerank_on(backend: Backend, body: dict) -> tuple[Backend, dict]:
        return backend, await backend.rerank(body)

    def stats(self) -> dict:
        """Queue depth, running requests, rejections, preemptions per backend; routing hits."""
        for backend in self.registry.backends:            # a queue for each, its width as known now
            self.admission.queue_of(backend)
        backends = self.admission.stats()
        for name, breaker in self.breakers.items():
            backends.setdefault(name, {})["breaker"] = breaker.state.value
        totals = {key: sum(b.get(key, 0) for b in backends.values())
                  for key in ("num_running", "num_waiting", "num_rejected", "num_timed_out", "num_preempted")}
        return {**totals, "num_failovers": self.num_failovers, "routing": self.router.stats(),
                "tokenize": {"enabled": self.config.prefix_routing and self.config.tokenize,
                             **self.tokens.stats()},
                "backends": backends}


# (content part type, what it is, whether a backend takes it): True, False, None (unknown)
MEDIA = (("image_url", "images", lambda backend: backend.sees_images()),
         ("input_audio", "audio", lambda backend: backend.hears_audio()))


def _seeing(backends: list[Backend], request: GenerateRequest) -> list[Backend]:
    """The backends that can take the request's images and audio. A model without vision (or
    hearing) gets a 400 here, not a backend's 500 (llama-server without --mmproj) that counts
    against its breaker: three such requests from one client used to shut the model off for
    everyone."""
    for part_type, what, takes in MEDIA:
        able = [b for b in backends if takes(b) is not False]
        if len(able) == len(backends) or not _has_part(request.body, part_type):
            continue
        if not able:
            raise BadRequest(f"model {request.model!r} does not support {what}", param="messages",
                             code=f"{what}_not_supported")
        backends = able
    return backends


def _answering_n(backends: list[Backend], request: GenerateRequest) -> list[Backend]:
    """The backends that answer `n` > 1 choices, when asked for them: a model whose backends
    give one choice a request is a 400 naming n (llama-server refused it, Ollama answered one
    choice without a word)."""
    if type(request.body.get("n")) is not int or request.body["n"] <= 1:
        return backends
    answering = [b for b in backends if b.supports_n]
    if backends and not answering:
        raise BadRequest(f"backend {backends[0].name} does not support n > 1 (it answers one choice a request)",
                         param="n", code="unsupported_value")
    return answering


def _has_part(body: dict, part_type: str) -> bool:
    for message in body.get("messages") or ():
        content = message.get("content") if type(message) is dict else None
        if type(content) is list and any(type(p) is dict and p.get("type") == part_type for p in content):
            return True
    return False


class _Pinned:
    """`with`: the request pinned by the router for as long as it runs, released after."""
    __slots__ = ("router", "backend", "request", "fingerprint", "now", "slot")

    def __init__(self, router: PrefixRouter, backend: Backend, request: GenerateRequest,
                 fingerprint: Fingerprint, now: float):
        self.router, self.backend, self.request = router, backend, request
        self.fingerprint, self.now = fingerprint, now

    def __enter__(self) -> GenerateRequest:
        self.slot = slot = self.router.claim(self.backend, self.fingerprint, self.now,
                                             pinnable=self.backend.num_parallel(self.request) == 1)
        if slot is None:
            return self.request
        try:
            return dataclasses.replace(self.request, body={**self.request.body, "id_slot": slot,
                                                           "cache_prompt": True})
        except BaseException:
            self.router.release(self.backend, slot)
            raise

    def __exit__(self, *exc_info) -> None:
        self.router.release(self.backend, self.slot)
