"""One writer for the SQLite file, committing many operations per fsync, in a process of its own.

Every write of the service is a small picklable function of a ``sqlite3.Connection`` (a
module-level function wrapped in :class:`Call`, or a :class:`BatchOp`). They queue here;
the writer process takes all that are queued, runs them inside one ``BEGIN IMMEDIATE`` …
``COMMIT``, and only then answers each caller. So a caller that awaited
:meth:`GroupCommitWriter.submit` knows its change is fsync'd (``synchronous=FULL``), and a burst
of N confirms costs one fsync, not N.

Each operation runs under its own SAVEPOINT, so one that raises is rolled back alone and its
caller gets the exception, while the rest of the group commits.

Why a process and not a thread: the sqlite3 module gives up the GIL around every prepare and
step and must take it back from the event loop. Under HTTP load the loop held it so much that
a group of 30 holds took 5.8 ms on the writer thread against ~1 ms on an idle process, and
the writer, not the CPU, limited the hold rate (bench/RESULTS.md). The process has its own GIL;
the loop pays one pickle per operation and one socket write per loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import socket
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from persistence.records import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

# Another process (a second service, a standalone persister) may hold the write lock briefly.
BUSY_TIMEOUT_MS = 10_000
# Every message between the service and its writer process: a 4-byte length and an 8-byte
# request id, then a pickle.
_HEADER = struct.Struct("!IQ")
# The request id of the message that reports a group commit (size, seconds).
COMMITTED = 0
START_TIMEOUT_S = 30.0


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the pragmas durability depends on; every connection we open uses it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise RuntimeError(f"{path}: SQLite refused WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    # 64 MiB of page cache (the default is 2 MiB): index pages of live bookings stay in memory.
    conn.execute("PRAGMA cache_size=-65536")
    return conn


@dataclass(slots=True)
class WriterStats:
    commits: int = 0
    ops: int = 0
    largest_batch: int = 0


class WriterClosed(StoreUnavailable):
    """The writer process stopped or is being replaced."""


class BatchOp:
    """An operation whose like, queued together, can run as one set of statements.

    ``run_batch`` takes the fast path for many at once (multi-row statements, no per-operation
    savepoint); when it raises, nothing of it stays and each operation runs alone through
    ``__call__``, which handles the rare cases (conflicts) one by one.
    """

    def __call__(self, conn: sqlite3.Connection) -> Any:
        raise NotImplementedError

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[Any]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """A picklable operation: ``func(conn, *args)``, ``func`` defined at module level."""

    func: Callable[..., T]
    args: tuple[Any, ...] = ()

    def __call__(self, conn: sqlite3.Connection) -> T:
        return self.func(conn, *self.args)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A slots dataclass pickles through fields() on every dump: ~3x slower.
        return Call, (self.func, self.args)


def frame(request: int, message: object) -> bytes:
    """One message: its length and request id in the clear, so a payload that does not
    unpickle fails only its own request."""
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data), request) + data


def unframe(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete (request id, payload) off the front of ``buffer``."""
    messages = []
    at = 0
    while len(buffer) - at >= _HEADER.size:
        size, request = _HEADER.unpack_from(buffer, at)
        end = at + _HEADER.size + size
        if end > len(buffer):
            break
        messages.append((request, bytes(buffer[at + _HEADER.size : end])))
        at = end
    del buffer[:at]
    return messages


class GroupCommitWriter:
    """The service's side: submit operations, await their commit.

    If the writer process dies, waiting callers are told the outcome is unknown and a new
    process is started; calls made meanwhile fail at once with :class:`WriterClosed`.
    """

    def __init__(self, path: Path, *, max_batch: int = 2000) -> None:
        self._path = path
        self._max_batch = max_batch
        self._init: Op | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._channel: _Channel | None = None
        self._ids = itertools.count(1)
        self._closing = False
        self._closed: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self.restarts = 0
        self.stats = WriterStats()
        # Told (on the event loop) of every group commit: its size and how long it took.
        self.on_commit: Callable[[int, float], None] | None = None

    @property
    def alive(self) -> bool:
        """A writer process runs and has the file open."""
        channel = self._channel
        return not self._closing and channel is not None and channel.opened and not channel.lost

    @property
    def pid(self) -> int | None:
        """The writer process, while it runs."""
        return self._process.pid if self._process is not None else None

    async def start(self, init: Op) -> Any:
        """Start the writer process, open the file there and run ``init`` (the schema's
        migrations); returns what ``init`` returned, or None for a value that does not
        pickle (a cursor)."""
        try:
            done = await self._spawn(init)
        except BaseException:
            self._closing = True  # never started: nothing to restart
            raise
        self._init = init  # from now on a dead process is replaced
        return done

    async def _spawn(self, init: Op) -> Any:
        ours, theirs = socket.socketpair()
        owned = False
        try:
            try:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "persistence.writer_process", str(theirs.fileno()),
                    str(self._max_batch), pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                )  # fmt: skip
            finally:
                theirs.close()
            loop = asyncio.get_running_loop()
            _, self._channel = await loop.create_connection(lambda: _Channel(self), sock=ours)
            owned = True
            opened = self._call(("open", str(self._path), init))
            done = await asyncio.wait_for(opened, START_TIMEOUT_S)
            self._channel.opened = True
        except BaseException:
            if not owned:
                ours.close()
            await self._stop_process()
            raise
        return done

    def _call(self, message: tuple[Any, ...]) -> asyncio.Future[Any]:
        channel = self._channel
        if self._closing or channel is None or channel.lost:
            raise WriterClosed("the SQL writer is closed")
        if not channel.opened and message[0] != "open":
            raise WriterClosed("the SQL writer is restarting")
        request = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        channel.send(request, message, future)
        return future

    async def submit(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in the next group; returns once that group is committed."""
        result: T = await self._call(("op", op))
        return result

    def _committed(self, size: int, seconds: float) -> None:
        self.stats.commits += 1
        self.stats.ops += size
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        if self.on_commit is not None:
            try:
                self.on_commit(size, seconds)
            except Exception:  # an observer's bug must not stop the writer
                log.exception("SQL commit observer failed")

    def _lost(self, channel: _Channel) -> None:
        if self._closing or channel is not self._channel or self._init is None:
            return
        if self._restarting is None or self._restarting.done():
            log.critical("the SQL writer process died: starting a new one")
            self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        assert self._init is not None
        delay = 0.1
        # Until a process runs with the file open: one that dies at once is replaced too.
        while not self._closing and not self.alive:
            await self._stop_process()
            try:
                await self._spawn(self._init)
            except Exception as exc:
                log.error("starting the SQL writer process failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.restarts += 1

    async def close(self) -> None:
        """Commit everything already submitted, then close the file and end the process.
        Safe to call more than once; every call returns when the process has ended."""
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closed)

    async def _close(self) -> None:
        try:
            if self._restarting is not None:
                # Wait for it to stop: it may own a half-started process.
                self._restarting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._restarting
            if self.alive:
                closed = self._call(("close",))
                self._closing = True
                try:
                    await asyncio.wait_for(closed, START_TIMEOUT_S)
                except Exception as exc:
                    log.warning("SQL writer did not close cleanly: %s", exc)
        finally:
            self._closing = True
            await self._stop_process()

    async def _stop_process(self) -> None:
        if self._channel is not None:
            self._channel.close()
        process, self._process = self._process, None
        if process is None:
            return
        try:
            await asyncio.wait_for(process.wait(), START_TIMEOUT_S)
        except TimeoutError:
            log.error("SQL writer process %d did not exit: killing it", process.pid)
            process.kill()
            await process.wait()


# Operations sent at once when this many wait, not only at the end of the loop turn. A burst
# of answers (a group commit's) resumed every caller in one turn, so their next operations
# reached the writer as one group again: the writer idled while the loop worked, and the
# other way round. Sent in parts, the writer commits the first while the loop makes the
# rest. The writer still takes everything queued, so a slow fsync still gets large groups.
# `python -m bench --only lifecycle`, one sitting: 3,730 confirms/s at the turn's end only,
# 3,937-4,142 at 16, 4,118 at 24, 4,263 at 32 (bench/RESULTS.md).
_FLUSH_AT = 32


class _Channel(asyncio.Protocol):
    """The socket to the writer process: requests out, one write per loop turn; answers in."""

    def __init__(self, writer: GroupCommitWriter) -> None:
        self._writer = writer
        self._transport: asyncio.Transport | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._in = bytearray()
        self.lost = False
        # The process answered "open": it has the file and takes operations.
        self.opened = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def send(self, request: int, message: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self._out.append(frame(request, message))  # an unpicklable op raises here, alone
        self._waiting[request] = future
        if len(self._out) >= _FLUSH_AT:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data, self._out = self._out, []
        if self._transport is not None and not self.lost:
            self._transport.write(b"".join(data))

    def data_received(self, data: bytes) -> None:
        self._in += data
        for request, payload in unframe(self._in):
            if request == COMMITTED:
                size, seconds = pickle.loads(payload)
                self._writer._committed(size, seconds)
                continue
            future = self._waiting.pop(request, None)
            if future is None or future.done():
                continue
            try:
                ok, value = pickle.loads(payload)
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            except Exception as exc:  # this answer alone is unreadable: its caller hears it
                future.set_exception(WriterClosed(f"unreadable answer from the SQL writer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiting, self._waiting = self._waiting, {}
        if waiting:
            log.error("SQL writer process gone with %d operations unanswered", len(waiting))
        for future in waiting.values():
            if not future.done():
                future.set_exception(WriterClosed("the SQL writer stopped; outcome unknown"))
        self._writer._lost(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
