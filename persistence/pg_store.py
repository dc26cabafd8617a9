"""The PostgreSQL store (asyncpg): the same tables, moves and answers as the SQLite store, for
many API processes on many machines sharing one database.

Every state change is a compare-and-set under the booking's row lock (``SELECT … FOR
UPDATE``, then the move only from the allowed sources the caller's :class:`Move` names), so
two processes racing on one booking cannot both move it; every claim (an Idempotency-Key, a
refund) is taken under a row lock or a unique index. Writes are group-committed, as SQLite's
are: operations queued while a commit runs go in the next transaction together, each under a
savepoint of its own so a refusal (the seat fence, a payment in the wrong status) rolls back
only itself. A caller is answered only after its ``COMMIT`` returned, with
``synchronous_commit`` left on: a ``CONFIRMED`` answer is durable.

A lost connection fails what was waiting with :class:`StoreUnavailable` (outcome unknown:
the answer is a 503); the next operation connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from decimal import Decimal
from typing import Any, TypeAlias

import asyncpg

from persistence.coalesce import Coalescer
from persistence.notices import TransitionNotices
from persistence.pg_schema import LATEST, migrate, version
from persistence.records import (
    BookingRecord,
    Claim,
    ClaimResult,
    FlightRecord,
    KeyAnswer,
    Move,
    Moved,
    NewBooking,
    NewFlight,
    PaymentChange,
    PaymentChanged,
    PaymentStatus,
    SeatOwnedInSql,
    State,
    StoreUnavailable,
    now_ms,
)
from persistence.rows import KEY_COLUMNS, booking_of, claimed_key, flight_fields
from persistence.writer import WriterStats

log = logging.getLogger(__name__)

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
Op = Callable[[Conn], Awaitable[Any]]

# What means "the database could not do it now": the connection, the server going away, a
# deadlock between processes. Refusals of the data (SeatOwnedInSql, PaymentChanged) are not.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # The protocol's own state after its connection broke mid-operation (seen on a pool
    # connection's reset when the server was killed).
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
    OSError,
    asyncio.TimeoutError,
)
# An operation a commit may hold up; past this the caller gets a 503 and the batch's fate is
# whatever the server decided.
CONNECT_TIMEOUT_S = 5.0
MAX_BATCH = 500

_FLIGHT_COLUMNS = (
    "id, flight_number, origin, destination, departure_time, seat_rows, seat_letters,"
    " price::text, currency, created_at"
)
_BOOKING_COLUMNS = (
    "b.id, b.flight_id, b.user_id, b.state, b.amount::text, b.currency, b.hold_expires_at,"
    " b.created_at, b.updated_at, p.payment_id, p.method, p.status, p.amount::text,"
    " p.currency, p.idem_key, p.refund_key, b.owner"
)


def _flight(row: Any) -> FlightRecord:
    return FlightRecord(*row)


# ----- the operations: each runs inside the writer's transaction, under its own savepoint


async def _read_booking(conn: Conn, booking_id: str) -> BookingRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_BOOKING_COLUMNS} FROM bookings b LEFT JOIN payments p ON p.booking_id = b.id"
        " WHERE b.id = $1",
        booking_id,
    )
    if row is None:
        return None
    seats = await conn.fetch(
        "SELECT seat FROM booking_seats WHERE booking_id = $1 ORDER BY pos", booking_id
    )
    return booking_of(row, [r[0] for r in seats])


async def _store_answer(
    conn: Conn, answer: KeyAnswer, record: BookingRecord | FlightRecord
) -> None:
    """The effect and its answer commit together; the first answer stored wins."""
    await conn.execute(
        "UPDATE idempotency_keys SET outcome = $1, record = $2"
        " WHERE key = $3 AND status IS NULL AND outcome IS NULL",
        answer.outcome,
        json.dumps(dataclasses.asdict(record)).encode(),
        answer.key,
    )


async def _answered(conn: Conn, booking_id: str, answer: KeyAnswer | None) -> BookingRecord | None:
    if answer is None:
        return None
    record = await _read_booking(conn, booking_id)
    assert record is not None
    await _store_answer(conn, answer, record)
    return record


async def _change_payment(conn: Conn, booking_id: str, change: PaymentChange, at: int) -> None:
    if change.expect is None:
        await _insert_payment(conn, booking_id, change, at)
        return
    updated = await conn.fetchval(
        "WITH changed AS (UPDATE payments SET status = $1, payment_id = COALESCE($2, payment_id),"
        " updated_at = $3, refund_key = COALESCE($4, refund_key)"
        " WHERE booking_id = $5 AND status = ANY($6::text[]) RETURNING 1)"
        " SELECT count(*) FROM changed",
        change.status, change.payment_id, at, change.idem_key, booking_id, list(change.expect),
    )  # fmt: skip
    if updated != 1:
        status = await conn.fetchval(
            "SELECT status FROM payments WHERE booking_id = $1", booking_id
        )
        raise PaymentChanged(booking_id, status)


async def _insert_payment(conn: Conn, booking_id: str, c: PaymentChange, at: int) -> None:
    await conn.execute(
        "INSERT INTO payments (booking_id, payment_id, method, status, amount, currency,"
        " idem_key, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        booking_id, c.payment_id, c.method, c.status, Decimal(c.amount), c.currency, c.idem_key,
        at,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One call of a holdsvc_*_v1 function (pg_functions.sql). The writer sends the calls of
    one function queued together as one pipelined round trip; ``finish`` turns its row into
    the caller's answer (or raises the refusal the row reports)."""

    sql: str
    args: tuple[Any, ...]
    finish: Callable[[Any], Any]


MOVE_SQL = "SELECT * FROM holdsvc_move_v1($1, $2, $3, $4, $5, $6)"
TRANSITION_SQL = (
    "SELECT * FROM holdsvc_transition_v1($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
    " $13, $14)"
)
WRITE_BOOKING_SQL = (
    "SELECT * FROM holdsvc_write_booking_v1($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
    " $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
)


def _move_args(booking_id: str, move: Move, at: int) -> tuple[Any, ...]:
    return (booking_id, move.target, list(move.sources), move.cause, move.seats_live, at)


def _moved(row: Any) -> Moved:
    return Moved(bool(row[0]), row[1], row[2], row[3])


def _transition_call(
    booking_id: str,
    move: Move,
    at: int,
    payment: PaymentChange | None,
    hold_expires_at: int | None,
) -> Call:
    p = payment
    pay: tuple[Any, ...] = (None,) * 7
    if p is not None:
        expect = None if p.expect is None else list(p.expect)
        amount = Decimal(p.amount) if p.amount else None
        pay = (p.status, expect, p.payment_id, p.method, amount, p.currency, p.idem_key)

    def finish(row: Any) -> Moved:
        if not row[4]:
            raise PaymentChanged(booking_id, row[5])
        return _moved(row)

    return Call(TRANSITION_SQL, (*_move_args(booking_id, move, at), hold_expires_at, *pay), finish)


def _write_booking_call(
    b: NewBooking, move: Move, supersede: Move, at: int, payment: PaymentChange | None
) -> Call:
    p = payment
    pay: tuple[Any, ...] = (None,) * 6
    if p is not None:
        pay = (p.status, p.payment_id, p.method, Decimal(p.amount), p.currency, p.idem_key)

    def finish(row: Any) -> tuple[Moved, list[tuple[str, Moved]]]:
        code, state, superseded, previous, deadlines, blocking, states = row
        if code == 1:
            return Moved(False, state), []
        if code == 2:
            raise SeatOwnedInSql(dict(zip(blocking, states, strict=True)))
        old = [
            (bid, Moved(True, supersede.target, prev, deadline))
            for bid, prev, deadline in zip(superseded, previous, deadlines, strict=True)
        ]
        return Moved(True, move.target, State.SEAT_HELD.value, b.hold_expires_at), old

    args = (
        b.id, b.flight_id, b.user_id, Decimal(b.amount), b.currency, b.hold_expires_at,
        b.created_at, b.owner, list(b.seats), move.target, move.cause, move.seats_live,
        supersede.target, list(supersede.sources), supersede.cause, supersede.seats_live, at,
        *pay,
    )  # fmt: skip
    return Call(WRITE_BOOKING_SQL, args, finish)


async def _call(conn: Conn, call: Call) -> Any:
    return call.finish(await conn.fetchrow(call.sql, *call.args))


async def _with_answer(conn: Conn, call: Call, booking_id: str, answer: KeyAnswer) -> Any:
    """A call whose Idempotency-Key answer commits with it: the booking as the call left it."""
    result = await _call(conn, call)
    moved = result[0] if isinstance(result, tuple) else result
    if not moved.moved:
        return result
    record = await _answered(conn, booking_id, answer)
    done = dataclasses.replace(moved, record=record)
    return (done, result[1]) if isinstance(result, tuple) else done


async def _create_flight(
    conn: Conn, flight: NewFlight, at: int, answer: KeyAnswer | None
) -> tuple[int, int]:
    if answer is not None:
        done = await conn.fetchval(
            "SELECT record FROM idempotency_keys WHERE key = $1 AND outcome = $2",
            answer.key,
            answer.outcome,
        )
        if done is not None:
            made = json.loads(done)
            return int(made["id"]), int(made["created_at"])
    flight_id = await conn.fetchval(
        "INSERT INTO flights (flight_number, origin, destination, departure_time, seat_rows,"
        " seat_letters, price, currency, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        flight.flight_number, flight.origin, flight.destination, flight.departure_time,
        flight.rows, flight.seat_letters, Decimal(flight.price), flight.currency, at,
    )  # fmt: skip
    if answer is not None:
        record = FlightRecord(flight_id, created_at=at, **flight_fields(flight))
        await _store_answer(conn, answer, record)
    return int(flight_id), at


async def _claim_key(
    conn: Conn, key: str, fingerprint: bytes, owner: str, at: int, stale_ms: int, ttl_ms: int
) -> ClaimResult:
    inserted = await conn.fetchval(
        "INSERT INTO idempotency_keys (key, fingerprint, started_at, owner, alive_at)"
        " VALUES ($1, $2, $3, $4, $3) ON CONFLICT (key) DO NOTHING RETURNING 1",
        key, fingerprint, at, owner,
    )  # fmt: skip
    if inserted:
        return ClaimResult(Claim.NEW)
    row = await conn.fetchrow(
        f"SELECT {KEY_COLUMNS} FROM idempotency_keys WHERE key = $1 FOR UPDATE", key
    )
    found = claimed_key(row, fingerprint, at, stale_ms, ttl_ms)
    if found is not None:
        return found
    # Taken over (rows.claimed_key says when).
    await conn.execute(
        "INSERT INTO idempotency_keys (key, fingerprint, started_at, owner, alive_at)"
        " VALUES ($1, $2, $3, $4, $3) ON CONFLICT (key) DO UPDATE SET"
        " fingerprint = EXCLUDED.fingerprint, status = NULL, body = NULL,"
        " started_at = EXCLUDED.started_at, owner = EXCLUDED.owner,"
        " alive_at = EXCLUDED.alive_at, outcome = NULL, record = NULL",
        key, fingerprint, at, owner,
    )  # fmt: skip
    return ClaimResult(Claim.NEW)


# ----- the group-commit writer


@dataclasses.dataclass(slots=True)
class _Queued:
    op: Op | Call
    future: asyncio.Future[Any]


class _Refused(Exception):
    """An operation's refusal (the seat fence, a payment in another status), kept for its
    caller while the rest of the group commits."""

    def __init__(self, error: Exception) -> None:
        self.error = error


_REFUSALS = (SeatOwnedInSql, PaymentChanged, asyncpg.IntegrityConstraintViolationError)


class _Writer:
    """Runs queued operations in one transaction per turn, on one connection of its own.

    The fast path sends the calls of each function as one pipelined ``fetchmany`` (a burst of
    pays is a round trip, not one per pay) and runs the other operations each under a
    savepoint. If a call fails with anything but a refusal, the group is run again the slow
    way, every operation under its own savepoint, so only the failing one fails.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._queue: list[_Queued] = []
        self._wake = asyncio.Event()
        self._conn: Conn | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.on_commit: Callable[[int, float], None] | None = None
        self.stats = WriterStats()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await asyncio.wait_for(self._conn.close(), 2)

    async def submit(self, op: Op | Call) -> Any:
        if self._closing:
            raise StoreUnavailable("the PostgreSQL store is closing")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(op, future))
        self._wake.set()
        return await future

    @property
    def backend_pid(self) -> int | None:
        conn = self._conn
        return conn.get_server_pid() if conn is not None and not conn.is_closed() else None

    async def _connection(self) -> Conn:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_S)
        return self._conn

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._commit(batch)
            if self._closing and not self._queue:
                return

    async def _commit(self, batch: list[_Queued]) -> None:
        started = time.perf_counter()
        try:
            conn = await self._connection()
            try:
                results = await self._fast(conn, batch)
            except CONNECTION_ERRORS:
                raise
            except Exception:
                results = await self._slow(conn, batch)
        except CONNECTION_ERRORS as exc:
            # The COMMIT may or may not have happened: every caller is told it is unknown.
            await self._drop()
            self._fail(batch, StoreUnavailable(f"PostgreSQL connection lost: {exc!s}"))
            return
        except BaseException as exc:
            self._fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.stats.commits += 1
        self.stats.ops += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        if self.on_commit is not None:
            try:
                self.on_commit(len(batch), time.perf_counter() - started)
            except Exception:  # an observer's bug must not stop the writes
                log.exception("the commit observer failed")
        for item, value in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(value, _Refused):
                item.future.set_exception(value.error)
            else:
                item.future.set_result(value)

    async def _fast(self, conn: Conn, batch: list[_Queued]) -> list[Any]:
        results: list[Any] = [None] * len(batch)
        groups: dict[str, list[tuple[int, Call]]] = {}
        for n, item in enumerate(batch):
            if isinstance(item.op, Call):
                groups.setdefault(item.op.sql, []).append((n, item.op))
        async with conn.transaction():
            for sql, members in groups.items():
                rows = await conn.fetchmany(sql, [call.args for _, call in members])
                for (n, call), row in zip(members, rows, strict=True):
                    results[n] = _finish(call, row)
            for n, item in enumerate(batch):
                if not isinstance(item.op, Call):
                    results[n] = await _savepoint(conn, item.op)
        return results

    async def _slow(self, conn: Conn, batch: list[_Queued]) -> list[Any]:
        """Every operation under its own savepoint; any error but a lost connection is kept
        for that operation's caller alone, and the others commit."""
        results: list[Any] = []
        async with conn.transaction():
            for item in batch:
                op = item.op
                try:
                    results.append(
                        await _savepoint(conn, _as_op(op) if isinstance(op, Call) else op)
                    )
                except CONNECTION_ERRORS:
                    raise
                except Exception as exc:
                    results.append(_Refused(exc))
        return results

    def _fail(self, batch: list[_Queued], error: BaseException) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


def _as_op(call: Call) -> Op:
    async def run(conn: Conn) -> Any:
        return await _call(conn, call)

    return run


def _finish(call: Call, row: Any) -> Any:
    try:
        return call.finish(row)
    except _REFUSALS as exc:
        return _Refused(exc)


async def _savepoint(conn: Conn, op: Op) -> Any:
    """``op`` under a savepoint: a refusal rolls back only itself and is kept for its caller;
    anything else fails the whole group."""
    try:
        async with conn.transaction():
            return await op(conn)
    except CONNECTION_ERRORS:
        raise
    except _REFUSALS as exc:
        return _Refused(exc)


class PgStore(TransitionNotices):
    failures: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, StoreUnavailable)

    def __init__(self, dsn: str, pool: asyncpg.Pool, writer: _Writer) -> None:
        super().__init__()
        self.dsn = dsn
        self._pool = pool
        self._writer = writer
        self.applied_migrations: list[int] = []
        self._bookings: Coalescer[str, None, BookingRecord] = Coalescer(self._get_bookings)

    @classmethod
    async def open(cls, dsn: str) -> PgStore:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=8, timeout=CONNECT_TIMEOUT_S, command_timeout=30
        )
        writer = _Writer(dsn)
        writer.start()
        store = cls(dsn, pool, writer)
        store.applied_migrations = applied
        return store

    async def close(self) -> None:
        try:
            await self._writer.close()
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await asyncio.wait_for(self._pool.close(), 5)

    def on_commit(self, observer: Callable[[int, float], None]) -> None:
        self._writer.on_commit = observer

    @property
    def writer_stats(self) -> WriterStats:
        return self._writer.stats

    @property
    def writer_pid(self) -> int | None:
        """The server process running this store's writes (its writer connection's backend),
        while connected: as SQLite's writer_pid names its writer process."""
        return self._writer.backend_pid

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc!s}") from exc

    async def ping(self) -> bool:
        rows = await self._fetch("SELECT 1")
        return bool(rows and rows[0][0] == 1)

    async def schema_version(self) -> int:
        async with self._pool.acquire() as conn:
            return await version(conn)

    # ----- flights

    async def create_flight(
        self, flight: NewFlight, answer: KeyAnswer | None = None
    ) -> FlightRecord:
        at = now_ms()
        flight_id, created = await self._writer.submit(
            lambda c: _create_flight(c, flight, at, answer)
        )
        return FlightRecord(id=flight_id, created_at=created, **flight_fields(flight))

    async def get_flight(self, flight_id: int) -> FlightRecord | None:
        if not 0 <= flight_id < 2**63:
            return None
        rows = await self._fetch(f"SELECT {_FLIGHT_COLUMNS} FROM flights WHERE id = $1", flight_id)
        return _flight(rows[0]) if rows else None

    async def list_flights(self, after_id: int = 0) -> list[FlightRecord]:
        rows = await self._fetch(
            f"SELECT {_FLIGHT_COLUMNS} FROM flights WHERE id > $1 ORDER BY id", after_id
        )
        return [_flight(r) for r in rows]

    # ----- bookings

    async def insert_booking(
        self,
        booking: NewBooking,
        move: Move,
        supersede: Move,
        payment: PaymentChange | None = None,
        answer: KeyAnswer | None = None,
    ) -> tuple[Moved, list[str]]:
        at = now_ms()
        call = _write_booking_call(booking, move, supersede, at, payment)
        moved, superseded = await self._writer.submit(
            call if answer is None else lambda c: _with_answer(c, call, booking.id, answer)
        )
        for bid, old in superseded:
            self._notify(bid, old, supersede, at)
        self._notify_inserted(booking, moved, move, at)
        return moved, [bid for bid, _ in superseded]

    async def end_holds(
        self, booking_ids: Sequence[str], records: dict[str, NewBooking], move: Move
    ) -> list[str]:
        at = now_ms()
        ids = list(booking_ids)

        async def run(conn: Conn) -> list[tuple[str, Moved]]:
            # Two pipelined round trips for any number: the moves, then the rows of the
            # bookings SQL never had (holds that end before their first money step).
            rows = await conn.fetchmany(MOVE_SQL, [_move_args(bid, move, at) for bid in ids])
            out = {bid: _moved(row) for bid, row in zip(ids, rows, strict=True)}
            missing = [
                bid for bid in ids
                if not out[bid].moved and out[bid].state is None and bid in records
            ]  # fmt: skip
            if missing:
                calls = [_write_booking_call(records[bid], move, move, at, None) for bid in missing]
                written = await conn.fetchmany(WRITE_BOOKING_SQL, [c.args for c in calls])
                for bid, call, row in zip(missing, calls, written, strict=True):
                    out[bid] = call.finish(row)[0]
            return [(bid, out[bid]) for bid in ids]

        outcomes = await self._writer.submit(run)
        return self._notify_ended(outcomes, records, move, at)

    async def transition(
        self,
        booking_id: str,
        move: Move,
        *,
        payment: PaymentChange | None = None,
        hold_expires_at: int | None = None,
        answer: KeyAnswer | None = None,
    ) -> Moved:
        at = now_ms()
        call = _transition_call(booking_id, move, at, payment, hold_expires_at)
        moved: Moved = await self._writer.submit(
            call if answer is None else lambda c: _with_answer(c, call, booking_id, answer)
        )
        self._notify(booking_id, moved, move, at)
        return moved

    async def transition_many(self, booking_ids: Sequence[str], move: Move) -> list[str]:
        at = now_ms()
        ids = list(booking_ids)

        async def run(conn: Conn) -> list[tuple[str, Moved]]:
            rows = await conn.fetchmany(MOVE_SQL, [_move_args(bid, move, at) for bid in ids])
            return [(bid, _moved(row)) for bid, row in zip(ids, rows, strict=True)]

        outcomes = await self._writer.submit(run)
        return self._notify_moves(outcomes, move, at)

    async def change_payment(
        self, booking_id: str, change: PaymentChange, *, booking_in: Collection[str]
    ) -> Moved:
        at = now_ms()
        states = list(booking_in)

        async def run(conn: Conn) -> Moved:
            state = await conn.fetchval(
                "SELECT state FROM bookings WHERE id = $1 FOR UPDATE", booking_id
            )
            if state is None or state not in states:
                return Moved(False, state)
            await _change_payment(conn, booking_id, change, at)
            return Moved(True, state)

        moved: Moved = await self._writer.submit(run)
        return moved

    async def get_booking(self, booking_id: str) -> BookingRecord | None:
        if not booking_id.isascii() or "\x00" in booking_id:
            return None  # no booking id is; PostgreSQL refuses NUL in text
        return await self._bookings.get(booking_id, None)

    async def _get_bookings(self, wanted: dict[str, None]) -> dict[str, BookingRecord]:
        rows = await self._fetch(
            f"SELECT {_BOOKING_COLUMNS}, bs.seat FROM bookings b"
            " LEFT JOIN payments p ON p.booking_id = b.id"
            " LEFT JOIN booking_seats bs ON bs.booking_id = b.id"
            " WHERE b.id = ANY($1::text[]) ORDER BY b.id, bs.pos",
            list(wanted),
        )
        seats: dict[str, list[str]] = {}
        first: dict[str, Any] = {}
        for row in rows:
            first.setdefault(row[0], row)
            booked = seats.setdefault(row[0], [])
            if row[-1] is not None:
                booked.append(row[-1])
        return {bid: booking_of(row, seats[bid]) for bid, row in first.items()}

    async def find_bookings(
        self, *, user_id: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[BookingRecord]:
        rows = await self._fetch(
            "SELECT id FROM bookings WHERE ($1::text IS NULL OR user_id = $1)"
            " AND ($2::text IS NULL OR state = $2) ORDER BY created_at DESC, id DESC LIMIT $3",
            user_id,
            state,
            limit,
        )
        ids = [r[0] for r in rows]
        found = await self._get_bookings(dict.fromkeys(ids)) if ids else {}
        return [found[bid] for bid in ids if bid in found]

    async def unsettled_payments(
        self, deadline_before_ms: int, touched_before_ms: int, limit: int
    ) -> list[str]:
        rows = await self._fetch(
            "SELECT b.id FROM bookings b JOIN payments p ON p.booking_id = b.id"
            f" WHERE b.state = '{State.PAYMENT_PENDING}'"
            " AND (b.hold_expires_at < $1 OR p.updated_at < $2)"
            " UNION SELECT p.booking_id FROM payments p JOIN bookings b ON b.id = p.booking_id"
            f" WHERE p.status = '{PaymentStatus.PENDING}' AND b.state != '{State.PAYMENT_PENDING}'"
            " AND p.updated_at < $2"
            " UNION SELECT booking_id FROM payments"
            f" WHERE status = '{PaymentStatus.REFUNDING}' AND updated_at < $2"
            " LIMIT $3",
            deadline_before_ms,
            touched_before_ms,
            limit,
        )
        return [r[0] for r in rows]

    async def overdue(self, states: Collection[str], before_ms: int, limit: int) -> list[str]:
        rows = await self._fetch(
            "SELECT id FROM bookings WHERE state = ANY($1::text[]) AND hold_expires_at < $2"
            " ORDER BY hold_expires_at LIMIT $3",
            list(states),
            before_ms,
            limit,
        )
        return [r[0] for r in rows]

    async def count_by_state(self) -> dict[str, int]:
        rows = await self._fetch("SELECT state, count(*) FROM bookings GROUP BY state")
        return {r[0]: r[1] for r in rows}

    async def states_of(self, booking_ids: Collection[str]) -> dict[str, str]:
        rows = await self._fetch(
            "SELECT id, state FROM bookings WHERE id = ANY($1::text[])", list(booking_ids)
        )
        return {r[0]: r[1] for r in rows}

    async def transitions_of(self, booking_id: str) -> list[tuple[str, str, str]]:
        rows = await self._fetch(
            "SELECT from_state, to_state, cause FROM transitions WHERE booking_id = $1 ORDER BY id",
            booking_id,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def live_bookings(self, flight_id: int) -> list[tuple[str, str, list[str]]]:
        rows = await self._fetch(
            "SELECT bs.booking_id, b.state, bs.seat FROM booking_seats bs"
            " JOIN bookings b ON b.id = bs.booking_id"
            " WHERE bs.flight_id = $1 AND bs.live ORDER BY bs.booking_id, bs.pos",
            flight_id,
        )
        bookings: dict[str, tuple[str, list[str]]] = {}
        for bid, state, seat in rows:
            bookings.setdefault(bid, (state, []))[1].append(seat)
        return [(bid, state, seats) for bid, (state, seats) in bookings.items()]

    async def live_seats(self, flight_id: int) -> list[tuple[str, str, str]]:
        rows = await self._fetch(
            "SELECT bs.seat, bs.booking_id, b.state FROM booking_seats bs"
            " JOIN bookings b ON b.id = bs.booking_id"
            " WHERE bs.flight_id = $1 AND bs.live ORDER BY bs.seat",
            flight_id,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # ----- idempotency keys (the same rules as sqlite_keys.py)

    async def claim_key(
        self, key: str, fingerprint: bytes, *, owner: str, stale_ms: int, ttl_ms: int
    ) -> ClaimResult:
        at = now_ms()
        result: ClaimResult = await self._writer.submit(
            lambda c: _claim_key(c, key, fingerprint, owner, at, stale_ms, ttl_ms)
        )
        return result

    async def renew_claims(self, owners: Collection[str]) -> None:
        running, at = list(owners), now_ms()

        async def run(conn: Conn) -> None:
            await conn.execute(
                "UPDATE idempotency_keys SET alive_at = $1 WHERE owner = ANY($2::text[])"
                " AND status IS NULL AND outcome IS NULL",
                at,
                running,
            )

        await self._writer.submit(run)

    async def complete_key(self, key: str, owner: str, status: int, body: bytes) -> bool:
        async def run(conn: Conn) -> bool:
            done = await conn.fetchval(
                "UPDATE idempotency_keys SET status = $1, body = $2"
                " WHERE key = $3 AND owner = $4 AND status IS NULL RETURNING 1",
                status, body, key, owner,
            )  # fmt: skip
            return bool(done == 1)

        changed: bool = await self._writer.submit(run)
        return changed

    async def release_key(self, key: str, owner: str) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE key = $1 AND owner = $2 AND status IS NULL",
                key,
                owner,
            )

        await self._writer.submit(run)

    async def purge_keys(self, older_than_ms: int) -> int:
        async def run(conn: Conn) -> int:
            done = await conn.execute(
                "DELETE FROM idempotency_keys WHERE started_at < $1", older_than_ms
            )
            return int(done.split()[-1])

        deleted: int = await self._writer.submit(run)
        return deleted


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


__all__ = ["LATEST", "PgStore", "is_postgres"]
