"""A small Redis client over asyncio streams: a connection pool, pipelining, AUTH/SELECT,
RESP2 or RESP3, timeouts, reconnect with backoff, scripts, pub/sub.

    client = RedisClient(RedisAddress.parse("redis://:secret@127.0.0.1:6379/0"), timeout_s=0.25)
    await client.execute("SET", b"k", b"v", "PX", 60000)
    replies = await client.pipeline([("GET", b"a"), ("INCRBY", b"n", 2)])   # in order

Every failure to talk to the server (refused, reset, timed out, not RESP) is one exception,
`RedisUnavailable`, and closes the connection it happened on. After one, the client is "down"
for a backoff (50 ms doubling to 2 s) in which calls fail at once without touching the network,
so a dead server costs a request nothing; the first call after the backoff tries again, and a
success ends the down state. The start and the end of an outage are logged once each, not
every failed call. Error replies are `ReplyError` (raised by execute(), returned in place by
pipeline()).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlsplit

from ..http.client import open_stream, take_usable
from .resp import INCOMPLETE, ProtocolError, Push, ReplyError, RespParser, encode_command

log = logging.getLogger("velollmd.shared")
READ_SIZE = 65536
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0


class RedisUnavailable(Exception):
    """The server could not be reached or did not answer in time: fall back to local state."""


@dataclass(frozen=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str = ""
    tls: bool = False
    username: str = ""
    password: str = ""
    db: int = 0

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """redis://[[user]:password@]host[:port][/db], rediss:// (TLS), unix:///path[?db=N]."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        auth = dict(username=unquote(parts.username or ""), password=unquote(parts.password or ""))
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL needs a socket path: unix:///run/redis.sock")
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            return cls(unix_path=parts.path, db=_db(query.get("db", "0")), **auth)
        if not parts.hostname:
            raise ValueError("names no host")
        return cls(parts.hostname, parts.port or 6379, tls=parts.scheme == "rediss",
                   db=_db(parts.path.strip("/") or "0"), **auth)

    def __str__(self) -> str:
        """Where it is, never the password."""
        return f"unix:{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}/{self.db}"


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the database must be a number, got {text!r}")
    return int(text)


class Script:
    """A Lua script run with EVALSHA, sent whole (EVAL) when the server does not know it yet."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RedisConnection:
    """One connection: commands written together, replies read in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.parser = RespParser()

    async def call_many(self, commands) -> list:
        self.writer.write(b"".join(encode_command(*command) for command in commands))
        await self.writer.drain()
        return [await self.read_reply() for _ in commands]

    async def read_reply(self):
        """The next reply that is not an out-of-band push."""
        while True:
            reply = self.parser.next()
            if reply is INCOMPLETE:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    raise ConnectionResetError("the Redis server closed the connection")
                self.parser.feed(data)
            elif not isinstance(reply, Push):
                return reply

    async def read_any(self):
        """The next reply, pushes included (a subscribed connection)."""
        while (reply := self.parser.next()) is INCOMPLETE:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise ConnectionResetError("the Redis server closed the connection")
            self.parser.feed(data)
        return reply

    def usable(self) -> bool:
        """Open, and with nothing unread: bytes that came while it was idle (a stray reply, an
        out-of-band push) would be taken for the reply to the next command, as the HTTP
        client's pooled connections (StreamReader has no public count of its buffer)."""
        return not self.reader._buffer and not self.parser.buffered and not self.reader.at_eof() \
            and not self.writer.transport.is_closing()

    def abort(self) -> None:
        self.writer.transport.abort()


class RedisClient:
    def __init__(self, address: RedisAddress, *, timeout_s: float = 0.25, max_connections: int = 16,
                 protocol: int = 2, clock: Callable[[], float] = time.monotonic):
        self.address = address
        self.timeout_s = timeout_s
        self.protocol = protocol
        self.clock = clock
        self._idle: deque[RedisConnection] = deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._retry_at = 0.0                     # down until then (clock time)
        self._backoff_s = 0.0
        self.num_errors = 0
        self.num_connects = 0
        self.last_error = ""

    # -- state -------------------------------------------------------------------------
    @property
    def down(self) -> bool:
        return self.clock() < self._retry_at

    def _failed(self, exc: BaseException) -> RedisUnavailable:
        self.num_errors += 1
        self.last_error = _describe(exc)
        if not self._backoff_s:                  # the first failure since the last success
            log.warning("redis unavailable: local tiers only",
                        extra={"fields": {"address": str(self.address), "error": self.last_error}})
        self._backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, self._backoff_s * 2))
        self._retry_at = self.clock() + self._backoff_s
        return RedisUnavailable(f"redis {self.address}: {self.last_error}")

    def _succeeded(self) -> None:
        if self._backoff_s:
            log.info("redis available again", extra={"fields": {"address": str(self.address)}})
        self._backoff_s, self._retry_at = 0.0, 0.0

    # -- commands ----------------------------------------------------------------------
    async def execute(self, *command):
        """One command's reply; an error reply raises ReplyError."""
        reply = (await self.pipeline([command]))[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands) -> list:
        """Every command's reply, in order (error replies in place), in one round trip."""
        if self.down:
            raise RedisUnavailable(f"redis {self.address}: down ({self.last_error}), retrying soon")
        conn = None
        try:
            async with asyncio.timeout(self.timeout_s), self._slots:
                conn = self._take_idle() or await self._connect()
                replies = await conn.call_many(commands)
        except (OSError, TimeoutError, ProtocolError, ReplyError) as exc:
            if conn is not None:
                conn.abort()
            raise self._failed(exc) from None
        except BaseException:
            if conn is not None:
                conn.abort()                      # cancelled mid-reply: its stream is out of step
            raise
        self._idle.append(conn)
        self._succeeded()
        return replies

    async def run_script(self, script: Script, keys=(), args=()):
        """EVALSHA, and EVAL once when the server answers NOSCRIPT (a restart forgets scripts)."""
        tail = (len(keys), *keys, *args)
        try:
            return await self.execute("EVALSHA", script.sha, *tail)
        except ReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        return await self.execute("EVAL", script.source, *tail)

    # -- connections -------------------------------------------------------------------
    def _take_idle(self) -> RedisConnection | None:
        return take_usable(self._idle)

    async def _connect(self) -> RedisConnection:
        """A new connection, authenticated and on its database (one round trip for all of it)."""
        a = self.address
        reader, writer = await open_stream(a.host, a.port, tls=a.tls, unix_path=a.unix_path,
                                           timeout=self.timeout_s)
        conn = RedisConnection(reader, writer)
        for reply in await conn.call_many(self._handshake()):
            if isinstance(reply, ReplyError):
                conn.abort()
                raise reply
        self.num_connects += 1
        return conn

    def _handshake(self) -> list[tuple]:
        a, commands = self.address, []
        auth = (a.username or "default", a.password) if a.password else ()
        if self.protocol == 3:
            commands.append(("HELLO", 3, *(("AUTH", *auth) if auth else ())))
        elif auth:
            commands.append(("AUTH", *auth) if a.username else ("AUTH", a.password))
        if a.db:
            commands.append(("SELECT", a.db))
        return commands or [("PING",)]

    async def listen(self, channels, on_message: Callable[[bytes, bytes], None]) -> None:
        """SUBSCRIBE to `channels` on a connection of its own and call on_message(channel, data)
        for each message, until the connection breaks (RedisUnavailable) or the task is cancelled."""
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await self._connect()
                conn.writer.write(encode_command("SUBSCRIBE", *channels))
                for _ in channels:
                    await conn.read_any()
        except (OSError, TimeoutError, ProtocolError, ReplyError) as exc:
            raise self._failed(exc) from None
        self._succeeded()                        # reachable again, requests or not
        try:
            while True:
                message = await conn.read_any()
                if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                    on_message(message[1], message[2])
        except (OSError, ProtocolError) as exc:
            raise self._failed(exc) from None
        finally:
            conn.abort()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__
