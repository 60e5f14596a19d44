"""Circuit breaker per backend: stop sending requests to a backend that keeps failing.

closed --(num_failures consecutive failures)--> open --(cooldown_s)--> half-open
half-open lets exactly one probe request through: success closes the circuit, failure
opens it again for another cooldown, no verdict (its client left) lets the next request probe. Health checks count as successes and failures too,
so a backend that comes back is closed by the next health check without a client paying
for the probe. Time is passed in; nothing here reads a clock.
"""
from __future__ import annotations

import enum


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Bound once: BreakerState.X goes through EnumType's attribute hook (about 1k instructions per
# access on Python 3.11); allow() and would_allow() run per request.
_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class CircuitBreaker:
    def __init__(self, num_failures: int = 3, cooldown_s: float = 5.0):
        if num_failures < 1:
            raise ValueError("num_failures must be >= 1")
        self.num_failures = num_failures
        self.cooldown_s = cooldown_s
        self.state = _CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._probe_out = False           # half-open: the one probe is in flight
        self.num_opens = 0

    def allow(self, now: float) -> bool:
        """May a request go to this backend now? In half-open, True once (the probe)."""
        if self.state is _OPEN and now - self.opened_at >= self.cooldown_s:
            self.state, self._probe_out = _HALF_OPEN, False
        if self.state is _CLOSED:
            return True
        if self.state is _HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def would_allow(self, now: float) -> bool:
        """allow() without taking the half-open probe (for ranking candidates)."""
        if self.state is _CLOSED:
            return True
        if self.state is _OPEN:
            return now - self.opened_at >= self.cooldown_s
        return not self._probe_out

    def release_probe(self) -> None:
        """The probe ended with no verdict on the backend (its client left, the request was
        refused before reaching it): the next request may probe."""
        self._probe_out = False

    def record_success(self) -> None:
        self.state = _CLOSED
        self.consecutive_failures = 0
        self._probe_out = False

    def record_failure(self, now: float) -> bool:
        """Count a failure; True when this failure opened the circuit."""
        self.consecutive_failures += 1
        reopen = self.state is _HALF_OPEN
        if self.state is not _OPEN and (
                reopen or self.consecutive_failures >= self.num_failures):
            self.state, self.opened_at, self._probe_out = _OPEN, now, False
            self.num_opens += 1
            return True
        return False
