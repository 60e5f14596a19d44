"""The shared tier in one process against a real redis-server: what an outage costs the log,
single-flight when an answer is too large to share."""
import asyncio
import logging
import time

from tests.aio import run, until
from tests.rig.redis import RedisServer
from velollmd.cache.exact import CachedResponse
from velollmd.config import CacheConfig
from velollmd.metrics import Counter
from velollmd.shared.tier import SharedTier


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog):
    """Every failed call is counted, but logged only when Redis goes away and when it is back:
    not three warnings per request (lookup, lock, store) for as long as Redis is down."""
    server = RedisServer().start()
    errors = Counter("errors", "")
    try:
        async def main():
            tier = SharedTier(CacheConfig(redis_url=server.url, redis_timeout_ms=1000), errors, Counter("r", ""))
            assert await tier.get("k") is None
            server.kill()
            for _ in range(3):
                while tier.client.down:
                    await asyncio.sleep(0.01)
                assert await tier.get("k") is None                  # a real failure
                assert await tier.lead_or_wait("k") == (None, None)  # a fast one, while down
            server.start()
            while tier.client.down:
                await asyncio.sleep(0.01)
            assert await tier.get("k") is None and await tier.get("k") is None
            assert tier.health()["status"] == "ok"
            await tier.close()
        with caplog.at_level(logging.INFO, logger="velollmd.shared"):
            run(main())
        assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "velollmd.shared"] == [
            ("WARNING", "redis unavailable: local tiers only"), ("INFO", "redis available again")]
        assert sum(errors.values.values()) == 6
    finally:
        server.stop()


def test_waiters_for_an_answer_too_large_to_share_compute_at_once_not_one_after_another(redis_server):
    """The leader's answer is over redis_max_entry_bytes: the instances that waited for it
    compute on their own at once, instead of taking the lock in turn (each waiting for the
    previous one's whole generation: the third of three answered after three generations)."""
    async def main():
        config = CacheConfig(redis_url=redis_server.url, redis_timeout_ms=1000, redis_max_entry_bytes=10,
                             redis_prefix="big:")
        a, b, c = (SharedTier(config, Counter("e", ""), Counter("r", "")) for _ in range(3))
        for tier in (a, b, c):
            tier.start()
        lease, _ = await a.lead_or_wait("k")
        waiters = [asyncio.ensure_future(tier.lead_or_wait("k")) for tier in (b, c)]
        await asyncio.sleep(0.05)                             # both wait for a's answer
        a.put("k", CachedResponse(model="m", content="x" * 100), time.time() + 60, lease)
        outcomes = await asyncio.gather(*waiters)
        for tier in (a, b, c):
            await tier.close()
        return lease, outcomes
    lease, outcomes = run(main())
    assert lease is not None
    assert outcomes == [(None, None), (None, None)]


def test_the_subscription_coming_back_ends_an_outage_without_any_traffic(caplog):
    """An idle instance: its subscription is what notices Redis is back (/health "ok", and
    the log says so), not the next request."""
    server = RedisServer().start()
    try:
        async def main():
            tier = SharedTier(CacheConfig(redis_url=server.url, redis_timeout_ms=1000), Counter("e", ""), Counter("r", ""))
            tier.start()
            server.kill()
            await until(lambda: tier.client.num_errors, "the subscription saw Redis go")
            server.start()
            await until(lambda: any(r.getMessage() == "redis available again" for r in caplog.records),
                        "the subscription saw Redis come back", limit_s=10)
            health = tier.health()
            await tier.close()
            return health
        with caplog.at_level(logging.INFO, logger="velollmd.shared"):
            assert run(main())["status"] == "ok"
    finally:
        server.stop()


def test_a_flush_deletes_its_own_prefixs_entries_only_whatever_the_prefix_holds(redis_server):
    """SCAN MATCH reads the prefix as a glob: `app*` would match `apple:`'s entries too."""
    async def main():
        tiers = [SharedTier(CacheConfig(redis_url=redis_server.url, redis_timeout_ms=1000, redis_prefix=prefix),
                            Counter("e", ""), Counter("r", "")) for prefix in ("app*", "apple", "[a]")]
        client = tiers[0].client
        keys = (b"app*e:1", b"applee:2", b"[a]e:3", b"ae:4")
        for key in keys:
            await client.execute("SET", key, b"x")
        deleted = [await tier.flush() for tier in tiers]
        left = [key for key in keys if await client.execute("EXISTS", key)]
        for tier in tiers:
            await tier.close()
        return deleted, left
    deleted, left = run(main())
    assert deleted == [1, 1, 1] and left == [b"ae:4"]
