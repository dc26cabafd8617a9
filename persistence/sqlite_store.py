"""The SQL store: flights, bookings, their seats, history, payments and idempotency keys.

Reads go through aiosqlite. Every write is an operation of the group-commit writer, and every
state change is a compare-and-set (``UPDATE … WHERE state IN (allowed)`` with a row-count
check): the caller passes the allowed sources from its state machine, so the rule lives there
and the store applies it under the single writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from persistence.coalesce import Coalescer
from persistence.writer import (
    BatchOp,
    Call,
    GroupCommitWriter,
    WriterClosed,
    WriterStats,
    connect,
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class NewFlight:
    flight_number: str
    origin: str
    destination: str
    departure_time: str
    rows: int
    seat_letters: str
    price: str
    currency: str


@dataclass(frozen=True, slots=True)
class FlightRecord:
    id: int
    flight_number: str
    origin: str
    destination: str
    departure_time: str
    rows: int
    seat_letters: str
    price: str
    currency: str
    created_at: int


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    payment_id: str | None
    method: str
    status: str
    amount: str
    currency: str
    idem_key: str | None


@dataclass(frozen=True, slots=True)
class BookingRecord:
    id: str
    flight_id: int
    user_id: str
    state: str
    seats: list[str]
    amount: str
    currency: str
    hold_expires_at: int
    created_at: int
    updated_at: int
    payment: PaymentRecord | None


@dataclass(frozen=True, slots=True)
class NewBooking:
    id: str
    flight_id: int
    user_id: str
    state: str
    seats: list[str]
    amount: str
    currency: str
    hold_expires_at: int
    created_at: int


@dataclass(frozen=True, slots=True)
class Move:
    """A compare-and-set of a booking's state: ``sources -> target``, with its seats' liveness."""

    target: str
    sources: Collection[str]
    cause: str
    seats_live: bool


@dataclass(frozen=True, slots=True)
class PaymentChange:
    """Set the payment to ``status`` if it is now one of ``expect`` (None: create it)."""

    status: str
    expect: Collection[str] | None = None
    payment_id: str | None = None
    method: str = ""
    amount: str = ""
    currency: str = ""
    idem_key: str | None = None


@dataclass(frozen=True, slots=True)
class Moved:
    """The outcome of a compare-and-set: ``moved`` or not, and the state the booking is in now."""

    moved: bool
    state: str | None
    # Set when moved: where it came from, and the hold deadline it had (for expiry lag).
    previous: str | None = None
    deadline: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A committed move, as the store reports it to its observer (logs, metrics)."""

    booking_id: str
    from_state: str
    to_state: str
    cause: str
    at: int
    deadline: int | None


class SeatOwnedInSql(Exception):
    """SQL says another booking owns one of these seats for good: Redis must have lost data."""

    def __init__(self, owners: dict[str, str]) -> None:
        super().__init__(f"seats owned in SQL by {owners}")
        self.owners = owners

    def __reduce__(self) -> tuple[type[SeatOwnedInSql], tuple[dict[str, str]]]:
        # Raised in the writer process and re-raised here: pickled by its real arguments.
        return type(self), (self.owners,)


class PaymentChanged(Exception):
    """The payment was not in the expected status: the whole operation is rolled back."""

    def __init__(self, booking_id: str, status: str | None) -> None:
        super().__init__(f"payment of {booking_id} is {status}")
        self.booking_id = booking_id
        self.status = status

    def __reduce__(self) -> tuple[type[PaymentChanged], tuple[str, str | None]]:
        return type(self), (self.booking_id, self.status)


class Claim(Enum):
    NEW = "new"
    REPLAY = "replay"
    RUNNING = "running"
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim
    status: int | None = None
    body: bytes | None = None


_BOOKING_COLUMNS = (
    "b.id, b.flight_id, b.user_id, b.state, b.amount, b.currency, b.hold_expires_at, "
    "b.created_at, b.updated_at, p.payment_id, p.method, p.status, p.amount, p.currency, "
    "p.idem_key"
)
_FLIGHT_COLUMNS = (
    "id, flight_number, origin, destination, departure_time, seat_rows, seat_letters, price, "
    "currency, created_at"
)


def _in(values: Collection[object]) -> str:
    return ",".join("?" * len(values))


def _move(conn: sqlite3.Connection, booking_id: str, move: Move, at: int) -> Moved:
    row = conn.execute(
        "SELECT state, hold_expires_at FROM bookings WHERE id = ?", (booking_id,)
    ).fetchone()
    if row is None or row[0] not in move.sources:
        return Moved(False, row[0] if row else None)
    current, deadline = row
    updated = conn.execute(
        "UPDATE bookings SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
        (move.target, at, booking_id, current),
    ).rowcount
    if updated != 1:  # impossible under the single writer's transaction; never guessed past
        raise RuntimeError(f"compare-and-set of {booking_id} from {current} changed {updated}")
    conn.execute(
        "INSERT INTO transitions (booking_id, from_state, to_state, cause, at)"
        " VALUES (?, ?, ?, ?, ?)",
        (booking_id, current, move.target, move.cause, at),
    )
    if not move.seats_live:
        conn.execute("UPDATE booking_seats SET live = 0 WHERE booking_id = ?", (booking_id,))
    return Moved(True, move.target, current, deadline)


def _change_payment(
    conn: sqlite3.Connection, booking_id: str, change: PaymentChange, at: int
) -> None:
    if change.expect is None:
        conn.execute(_INSERT_PAYMENT, _payment_row(booking_id, change, at))
        return
    expect = list(change.expect)
    updated = conn.execute(
        "UPDATE payments SET status = ?, payment_id = COALESCE(?, payment_id), updated_at = ?"
        f" WHERE booking_id = ? AND status IN ({_in(expect)})",
        (change.status, change.payment_id, at, booking_id, *expect),
    ).rowcount
    if updated != 1:
        row = conn.execute(
            "SELECT status FROM payments WHERE booking_id = ?", (booking_id,)
        ).fetchone()
        raise PaymentChanged(booking_id, row[0] if row else None)


class _InsertHold(BatchOp):
    """One hold's rows; holds queued together are written with one ``executemany`` a table."""

    def __init__(self, booking: NewBooking, supersede: Move, at: int) -> None:
        self.booking = booking
        self.supersede = supersede
        self.at = at

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Sent to the writer process once per hold: plain tuples pickle in ~1 us, where the
        # dataclasses' own pickling (fields() per object) took ~10 us of the event loop.
        b, m = self.booking, self.supersede
        return _load_insert_hold, (
            (b.id, b.flight_id, b.user_id, b.state, b.seats, b.amount, b.currency,
             b.hold_expires_at, b.created_at),
            (m.target, m.sources, m.cause, m.seats_live),
            self.at,
        )  # fmt: skip

    def _rows(self) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], tuple[Any, ...]]:
        b = self.booking
        booking = (
            b.id, b.flight_id, b.user_id, b.state, b.amount, b.currency,
            b.hold_expires_at, b.created_at, self.at,
        )  # fmt: skip
        seats = [(b.id, i, b.flight_id, s) for i, s in enumerate(b.seats)]
        return booking, seats, (b.id, b.state, self.at)

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[Any]:
        # Any seat conflict (a stale holder to supersede) raises here, and every op is then
        # run alone by __call__, which deals with it.
        rows = [op._rows() for op in ops]
        _insert_many(conn, _INSERT_BOOKING, [r[0] for r in rows])
        _insert_many(conn, _INSERT_SEAT, [seat for r in rows for seat in r[1]])
        _insert_many(conn, _INSERT_HOLD_TRANSITION, [r[2] for r in rows])
        return [[] for _ in ops]

    def __call__(self, conn: sqlite3.Connection) -> list[tuple[str, Moved]]:
        b, supersede = self.booking, self.supersede
        owners = conn.execute(
            "SELECT DISTINCT bs.booking_id, b.state FROM booking_seats bs"
            " JOIN bookings b ON b.id = bs.booking_id"
            f" WHERE bs.flight_id = ? AND bs.live = 1 AND bs.seat IN ({_in(b.seats)})",
            (b.flight_id, *b.seats),
        ).fetchall()
        blocking = {bid: state for bid, state in owners if state not in supersede.sources}
        if blocking:
            raise SeatOwnedInSql(blocking)
        superseded = [(bid, _move(conn, bid, supersede, self.at)) for bid, _ in owners]
        booking, seats, transition = self._rows()
        conn.execute(_INSERT_BOOKING, booking)
        conn.executemany(_INSERT_SEAT, seats)
        conn.execute(_INSERT_HOLD_TRANSITION, transition)
        return superseded


def _load_insert_hold(booking: tuple[Any, ...], supersede: tuple[Any, ...], at: int) -> _InsertHold:
    return _InsertHold(NewBooking(*booking), Move(*supersede), at)


def _insert_many(conn: sqlite3.Connection, insert: str, rows: list[tuple[Any, ...]]) -> None:
    """One multi-row INSERT per chunk instead of executemany's one step per row: each SQLite
    step gives up the GIL and must take it back from the busy event loop, so fewer steps
    means fewer waits."""
    head, _, values = insert.partition(" VALUES ")
    per_chunk = max(1, 30_000 // max(1, len(rows[0]) if rows else 1))
    for start in range(0, len(rows), per_chunk):
        chunk = rows[start : start + per_chunk]
        conn.execute(
            f"{head} VALUES {','.join([values] * len(chunk))}",
            [value for row in chunk for value in row],
        )


_INSERT_PAYMENT = (
    "INSERT INTO payments (booking_id, payment_id, method, status, amount, currency,"
    " idem_key, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_BOOKING = (
    "INSERT INTO bookings (id, flight_id, user_id, state, amount, currency, hold_expires_at,"
    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SEAT = (
    "INSERT INTO booking_seats (booking_id, pos, flight_id, seat, live) VALUES (?, ?, ?, ?, 1)"
)
_INSERT_HOLD_TRANSITION = (
    "INSERT INTO transitions (booking_id, from_state, to_state, cause, at)"
    " VALUES (?, 'INITIATED', ?, 'hold', ?)"
)


def _booking(row: Any, seats: list[str]) -> BookingRecord:
    return BookingRecord(
        id=row[0],
        flight_id=row[1],
        user_id=row[2],
        state=row[3],
        seats=seats,
        amount=row[4],
        currency=row[5],
        hold_expires_at=row[6],
        created_at=row[7],
        updated_at=row[8],
        payment=PaymentRecord(*row[9:15]) if row[11] is not None else None,
    )


# ----- operations run in the writer process (module level, so they pickle)


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(resources.files("persistence").joinpath("schema.sql").read_text("utf-8"))


def _create_flight(conn: sqlite3.Connection, flight: NewFlight, at: int) -> int:
    cur = conn.execute(
        "INSERT INTO flights (flight_number, origin, destination, departure_time,"
        " seat_rows, seat_letters, price, currency, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            flight.flight_number,
            flight.origin,
            flight.destination,
            flight.departure_time,
            flight.rows,
            flight.seat_letters,
            flight.price,
            flight.currency,
            at,
        ),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


class _Transition(BatchOp):
    """One booking's compare-and-set. Transitions queued together (a burst of pays and
    confirms) run as one statement per table; if any of them would not move, or would trip
    a check, they all run alone through ``__call__``, which says why."""

    def __init__(
        self,
        booking_id: str,
        move: Move,
        at: int,
        payment: PaymentChange | None,
        hold_expires_at: int | None,
    ) -> None:
        self.booking_id = booking_id
        self.move = move
        self.at = at
        self.payment = payment
        self.hold_expires_at = hold_expires_at

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _Transition, (
            self.booking_id, self.move, self.at, self.payment, self.hold_expires_at,
        )  # fmt: skip

    def __call__(self, conn: sqlite3.Connection) -> Moved:
        moved = _move(conn, self.booking_id, self.move, self.at)
        if moved.moved:
            if self.payment is not None:
                _change_payment(conn, self.booking_id, self.payment, self.at)
            if self.hold_expires_at is not None:
                conn.execute(
                    "UPDATE bookings SET hold_expires_at = ? WHERE id = ?",
                    (self.hold_expires_at, self.booking_id),
                )
        return moved

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[Any]:
        batch: list[_Transition] = ops
        ids = [op.booking_id for op in batch]
        if len(set(ids)) != len(ids):
            raise _RunAlone("the same booking twice")
        now = {
            bid: (state, deadline)
            for bid, state, deadline in conn.execute(
                f"SELECT id, state, hold_expires_at FROM bookings WHERE id IN ({_in(ids)})", ids
            )
        }
        if any(
            op.booking_id not in now or now[op.booking_id][0] not in op.move.sources for op in batch
        ):
            raise _RunAlone("a booking that would not move")
        moved = conn.executemany(
            "UPDATE bookings SET state = ?, updated_at = ?,"
            " hold_expires_at = COALESCE(?, hold_expires_at) WHERE id = ? AND state = ?",
            [
                (op.move.target, op.at, op.hold_expires_at, op.booking_id, now[op.booking_id][0])
                for op in batch
            ],
        ).rowcount
        if moved != len(batch):
            raise _RunAlone("a compare-and-set that did not hold")
        conn.executemany(
            "INSERT INTO transitions (booking_id, from_state, to_state, cause, at)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (op.booking_id, now[op.booking_id][0], op.move.target, op.move.cause, op.at)
                for op in batch
            ],
        )
        freed = [(op.booking_id,) for op in batch if not op.move.seats_live]
        if freed:
            conn.executemany("UPDATE booking_seats SET live = 0 WHERE booking_id = ?", freed)
        new = [
            _payment_row(op.booking_id, op.payment, op.at)
            for op in batch
            if op.payment is not None and op.payment.expect is None
        ]
        if new:
            conn.executemany(_INSERT_PAYMENT, new)
        changes = [op for op in batch if op.payment is not None and op.payment.expect is not None]
        if changes:
            changed = conn.executemany(
                "UPDATE payments SET status = ?, payment_id = COALESCE(?, payment_id),"
                " updated_at = ? WHERE booking_id = ?"
                " AND status IN (SELECT value FROM json_each(?))",
                [_payment_change_row(op) for op in changes],
            ).rowcount
            if changed != len(changes):
                raise _RunAlone("a payment not in its expected status")
        return [
            Moved(True, op.move.target, now[op.booking_id][0], now[op.booking_id][1])
            for op in batch
        ]


class _RunAlone(Exception):
    """A batch of transitions that must run one by one instead."""


def _payment_row(booking_id: str, c: PaymentChange, at: int) -> tuple[Any, ...]:
    return (booking_id, c.payment_id, c.method, c.status, c.amount, c.currency, c.idem_key, at)


def _payment_change_row(op: _Transition) -> tuple[Any, ...]:
    c = op.payment
    assert c is not None and c.expect is not None
    return (c.status, c.payment_id, op.at, op.booking_id, json.dumps(sorted(c.expect)))


def _move_many(
    conn: sqlite3.Connection, booking_ids: list[str], move: Move, at: int
) -> list[tuple[str, Moved]]:
    return [(bid, _move(conn, bid, move, at)) for bid in booking_ids]


def _change_payment_in(
    conn: sqlite3.Connection, booking_id: str, change: PaymentChange, states: list[str], at: int
) -> Moved:
    row = conn.execute("SELECT state FROM bookings WHERE id = ?", (booking_id,)).fetchone()
    if row is None or row[0] not in states:
        return Moved(False, row[0] if row else None)
    _change_payment(conn, booking_id, change, at)
    return Moved(True, row[0])


def _claim_key(
    conn: sqlite3.Connection,
    key: str,
    fingerprint: bytes,
    owner: str,
    at: int,
    stale_ms: int,
    ttl_ms: int,
) -> ClaimResult:
    row = conn.execute(
        "SELECT k.fingerprint, k.status, k.body, k.started_at, k.owner, i.heartbeat_at"
        " FROM idempotency_keys k LEFT JOIN instances i"
        " ON i.id = substr(k.owner, 1, instr(k.owner, ':') - 1)"
        " WHERE k.key = ?",
        (key,),
    ).fetchone()
    if row is not None and row[3] >= at - ttl_ms:
        stored_fp, status, body, _, holder, heartbeat = row
        if bytes(stored_fp) != fingerprint:
            return ClaimResult(Claim.MISMATCH)
        if status is not None:
            return ClaimResult(Claim.REPLAY, status, bytes(body))
        if heartbeat is not None and heartbeat >= at - stale_ms:
            return ClaimResult(Claim.RUNNING)
        del holder  # a dead holder's claim is taken over below
    conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, status, body,"
        " started_at, owner) VALUES (?, ?, NULL, NULL, ?, ?)",
        (key, fingerprint, at, owner),
    )
    return ClaimResult(Claim.NEW)


def _execute(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One statement; returns how many rows it changed."""
    return conn.execute(sql, params).rowcount


class _Rows:
    """Rows already fetched, read like a cursor."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        return self._rows


class SqlStore:
    def __init__(self, path: Path, writer: GroupCommitWriter, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._bookings: Coalescer[str, None, BookingRecord] = Coalescer(self._get_bookings)
        # Told of every committed move (the app logs and counts them); runs on the event loop.
        self.on_transition: Callable[[Transition], None] | None = None

    @classmethod
    async def open(cls, path: Path) -> SqlStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = GroupCommitWriter(path)
        await writer.start(_create_schema)  # on failure it has stopped its process
        try:
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout=10000")
            await reader.execute("PRAGMA synchronous=FULL")
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        try:
            await self._writer.close()
        finally:
            await self._reader.close()

    @property
    def writer_pid(self) -> int | None:
        return self._writer.pid

    @property
    def writer_stats(self) -> WriterStats:
        return self._writer.stats

    def on_commit(self, observer: Callable[[int, float], None]) -> None:
        """Be told of every group commit: its size and how long it took."""
        self._writer.on_commit = observer

    @contextlib.asynccontextmanager
    async def _query(self, sql: str, params: Sequence[Any] = ()) -> AsyncIterator[_Rows]:
        """Run one query and fetch it whole, in one thread hop.

        A cursor left open across awaits keeps the reader's snapshot open, and concurrent
        requests could keep it open for good: commits made since would stay invisible (a
        booking just held answered "not found").
        """
        yield _Rows(list(await self._reader.execute_fetchall(sql, params)))

    async def ping(self) -> bool:
        """Reads answer and the writer process runs; raises (or is False) otherwise."""
        if not self._writer.alive:
            raise WriterClosed("the SQL writer process is not running")
        async with self._query("SELECT 1") as cur:
            return (await cur.fetchone()) is not None

    async def pragmas(self) -> dict[str, object]:
        """The durability settings of a fresh connection, as the store opens them."""
        conn = connect(self.path)
        try:
            return {
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
            }
        finally:
            conn.close()

    # ----- flights

    async def create_flight(self, flight: NewFlight) -> FlightRecord:
        at = now_ms()

        flight_id = await self._writer.submit(Call(_create_flight, (flight, at)))
        return FlightRecord(id=flight_id, created_at=at, **_fields(flight))

    async def get_flight(self, flight_id: int) -> FlightRecord | None:
        async with self._query(
            f"SELECT {_FLIGHT_COLUMNS} FROM flights WHERE id = ?", (flight_id,)
        ) as cur:
            row = await cur.fetchone()
        return FlightRecord(*row) if row else None

    async def list_flights(self, after_id: int = 0) -> list[FlightRecord]:
        """Flights in id order; only those created after ``after_id``, when given."""
        async with self._query(
            f"SELECT {_FLIGHT_COLUMNS} FROM flights WHERE id > ? ORDER BY id", (after_id,)
        ) as c:
            return [FlightRecord(*row) for row in await c.fetchall()]

    async def find_flight(self, flight_number: str, departure_time: str) -> FlightRecord | None:
        async with self._query(
            f"SELECT {_FLIGHT_COLUMNS} FROM flights WHERE flight_number = ? AND departure_time = ?"
            " ORDER BY id LIMIT 1",
            (flight_number, departure_time),
        ) as cur:
            row = await cur.fetchone()
        return FlightRecord(*row) if row else None

    # ----- bookings

    async def insert_hold(self, booking: NewBooking, supersede: Move) -> list[str]:
        """Record a booking whose seats Redis just granted it.

        Redis granting a seat proves that whoever held it before lost the hold; a live SQL row
        of such a holder (its expiry not recorded yet) is moved by ``supersede`` in the same
        transaction. Returns the ids so moved. A seat owned for good raises
        :class:`SeatOwnedInSql` and nothing is written.
        """
        at = now_ms()
        superseded: list[tuple[str, Moved]] = await self._writer.submit(
            _InsertHold(booking, supersede, at)
        )
        if self.on_transition is not None:
            for bid, moved in superseded:
                self._notify(bid, moved, supersede, at)
            self.on_transition(Transition(booking.id, "INITIATED", booking.state, "hold", at, None))
        return [bid for bid, _ in superseded]

    async def transition(
        self,
        booking_id: str,
        move: Move,
        *,
        payment: PaymentChange | None = None,
        hold_expires_at: int | None = None,
    ) -> Moved:
        """Compare-and-set one booking's state; a payment change commits with it or not at all."""
        at = now_ms()

        moved: Moved = await self._writer.submit(
            _Transition(booking_id, move, at, payment, hold_expires_at)
        )
        self._notify(booking_id, moved, move, at)
        return moved

    async def transition_many(self, booking_ids: Sequence[str], move: Move) -> list[str]:
        """The same compare-and-set for many bookings in one operation; returns those moved."""
        at = now_ms()

        outcomes = await self._writer.submit(Call(_move_many, (list(booking_ids), move, at)))
        for bid, moved in outcomes:
            self._notify(bid, moved, move, at)
        return [bid for bid, moved in outcomes if moved.moved]

    def _notify(self, booking_id: str, moved: Moved, move: Move, at: int) -> None:
        if self.on_transition is not None and moved.moved and moved.previous is not None:
            self.on_transition(
                Transition(booking_id, moved.previous, move.target, move.cause, at, moved.deadline)
            )

    async def change_payment(
        self, booking_id: str, change: PaymentChange, *, booking_in: Collection[str]
    ) -> Moved:
        """Change the payment only while the booking is in one of ``booking_in``.

        Raises :class:`PaymentChanged` when the payment is not in ``change.expect``.
        """
        at = now_ms()
        states = list(booking_in)

        return await self._writer.submit(Call(_change_payment_in, (booking_id, change, states, at)))

    async def get_booking(self, booking_id: str) -> BookingRecord | None:
        """The booking as last committed; concurrent calls share one query."""
        if not booking_id.isascii():
            # No booking id is (bookings.new_booking_id), and a string SQLite cannot encode
            # (a lone surrogate) would fail every other read sharing the query.
            return None
        return await self._bookings.get(booking_id, None)

    async def _get_bookings(self, wanted: dict[str, None]) -> dict[str, BookingRecord]:
        booking_ids = list(wanted)
        # One row per seat, in seat order: the booking and its seats in one query.
        async with self._query(
            f"SELECT {_BOOKING_COLUMNS}, bs.seat FROM bookings b"
            " LEFT JOIN payments p ON p.booking_id = b.id"
            " LEFT JOIN booking_seats bs ON bs.booking_id = b.id"
            f" WHERE b.id IN ({_in(booking_ids)}) ORDER BY b.id, bs.pos",
            booking_ids,
        ) as cur:
            rows = await cur.fetchall()
        seats: dict[str, list[str]] = {}
        first: dict[str, Any] = {}
        for row in rows:
            first.setdefault(row[0], row)
            booked = seats.setdefault(row[0], [])
            if row[15] is not None:
                booked.append(row[15])
        return {bid: _booking(row, seats[bid]) for bid, row in first.items()}

    async def unsettled_payments(
        self, deadline_before_ms: int, touched_before_ms: int, limit: int
    ) -> list[str]:
        """Bookings whose payment a dead or stalled pay left open.

        - PAYMENT_PENDING whose hold deadline is before ``deadline_before_ms``;
        - a payment still ``pending`` on a booking that is no longer PAYMENT_PENDING, or a
          refund claimed (``refunding``), untouched since before ``touched_before_ms``.
        """
        async with self._query(
            "SELECT id FROM bookings WHERE state = 'PAYMENT_PENDING' AND hold_expires_at < ?"
            " UNION SELECT p.booking_id FROM payments p JOIN bookings b ON b.id = p.booking_id"
            " WHERE p.status = 'pending' AND b.state != 'PAYMENT_PENDING' AND p.updated_at < ?"
            " UNION SELECT booking_id FROM payments WHERE status = 'refunding' AND updated_at < ?"
            " LIMIT ?",
            (deadline_before_ms, touched_before_ms, touched_before_ms, limit),
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def overdue(self, states: Collection[str], before_ms: int, limit: int) -> list[str]:
        """Ids of bookings in ``states`` whose hold deadline is before ``before_ms``."""
        wanted = list(states)
        async with self._query(
            f"SELECT id FROM bookings WHERE state IN ({_in(wanted)}) AND hold_expires_at < ?"
            " ORDER BY hold_expires_at LIMIT ?",
            (*wanted, before_ms, limit),
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def count_by_state(self) -> dict[str, int]:
        async with self._query("SELECT state, count(*) FROM bookings GROUP BY state") as cur:
            return {r[0]: r[1] for r in await cur.fetchall()}

    async def states_of(self, booking_ids: Collection[str]) -> dict[str, str]:
        """booking id -> state, for those of ``booking_ids`` that exist."""
        ids = list(booking_ids)
        states: dict[str, str] = {}
        for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            async with self._query(
                f"SELECT id, state FROM bookings WHERE id IN ({_in(chunk)})", chunk
            ) as cur:
                states.update((r[0], r[1]) for r in await cur.fetchall())
        return states

    async def transitions_of(self, booking_id: str) -> list[tuple[str, str, str]]:
        """The booking's history: (from, to, cause), oldest first."""
        async with self._query(
            "SELECT from_state, to_state, cause FROM transitions WHERE booking_id = ? ORDER BY id",
            (booking_id,),
        ) as cur:
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

    async def live_bookings(self, flight_id: int) -> list[tuple[str, str, list[str]]]:
        """(booking id, state, seats) of every booking that holds or owns seats of a flight."""
        bookings: dict[str, tuple[str, list[str]]] = {}
        async with self._query(
            "SELECT bs.booking_id, b.state, bs.seat FROM booking_seats bs"
            " JOIN bookings b ON b.id = bs.booking_id"
            " WHERE bs.flight_id = ? AND bs.live = 1 ORDER BY bs.booking_id, bs.pos",
            (flight_id,),
        ) as cur:
            rows = await cur.fetchall()  # one thread hop, not one per row
        for bid, state, seat in rows:
            bookings.setdefault(bid, (state, []))[1].append(seat)
        return [(bid, state, seats) for bid, (state, seats) in bookings.items()]

    async def live_seats(self, flight_id: int) -> list[tuple[str, str, str]]:
        """(seat, booking id, state) of every live seat row of a flight."""
        async with self._query(
            "SELECT bs.seat, bs.booking_id, b.state FROM booking_seats bs"
            " JOIN bookings b ON b.id = bs.booking_id"
            " WHERE bs.flight_id = ? AND bs.live = 1 ORDER BY bs.seat",
            (flight_id,),
        ) as cur:
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

    # ----- idempotency keys

    async def claim_key(
        self, key: str, fingerprint: bytes, *, owner: str, stale_ms: int, ttl_ms: int
    ) -> ClaimResult:
        # owner is "<instance id>:<claim token>"; the instance's heartbeat says it is alive.
        """Take an idempotency key for a new request, or say what the first request left.

        A key still running under a process whose heartbeat stopped ``stale_ms`` ago (it
        crashed) is taken over, so the retry runs instead of waiting forever.
        """
        at = now_ms()

        return await self._writer.submit(
            Call(_claim_key, (key, fingerprint, owner, at, stale_ms, ttl_ms))
        )

    async def heartbeat(self, instance: str) -> None:
        at = now_ms()

        await self._writer.submit(
            Call(
                _execute,
                (
                    "INSERT INTO instances (id, heartbeat_at) VALUES (?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                    (instance, at),
                ),
            )
        )

    async def retire(self, instance: str) -> None:
        await self._writer.submit(
            Call(_execute, ("DELETE FROM instances WHERE id = ?", (instance,)))
        )

    async def complete_key(self, key: str, owner: str, status: int, body: bytes) -> bool:
        """Store the answer, if ``owner`` still holds the key; False if it was taken over."""

        changed: int = await self._writer.submit(
            Call(
                _execute,
                (
                    "UPDATE idempotency_keys SET status = ?, body = ?"
                    " WHERE key = ? AND owner = ? AND status IS NULL",
                    (status, body, key, owner),
                ),
            )
        )
        return changed == 1

    async def release_key(self, key: str, owner: str) -> None:
        """Forget a key whose request failed unexpectedly, so that a retry runs again."""

        await self._writer.submit(
            Call(
                _execute,
                (
                    "DELETE FROM idempotency_keys WHERE key = ? AND owner = ? AND status IS NULL",
                    (key, owner),
                ),
            )
        )

    async def purge_keys(self, older_than_ms: int) -> int:
        deleted: int = await self._writer.submit(
            Call(_execute, ("DELETE FROM idempotency_keys WHERE started_at < ?", (older_than_ms,)))
        )
        return deleted


def _fields(flight: NewFlight) -> dict[str, Any]:
    return {f.name: getattr(flight, f.name) for f in dataclasses.fields(flight)}
