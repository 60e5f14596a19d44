"""The shared exact tier and single-flight across instances, on Redis.

Keys (under `redis_prefix`):
    e:<exact key>   an entry (cache/shared_format.py), with the cache's TTL
    l:<exact key>   the single-flight lock: the leader's token, PX redis_lock_ttl_ms
    n:<exact key>   the leader's answer was not shared (too large), PX redis_lock_ttl_ms
    done            channel: the exact key of each answer a leader finished

Single-flight: the instance whose `SET l:<key> NX PX` wins computes; the others wait for its
`done` message (or poll, every POLL_S, in case the subscription is down), read the entry and
answer from it. A waiter that finds the lock gone and no entry (the leader failed or crashed)
tries to take the lock itself; past `redis_flight_wait_ms` it computes alone, and at once when
the leader's answer was too large to share (`n:`: waiting for another leader would only
queue the instances one generation after another). Every Redis failure is counted and means "no shared answer": the request goes
on with the local tiers.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass

from ..cache.exact import CachedResponse
from ..cache.shared_format import decode_entry, encode_entry
from ..config import CacheConfig
from ..metrics import Counter
from .client import RedisAddress, RedisClient, RedisUnavailable, Script
from .limits import SharedLimits
from .resp import ReplyError

log = logging.getLogger("velollmd.shared")
POLL_S = 0.25
FLUSH_PAGE = 500                 # keys per SCAN page of a flush
RELEASE = Script("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")


@dataclass(frozen=True)
class Lease:
    """This instance holds the lock of `key` under `token`."""
    key: str
    token: str


class SharedTier:
    def __init__(self, config: CacheConfig, errors: Counter, results: Counter, client: RedisClient | None = None):
        self.config = config
        self.prefix = config.redis_prefix.encode()
        self._entries_pattern = _glob_escaped(self.prefix) + b"e:*"        # SCAN MATCH: this prefix's entries
        self.client = client or RedisClient(RedisAddress.parse(config.redis_url),
                                            timeout_s=config.redis_timeout_ms / 1000)
        self.errors, self.results = errors, results           # velollm_cache_redis_{errors_,}total
        self.limits = SharedLimits(self.client, self.prefix, self._failed)
        self.instance = os.urandom(6).hex()
        self.limits.member_prefix = self.instance
        self._num_leases = 0
        self._waiters: dict[str, list[asyncio.Future]] = defaultdict(list)
        self._listener: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- exact entries ---------------------------------------------------------------------
    async def get(self, key: str) -> tuple[CachedResponse, float] | None:
        """The shared entry of `key` and its expiry, or None (absent, foreign, corrupt, or Redis
        unavailable: a miss either way)."""
        try:
            data = await self.client.execute("GET", self._entry_key(key))
        except (RedisUnavailable, ReplyError) as exc:
            self._failed("get", exc)
            return None
        return self._decode(data)

    def _entry_key(self, key: str) -> bytes:
        return self.prefix + b"e:" + key.encode()

    def _decode(self, data) -> tuple[CachedResponse, float] | None:
        found = decode_entry(data) if data is not None else None
        if found is not None and found[1] <= time.time():
            found = None
        self.results.inc(op="get", result="hit" if found else ("miss" if data is None else "invalid"))
        return found

    def _set_command(self, key: str, entry: CachedResponse, expires_at: float) -> tuple | None:
        """SET for the entry, or None when it must stay local (too large, or already expired)."""
        data = encode_entry(entry, expires_at)
        if len(data) > self.config.redis_max_entry_bytes:
            self.results.inc(op="put", result="too_large")
            return None
        ttl_ms = math.ceil((expires_at - time.time()) * 1000) if math.isfinite(expires_at) else 0
        if math.isfinite(expires_at) and ttl_ms <= 0:
            return None
        return ("SET", self._entry_key(key), data, *(("PX", ttl_ms) if ttl_ms else ()))

    def put(self, key: str, entry: CachedResponse, expires_at: float, lease: Lease | None = None) -> None:
        """Share an answer (in the background): SET it, tell waiters, release the lock if held."""
        self._spawn(self._put(key, entry, expires_at, lease))

    async def _put(self, key: str, entry: CachedResponse | None, expires_at: float, lease: Lease | None) -> None:
        command = self._set_command(key, entry, expires_at) if entry is not None else None
        commands = [command] if command else []
        if lease is not None and entry is not None and not command:      # not shared: waiters go alone
            commands.append(("SET", self._local_key(key), b"1", "PX", self.config.redis_lock_ttl_ms))
        if lease is not None:
            commands += [("PUBLISH", self.prefix + b"done", key.encode()),
                         ("EVAL", RELEASE.source, 1, self._lock_key(key), lease.token)]
        if not commands:
            return
        try:
            replies = await self.client.pipeline(commands)
        except RedisUnavailable as exc:
            self._failed("put", exc)
            return
        if command:
            self.results.inc(op="put", result="stored" if replies[0] == "OK" else "error")

    def _local_key(self, key: str) -> bytes:
        return self.prefix + b"n:" + key.encode()

    async def flush(self) -> int | None:
        """Delete every shared entry (a flush on any instance flushes them all); how many, or
        None when Redis failed part way. SCAN in pages, so Redis never blocks on one call."""
        cursor, deleted = b"0", 0
        try:
            while True:
                cursor, keys = await self.client.execute("SCAN", cursor, "MATCH", self._entries_pattern,
                                                         "COUNT", FLUSH_PAGE)
                if keys:
                    deleted += await self.client.execute("DEL", *keys)
                if cursor in (b"0", "0", 0):
                    return deleted
        except (RedisUnavailable, ReplyError) as exc:
            self._failed("flush", exc)
            return None

    def release(self, lease: Lease) -> None:
        """The leader has no answer to share (it failed): let a waiter take over now."""
        self._spawn(self._put(lease.key, None, math.inf, lease))

    # -- single-flight -------------------------------------------------------------------
    def _lock_key(self, key: str) -> bytes:
        return self.prefix + b"l:" + key.encode()

    async def lead_or_wait(self, key: str) -> tuple[Lease | None, tuple[CachedResponse, float] | None]:
        """(lease, None): compute and put() with the lease. (None, found): another instance's
        answer. (None, None): compute alone (Redis unavailable, or the wait ran out)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.redis_flight_wait_ms / 1000
        self._num_leases += 1
        token = f"{self.instance}:{self._num_leases}"
        while True:
            try:                                  # the lock and, in the same round trip, the entry:
                taken, data, not_shared = await self.client.pipeline([  # a leader may have finished
                    ("SET", self._lock_key(key), token, "PX", self.config.redis_lock_ttl_ms, "NX"),
                    ("GET", self._entry_key(key)), ("EXISTS", self._local_key(key))])
                if isinstance(taken, ReplyError):
                    raise taken
            except (RedisUnavailable, ReplyError) as exc:
                self._failed("lock", exc)
                return None, None
            found = self._decode(data)
            if found is not None or not_shared == 1:
                if taken == "OK":
                    self.release(Lease(key, token))
                self.results.inc(op="flight", result="shared" if found is not None else "alone")
                return None, found
            if taken == "OK":
                self.results.inc(op="flight", result="lead")
                return Lease(key, token), None
            waiter = loop.create_future()
            self._waiters[key].append(waiter)
            try:
                found = await self.get(key)                   # after registering: no message is missed
                if found is not None:
                    self.results.inc(op="flight", result="shared")
                    return None, found
                if self.client.down or loop.time() >= deadline:
                    self.results.inc(op="flight", result="alone")
                    return None, None
                await asyncio.wait([waiter], timeout=min(POLL_S, deadline - loop.time()))
            finally:
                self._forget(key, waiter)

    def _forget(self, key: str, waiter: asyncio.Future) -> None:
        waiters = self._waiters.get(key)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[key]

    def _on_done(self, channel: bytes, data: bytes) -> None:
        for waiter in self._waiters.get(data.decode(errors="replace"), ()):
            if not waiter.done():
                waiter.set_result(None)

    async def _listen(self) -> None:
        """Keep a subscription to the done channel, reconnecting after failures."""
        while True:
            try:
                await self.client.listen([self.prefix + b"done"], self._on_done)
            except RedisUnavailable as exc:
                self._failed("subscribe", exc)
            await asyncio.sleep(max(self.client._backoff_s, 0.05))

    # -- faults, health, lifecycle -----------------------------------------------------------
    def _failed(self, op: str, exc: BaseException) -> None:
        """Counted; the client logs when an outage starts and ends (not each failed call)."""
        self.errors.inc(op=op)
        log.debug("redis call failed", extra={"fields": {"op": op, "error": str(exc)}})

    def health(self) -> dict:
        client = self.client
        return {"address": str(client.address), "status": "down" if client.down else "ok",
                "errors": int(sum(self.errors.values.values())), "last_error": client.last_error or None}

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.client.timeout_s * 2)
        await self.client.close()


def _glob_escaped(text: bytes) -> bytes:
    """`text` matched literally in a SCAN MATCH pattern: a prefix such as `app*` or `[v1]`
    would match other deployments' keys, and a flush would delete them."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", text)
