"""The SQL writer process: ``python -m persistence.writer_process <socket fd> <max batch>``.

Started by :class:`persistence.writer.GroupCommitWriter`, never by hand. It reads requests
from the socket, runs every operation that has arrived as one group commit, and answers the
whole group in one write. It ends on ``close`` (after committing everything before it) or
when the service's end of the socket closes (the service died): it never outlives it.
"""

from __future__ import annotations

import pickle
import signal
import socket
import sqlite3
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from persistence.writer import COMMITTED, BatchOp, Op, connect, frame, unframe


class GroupApplier:
    """Runs groups of operations on one connection, each group one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def apply(self, ops: list[Op]) -> list[tuple[bool, Any]]:
        conn = self.conn
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


def sendable(value: Any) -> Any:
    """An exception the service can unpickle: the original if it round-trips, else its text."""
    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        return RuntimeError(f"{type(value).__name__}: {value}")
    return value


READ_SIZE = 1 << 20


def _receive(sock: socket.socket, buffer: bytearray) -> bool:
    """Wait for data, then take everything already sent; False once the service is gone."""
    data = sock.recv(READ_SIZE)
    if not data:
        return False
    buffer += data
    sock.setblocking(False)
    try:
        while more := sock.recv(READ_SIZE):
            buffer += more
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return True


def _answer(request: int, ok: bool, value: Any) -> bytes:
    try:
        return frame(request, (ok, value if ok else sendable(value)))
    except Exception as exc:  # a result that does not pickle: a bug in that op, told to it
        return frame(request, (False, RuntimeError(f"unpicklable result: {exc}")))


def _group(applier: GroupApplier, batch: list[tuple[int, Any]]) -> bytes:
    started = time.perf_counter()
    committed = True
    try:
        results = applier.apply([op for _, op in batch])
    except Exception as exc:  # the group did not commit: every caller hears why
        committed = False
        results = [(False, exc) for _ in batch]
    seconds = time.perf_counter() - started
    out = [
        _answer(request, ok, value)
        for (request, _), (ok, value) in zip(batch, results, strict=True)
    ]
    if committed:
        out.append(frame(COMMITTED, (len(batch), seconds)))
    return b"".join(out)


def _load(request: int, payload: bytes) -> tuple[Any, ...]:
    """A request as (request id, kind, *args); one that does not unpickle here becomes a
    "bad" request, answered with the error, while the others run."""
    try:
        kind, *args = pickle.loads(payload)
    except Exception as exc:
        return (request, "bad", RuntimeError(f"the SQL writer cannot load this operation: {exc}"))
    return (request, kind, *args)


def serve(sock: socket.socket, max_batch: int) -> None:
    buffer = bytearray()
    pending: deque[tuple[Any, ...]] = deque()
    applier: GroupApplier | None = None
    conn: sqlite3.Connection | None = None
    try:
        while True:
            if not pending:
                if not _receive(sock, buffer):
                    return
                pending.extend(_load(r, p) for r, p in unframe(buffer))
                continue
            request, kind, *args = pending[0]
            if kind == "op":
                batch: list[tuple[int, Any]] = []
                while pending and pending[0][1] == "op" and len(batch) < max_batch:
                    request, _, op = pending.popleft()
                    batch.append((request, op))
                if applier is None:
                    error = RuntimeError("the SQL writer has no open file")
                    sock.sendall(b"".join(_answer(r, False, error) for r, _ in batch))
                else:
                    sock.sendall(_group(applier, batch))
                continue
            pending.popleft()
            if kind == "bad":
                sock.sendall(_answer(request, False, args[0]))
            elif kind == "open":
                path, init = args
                try:
                    conn, done = _open(Path(path), init)
                except Exception as exc:
                    sock.sendall(_answer(request, False, exc))
                    return
                applier = GroupApplier(conn)
                sock.sendall(_answer(request, True, done if _pickles(done) else None))
            elif kind == "close":
                if conn is not None:
                    conn.close()
                    conn = None
                sock.sendall(_answer(request, True, None))
                return
            else:
                sock.sendall(_answer(request, False, RuntimeError(f"unknown request {kind!r}")))
    finally:
        if conn is not None:
            conn.close()


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _open(path: Path, init: Any) -> tuple[sqlite3.Connection, Any]:
    """The connection, and what ``init`` returned (the migrations it applied)."""
    conn = connect(path)
    try:
        done = init(conn)
    except BaseException:
        conn.close()
        raise
    return conn, done


def main(argv: list[str]) -> int:
    # The service decides when its writer stops (it commits what it queued first): a Ctrl+C
    # or SIGTERM sent to the whole process group must not end the writer under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    try:
        serve(sock, int(argv[2]))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the service is gone; nobody is left to answer
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
