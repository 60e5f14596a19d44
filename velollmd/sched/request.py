"""A scheduled request: its identity, priority, token ids and status life cycle.

Requests order by (effective priority, arrival time, request id), 0 being the most urgent, so
they can sit in a heapq. The effective priority starts at the request's priority and is
lowered (made more urgent) by aging in the scheduler. Status changes go through
`set_status`, which asserts that the move is in the transition table.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_PRIORITY = 9   # lowest urgency; 0 is the highest


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"            # was running, cancelled and requeued
    FINISHED_STOPPED = "stop"          # the model stopped (EOS / stop string)
    FINISHED_LENGTH = "length"         # hit max_tokens or the context
    FINISHED_ABORTED = "abort"         # the client went away or the caller cancelled it
    FINISHED_ERROR = "error"           # the backend failed
    FINISHED_TIMED_OUT = "timeout"     # waited longer than queue_timeout_s (503)

    # Members are singletons compared by identity: hash them so, in C. Enum's own __hash__
    # hashes the name in Python, on every set or dict lookup (set_status does two per move).
    __hash__ = object.__hash__

    @property
    def is_finished(self) -> bool:
        return self in FINISHED

    @property
    def finish_reason(self) -> str | None:
        """OpenAI finish_reason wording for finished statuses."""
        return self.value if self.is_finished else None


FINISHED = frozenset(s for s in RequestStatus if s.name.startswith("FINISHED_"))
# The members on every request's path (here, scheduler.py, admission.py), bound once:
# RequestStatus.X goes through EnumType's attribute hook (about 1k instructions per access on
# Python 3.11), a module global does not.
WAITING, RUNNING, PREEMPTED = RequestStatus.WAITING, RequestStatus.RUNNING, RequestStatus.PREEMPTED
STOPPED = RequestStatus.FINISHED_STOPPED

TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.WAITING: frozenset({RequestStatus.RUNNING, RequestStatus.FINISHED_ABORTED,
                                      RequestStatus.FINISHED_TIMED_OUT}),
    RequestStatus.RUNNING: frozenset({RequestStatus.PREEMPTED, RequestStatus.FINISHED_STOPPED,
                                      RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED,
                                      RequestStatus.FINISHED_ERROR}),
    RequestStatus.PREEMPTED: frozenset({RequestStatus.RUNNING, RequestStatus.FINISHED_ABORTED,
                                        RequestStatus.FINISHED_TIMED_OUT}),
    **{status: frozenset() for status in FINISHED},
}


@dataclass(eq=False)
class SchedRequest:
    """One generation request as the scheduler sees it.

    `prompt_token_ids` may be real token ids (engine) or stable pseudo-token ids derived from
    the prompt text (backends): the block allocator only needs equal prefixes to map to equal
    ids. `max_tokens` bounds the output; backends reserve it at admission.
    """
    request_id: str
    model: str
    prompt_token_ids: Sequence[int]                # a list, or an int32 array (backends)
    max_tokens: int
    arrival_time: float
    priority: int = 5
    stream: bool = False
    num_parallel: int = 1                         # backend requests it runs as at once (several prompts)
    status: RequestStatus = RequestStatus.WAITING
    effective_priority: int = field(init=False)
    queued_at: float = field(init=False)          # start of the current wait (re-set on requeue)
    # Seconds it already waited in a queue before this scheduler's (the daemon's, for a request
    # in the engine's own queue): its first wait here gets what queue_timeout_s has left.
    waited_s: float = 0.0
    started_at: float = field(init=False, default=0.0)   # when it last started running
    slot: int | None = None
    extra_slots: tuple[int, ...] = ()             # slots it holds beside `slot` (num_parallel > 1)
    output_token_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    num_output_tokens: int | None = None          # as the backend's answer reported them
    generating: bool = False                      # its first output reached the daemon
    admission_seq: int = 0                        # order among admissions to its backend

    def __post_init__(self):
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be 0..{MAX_PRIORITY}, got {self.priority}")
        self.effective_priority = self.priority
        self.queued_at = self.arrival_time

    def __lt__(self, other: SchedRequest) -> bool:
        return self.sort_key < other.sort_key

    @property
    def sort_key(self) -> tuple[int, float, str]:
        return (self.effective_priority, self.arrival_time, self.request_id)

    @property
    def all_token_ids(self) -> Sequence[int]:
        """Prompt then output ids; the prompt itself (list or int32 array) while nothing was
        generated, so the allocator can read it without a copy."""
        if not self.output_token_ids:
            return self.prompt_token_ids
        return [*self.prompt_token_ids, *self.output_token_ids]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def set_status(self, status: RequestStatus) -> None:
        assert status in TRANSITIONS[self.status], f"{self.request_id}: {self.status} -> {status}"
        self.status = status

    @property
    def is_waiting(self) -> bool:
        return self.status is WAITING or self.status is PREEMPTED

    @property
    def wait_began(self) -> float:
        """When the current wait began, counting the wait in a queue before this one."""
        return self.queued_at - self.waited_s

    def next_aging_at(self, aging_s: float) -> float:
        """When age() will next lower effective_priority (inf once it is 0)."""
        if self.effective_priority == 0:
            return math.inf
        return self.wait_began + (self.priority - self.effective_priority + 1) * aging_s

    def age(self, now: float, aging_s: float) -> bool:
        """Lower effective_priority by one level per aging_s waited, counting the wait in a queue
        before this one (the daemon's, for the engine's queue: a request does not start aging
        again from its priority when it moves on); True if it changed."""
        began = self.wait_began
        levels = int((now - began) // aging_s) if now > began else 0
        effective = max(0, self.priority - levels)
        changed = effective != self.effective_priority
        self.effective_priority = effective
        return changed
