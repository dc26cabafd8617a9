"""One writer for the SQLite file, committing many operations per fsync.

Every write of the service is a small function of a ``sqlite3.Connection``. They queue here; a
single task takes all that are queued, runs them inside one ``BEGIN IMMEDIATE`` … ``COMMIT`` on
the writer thread, and only then resolves each caller's future. So a caller that awaited
:meth:`GroupCommitWriter.submit` knows its change is fsync'd (``synchronous=FULL``), and a burst
of N confirms costs one fsync, not N.

Each operation runs under its own SAVEPOINT, so one that raises is rolled back alone and its
caller gets the exception, while the rest of the group commits.

The writer uses the standard ``sqlite3`` module on a dedicated thread rather than aiosqlite's
per-statement hops: one thread hop per group instead of one per statement is what lets the
group commit keep up with the hold rate.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

# Another process (a second service, a standalone persister) may hold the write lock briefly.
BUSY_TIMEOUT_MS = 10_000


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


class WriterClosed(RuntimeError):
    pass


class GroupCommitWriter:
    def __init__(self, path: Path, *, max_batch: int = 2000) -> None:
        self._path = path
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Op, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = WriterStats()
        # Told (on the event loop) of every group commit: its size and how long it took.
        self.on_commit: Callable[[int, float], None] | None = None

    async def start(self, init: Callable[[sqlite3.Connection], None]) -> None:
        """Open the file on the writer thread and run ``init`` (the schema) there."""
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, connect, self._path)
        await loop.run_in_executor(self._executor, init, self._conn)
        self._task = asyncio.create_task(self._run(), name="sqlite-group-commit")

    async def submit(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in the next group; returns once that group is committed."""
        if self._closing or self._task is None:
            raise WriterClosed("the SQL writer is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))
        return await future

    async def close(self) -> None:
        """Commit everything already submitted, then close the file."""
        if self._task is not None and not self._closing:
            self._closing = True
            self._queue.put_nowait(None)
            await self._task
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            await loop.run_in_executor(self._executor, self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            item = await self._queue.get()
            batch: list[tuple[Op, asyncio.Future[Any]]] = []
            while True:
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
                if len(batch) >= self._max_batch or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._apply, [op for op, _ in batch]
                )
            except Exception as exc:  # the whole group failed to commit: every caller hears it
                log.error("SQL group of %d failed: %s", len(batch), exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.on_commit is not None:
                self.on_commit(len(batch), time.perf_counter() - started)
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _apply(self, ops: list[Op]) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            i = 0
            while i < len(ops):
                op = ops[i]
                j = i + 1
                if isinstance(op, BatchOp):
                    while j < len(ops) and type(ops[j]) is type(op):
                        j += 1
                    if j - i > 1 and self._run_batch(conn, ops[i:j], results):
                        i = j
                        continue
                for single in ops[i:j]:
                    self._run_one(conn, single, results)
                i = j
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.stats.commits += 1
        self.stats.ops += len(ops)
        self.stats.largest_batch = max(self.stats.largest_batch, len(ops))
        return results

    @staticmethod
    def _run_one(conn: sqlite3.Connection, op: Op, results: list[tuple[bool, Any]]) -> None:
        conn.execute("SAVEPOINT op")
        try:
            value = op(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            results.append((False, exc))
        else:
            conn.execute("RELEASE op")
            results.append((True, value))

    @staticmethod
    def _run_batch(
        conn: sqlite3.Connection, ops: list[Op], results: list[tuple[bool, Any]]
    ) -> bool:
        """Run like ops as one set of statements; False (nothing done) if any conflicts."""
        conn.execute("SAVEPOINT batch")
        try:
            values = type(ops[0]).run_batch(conn, ops)  # type: ignore[attr-defined]
        except Exception:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
            return False
        if len(values) != len(ops):  # a bug in the op; never let it stall every caller
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
            return False
        conn.execute("RELEASE batch")
        results.extend((True, v) for v in values)
        return True


class BatchOp:
    """An operation whose like, queued together, can run as one set of statements.

    ``run_batch`` takes the fast path for many at once (``executemany``, no per-operation
    savepoint); when it raises, nothing of it stays and each operation runs alone through
    ``__call__``, which handles the rare cases (conflicts) one by one.
    """

    def __call__(self, conn: sqlite3.Connection) -> Any:
        raise NotImplementedError

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[Any]:
        raise NotImplementedError
