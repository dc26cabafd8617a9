"""The SQLite store: flights, bookings, their seats, history, payments and idempotency keys.

Reads go through aiosqlite. Every write is an operation of the group-commit writer
(``sqlite_ops``, ``sqlite_keys``), and every state change is a compare-and-set (``UPDATE …
WHERE state IN (allowed)`` with a row-count check): the caller passes the allowed sources from
its state machine, so the rule lives there and the store applies it under the single writer.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from persistence.coalesce import Coalescer
from persistence.notices import TransitionNotices
from persistence.records import (
    BookingRecord,
    FlightRecord,
    KeyAnswer,
    Move,
    Moved,
    NewBooking,
    NewFlight,
    PaymentChange,
    PaymentStatus,
    State,
    StoreUnavailable,
    now_ms,
)
from persistence.rows import booking_of, flight_fields
from persistence.sqlite_keys import SqliteKeys
from persistence.sqlite_ops import (
    BOOKING_COLUMNS,
    PRAGMAS_REPORTED,
    InsertBooking,
    TransitionOp,
    change_payment_in,
    create_flight,
    end_holds,
    marks,
    move_many,
    read_pragmas,
)
from persistence.sqlite_schema import migrate
from persistence.writer import Call, GroupCommitWriter, WriterClosed, WriterStats, connect

_FLIGHT_COLUMNS = (
    "id, flight_number, origin, destination, departure_time, seat_rows, seat_letters, price, "
    "currency, created_at"
)


class _Rows:
    """Rows already fetched, read like a cursor."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        return self._rows


class SqlStore(SqliteKeys, TransitionNotices):
    failures: tuple[type[Exception], ...] = (sqlite3.Error, StoreUnavailable)

    def __init__(self, path: Path, writer: GroupCommitWriter, reader: aiosqlite.Connection):
        super().__init__()
        self.path = path
        self._writer = writer
        self._reader = reader
        # The schema versions this open applied (sqlite_schema.py); none when it was current.
        self.applied_migrations: list[int] = []
        self._bookings: Coalescer[str, None, BookingRecord] = Coalescer(self._get_bookings)

    @classmethod
    async def open(cls, path: Path) -> SqlStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = GroupCommitWriter(path)
        applied: list[int] = await writer.start(migrate)  # on failure it has stopped it
        try:
            # The reader opens through the same connect() as the writer: one set of pragmas.
            reader = await aiosqlite.Connection(lambda: connect(path), iter_chunk_size=64)
        except BaseException:
            await writer.close()
            raise
        store = cls(path, writer, reader)
        store.applied_migrations = applied
        return store

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

    async def pragmas(self) -> dict[str, dict[str, object]]:
        """The durability settings of the store's own connections: the writer process's and
        the reader's, each asked on that connection."""
        reader = {
            name: (await self._reader.execute_fetchall(f"PRAGMA {name}"))[0][0]  # type: ignore[index]
            for name in PRAGMAS_REPORTED
        }
        writer: dict[str, object] = await self._writer.submit(Call(read_pragmas, ()))
        return {"writer": writer, "reader": reader}

    # ----- flights

    async def create_flight(
        self, flight: NewFlight, answer: KeyAnswer | None = None
    ) -> FlightRecord:
        at = now_ms()

        flight_id, created = await self._writer.submit(Call(create_flight, (flight, at, answer)))
        return FlightRecord(id=flight_id, created_at=created, **flight_fields(flight))

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

    # ----- bookings

    async def insert_booking(
        self,
        booking: NewBooking,
        move: Move,
        supersede: Move,
        payment: PaymentChange | None = None,
        answer: KeyAnswer | None = None,
    ) -> tuple[Moved, list[str]]:
        """Write a booking that so far lived only in Redis, already moved by ``move``.

        Its seats Redis granted it: whoever held them before lost the hold, so a live SQL row
        of such a holder (its expiry not recorded yet) is moved by ``supersede`` in the same
        transaction; their ids are returned. A seat owned for good raises
        :class:`SeatOwnedInSql` and nothing is written. A booking already in SQL is left as
        it is, answered ``Moved(False, its state)``.
        """
        at = now_ms()
        moved, superseded = await self._writer.submit(
            InsertBooking(booking, move, supersede, at, payment, answer)
        )
        for bid, old in superseded:
            self._notify(bid, old, supersede, at)
        self._notify_inserted(booking, moved, move, at)
        return moved, [bid for bid, _ in superseded]

    async def end_holds(
        self, booking_ids: Sequence[str], records: dict[str, NewBooking], move: Move
    ) -> list[str]:
        """``move`` for many bookings in one commit: a compare-and-set where SQL has the
        booking, else its row written from its Redis record. Returns those moved."""
        at = now_ms()
        outcomes = await self._writer.submit(
            Call(end_holds, (list(booking_ids), records, move, at))
        )
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
        """Compare-and-set one booking's state; a payment change, and an Idempotency-Key's
        answer, commit with it or not at all."""
        at = now_ms()

        moved: Moved = await self._writer.submit(
            TransitionOp(booking_id, move, at, payment, hold_expires_at, answer)
        )
        self._notify(booking_id, moved, move, at)
        return moved

    async def transition_many(self, booking_ids: Sequence[str], move: Move) -> list[str]:
        """The same compare-and-set for many bookings in one operation; returns those moved."""
        at = now_ms()

        outcomes = await self._writer.submit(Call(move_many, (list(booking_ids), move, at)))
        return self._notify_moves(outcomes, move, at)

    async def change_payment(
        self, booking_id: str, change: PaymentChange, *, booking_in: Collection[str]
    ) -> Moved:
        """Change the payment only while the booking is in one of ``booking_in``.

        Raises :class:`PaymentChanged` when the payment is not in ``change.expect``.
        """
        at = now_ms()
        states = list(booking_in)

        return await self._writer.submit(Call(change_payment_in, (booking_id, change, states, at)))

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
            f"SELECT {BOOKING_COLUMNS}, bs.seat FROM bookings b"
            " LEFT JOIN payments p ON p.booking_id = b.id"
            " LEFT JOIN booking_seats bs ON bs.booking_id = b.id"
            f" WHERE b.id IN ({marks(booking_ids)}) ORDER BY b.id, bs.pos",
            booking_ids,
        ) as cur:
            rows = await cur.fetchall()
        seats: dict[str, list[str]] = {}
        first: dict[str, Any] = {}
        for row in rows:
            first.setdefault(row[0], row)
            booked = seats.setdefault(row[0], [])
            if row[-1] is not None:  # the seat, after BOOKING_COLUMNS
                booked.append(row[-1])
        return {bid: booking_of(row, seats[bid]) for bid, row in first.items()}

    async def find_bookings(
        self, *, user_id: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[BookingRecord]:
        """SQL's bookings of a user and/or in a state, newest first (the admin CLI's list)."""
        async with self._query(
            "SELECT id FROM bookings WHERE (? IS NULL OR user_id = ?) AND (? IS NULL OR state = ?)"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (user_id, user_id, state, state, limit),
        ) as cur:
            ids = [row[0] for row in await cur.fetchall()]
        found = await self._get_bookings(dict.fromkeys(ids)) if ids else {}
        return [found[bid] for bid in ids if bid in found]

    async def unsettled_payments(
        self, deadline_before_ms: int, touched_before_ms: int, limit: int
    ) -> list[str]:
        """Bookings whose payment a dead or stalled pay left open.

        - PAYMENT_PENDING whose hold deadline is before ``deadline_before_ms``, or whose
          payment is untouched since before ``touched_before_ms`` (the pay that started it
          would have given up on the gateway by then: it died, or left it to recovery);
        - a payment still ``pending`` on a booking that is no longer PAYMENT_PENDING, or a
          refund claimed (``refunding``), untouched since before ``touched_before_ms``.
        """
        async with self._query(
            "SELECT b.id FROM bookings b JOIN payments p ON p.booking_id = b.id"
            f" WHERE b.state = '{State.PAYMENT_PENDING}'"
            " AND (b.hold_expires_at < ? OR p.updated_at < ?)"
            " UNION SELECT p.booking_id FROM payments p JOIN bookings b ON b.id = p.booking_id"
            f" WHERE p.status = '{PaymentStatus.PENDING}' AND b.state != '{State.PAYMENT_PENDING}'"
            " AND p.updated_at < ?"
            " UNION SELECT booking_id FROM payments"
            f" WHERE status = '{PaymentStatus.REFUNDING}' AND updated_at < ?"
            " LIMIT ?",
            (deadline_before_ms, touched_before_ms, touched_before_ms, touched_before_ms, limit),
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def overdue(self, states: Collection[str], before_ms: int, limit: int) -> list[str]:
        """Ids of bookings in ``states`` whose hold deadline is before ``before_ms``."""
        wanted = list(states)
        async with self._query(
            f"SELECT id FROM bookings WHERE state IN ({marks(wanted)}) AND hold_expires_at < ?"
            " ORDER BY hold_expires_at LIMIT ?",
            (*wanted, before_ms, limit),
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def schema_version(self) -> int:
        """The file's schema version (sqlite_schema.py); the open migrated it to the latest."""
        async with self._query("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

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
                f"SELECT id, state FROM bookings WHERE id IN ({marks(chunk)})", chunk
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
