"""A private redis-server per module (random loopback port, no persistence), and pytest's own."""
from typing import Iterator

import pytest

from tests.rig.fixtures import *  # noqa: F401,F403
from tests.rig.redis import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(not REDIS_SERVER, reason="redis-server is not installed (make test installs it)")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server
