"""The SQLite store's writes: operations that run inside the writer process, with their SQL.

Each is a module-level callable or a :class:`BatchOp`, so it pickles to the writer process;
each state change is a compare-and-set whose allowed sources the caller's :class:`Move` names.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Collection
from typing import Any

from persistence.records import (
    BookingRecord,
    FlightRecord,
    KeyAnswer,
    Move,
    Moved,
    NewBooking,
    NewFlight,
    PaymentChange,
    PaymentChanged,
    SeatOwnedInSql,
    State,
)
from persistence.rows import booking_of, flight_fields
from persistence.writer import BatchOp


def marks(values: Collection[object]) -> str:
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
        "UPDATE payments SET status = ?, payment_id = COALESCE(?, payment_id), updated_at = ?,"
        " refund_key = COALESCE(?, refund_key)"
        f" WHERE booking_id = ? AND status IN ({marks(expect)})",
        (change.status, change.payment_id, at, change.idem_key, booking_id, *expect),
    ).rowcount
    if updated != 1:
        row = conn.execute(
            "SELECT status FROM payments WHERE booking_id = ?", (booking_id,)
        ).fetchone()
        raise PaymentChanged(booking_id, row[0] if row else None)


class InsertBooking(BatchOp):
    """A booking enters SQL from its Redis hold: its row, seats and history (created, then
    held at ``created_at``, then ``move`` now), with the payment a pay starts, if any.

    Bookings queued together are written with one multi-row INSERT a table. A booking already
    in SQL is not written again: the op answers its state, as a compare-and-set that did not
    hold would. A seat SQL says is owned for good raises :class:`SeatOwnedInSql` (the fence).
    """

    def __init__(
        self,
        booking: NewBooking,
        move: Move,
        supersede: Move,
        at: int,
        payment: PaymentChange | None,
        answer: KeyAnswer | None = None,
    ) -> None:
        self.booking = booking
        self.move = move
        self.supersede = supersede
        self.at = at
        self.payment = payment
        self.answer = answer

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Plain tuples pickle in ~1 us, where the dataclasses' own pickling (fields() per
        # object) took ~10 us of the event loop.
        b, m, s = self.booking, self.move, self.supersede
        return _load_insert_booking, (
            (b.id, b.flight_id, b.user_id, b.state, b.seats, b.amount, b.currency,
             b.hold_expires_at, b.created_at, b.owner),
            (m.target, m.sources, m.cause, m.seats_live),
            (s.target, s.sources, s.cause, s.seats_live),
            self.at,
            self.payment,
            self.answer,
        )  # fmt: skip

    def _rows(self) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        b, m = self.booking, self.move
        booking = (
            b.id, b.flight_id, b.user_id, m.target, b.amount, b.currency,
            b.hold_expires_at, b.created_at, self.at, b.owner,
        )  # fmt: skip
        live = 1 if m.seats_live else 0
        seats = [(b.id, i, b.flight_id, s, live) for i, s in enumerate(b.seats)]
        history = [(b.id, State.INITIATED.value, State.SEAT_HELD.value, "hold", b.created_at)]
        if m.target != State.SEAT_HELD.value:  # written still held: a copy of a live hold
            history.append((b.id, State.SEAT_HELD.value, m.target, m.cause, self.at))
        return booking, seats, history

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[Any]:
        # Any conflict (a booking already written, a stale holder to supersede) raises here,
        # and every op is then run alone by __call__, which deals with it.
        if any(op.answer is not None for op in ops):
            raise _RunAlone("an answer to store with its booking")
        rows = [op._rows() for op in ops]
        _insert_many(conn, _INSERT_BOOKING, [r[0] for r in rows])
        _insert_many(conn, _INSERT_SEAT, [seat for r in rows for seat in r[1]])
        _insert_many(conn, _INSERT_TRANSITION, [h for r in rows for h in r[2]])
        payments = [_payment_row(op.booking.id, op.payment, op.at) for op in ops if op.payment]
        if payments:
            _insert_many(conn, _INSERT_PAYMENT, payments)
        return [
            (Moved(True, op.move.target, State.SEAT_HELD.value, op.booking.hold_expires_at), [])
            for op in ops
        ]

    def __call__(self, conn: sqlite3.Connection) -> tuple[Moved, list[tuple[str, Moved]]]:
        b = self.booking
        row = conn.execute("SELECT state FROM bookings WHERE id = ?", (b.id,)).fetchone()
        if row is not None:
            return Moved(False, row[0]), []
        return self.write(conn)

    def write(self, conn: sqlite3.Connection) -> tuple[Moved, list[tuple[str, Moved]]]:
        """The rows, for a booking the caller knows SQL does not have yet."""
        b, supersede = self.booking, self.supersede
        superseded: list[tuple[str, Moved]] = []
        if self.move.seats_live:
            owners = conn.execute(
                "SELECT DISTINCT bs.booking_id, b.state FROM booking_seats bs"
                " JOIN bookings b ON b.id = bs.booking_id"
                f" WHERE bs.flight_id = ? AND bs.live = 1 AND bs.seat IN ({marks(b.seats)})",
                (b.flight_id, *b.seats),
            ).fetchall()
            blocking = {bid: state for bid, state in owners if state not in supersede.sources}
            if blocking:
                raise SeatOwnedInSql(blocking)
            superseded = [(bid, _move(conn, bid, supersede, self.at)) for bid, _ in owners]
        booking, seats, history = self._rows()
        conn.execute(_INSERT_BOOKING, booking)
        conn.executemany(_INSERT_SEAT, seats)
        conn.executemany(_INSERT_TRANSITION, history)
        if self.payment is not None:
            conn.execute(_INSERT_PAYMENT, _payment_row(b.id, self.payment, self.at))
        record = _answered(conn, b.id, self.answer)
        moved = Moved(True, self.move.target, State.SEAT_HELD.value, b.hold_expires_at, record)
        return moved, superseded


def _load_insert_booking(
    booking: tuple[Any, ...],
    move: tuple[Any, ...],
    supersede: tuple[Any, ...],
    at: int,
    payment: PaymentChange | None,
    answer: KeyAnswer | None,
) -> InsertBooking:
    return InsertBooking(NewBooking(*booking), Move(*move), Move(*supersede), at, payment, answer)


def end_holds(
    conn: sqlite3.Connection,
    booking_ids: list[str],
    records: dict[str, NewBooking],
    move: Move,
    at: int,
) -> list[tuple[str, Moved]]:
    """``move`` for each booking: a compare-and-set where SQL has the booking, else its row
    written from its Redis record, already in ``move``'s state (a hold SQL never saw)."""
    out: list[tuple[str, Moved]] = []
    for bid in booking_ids:
        moved = _move(conn, bid, move, at)
        if not moved.moved and moved.state is None and bid in records:
            # _move found no row: the record's booking is written, already in its outcome.
            moved, _ = InsertBooking(records[bid], move, move, at, None).write(conn)
        out.append((bid, moved))
    return out


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
    " created_at, updated_at, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SEAT = (
    "INSERT INTO booking_seats (booking_id, pos, flight_id, seat, live) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_TRANSITION = (
    "INSERT INTO transitions (booking_id, from_state, to_state, cause, at) VALUES (?, ?, ?, ?, ?)"
)


BOOKING_COLUMNS = (
    "b.id, b.flight_id, b.user_id, b.state, b.amount, b.currency, b.hold_expires_at, "
    "b.created_at, b.updated_at, p.payment_id, p.method, p.status, p.amount, p.currency, "
    "p.idem_key, p.refund_key, b.owner"
)


def read_booking(conn: sqlite3.Connection, booking_id: str) -> BookingRecord | None:
    """The booking as this transaction sees it (the writer's own reads)."""
    row = conn.execute(
        f"SELECT {BOOKING_COLUMNS} FROM bookings b LEFT JOIN payments p ON p.booking_id = b.id"
        " WHERE b.id = ?",
        (booking_id,),
    ).fetchone()
    if row is None:
        return None
    seats = [
        s for (s,) in conn.execute(
            "SELECT seat FROM booking_seats WHERE booking_id = ? ORDER BY pos", (booking_id,)
        )
    ]  # fmt: skip
    return booking_of(row, seats)


def store_answer(
    conn: sqlite3.Connection, answer: KeyAnswer, record: BookingRecord | FlightRecord
) -> None:
    """Keep ``answer`` under its key, in the caller's transaction: the effect and its answer
    commit together or not at all. The first answer stored wins."""
    conn.execute(
        "UPDATE idempotency_keys SET outcome = ?, record = ?"
        " WHERE key = ? AND status IS NULL AND outcome IS NULL",
        (answer.outcome, json.dumps(dataclasses.asdict(record)).encode(), answer.key),
    )


def _answered(
    conn: sqlite3.Connection, booking_id: str, answer: KeyAnswer | None
) -> BookingRecord | None:
    if answer is None:
        return None
    record = read_booking(conn, booking_id)
    assert record is not None
    store_answer(conn, answer, record)
    return record


def create_flight(
    conn: sqlite3.Connection, flight: NewFlight, at: int, answer: KeyAnswer | None = None
) -> tuple[int, int]:
    """The new flight's id and creation time. Under a key another attempt already answered
    (its claim was taken over while it ran), that attempt's flight: never a second one."""
    if answer is not None:
        done = conn.execute(
            "SELECT record FROM idempotency_keys WHERE key = ? AND outcome = ?",
            (answer.key, answer.outcome),
        ).fetchone()
        if done is not None:
            made = json.loads(done[0])
            return int(made["id"]), int(made["created_at"])
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
    if answer is not None:
        store_answer(
            conn, answer, FlightRecord(cur.lastrowid, created_at=at, **flight_fields(flight))
        )
    return cur.lastrowid, at


class TransitionOp(BatchOp):
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
        answer: KeyAnswer | None = None,
    ) -> None:
        self.booking_id = booking_id
        self.move = move
        self.at = at
        self.payment = payment
        self.hold_expires_at = hold_expires_at
        self.answer = answer

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return TransitionOp, (
            self.booking_id, self.move, self.at, self.payment, self.hold_expires_at, self.answer,
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
            record = _answered(conn, self.booking_id, self.answer)
            if record is not None:
                moved = dataclasses.replace(moved, record=record)
        return moved

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, ops: list[Any]) -> list[Any]:
        batch: list[TransitionOp] = ops
        if any(op.answer is not None for op in batch):
            raise _RunAlone("an answer to store with its move")
        ids = [op.booking_id for op in batch]
        if len(set(ids)) != len(ids):
            raise _RunAlone("the same booking twice")
        now = {
            bid: (state, deadline)
            for bid, state, deadline in conn.execute(
                f"SELECT id, state, hold_expires_at FROM bookings WHERE id IN ({marks(ids)})",
                ids,
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
                " updated_at = ?, refund_key = COALESCE(?, refund_key) WHERE booking_id = ?"
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


def _payment_change_row(op: TransitionOp) -> tuple[Any, ...]:
    c = op.payment
    assert c is not None and c.expect is not None
    return (
        c.status, c.payment_id, op.at, c.idem_key, op.booking_id, json.dumps(sorted(c.expect))
    )  # fmt: skip


def move_many(
    conn: sqlite3.Connection, booking_ids: list[str], move: Move, at: int
) -> list[tuple[str, Moved]]:
    return [(bid, _move(conn, bid, move, at)) for bid in booking_ids]


def change_payment_in(
    conn: sqlite3.Connection, booking_id: str, change: PaymentChange, states: list[str], at: int
) -> Moved:
    row = conn.execute("SELECT state FROM bookings WHERE id = ?", (booking_id,)).fetchone()
    if row is None or row[0] not in states:
        return Moved(False, row[0] if row else None)
    _change_payment(conn, booking_id, change, at)
    return Moved(True, row[0])


def execute(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One statement; returns how many rows it changed."""
    return conn.execute(sql, params).rowcount


PRAGMAS_REPORTED = ("journal_mode", "synchronous", "busy_timeout")


def read_pragmas(conn: sqlite3.Connection) -> dict[str, object]:
    """The durability settings of this connection (the writer process's, when submitted)."""
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMAS_REPORTED}
