"""The shared tier in one process against a real redis-server: what an outage costs the log."""
import asyncio
import logging

from tests.aio import run
from tests.rig.redis import RedisServer
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
