"""Scheduler: a priority queue admitting requests to a fixed set of slots and a KV block pool.

Pure and synchronous (vLLM v1 style): the caller feeds requests in (`add_request`,
`abort_request`), asks `schedule(now)` what to start where, runs it, and reports back with
`update_from_output(output, now)`. Time is always passed in; nothing here reads a clock.

One Scheduler per backend: a backend is a set of `num_slots` slots sharing a token budget of
context x slots, accounted as blocks in a BlockPool. The router picks the backend (it may ask
`pool.find_cached_prefix` and `loaded_models`), then hands the request to that backend's
scheduler. The in-process engine is one more backend whose pool is its real paged KV cache
(`reserve_output=False`: blocks grow token by token instead of reserving max_tokens).

Order: (effective priority, arrival, id). A waiting request gains one level per `aging_s`, so
low priorities are never starved. Among requests of equal effective priority, one for a model
that is loaded on this backend goes first, so Ollama does not thrash loading models.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..config import SchedulerConfig
from ..errors import CONTEXT_LENGTH_EXCEEDED, QUEUE_TIMEOUT, BadRequest, RateLimited, Unavailable
from .kvblocks import Allocation, BlockPool
from .request import FINISHED, RUNNING, RequestStatus, SchedRequest


class ScheduledRequest(NamedTuple):
    """Start this request on this slot; its first num_cached_tokens are already cached.
    (Immutable records made per request are NamedTuples: a frozen dataclass's __init__ sets
    each field through object.__setattr__, about 4x the instructions.)"""
    request_id: str
    slot: int
    block_table: tuple[int, ...]
    num_cached_tokens: int


class SchedulerOutput(NamedTuple):
    scheduled: tuple[ScheduledRequest, ...] = ()  # admitted now: forward / prefill these
    preempted: tuple[str, ...] = ()               # cancel these; they wait again in the queue
    timed_out: tuple[str, ...] = ()               # waited past queue_timeout_s: answer 503
    running: tuple[str, ...] = ()                 # every running request after this step


@dataclass(frozen=True)
class RunnerOutput:
    """What the backend / engine reports back: new tokens and finished requests."""
    new_token_ids: Mapping[str, Sequence[int]] = field(default_factory=dict)
    finished: Mapping[str, RequestStatus] = field(default_factory=dict)  # FINISHED_* only


MAX_BUDGET_BLOCKS = 1 << 22   # 64M tokens at 16 a block: more than a backend holds (~50 bytes a block)


def budget_blocks(num_ctx: int, max_running: int, block_size: int) -> int:
    """A backend's token budget in blocks: num_ctx for each request it may run at once, at most
    MAX_BUDGET_BLOCKS: a long num_ctx times a wide adaptive limit (10M tokens x 256 / 16 =
    160M blocks) took GBs of accounting arrays, and past 2**31 blocks overflowed the pool's
    int32 count (every request and /health a 500)."""
    return max(1, min(MAX_BUDGET_BLOCKS, math.ceil(num_ctx * max_running / block_size)))


def queue_timeout_error(request: SchedRequest) -> Unavailable:
    return Unavailable(f"request {request.request_id} waited too long in the queue",
                       code=QUEUE_TIMEOUT)


class Scheduler:
    def __init__(self, config: SchedulerConfig, num_slots: int, pool: BlockPool, *,
                 reserve_output: bool = True, num_backend_slots: int | None = None,
                 block_tables: bool = True):
        if num_slots < 1:
            raise ValueError("num_slots must be >= 1")
        self.config = config
        self.pool = pool
        self.reserve_output = reserve_output
        # False: the pool only accounts a backend's token budget (its KV cache is its own),
        # and ScheduledRequest.block_table stays () instead of one id per block.
        self.block_tables = block_tables
        self.waiting: list[SchedRequest] = []            # heap by SchedRequest.sort_key
        self.running: dict[str, SchedRequest] = {}
        # How many running requests there are of each priority: whether any running request
        # could be withdrawn for a waiting one, without a pass over all of them.
        self._running_priorities: dict[int, int] = {}
        self._requests: dict[str, SchedRequest] = {}     # waiting + running, by id
        self.max_running = num_slots                     # slots: requests run at once
        # The backend's own slots when it runs fewer than max_running: the rest were sent
        # ahead to wait in its queue, and may be withdrawn for a more urgent request. None:
        # as many as max_running, whatever it is set to (an adaptive limit sends none ahead).
        self._num_backend_slots = num_backend_slots
        self._num_admitted = 0
        self._free_slots = list(range(num_slots))        # heap: lowest slot id first
        self._num_slots_held = 0                         # by the running requests, extra slots too
        self._reported_models: frozenset[str] = frozenset()
        self._last_model: str | None = None
        self._mean_service_s = 1.0                       # EWMA, for Retry-After
        # Aging and expiry without a pass over the queue on every schedule(): the next time
        # any waiting request ages, and every wait in the order it began (a heap: a request
        # that waited elsewhere first began earlier; pruned lazily).
        self._next_aging_at = math.inf
        self._wait_order: list[tuple[float, int, SchedRequest]] = []   # (wait_began, num_preemptions, r)

    @classmethod
    def for_backend(cls, config: SchedulerConfig, max_running: int, num_ctx: int, *,
                    max_limit: int | None = None, num_backend_slots: int | None = None) -> Scheduler:
        """A backend's scheduler running `max_running` requests at once (it may grow to
        `max_limit`), of which the backend itself runs `num_backend_slots` (the others wait
        in its queue), with a token budget of num_ctx per request it may run, in blocks
        (accounted only: its ScheduledRequests carry no block table)."""
        num_blocks = budget_blocks(num_ctx, max_limit or max_running, config.block_size)
        return cls(config, max_running, BlockPool(num_blocks, config.block_size),
                   num_backend_slots=num_backend_slots, block_tables=False)

    def resize_budget(self, num_blocks: int) -> bool:
        """Account a backend's token budget in `num_blocks` from now on (its width learnt while
        requests run: BackendQueue.take_width): a new pool, in which each running request holds
        what admission would give it now. False, with nothing changed, when they do not all fit
        there; the old pool stays. Only an accounted budget moves: the engine's pool is its KV cache."""
        assert not self.block_tables, "resize_budget: the pool holds block tables"
        if self.pool.num_blocks - self.pool.num_free_blocks > num_blocks:
            return False                               # (surely not: no pool built to find out)
        pool = BlockPool(num_blocks, self.pool.block_size)
        for request in self.running.values():
            if pool.allocate(request.request_id, request.all_token_ids,
                             self._num_output_reserved(request), with_table=False) is None:
                return False
        self.pool = pool
        return True

    def set_max_running(self, max_running: int) -> None:
        """Run up to `max_running` requests at once (an adaptive limit moved). Growing frees
        the new slots at once; shrinking takes the slots above the limit out as they free, and
        nothing starts until fewer than `max_running` run (_has_room): a request that finished
        on a low slot must not let a new one in beside those still running above the limit."""
        max_running = max(1, max_running)
        if max_running > self.max_running:
            busy = {s for r in self.running.values() for s in (r.slot, *r.extra_slots)}
            for slot in range(self.max_running, max_running):
                if slot not in busy:
                    heapq.heappush(self._free_slots, slot)
        elif max_running < self.max_running:
            self._free_slots = [s for s in self._free_slots if s < max_running]
            heapq.heapify(self._free_slots)
        self.max_running = max_running

    # ---- intake ----

    def add_request(self, request: SchedRequest, now: float) -> None:
        """Queue a request; RateLimited (429 + Retry-After) when the queue is full."""
        self._check_intake(request)
        request.queued_at = now
        self._requests[request.request_id] = request
        self._enqueue(request)

    def start_at_once(self, request: SchedRequest, now: float) -> ScheduledRequest | None:
        """add_request() then schedule() for a request that finds nothing waiting and can
        start now (a free slot, room in the pool): the same checks, errors and outcome without
        the queue's heap, wait order, aging and expiry pass and the SchedulerOutput, which
        only matter to a request that waits. None, with nothing changed, when it would wait:
        add_request() it then."""
        if self.waiting or not self._has_room(request):
            return None
        self._check_intake(request, waits=False)
        allocation = self._allocate(request)
        if allocation is None:
            return None
        request.queued_at = now
        self._requests[request.request_id] = request
        return self._start(request, allocation, now)

    def _check_intake(self, request: SchedRequest, *, waits: bool = True) -> None:
        """What add_request refuses: a known id, a full queue (429; only for a request that
        `waits`: max_queue = 0 starts one on a free slot), more than the pool (400)."""
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if waits and len(self.waiting) >= self.config.max_queue:
            raise RateLimited("too many requests waiting; retry later",
                              headers={"retry-after": str(self._retry_after_s())})
        if self._num_blocks_needed(request) > self.pool.num_blocks:
            raise self._over_context(request)

    def abort_request(self, request_id: str) -> SchedRequest | None:
        """Drop a waiting or running request (client gone); None if not known here."""
        request = self._requests.get(request_id)
        if request is None:
            return None
        if request.status is RUNNING:
            self._release(request)
        else:
            self._remove_waiting(request)
        request.set_status(RequestStatus.FINISHED_ABORTED)
        del self._requests[request_id]
        return request

    def set_loaded_models(self, models: Iterable[str]) -> None:
        """Models the backend reports as loaded (e.g. Ollama /api/ps)."""
        self._reported_models = frozenset(models)

    @property
    def loaded_models(self) -> frozenset[str]:
        running = {r.model for r in self.running.values()}
        last = {self._last_model} if self._last_model else set()
        return frozenset(running | last | self._reported_models)

    @property
    def last_admission_seq(self) -> int:
        """The admission_seq of the request admitted last (0: none yet)."""
        return self._num_admitted

    @property
    def num_backend_slots(self) -> int:
        """The requests the backend itself runs at once: its known width, else the current
        max_running. An adaptive limit is the daemon's estimate of the width, so none of the
        requests under it were sent ahead (none is withdrawn for a more urgent one), however
        far it moved from where it started."""
        return self._num_backend_slots or self.max_running

    @num_backend_slots.setter
    def num_backend_slots(self, num_backend_slots: int | None) -> None:
        self._num_backend_slots = num_backend_slots

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    def get_request(self, request_id: str) -> SchedRequest | None:
        return self._requests.get(request_id)

    # ---- the two verbs ----

    def schedule(self, now: float) -> SchedulerOutput:
        timed_out = self._expire(now)
        self._age_waiting(now)
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []
        while self.waiting:
            request = self._next_waiting()
            if self._admit(request, now, scheduled):
                continue
            if not (self._withdraw_for(request, now, preempted)
                    or self._preempt_for(request, now, scheduled, preempted)):
                break       # strict priority: nothing behind the head jumps it
        return SchedulerOutput(tuple(scheduled), tuple(preempted), tuple(timed_out),
                               tuple(self.running))

    def update_from_output(self, output: RunnerOutput, now: float) -> list[SchedRequest]:
        """Account new tokens, retire finished requests; returns the finished ones."""
        if output.new_token_ids:
            self._account_tokens(output.new_token_ids, now)
        finished = []
        for request_id, status in output.finished.items():
            request = self.finish_request(request_id, status, now)
            if request is not None:
                finished.append(request)
        return finished

    def finish_request(self, request_id: str, status: RequestStatus, now: float) -> SchedRequest | None:
        """Retire one running request (update_from_output with only it finished, without
        building a RunnerOutput); None if it is not running here."""
        request = self.running.get(request_id)
        if request is not None:
            self._finish(request, status, now)
        return request

    def _account_tokens(self, new_token_ids: Mapping[str, Sequence[int]], now: float) -> None:
        """The running requests' new tokens into their blocks (the engine's are preempted when
        the pool has no room)."""
        new_tokens = {rid: ids for rid, ids in new_token_ids.items() if rid in self.running}
        # A decode step (one token each) is one allocator call; a longer run goes one by one.
        step = [rid for rid, ids in new_tokens.items() if len(ids) == 1]
        no_room = set(self.pool.append_step(step, [new_tokens[rid][0] for rid in step])) if step else set()
        for request_id, token_ids in new_tokens.items():
            request = self.running[request_id]
            request.output_token_ids.extend(token_ids)
            fits = request_id not in no_room if len(token_ids) == 1 \
                else self.pool.append_tokens(request_id, token_ids)
            if not fits and not self.reserve_output:
                self._preempt(request, now, discard_output=False)   # engine: recompute later

    def fork_request(self, parent_id: str, children: Sequence[SchedRequest], now: float) -> list[SchedRequest]:
        """Start children of a running request that share all of its blocks (copy-on-write),
        one free slot each, as many as there are free slots; returns the ones started. Each
        child's prompt is the parent's tokens so far (n > 1: the prompt, once prefilled)."""
        started = list(children[:len(self._free_slots)])
        if not started:
            return []
        self.pool.fork(parent_id, *[child.request_id for child in started])
        for child in started:
            child.slot = heapq.heappop(self._free_slots)
            self._num_slots_held += 1
            child.started_at = child.queued_at = now
            self._num_admitted += 1
            child.admission_seq = self._num_admitted
            child.set_status(RUNNING)
            self._add_running(child)
            self._requests[child.request_id] = child
        return started

    # ---- admission ----

    def _next_waiting(self) -> SchedRequest:
        """The head, or an equally urgent request for a loaded model (model grouping)."""
        head = self.waiting[0]
        if head.model == self._last_model or head.model in self._reported_models:
            return head                     # loaded: the common one-model case, cheaply
        loaded = self.loaded_models
        if not loaded or head.model in loaded:
            return head
        same_model = [r for r in self.waiting
                      if r.effective_priority == head.effective_priority and r.model in loaded]
        return min(same_model, default=head)

    def _slots_wanted(self, request: SchedRequest) -> int:
        """The slots a request holds while it runs: one per backend request it runs as at once
        (llama-server runs a completion's prompts one a slot), at most as many as the backend
        runs at once (the rest of its prompts wait there for a slot) and as max_running."""
        return max(1, min(request.num_parallel, self.num_backend_slots, self.max_running))

    def _has_room(self, request: SchedRequest) -> bool:
        """Free slots for the request, and as many held in all as max_running at most (not so
        right after a shrink, while requests on slots above the new limit still run)."""
        num_wanted = self._slots_wanted(request)
        return len(self._free_slots) >= num_wanted and self._num_slots_held + num_wanted <= self.max_running

    def _admit(self, request: SchedRequest, now: float, scheduled: list[ScheduledRequest]) -> bool:
        if not self._has_room(request):
            return False
        allocation = self._allocate(request)
        if allocation is None:
            return False
        self._remove_waiting(request)
        scheduled.append(self._start(request, allocation, now))
        return True

    def _allocate(self, request: SchedRequest) -> Allocation | None:
        """Blocks for the request's tokens (and, reserving output, for what it may still
        generate); None when the pool has no room for them now."""
        return self.pool.allocate(request.request_id, request.all_token_ids,
                                  self._num_output_reserved(request), self.block_tables)

    def _num_output_reserved(self, request: SchedRequest) -> int:
        """Output tokens held for a request at admission: what it may still generate, once for
        each slot it holds (a completion's prompts run one a slot on llama-server, each up to
        max_tokens; its prompts beyond those slots run after others there, in their room).
        None where blocks grow token by token (the engine)."""
        if not self.reserve_output:
            return 0
        num_left = max(0, request.max_tokens - len(request.output_token_ids))
        return num_left * self._slots_wanted(request) if request.num_parallel > 1 else num_left

    def _start(self, request: SchedRequest, allocation: Allocation, now: float) -> ScheduledRequest:
        """Run an allocated request (out of the queue already) on the lowest free slot."""
        num_wanted = self._slots_wanted(request)
        request.slot = heapq.heappop(self._free_slots)
        request.extra_slots = tuple(heapq.heappop(self._free_slots) for _ in range(num_wanted - 1))
        self._num_slots_held += num_wanted
        request.num_cached_tokens = allocation.num_cached_tokens
        request.started_at = now
        self._num_admitted += 1
        request.admission_seq = self._num_admitted
        request.set_status(RUNNING)
        self._add_running(request)
        self._last_model = request.model
        return ScheduledRequest(request.request_id, request.slot, tuple(allocation.block_table),
                                allocation.num_cached_tokens)

    def _expire(self, now: float) -> list[str]:
        """Time out requests waiting longer than queue_timeout_s (with what they waited in a
        queue before this one: SchedRequest.waited_s), oldest wait first."""
        expired: list[str] = []
        order = self._wait_order
        while order:
            wait_began, num_preemptions, request = order[0]
            if request.is_waiting and request.wait_began == wait_began \
                    and request.num_preemptions == num_preemptions:
                if now - wait_began <= self.config.queue_timeout_s:
                    break
                self._remove_waiting(request)
                request.set_status(RequestStatus.FINISHED_TIMED_OUT)
                del self._requests[request.request_id]
                expired.append(request.request_id)
            heapq.heappop(order)            # expired now, or a wait that already ended
        return expired

    def _age_waiting(self, now: float) -> None:
        """Re-rank the queue, but only once some request is due to gain a level."""
        if now < self._next_aging_at:
            return
        aging_s = self.config.aging_s
        if any([r.age(now, aging_s) for r in self.waiting]):
            heapq.heapify(self.waiting)
        self._next_aging_at = min((r.next_aging_at(aging_s) for r in self.waiting), default=math.inf)

    def _enqueue(self, request: SchedRequest) -> None:
        heapq.heappush(self.waiting, request)
        heapq.heappush(self._wait_order, (request.wait_began, request.num_preemptions, request))
        self._next_aging_at = min(self._next_aging_at, request.next_aging_at(self.config.aging_s))

    # ---- preemption ----

    def _withdraw_for(self, request: SchedRequest, now: float, preempted: list[str]) -> bool:
        """Take back one request of lower priority that was sent ahead into the backend's
        own queue and has not started there, to make room for `request` (llama.cpp and Ollama
        drop a queued request whose client left, so the backend never runs it)."""
        priority = request.priority
        if not any(p > priority for p in self._running_priorities):
            return False                    # nothing to outrank: no order of the running needed
        victims = [r for r in self._sent_ahead() if r.priority > priority]
        return self._take_back(victims, lambda r: (r.priority, r.admission_seq), now, preempted)

    def _sent_ahead(self) -> list[SchedRequest]:
        """Running requests the backend has not started yet, as far as the daemon can tell:
        it runs `num_backend_slots` at once in the order they were sent (a request of several
        prompts on as many slots), and a request whose first output arrived has started."""
        if self._num_slots_held <= self.num_backend_slots:
            return []
        ahead, num_taken = [], 0
        for request in sorted(self.running.values(), key=lambda r: r.admission_seq):
            if num_taken >= self.num_backend_slots and not request.generating:
                ahead.append(request)
            num_taken += 1 + len(request.extra_slots)
        return ahead

    def _preempt_for(self, request: SchedRequest, now: float, scheduled: list[ScheduledRequest],
                     preempted: list[str]) -> bool:
        """Make room for a waiting priority-0 request by preempting one victim."""
        if not (self.config.preempt and request.priority == 0):
            return False
        just_started = {s.request_id for s in scheduled}
        victims = [r for r in self.running.values()
                   if not r.stream and r.priority > 0 and r.request_id not in just_started]
        return self._take_back(victims, lambda r: (r.priority, r.arrival_time, r.request_id), now, preempted)

    def _take_back(self, victims: list[SchedRequest], worst_first, now: float, preempted: list[str]) -> bool:
        """Requeue the victim ranked highest by `worst_first`; False when there is none."""
        if not victims:
            return False
        victim = max(victims, key=worst_first)
        self._preempt(victim, now, discard_output=True)
        preempted.append(victim.request_id)
        return True

    def _preempt(self, request: SchedRequest, now: float, *, discard_output: bool) -> None:
        """Back to the queue; a cancelled backend call restarts from the prompt."""
        self._release(request)
        request.set_status(RequestStatus.PREEMPTED)
        request.num_preemptions += 1
        request.queued_at, request.waited_s = now, 0.0     # a new wait, of queue_timeout_s
        request.effective_priority = request.priority
        if discard_output:
            request.output_token_ids.clear()
        self._enqueue(request)

    # ---- bookkeeping ----

    def _finish(self, request: SchedRequest, status: RequestStatus, now: float) -> None:
        assert status in FINISHED, status
        self._release(request)
        request.set_status(status)
        del self._requests[request.request_id]
        service_s = max(0.0, now - request.started_at)
        self._mean_service_s += 0.2 * (service_s - self._mean_service_s)

    def _release(self, request: SchedRequest) -> None:
        """Give back the slots and blocks of a running request."""
        self.pool.free(request.request_id)
        self._remove_running(request)
        for slot in (request.slot, *request.extra_slots):
            if slot < self.max_running:
                heapq.heappush(self._free_slots, slot)
        self._num_slots_held -= 1 + len(request.extra_slots)
        request.slot, request.extra_slots = None, ()

    def _add_running(self, request: SchedRequest) -> None:
        self.running[request.request_id] = request
        priorities = self._running_priorities
        priorities[request.priority] = priorities.get(request.priority, 0) + 1

    def _remove_running(self, request: SchedRequest) -> None:
        del self.running[request.request_id]
        priorities = self._running_priorities
        if priorities[request.priority] == 1:
            del priorities[request.priority]
        else:
            priorities[request.priority] -= 1

    def _remove_waiting(self, request: SchedRequest) -> None:
        if self.waiting[0] is request:
            heapq.heappop(self.waiting)
        else:
            self.waiting.remove(request)
            heapq.heapify(self.waiting)

    def _over_context(self, request: SchedRequest) -> BadRequest:
        """A request the whole pool cannot hold: max_tokens named when the prompt alone fits;
        else the prompt, whose field (messages, prompt) the caller names (param None)."""
        num_pool_tokens = self.pool.num_blocks * self.pool.block_size
        if math.ceil(request.num_tokens / self.pool.block_size) <= self.pool.num_blocks:
            num_slots = self._slots_wanted(request)
            each = f" for each of the {num_slots} prompts run at once" if num_slots > 1 else ""
            return BadRequest(f"the prompt (about {request.num_tokens} tokens) plus max_tokens "
                              f"({request.max_tokens}){each} exceed the backend's context ({num_pool_tokens} tokens)",
                              param="max_tokens", code=CONTEXT_LENGTH_EXCEEDED)
        return BadRequest(f"the prompt (about {request.num_tokens} tokens) exceeds the backend's context "
                          f"({num_pool_tokens} tokens)", code=CONTEXT_LENGTH_EXCEEDED)

    def _num_blocks_needed(self, request: SchedRequest) -> int:
        return math.ceil((request.num_tokens + self._num_output_reserved(request)) / self.pool.block_size)

    def _retry_after_s(self) -> int:
        """Seconds until a slot is likely free: mean service time x queue depth per slot."""
        return max(1, math.ceil(self._mean_service_s * len(self.waiting) / self.max_running))
