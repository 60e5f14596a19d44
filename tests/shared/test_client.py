"""The RESP client against a real redis-server: pipelining order, large values, binary keys,
error replies, scripts, timeouts, AUTH, RESP3, pub/sub, and the down state after a failure."""
import asyncio
import socket

import pytest

from tests.aio import run, until
from tests.rig.redis import RedisServer
from velollmd.config import config_from_table
from velollmd.errors import ConfigError
from velollmd.shared.client import RedisAddress, RedisClient, RedisUnavailable, Script
from velollmd.shared.resp import ReplyError


def client_for(server: RedisServer, **kwargs) -> RedisClient:
    return RedisClient(RedisAddress.parse(server.url), timeout_s=kwargs.pop("timeout_s", 2.0), **kwargs)


@pytest.mark.parametrize("protocol", [2, 3])
def test_pipelining_keeps_order_and_errors_in_place(redis_server, protocol):
    async def main():
        client = client_for(redis_server, protocol=protocol)
        commands = [("DEL", "n"), *[("INCRBY", "n", i) for i in range(1, 101)], ("LPUSH", "n", "x"), ("GET", "n")]
        replies = await client.pipeline(commands)
        await client.close()
        return replies
    replies = run(main())
    assert replies[1:101] == [i * (i + 1) // 2 for i in range(1, 101)]        # running sums, in order
    assert isinstance(replies[101], ReplyError) and replies[101].code == "WRONGTYPE"
    assert replies[102] == b"5050"


def test_large_values_and_binary_keys(redis_server):
    big = bytes(range(256)) * 20000                                     # 5 MB with every byte value
    key = b"\x00\xff\r\nkey \x80"

    async def main():
        client = client_for(redis_server)
        await client.execute("SET", key, big, "PX", 60000)
        got = await client.execute("GET", key)
        exists = await client.execute("EXISTS", key, b"\x00\xff\r\nkey")
        missing = await client.execute("GET", b"\x00no such key")
        await client.close()
        return got, exists, missing
    got, exists, missing = run(main())
    assert got == big and exists == 1 and missing is None


def test_set_nx_px_and_error_reply_raises(redis_server):
    async def main():
        client = client_for(redis_server)
        await client.execute("DEL", "lock")
        first = await client.execute("SET", "lock", "a", "PX", 60000, "NX")
        second = await client.execute("SET", "lock", "b", "PX", 60000, "NX")
        ttl = await client.execute("PTTL", "lock")
        with pytest.raises(ReplyError) as err:
            await client.execute("NOSUCHCOMMAND", "x")
        still = await client.execute("GET", "lock")                 # an error reply keeps the connection
        await client.close()
        return first, second, ttl, err.value, still, client.num_errors
    first, second, ttl, error, still, num_errors = run(main())
    assert (first, second, still, num_errors) == ("OK", None, b"a", 0)
    assert 0 < ttl <= 60000 and error.code == "ERR"


def test_script_is_sent_whole_once_then_by_sha(redis_server):
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")

    async def main():
        client = client_for(redis_server)
        await client.execute("SCRIPT", "FLUSH")
        await client.execute("DEL", "s")
        first = await client.run_script(script, ["s"], [5])
        known = await client.execute("SCRIPT", "EXISTS", script.sha)
        second = await client.run_script(script, ["s"], [2])
        await client.close()
        return first, known, second
    assert run(main()) == (5, [1], 7)


def test_auth_required_wrong_and_right():
    with RedisServer(password="s3cret") as server:
        async def main():
            good = client_for(server)
            assert await good.execute("SET", "a", "1") == "OK"
            resp3 = client_for(server, protocol=3)
            assert await resp3.execute("GET", "a") == b"1"
            wrong = RedisClient(RedisAddress.parse(server.url.replace("s3cret", "nope")), timeout_s=2.0)
            with pytest.raises(RedisUnavailable, match="WRONGPASS|invalid"):
                await wrong.execute("GET", "a")
            none = RedisClient(RedisAddress.parse(f"redis://127.0.0.1:{server.port}"), timeout_s=2.0)
            with pytest.raises(RedisUnavailable, match="NOAUTH"):     # no password: the handshake says so
                await none.execute("GET", "a")
            for c in (good, resp3, wrong, none):
                await c.close()
        run(main())


def test_select_db_isolates(redis_server):
    async def main():
        db0, db3 = client_for(redis_server), RedisClient(
            RedisAddress.parse(f"redis://127.0.0.1:{redis_server.port}/3"), timeout_s=2.0)
        await db0.execute("SET", "only-in-0", "x")
        got = await db3.execute("GET", "only-in-0")
        await db0.close(), await db3.close()
        return got
    assert run(main()) is None


def test_timeout_on_a_server_that_never_answers_then_down_fails_fast():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)                          # accepts connections (kernel backlog), never answers
    port = listener.getsockname()[1]

    async def main():
        client = RedisClient(RedisAddress.parse(f"redis://127.0.0.1:{port}"), timeout_s=0.1)
        with pytest.raises(RedisUnavailable, match="timed out"):
            await client.execute("PING")
        assert client.down
        with pytest.raises(RedisUnavailable, match="down"):        # no network while down
            await client.execute("PING")
        return client.num_errors, client.num_connects
    try:
        assert run(main()) == (1, 0)
    finally:
        listener.close()


def test_reconnects_after_a_restart_on_the_same_port():
    server = RedisServer().start()
    try:
        async def main():
            client = client_for(server, timeout_s=1.0)
            await client.execute("SET", "k", "1")
            server.kill()
            with pytest.raises(RedisUnavailable):
                await client.execute("GET", "k")
            server.start()
            while client.down:
                await asyncio.sleep(0.01)
            got = await client.execute("SET", "k", "2"), await client.execute("GET", "k")
            await client.close()
            return got, client.num_connects
        got, num_connects = run(main())
        assert got == ("OK", b"2") and num_connects == 2
    finally:
        server.stop()


def test_pubsub_delivers_messages(redis_server):
    async def main():
        client = client_for(redis_server)
        got, ready = [], asyncio.Event()

        def on_message(channel, data):
            got.append((channel, data))
            ready.set()
        task = asyncio.ensure_future(client.listen([b"ch\x00"], on_message))
        while not got:
            await client.execute("PUBLISH", b"ch\x00", b"hello\xff")
            try:
                await asyncio.wait_for(ready.wait(), 0.05)
            except TimeoutError:
                pass
        task.cancel()
        await client.close()
        return got[0]
    assert run(main()) == (b"ch\x00", b"hello\xff")


@pytest.mark.parametrize("url,expected", [
    ("redis://:p%40ss@h:7000/2", RedisAddress("h", 7000, password="p@ss", db=2)),
    ("rediss://user:pw@example.com", RedisAddress("example.com", 6379, tls=True, username="user", password="pw")),
    ("unix:///run/redis.sock?db=1", RedisAddress(unix_path="/run/redis.sock", db=1)),
])
def test_url_forms(url, expected):
    assert RedisAddress.parse(url) == expected


@pytest.mark.parametrize("url", ["http://h:1", "redis://", "redis://h/x", "unix://"])
def test_bad_urls(url):
    with pytest.raises(ValueError):
        RedisAddress.parse(url)


@pytest.mark.parametrize("url,ok", [
    ("redis://:p%40ss@h:7000/2", True), ("rediss://user:pw@example.com", True), ("redis://h:6379/", True),
    ("redis://[::1]:6379/0", True), ("unix:///run/redis.sock?db=1", True), ("unix://:pw@/run/redis.sock", True),
    ("redis://h/x", False), ("redis://h:99999/0", False), ("redis://h:abc/0", False), ("redis:///0", False),
    ("redis://:pw@/0", False), ("unix://", False), ("unix:///run/redis.sock?db=x", False), ("http://h:1", False),
])
def test_the_config_refuses_every_url_the_client_cannot_read(url, ok):
    """A redis_url the client would refuse at start (a traceback, exit 1) is a config error
    naming the key (exit 2, and --check-config says so)."""
    table = {"backends": [{"name": "b", "kind": "openai", "url": "http://127.0.0.1:9"}],
             "cache": {"redis_url": url}}
    if ok:
        RedisAddress.parse(url)
        assert config_from_table(table).cache.redis_url == url
        return
    with pytest.raises(ValueError):
        RedisAddress.parse(url)
    with pytest.raises(ConfigError) as caught:
        config_from_table(table)
    assert caught.value.key == "cache.redis_url"


def test_a_reply_that_came_while_a_connection_was_idle_is_never_the_next_reply():
    """Bytes a server writes to a pooled connection between commands (a stray reply) must not
    answer the next command: that connection is not reused (as the HTTP client's)."""
    pooled, sent, connections = asyncio.Event(), asyncio.Event(), []

    async def handle(reader, writer):
        connections.append(writer)
        number, answered = len(connections), 0
        while data := await reader.read(4096):
            for _ in range(data.count(b"PING")):
                writer.write(b"+c%d\r\n" % number)
                answered += 1
            if number == 1 and answered == 2:        # the handshake's PING and the command's
                await pooled.wait()
                writer.write(b"+STALE\r\n")
                sent.set()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = RedisClient(RedisAddress.parse(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}"),
                             timeout_s=2.0)
        first = await client.execute("PING")
        [conn] = client._idle
        pooled.set()
        await sent.wait()
        await until(lambda: conn.reader._buffer, "the stray reply reached the pooled connection")
        second = await client.execute("PING")
        await client.close()
        server.close()
        return first, second, client.num_connects
    assert run(main()) == ("c1", "c2", 2)
