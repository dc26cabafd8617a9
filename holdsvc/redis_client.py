"""An auto-pipelining Redis client for the hot path: one connection, and every command issued
in the same event-loop turn goes out in one write.

Why not redis-py here: measured on this machine (shared/perf-anchors.md), redis-py spends
~60 us of Python per call (command packing, retry and timeout wrappers, pool get/release), so a
hold-serving process burns its CPU in the client; 64 concurrent callers reach 16.7k holds/s.
Queueing commands on one connection, packing them with hiredis's C ``pack_command`` and parsing
replies with its ``Reader`` costs ~5 us a call, and Redis, not the client, becomes the limit.

redis-py stays for everything else (pub/sub, INFO, CONFIG, pipelines of admin reads).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# A reply that takes longer means a Redis that is stopped or gone: the connection is dropped
# and every caller waiting on it gets an error rather than waiting forever.
REPLY_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.sent_at: collections.deque[float] = collections.deque()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()
            self.sent_at.popleft()
            if future.done():  # the caller was cancelled; the reply is dropped
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        error = RedisConnectionError(f"Redis connection lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self.sent_at.clear()
        if not self.closed.done():
            self.closed.set_result(None)


class PipelinedRedis:
    """Commands go out in batches, one ``write`` per loop turn; replies come back in order."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", ""):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._db = int(parsed.path.lstrip("/") or 0)
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.Task[None] | None = None

    async def execute(self, *args: Any) -> Any:
        conn = self._conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            conn = await self._connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._buffer.append(hiredis.pack_command(args))
        conn.waiting.append(future)
        conn.sent_at.append(time.monotonic())
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, conn)
        return await future

    def _flush(self, conn: _Connection) -> None:
        self._flush_scheduled = False
        data, self._buffer = self._buffer, []
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(b"".join(data))

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            conn = self._conn
            if conn is not None and conn.transport is not None and not conn.transport.is_closing():
                return conn
            loop = asyncio.get_running_loop()
            try:
                _, fresh = await asyncio.wait_for(
                    loop.create_connection(_Connection, self._host, self._port),
                    CONNECT_TIMEOUT_S,
                )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(
                    f"Error connecting to {self._host}:{self._port}: {exc}"
                ) from exc
            conn = fresh
            # Commands queued for a dead connection must not leak onto this one.
            self._buffer = []
            self._flush_scheduled = False
            self._conn = conn
            setup: list[tuple[Any, ...]] = []
            if self._password is not None:
                auth = ("AUTH", self._username, self._password) if self._username else (
                    "AUTH", self._password)  # fmt: skip
                setup.append(auth)
            if self._db:
                setup.append(("SELECT", self._db))
            for command in setup:
                await self.execute(*command)
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch(), name="redis-reply-watchdog")
            return conn

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            conn = self._conn
            if conn is None or not conn.sent_at:
                continue
            if time.monotonic() - conn.sent_at[0] > REPLY_TIMEOUT_S:
                log.warning(
                    "Redis did not answer for %.0f s: dropping the connection", REPLY_TIMEOUT_S
                )
                error = RedisTimeoutError("Redis did not answer in time")
                while conn.waiting:
                    future = conn.waiting.popleft()
                    if not future.done():
                        future.set_exception(error)
                conn.sent_at.clear()
                if conn.transport is not None:
                    conn.transport.abort()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        conn = self._conn
        self._conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
            await conn.closed
