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
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# A reply that takes longer means a Redis that is stopped or gone: the connection is dropped
# and every caller waiting on it gets an error rather than waiting forever.
REPLY_TIMEOUT_S = 5.0
WATCH_EVERY_S = 1.0
CONNECT_TIMEOUT_S = 5.0


def _error(reply: ResponseError) -> Exception:
    """Redis's error replies, sorted as redis-py sorts them: a Redis still loading its data is
    unavailable (503), not a failed command."""
    text = str(reply)
    if text.startswith("LOADING"):
        return BusyLoadingError(text)
    if text.startswith("READONLY"):
        return ReadOnlyError(text)
    return reply


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.sent_at: collections.deque[float] = collections.deque()
        # Commands of this loop turn, written together; per connection, so a command counted
        # on one connection can never be written to another.
        self.buffer: list[bytes] = []
        self.flush_scheduled = False
        # Kept: each asyncio.get_running_loop() is a getpid() system call on Python 3.11,
        # and the hold path made two per command.
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()
        # The run id of the Redis process at the other end, read when it connected.
        self.run_id = ""

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        packed = hiredis.pack_command(args)  # raises before anything is queued
        future: asyncio.Future[Any] = self.loop.create_future()
        self.buffer.append(packed)
        self.waiting.append(future)
        self.sent_at.append(time.monotonic())
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        data, self.buffer = self.buffer, []
        if self.usable:
            assert self.transport is not None
            self.transport.write(b"".join(data))

    def fail_all(self, error: Exception) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self.sent_at.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A duck-typed check: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()
            self.sent_at.popleft()
            if future.done():  # the caller was cancelled; the reply is dropped
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(RedisConnectionError(f"Redis connection lost: {exc or 'closed'}"))
        if not self.closed.done():
            self.closed.set_result(None)


def run_id_of(info: bytes) -> str:
    """The run_id field of an INFO server reply."""
    for line in bytes(info).decode("utf-8", "replace").splitlines():
        if line.startswith("run_id:"):
            return line.partition(":")[2].strip()
    return ""


class FastRedis(Protocol):
    """What the hold store needs of its hot-path client: this module's one-server client, or
    the cluster client (cluster_client.py) that routes each call by its key's slot."""

    @property
    def connects(self) -> int: ...

    def execute(self, *args: Any) -> Awaitable[Any]: ...
    async def execute_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]: ...
    # The run id of the Redis process that serves ``key`` (None when not connected): a hold
    # script holds nothing unless the flight was restored into that process.
    def run_id_for(self, key: str) -> str | None: ...
    async def connected_run_id_for(self, key: str) -> str: ...
    # Asked now (INFO), not remembered from the connect: a restarted process shows at once.
    async def run_ids_for(self, keys: Sequence[str]) -> list[str]: ...
    async def run_ids(self) -> list[str]: ...
    async def close(self) -> None: ...


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
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False
        self.connects = 0

    def execute(self, *args: Any) -> Awaitable[Any]:
        """The reply to one command. Not a coroutine: on a live connection this is the reply's
        future itself, one awaitable fewer on the hold path."""
        conn = self._conn
        if conn is None or not conn.usable:
            return self._connect_and_send(args)
        return conn.send(args)

    async def _connect_and_send(self, args: tuple[Any, ...]) -> Any:
        conn = await self._connect()
        return await conn.send(args)

    async def execute_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Many commands in one write, without a task or coroutine per command; replies in
        order, and the first error raised once every reply is in."""
        conn = self._conn
        if conn is None or not conn.usable:
            conn = await self._connect()
        replies = await asyncio.gather(*[conn.send(c) for c in commands], return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and self._conn.usable:
                return self._conn
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch(), name="redis-reply-watchdog")
            loop = asyncio.get_running_loop()
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(_Connection, self._host, self._port),
                    CONNECT_TIMEOUT_S,
                )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(
                    f"Error connecting to {self._host}:{self._port}: {exc}"
                ) from exc
            # AUTH and SELECT go out before anyone else may use the connection; if they fail
            # or time out, the connection is dropped, never published half set up.
            try:
                await asyncio.shield(asyncio.wait_for(self._setup(conn), CONNECT_TIMEOUT_S))
            except BaseException:
                if conn.transport is not None:
                    conn.transport.abort()
                raise
            self._conn = conn
            self.connects += 1
            return conn

    async def _setup(self, conn: _Connection) -> None:
        if self._password is not None:
            if self._username:
                await conn.send(("AUTH", self._username, self._password))
            else:
                await conn.send(("AUTH", self._password))
        if self._db:
            await conn.send(("SELECT", self._db))
        conn.run_id = run_id_of(await conn.send(("INFO", "server")))

    @property
    def run_id(self) -> str | None:
        """The run id of the Redis process this client is connected to, None when it is not
        connected. Read without a round trip: a connection is to one process for its life."""
        conn = self._conn
        return conn.run_id if conn is not None and conn.usable else None

    async def connected_run_id(self) -> str:
        """The run id of the Redis process this client is connected to, connecting first."""
        conn = self._conn
        if conn is None or not conn.usable:
            conn = await self._connect()
        return conn.run_id

    # The FastRedis surface: one server holds every key, so the key does not matter.
    def run_id_for(self, key: str) -> str | None:
        return self.run_id

    async def connected_run_id_for(self, key: str) -> str:
        return await self.connected_run_id()

    async def server_run_id(self) -> str:
        """The run id of the process answering now (INFO server)."""
        return run_id_of(await self.execute("INFO", "server"))

    async def run_ids_for(self, keys: Sequence[str]) -> list[str]:
        run_id = await self.server_run_id()
        return [run_id] * len(keys)

    async def run_ids(self) -> list[str]:
        return [await self.server_run_id()]

    async def _watch(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            now = time.monotonic()
            stalled, last = now - last > 2 * WATCH_EVERY_S, now
            if stalled:
                # This process itself did not run for a while (a long step, a collection):
                # the replies may be in the socket, unread. Judge at the next check, after the
                # loop has read them. Without this a 6 s pause of the client dropped a healthy
                # connection (the bench's expiry scenario, 1,000,000 holds).
                continue
            conn = self._conn
            if conn is None or not conn.sent_at:
                continue
            if now - conn.sent_at[0] > REPLY_TIMEOUT_S:
                # The commands may still run once Redis wakes up: callers must treat a timeout
                # as "outcome unknown" (a hold compensates with a release).
                log.warning(
                    "Redis did not answer for %.0f s: dropping the connection", REPLY_TIMEOUT_S
                )
                conn.fail_all(RedisTimeoutError("Redis did not answer in time"))
                if conn.transport is not None:
                    conn.transport.abort()

    async def close(self) -> None:
        """Final: later calls raise. Does not wait for a dead Redis to take queued bytes."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
            await conn.closed
