"""The asyncio face of the per-backend Schedulers: wait for a slot, hold it, give it back.

    async with admission.slot(backend, request):    # waits; 429 when the queue is full,
        ...call the backend...                      # 503 after queue_timeout_s

Each backend gets a Scheduler sized from the width it says it has (config, llama.cpp /props,
...) plus the requests sent ahead per slot, or, when it does not say, from an adaptive limit
that follows its latency (limiter.py); the token budget is num_ctx per request it may run.
A request that finds nothing waiting and room to start is admitted at once; otherwise
`slot()` queues the request, pumps the scheduler (schedule() and hand out what it admitted)
and sleeps on a future until admitted or expired. Leaving the
block, however it is left (return, error, cancel by a client that went away), finishes the
request in the scheduler, which frees its slot and blocks, and pumps again to wake the next
waiter. With `[scheduler] preempt`, a priority-0 request that finds no free slot makes the
scheduler preempt a lower-priority non-streaming request: its task is cancelled, and its
`slot()` block raises `Preempted` instead of CancelledError; the caller enters `slot()` again
with the same request, which is already back in the queue.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..config import SchedulerConfig
from ..errors import QUEUE_TIMEOUT, BackendBusy, RateLimited, VeloError
from ..looplag import LoopLag, busy_lag, monitor
from .limiter import AdaptiveLimit, per_token
from .request import STOPPED, RequestStatus, SchedRequest
from .scheduler import ScheduledRequest, Scheduler, budget_blocks, queue_timeout_error

COUNT_FIELDS = ("num_admitted", "num_rejected", "num_timed_out", "num_preempted")   # BackendQueue's counters


class Preempted(Exception):
    """The request was preempted for a more urgent one; enter slot() again to wait."""


@dataclass
class BackendQueue:
    """One backend's scheduler plus the asyncio state of its requests."""
    scheduler: Scheduler
    num_slots: int | None             # the width the backend said it has; None: unknown
    limit: AdaptiveLimit | None = None    # learns the width of a backend that does not say it
    config: SchedulerConfig | None = None  # the settings it was built with
    grants: dict[str, asyncio.Future] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)
    preempted: set[str] = field(default_factory=set)
    num_admitted: int = 0
    num_rejected: int = 0             # 429: queue full
    num_timed_out: int = 0            # 503: waited past queue_timeout_s
    num_preempted: int = 0
    busy_seq: int = 0                 # the last admission before the last busy shrink (on_busy)
    budget_wanted: int | None = None  # blocks the budget shrinks to once the running requests fit

    def keep_counts(self, old: BackendQueue) -> None:
        """Take over the counters of the queue this one replaces (a reload): /metrics exports
        them as counters, which never go down while the process lives."""
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(old, name))

    def load(self) -> float:
        """Requests running or waiting per request it may run."""
        return (len(self.scheduler.running) + len(self.scheduler.waiting)) / self.scheduler.max_running

    def record(self, request: SchedRequest, now: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """A request finished well: its latency feeds the adaptive limit, if any, with the
        part of it the daemon's own event loop added when busy: latency that is not the
        backend's queue. Each hop of a request waits about one lag for its turn: a stream has
        a hop per token, so per token about one lag; an answer in one piece is counted one hop
        (it has a few: the lag is under-subtracted rather than over). `loop`: the one it ran on,
        when known (else the running one)."""
        if self.limit is not None:
            latency = per_token(now - request.started_at, request.num_output_tokens)
            lag = busy_lag(loop)
            lag = lag if request.stream else per_token(lag, request.num_output_tokens)
            self.limit.on_sample(latency, len(self.scheduler.running), lag)
            if self.limit.limit != self.scheduler.max_running:
                self.scheduler.set_max_running(self.limit.limit)

    def take_width(self, width: int, queue_per_slot: int, num_ctx: int) -> None:
        """The backend said its width while requests ran under the adaptive limit (llama-server
        answers /props once loaded): the limit stops here, not when the queue next empties,
        which under steady load it may never do, while the limit kept probing past the width
        (up to max_concurrency) though the backend never runs more. From now on the queue runs
        the width plus `queue_per_slot` sent ahead per slot, and its token budget is num_ctx
        for each of those (not for max_concurrency: block_usage would read low), as a queue
        built for it does; the budget shrinks as soon as the requests running fit in it."""
        max_running = width * (1 + queue_per_slot)
        self.limit, self.num_slots = None, width
        self.scheduler.num_backend_slots = width
        self.scheduler.set_max_running(max_running)
        self.budget_wanted = budget_blocks(num_ctx, max_running, self.scheduler.pool.block_size)
        self.fit_budget()

    def fit_budget(self) -> None:
        """The budget take_width wants, once the requests running fit in it."""
        if self.budget_wanted is not None and self.scheduler.resize_budget(self.budget_wanted):
            self.budget_wanted = None

    def on_busy(self, request: SchedRequest) -> None:
        """The backend refused `request` as busy (BackendBusy): the adaptive limit, if any,
        shrinks, once per busy episode. A request admitted before the last such shrink was
        sent under the limit that shrink already cut: its refusal is the same episode."""
        if self.limit is None or request.admission_seq <= self.busy_seq:
            return
        self.busy_seq = self.scheduler.last_admission_seq
        self.limit.on_busy(len(self.scheduler.running))
        self.scheduler.set_max_running(self.limit.limit)


class Admission:
    def __init__(self, config: SchedulerConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.queues: dict[str, BackendQueue] = {}
        self._num_users: dict[int, int] = {}        # id(backend) -> requests waiting or running on it
        self._idle: dict[int, asyncio.Event] = {}   # set when that count drops to 0

    def configure(self, config: SchedulerConfig) -> None:
        """New settings (a reload): each queue is rebuilt with them once nothing is in it, and
        takes their queue limits at once (queue_of)."""
        self.config = config

    def queue_of(self, backend: Any) -> BackendQueue:
        """The backend's queue; rebuilt when its width or the settings changed and nothing is in it.
        A busy one takes new settings' queue limits at once (max_queue, queue_timeout_s,
        aging_s, preempt: its scheduler reads them from its config); its width, block size and
        requests sent ahead change with the rebuild."""
        queue = self.queues.get(backend.name)
        width = backend.num_slots if backend.slots_source else None
        if queue is None or (queue.num_slots != width or queue.config is not self.config) \
                and not queue.scheduler._requests:
            rebuilt = self._new_queue(backend, width)
            if queue is not None:
                rebuilt.keep_counts(queue)
            queue = self.queues[backend.name] = rebuilt
        else:
            if queue.limit is not None and width is not None:
                queue.take_width(width, self.config.backend_queue_per_slot, backend.context_size())
            if queue.scheduler.config is not self.config:
                queue.scheduler.config = self.config
        return queue

    async def drained(self, backend: Any) -> None:
        """Wait until no request waits for or holds a slot on `backend` (this object, not its
        name: a changed backend's successor shares the name)."""
        while self._num_users.get(id(backend)):
            await self._idle.setdefault(id(backend), asyncio.Event()).wait()

    def forget(self, name: str) -> None:
        """Drop an empty queue of a backend that is no longer configured."""
        queue = self.queues.get(name)
        if queue is not None and not queue.scheduler._requests:
            del self.queues[name]

    def _new_queue(self, backend: Any, width: int | None) -> BackendQueue:
        """A known width W runs its slots plus `backend_queue_per_slot` each: W x (1 + that)
        at once, by design above W (queue-ahead: the requests past W wait inside the backend, so
        a slot that frees starts the next without a round trip through the daemon), and fixed:
        no adaptive limit runs over a known width, so none probes past it (one learnt while
        the queue was adaptive stops it at once: BackendQueue.take_width). An unknown width
        starts at `initial_concurrency` and follows the adaptive limit up to `max_concurrency`;
        that limit is its estimate of the width, with nothing sent ahead."""
        config = self.config
        if width is not None:
            max_running = width * (1 + config.backend_queue_per_slot)
            scheduler = Scheduler.for_backend(config, max_running, backend.context_size(),
                                              num_backend_slots=width)
            return BackendQueue(scheduler, width, config=config)
        limit = AdaptiveLimit(config.initial_concurrency, config.min_concurrency, config.max_concurrency) \
            if config.adaptive_concurrency else None
        scheduler = Scheduler.for_backend(config, config.initial_concurrency, backend.context_size(),
                                          max_limit=config.max_concurrency)
        return BackendQueue(scheduler, None, limit, config=config)

    def load(self, backend: Any) -> float:
        return self.queue_of(backend).load()

    def slot(self, backend: Any, request: SchedRequest,
             on_admitted: Callable[[Any, float], None] | None = None) -> Slot:
        """`async with`: wait for a slot on `backend`, hold it for the block (see the module's
        docstring). `on_admitted(backend, seconds waited)` runs once admitted, before the
        block; if it raises, the slot is left as by an error in the block."""
        return Slot(self, backend, request, on_admitted)

    def _finish_soon(self, backend: Any, queue: BackendQueue, request: SchedRequest,
                     lag: LoopLag | None = None) -> None:
        """A request that ended well gives its slot back (and its latency to the limit) a moment
        later, in a callback of this loop turn: what its task does next, writing the answer,
        comes first, and the scheduler's, allocator's and limiter's bookkeeping stay off the
        answer's path. It can no longer be preempted (no task to cancel); its latency ends now."""
        task = queue.tasks.pop(request.request_id, None)
        loop = task.get_loop() if task is not None else asyncio.get_running_loop()
        now = self.clock()

        def finish() -> None:
            try:
                self._finish(backend, queue, request, STOPPED, now, loop)
            finally:
                self._leave(backend, lag)
        loop.call_soon(finish)

    def _leave(self, backend: Any, lag: LoopLag | None = None) -> None:
        """One request less on `backend` (and in flight for the loop's lag monitor `lag`)."""
        if lag is not None:
            lag.release()
        key = id(backend)               # backends need not be hashable; a counted one is alive
        self._num_users[key] -= 1
        if not self._num_users[key]:
            del self._num_users[key]
            idle = self._idle.pop(key, None)
            if idle is not None:
                idle.set()

    # ---- waiting ----

    def _start_at_once(self, queue: BackendQueue, request: SchedRequest,
                       task: asyncio.Task) -> ScheduledRequest | None:
        """A new request that nothing waits ahead of and that can start now is admitted here
        (Scheduler.start_at_once): no grant future, no schedule() pass, no waiting coroutine.
        None when it must queue (_acquire), or when a preempted request has yet to stop (its
        task gets the turn first: see _wait)."""
        if queue.preempted or queue.scheduler.get_request(request.request_id) is not None:
            return None
        try:
            scheduled = queue.scheduler.start_at_once(request, self.clock())
        except Exception:
            queue.num_rejected += 1
            raise
        if scheduled is not None:
            queue.num_admitted += 1
            queue.tasks[request.request_id] = task
        return scheduled

    async def _acquire(self, backend: Any, queue: BackendQueue, request: SchedRequest,
                       task: asyncio.Task) -> ScheduledRequest:
        rid = request.request_id
        if queue.scheduler.get_request(rid) is None:
            try:
                queue.scheduler.add_request(request, self.clock())
            except Exception:
                queue.num_rejected += 1
                raise
            queue.grants[rid] = task.get_loop().create_future()    # the task's loop: no getpid
        queue.tasks[rid] = task
        try:                                   # whatever fails, the request leaves the queue
            self._pump(backend, queue)
            return await self._wait(backend, queue, request)
        except BaseException:
            self._finish(backend, queue, request, RequestStatus.FINISHED_ABORTED)
            raise

    async def _wait(self, backend: Any, queue: BackendQueue, request: SchedRequest) -> ScheduledRequest:
        while True:
            grant = queue.grants[request.request_id]
            if grant.done() and not queue.preempted:   # admitted at once: no loop turn, no timer
                return grant.result()                  # (a victim first gets its turn to stop)
            remaining = request.queued_at + self.config.queue_timeout_s - self.clock()
            await asyncio.wait([grant], timeout=max(0.0, remaining) + 0.001)
            if not grant.done():
                self._pump(backend, queue)     # expires it if its time is up
            if grant.done():
                return grant.result()

    def _pump(self, backend: Any, queue: BackendQueue) -> None:
        """schedule() once and deliver the outcome to the waiting tasks."""
        loaded = backend.loaded_models                        # Ollama's /api/ps, if known
        if loaded is not None:
            queue.scheduler.set_loaded_models(loaded)
        output = queue.scheduler.schedule(self.clock())
        for scheduled in output.scheduled:
            queue.num_admitted += 1
            _resolve(queue.grants.get(scheduled.request_id), scheduled)
        for rid in output.timed_out:
            queue.num_timed_out += 1
            grant = queue.grants.get(rid)
            if grant is not None and not grant.done():
                grant.set_exception(queue_timeout_error(SimpleNamespace(request_id=rid)))
        for rid in output.preempted:
            self._preempt(queue, rid)

    def _preempt(self, queue: BackendQueue, rid: str) -> None:
        """Cancel the victim's task; it waits again on a fresh grant."""
        queue.num_preempted += 1
        queue.preempted.add(rid)
        queue.grants[rid] = asyncio.get_running_loop().create_future()
        task = queue.tasks.get(rid)
        if task is not None:
            task.cancel()

    def _take_preempted(self, queue: BackendQueue, request: SchedRequest) -> bool:
        """True when the CancelledError came from preemption alone (not a client leaving)."""
        if request.request_id not in queue.preempted:
            return False
        queue.preempted.discard(request.request_id)
        task = asyncio.current_task()
        if task.cancelling() > 1:
            return False
        task.uncancel()
        return True

    # ---- finishing ----

    def _finish(self, backend: Any, queue: BackendQueue, request: SchedRequest, status: RequestStatus,
                now: float | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Retire the request (running: finished; waiting: aborted) and wake waiters."""
        rid = request.request_id
        scheduler = queue.scheduler
        if rid in scheduler.running:
            now = self.clock() if now is None else now
            if status is STOPPED:
                queue.record(request, now, loop)
            scheduler.finish_request(rid, status, now)
            queue.fit_budget()
        elif scheduler.get_request(rid) is not None:
            scheduler.abort_request(rid)
        queue.grants.pop(rid, None)
        queue.tasks.pop(rid, None)
        queue.preempted.discard(rid)
        if scheduler.waiting:              # a freed slot only matters to a waiting request
            self._pump(backend, queue)

    def stats(self) -> dict:
        return {name: {"num_slots": q.num_slots, "concurrency_limit": q.scheduler.max_running,
                       "adaptive": q.limit is not None, "num_running": len(q.scheduler.running),
                       "num_waiting": len(q.scheduler.waiting),
                       "block_usage": round(q.scheduler.pool.usage(), 4),
                       "num_admitted": q.num_admitted, "num_rejected": q.num_rejected,
                       "num_timed_out": q.num_timed_out, "num_preempted": q.num_preempted}
                for name, q in self.queues.items()}


class Slot:
    """`async with admission.slot(backend, request)`: a class rather than an
    @asynccontextmanager (no async generator registered in the loop's WeakSet, no contextlib
    frames per request). Leaving the block well gives the slot back a moment later
    (`_finish_soon`); a preemption raises Preempted; any other way out finishes the request."""
    __slots__ = ("admission", "backend", "request", "on_admitted", "queue", "lag")

    def __init__(self, admission: Admission, backend: Any, request: SchedRequest,
                 on_admitted: Callable[[Any, float], None] | None = None):
        self.admission, self.backend, self.request = admission, backend, request
        self.on_admitted = on_admitted

    async def __aenter__(self) -> ScheduledRequest:
        admission, backend = self.admission, self.backend
        waiting = time.perf_counter()
        task = asyncio.current_task()
        self.lag = lag = monitor(task.get_loop())      # it ticks while requests are in flight
        if lag is not None:
            lag.hold()
        users = admission._num_users
        users[id(backend)] = users.get(id(backend), 0) + 1
        try:
            self.queue = queue = admission.queue_of(backend)
            started = admission._start_at_once(queue, self.request, task)
            if started is None:
                started = await admission._acquire(backend, queue, self.request, task)
        except BaseException:
            admission._leave(backend, lag)
            raise
        if self.on_admitted is not None:
            try:
                self.on_admitted(backend, time.perf_counter() - waiting)
            except BaseException as exc:
                await self.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return started

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        admission, backend, queue, request = self.admission, self.backend, self.queue, self.request
        if exc_type is None:
            try:
                admission._finish_soon(backend, queue, request, self.lag)  # leaves in that callback
            except BaseException:
                admission._leave(backend, self.lag)
                raise
            return False
        preempted = False
        _count_backend_queue(queue, request, exc)
        try:
            status = RequestStatus.FINISHED_ERROR
            if issubclass(exc_type, asyncio.CancelledError):
                preempted = admission._take_preempted(queue, request)
                if preempted:
                    raise Preempted(request.request_id) from None
                status = RequestStatus.FINISHED_ABORTED
        finally:
            try:
                if not preempted:            # a preempted request is back in the queue
                    admission._finish(backend, queue, request, status)
            finally:
                admission._leave(backend, self.lag)
        return False


def _count_backend_queue(queue: BackendQueue, request: SchedRequest, exc: BaseException) -> None:
    """A refusal by the backend's own queue (the engine's), counted as the daemon's queue
    counts its own: full (429), or waited past queue_timeout_s (503); a backend that said it
    is busy shrinks the adaptive limit (BackendQueue.on_busy)."""
    if isinstance(exc, BackendBusy):
        queue.on_busy(request)
    elif isinstance(exc, RateLimited):
        queue.num_rejected += 1
    elif isinstance(exc, VeloError) and exc.code == QUEUE_TIMEOUT:
        queue.num_timed_out += 1


def _resolve(grant: asyncio.Future | None, value) -> None:
    if grant is not None and not grant.done():
        grant.set_result(value)

