"""Per-key rate limits and usage: requests per minute, tokens per minute and per day.

Everything is in memory, per key name, with O(1) work per request:

- requests per minute: the admission times of the key's last `rpm` requests (a ring). The
  next request fits when the oldest of them is a minute old, so a refusal says exactly how
  long to wait: the seconds until that slot frees.
- tokens per minute / per day: rolling windows of fixed buckets (60 x 1 s, 1440 x 1 min) with
  a running total; a bucket is cleared when the ring comes round to it.

A request is let in while the key's window is under its budget; the tokens it uses are counted
when its answer says them (prompt + completion tokens of the usage), so one request may overrun
a token budget by its own size, and the next one waits.

The ledger is keyed by name and kept across reloads: a key whose name stays keeps its windows
and counters, with its new limits. Its windows also outlive a restart: `windows()` is them as
plain data, the age of each entry in seconds at a wall-clock time (the ledger's own clock is
monotonic, which a reboot resets), and `restore()` takes them back, entries older than their
window dropped. A token bucket is kept as the age of its start, so a restored window lets its
tokens go at most one bucket (1 s, 1 min) early, never late. The lifetime counters restart.
A file may be taken back while the ledger runs (a reload that turns persistence on): an
account takes a file saved before it started counting (an earlier run's: it holds none of
that), not one saved since (this daemon's own, before a reload turned persistence off: it
holds all of that already, and would count it twice).
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..errors import RateLimited

MINUTE_S = 60.0
DAY_S = 86400.0


@dataclass(frozen=True)
class KeyLimits:
    rpm: int = 0                 # requests per minute (0 = no limit)
    tpm: int = 0                 # tokens per minute
    tokens_per_day: int = 0


class RequestWindow:
    """Admitted requests of the last minute, as far as a limit of `limit` needs them."""

    def __init__(self, limit: int, window_s: float = MINUTE_S, times=()):
        self.window_s = window_s
        self.times: deque[float] = deque(times, maxlen=limit)   # (limit,) admission times, oldest first

    def wait(self, now: float) -> float:
        """Seconds until another request fits (0: it fits now)."""
        if len(self.times) < self.times.maxlen:
            return 0.0
        return max(0.0, self.times[0] + self.window_s - now)

    def add(self, now: float) -> None:
        self.times.append(now)

    def resized(self, limit: int) -> RequestWindow:
        """The same history under a new limit (the newest `limit` times are what matter)."""
        return RequestWindow(limit, self.window_s, self.times)

    def ages(self, now: float) -> list[float]:
        """The seconds since each admission still in the window, oldest first."""
        return [now - t for t in self.times if now - t < self.window_s]

    def restore(self, now: float, ages: list[float]) -> None:
        """Add the admissions `ages` ago still in the window, in time order with those held."""
        earlier = [now - age for age in ages if age < self.window_s]
        self.times = deque(sorted([*earlier, *self.times]), maxlen=self.times.maxlen)


class TokenWindow:
    """Tokens counted in the last `window_s`, in `num_buckets` buckets of window_s / num_buckets."""

    def __init__(self, window_s: float, num_buckets: int):
        self.bucket_s = window_s / num_buckets
        self.buckets = [0] * num_buckets       # (num_buckets,) tokens; bucket of slot s at s % num_buckets
        self.total = 0
        self.slot: int | None = None           # the newest bucket's slot: floor(time / bucket_s)

    def _advance(self, now: float) -> None:
        slot = int(now // self.bucket_s)
        if self.slot is not None and slot > self.slot:
            num_buckets = len(self.buckets)
            if slot - self.slot >= num_buckets:
                self.buckets, self.total = [0] * num_buckets, 0
            else:
                for passed in range(self.slot + 1, slot + 1):
                    index = passed % num_buckets
                    self.total -= self.buckets[index]
                    self.buckets[index] = 0
        if self.slot is None or slot > self.slot:
            self.slot = slot

    def add(self, now: float, tokens: int) -> None:
        """Count `tokens` at `now`, or at an earlier time still in the window (a restore)."""
        self._advance(now)
        slot = int(now // self.bucket_s)
        if slot <= self.slot - len(self.buckets):
            return
        self.buckets[slot % len(self.buckets)] += tokens
        self.total += tokens

    def used(self, now: float) -> int:
        self._advance(now)
        return self.total

    def ages(self, now: float) -> list[tuple[float, int]]:
        """(seconds since the bucket's start, tokens) of each bucket holding tokens, oldest first."""
        self._advance(now)
        if self.slot is None:
            return []
        num_buckets = len(self.buckets)
        slots = range(self.slot - num_buckets + 1, self.slot + 1)
        return [(now - slot * self.bucket_s, self.buckets[slot % num_buckets])
                for slot in slots if self.buckets[slot % num_buckets]]

    def restore(self, now: float, ages: list[tuple[float, int]]) -> None:
        window_s = self.bucket_s * len(self.buckets)
        for age, tokens in ages:
            if age < window_s:
                self.add(now - age, tokens)

    def wait(self, now: float, limit: int) -> float:
        """Seconds until the tokens in the window drop below `limit` (0: they are below now).
        The k-th oldest bucket (slot newest - n + k) leaves the window at (newest + k) x bucket_s."""
        if self.used(now) < limit:
            return 0.0
        num_buckets, remaining = len(self.buckets), self.total
        for k in range(1, num_buckets + 1):
            remaining -= self.buckets[(self.slot + k) % num_buckets]
            if remaining < limit:
                return max(0.0, (self.slot + k) * self.bucket_s - now)
        raise AssertionError("a window whose every bucket has expired holds no tokens")


class KeyAccount:
    """One key's limits, windows and lifetime counters."""

    def __init__(self, name: str, limits: KeyLimits, since: float):
        self.name = name
        self.limits = limits
        self.since = since                      # when it started counting (wall clock)
        self.requests = RequestWindow(limits.rpm) if limits.rpm else None
        self.tokens_minute = TokenWindow(MINUTE_S, 60)
        self.tokens_day = TokenWindow(DAY_S, 1440)
        self.num_requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cache_hits = 0
        self.rate_limited: dict[str, int] = {"requests": 0, "tokens": 0, "tokens_per_day": 0}

    def relimit(self, limits: KeyLimits) -> None:
        if not limits.rpm:
            self.requests = None
        elif self.requests is None:
            self.requests = RequestWindow(limits.rpm)
        elif limits.rpm != self.limits.rpm:
            self.requests = self.requests.resized(limits.rpm)
        self.limits = limits

    def waits(self, now: float) -> dict[str, float]:
        """Each limit the key is over, with the seconds until it is not."""
        limits, waits = self.limits, {}
        if self.requests is not None:
            waits["requests"] = self.requests.wait(now)
        if limits.tpm:
            waits["tokens"] = self.tokens_minute.wait(now, limits.tpm)
        if limits.tokens_per_day:
            waits["tokens_per_day"] = self.tokens_day.wait(now, limits.tokens_per_day)
        return {limit: wait for limit, wait in waits.items() if wait > 0}

    def add_tokens(self, now: float, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.tokens_minute.add(now, prompt + completion)
        self.tokens_day.add(now, prompt + completion)

    def windows(self, now: float) -> dict:
        """The limit windows as plain data (`restore` takes it back)."""
        return {"requests": self.requests.ages(now) if self.requests is not None else [],
                "tokens_minute": self.tokens_minute.ages(now), "tokens_day": self.tokens_day.ages(now)}

    def restore(self, now: float, windows: dict, elapsed: float) -> None:
        """`windows` as `windows()` gave them `elapsed` seconds ago."""
        if self.requests is not None:
            self.requests.restore(now, [age + elapsed for age in windows["requests"]])
        self.tokens_minute.restore(now, [(age + elapsed, tokens) for age, tokens in windows["tokens_minute"]])
        self.tokens_day.restore(now, [(age + elapsed, tokens) for age, tokens in windows["tokens_day"]])

    def usage(self, now: float) -> dict:
        limits = self.limits
        return {"name": self.name, "requests": self.num_requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cache_hits": self.cache_hits,
                "rate_limited": dict(self.rate_limited),
                "limits": {"rpm": limits.rpm, "tpm": limits.tpm, "tokens_per_day": limits.tokens_per_day},
                "window": {"tokens_last_minute": self.tokens_minute.used(now),
                           "tokens_last_day": self.tokens_day.used(now)}}


LIMIT_WORDS = {"requests": "requests per minute", "tokens": "tokens per minute",
               "tokens_per_day": "tokens per day"}


class KeyLedger:
    """Every named key's account. The name "" (no key, or an open server) is not accounted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        self.clock, self.wall_clock = clock, wall_clock
        self.accounts: dict[str, KeyAccount] = {}
        self.shared = False      # limits are checked by the shared tier (Redis): see admit(defer=)
        self.generation = 0      # changes with the windows (a request or tokens counted)

    def configure(self, limits: dict[str, KeyLimits]) -> None:
        """The keys now configured: accounts of names that stay keep their windows and counters."""
        accounts = {}
        for name, key_limits in limits.items():
            account = self.accounts.get(name)
            if account is None:
                account = KeyAccount(name, key_limits, self.wall_clock())
            else:
                account.relimit(key_limits)
            accounts[name] = account
        self.accounts = accounts

    @property
    def limited(self) -> bool:
        """Whether some key has a limit (else its windows hold nothing worth keeping)."""
        return any(account.limits != KeyLimits() for account in self.accounts.values())

    def admit(self, name: str, *, defer: bool = False) -> None:
        """Count one request of key `name`, or refuse it: RateLimited (429) with Retry-After,
        the whole seconds until every limit it is over lets it in. With `defer` while the limits
        are shared, nothing happens here: the caller awaits the shared check, then calls
        admitted() or refuse() (or admit() again, when the shared tier cannot answer)."""
        account = self.accounts.get(name)
        if account is None or defer and self.shared:
            return
        waits = account.waits(self.clock())
        if waits:
            raise self.refuse(name, waits)
        self.admitted(name)

    def admitted(self, name: str) -> None:
        """Count a request let in (its own instance's window keeps it too, for a fallback)."""
        account = self.accounts.get(name)
        if account is None:
            return
        if account.requests is not None:
            account.requests.add(self.clock())
        account.num_requests += 1
        self.generation += 1

    def refuse(self, name: str, waits: dict[str, float]) -> RateLimited:
        """Count a refusal of key `name` over the limits in `waits` ({limit: seconds}); the 429."""
        account = self.accounts[name]
        for limit in waits:
            account.rate_limited[limit] += 1
        return _refusal(account, waits)

    def record_usage(self, name: str, usage: dict | None) -> None:
        """An answer's usage: its prompt and completion tokens go to the key's budgets."""
        account = self.accounts.get(name)
        if account is None or not isinstance(usage, dict):
            return
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        account.add_tokens(self.clock(), prompt, completion)
        self.generation += 1

    def record_cache_hit(self, name: str) -> None:
        account = self.accounts.get(name)
        if account is not None:
            account.cache_hits += 1

    def usage(self) -> list[dict]:
        now = self.clock()
        return [account.usage(now) for account in self.accounts.values()]

    def windows(self) -> dict | None:
        """Every key's limit windows, as plain data for a state file; None with no keys."""
        if not self.accounts:
            return None
        now = self.clock()
        return {"saved_at": self.wall_clock(),
                "keys": {name: account.windows(now) for name, account in self.accounts.items()}}

    def restore(self, state: dict) -> int:
        """Take back what `windows()` gave (of another process, maybe): the windows of the keys
        still configured that began counting after it was saved (see the module's docstring),
        aged by the wall-clock time since; the number of keys restored."""
        elapsed = max(0.0, self.wall_clock() - state["saved_at"])
        now = self.clock()
        restored = [name for name in state["keys"]
                    if name in self.accounts and self.accounts[name].since > state["saved_at"]]
        for name in restored:
            self.accounts[name].restore(now, state["keys"][name], elapsed)
        return len(restored)


def _count(value) -> int:
    """A token count from a backend's usage: a non-negative int, else 0."""
    return value if type(value) is int and value > 0 else 0


def _refusal(account: KeyAccount, waits: dict[str, float]) -> RateLimited:
    retry_after = max(1, math.ceil(max(waits.values())))
    limits = account.limits
    amounts = {"requests": limits.rpm, "tokens": limits.tpm, "tokens_per_day": limits.tokens_per_day}
    reached = ", ".join(f"{LIMIT_WORDS[limit]} (limit {amounts[limit]})" for limit in waits)
    return RateLimited(f"rate limit reached for key '{account.name}' on {reached}; "
                       f"try again in {retry_after}s", code="rate_limit_exceeded",
                       headers={"retry-after": str(retry_after)})
