"""The SQL store on its own: durability pragmas, the one-live-booking-per-seat fence, and
group commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from holdsvc.states import State, move
from persistence.sqlite_store import NewBooking, NewFlight, SeatOwnedInSql, SqlStore, now_ms

FLIGHT = NewFlight("HS9", "DEL", "BOM", "2026-12-01T09:30:00Z", 2, "AB", "10.00", "INR")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    s = await SqlStore.open(tmp_path / "store.sqlite3")
    try:
        yield s
    finally:
        await s.close()


def booking(bid: str, flight_id: int, seats: list[str]) -> NewBooking:
    return NewBooking(
        id=bid,
        flight_id=flight_id,
        user_id="u",
        state="SEAT_HELD",
        seats=seats,
        amount="10.00",
        currency="INR",
        hold_expires_at=now_ms() + 60_000,
        created_at=now_ms(),
    )


async def test_every_connection_is_wal_and_synchronous_full(store: SqlStore) -> None:
    assert await store.pragmas() == {"journal_mode": "wal", "synchronous": 2}


async def test_a_sold_seat_cannot_be_written_to_a_second_booking(store: SqlStore) -> None:
    flight = await store.create_flight(FLIGHT)
    supersede = move(State.EXPIRED, "superseded")
    await store.insert_hold(booking("a", flight.id, ["1A"]), supersede)
    assert (await store.transition("a", move(State.PAYMENT_PENDING, "pay"))).moved
    assert (await store.transition("a", move(State.CONFIRMED, "paid"))).moved

    # A stale holder (Redis lost its data, or a GC pause) cannot sell the seat again.
    with pytest.raises(SeatOwnedInSql):
        await store.insert_hold(booking("b", flight.id, ["1B", "1A"]), supersede)
    assert await store.get_booking("b") is None
    assert await store.live_seats(flight.id) == [("1A", "a", "CONFIRMED")]

    # Below the store's own check, the unique index refuses it too.
    with sqlite3.connect(store.path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO booking_seats (booking_id, pos, flight_id, seat, live)"
            " VALUES ('a', 9, ?, '1A', 1)",
            (flight.id,),
        )


async def test_compare_and_set_refuses_moves_outside_the_table(store: SqlStore) -> None:
    flight = await store.create_flight(FLIGHT)
    await store.insert_hold(booking("c", flight.id, ["2A"]), move(State.EXPIRED, "superseded"))
    refused = await store.transition("c", move(State.REFUNDED, "refund"))
    assert not refused.moved and refused.state == "SEAT_HELD"
    assert (await store.transition("c", move(State.EXPIRED, "test"))).moved
    again = await store.transition("c", move(State.EXPIRED, "test"))
    assert not again.moved and again.state == "EXPIRED"
    assert await store.transitions_of("c") == [
        ("INITIATED", "SEAT_HELD", "hold"),
        ("SEAT_HELD", "EXPIRED", "test"),
    ]
    missing = await store.transition("nope", move(State.EXPIRED, "test"))
    assert missing == type(missing)(False, None)


async def test_concurrent_writes_share_commits(store: SqlStore) -> None:
    flight = await store.create_flight(FLIGHT)
    before = store.writer_stats.commits
    n = 200
    await asyncio.gather(
        *(
            store.insert_hold(
                booking(f"g{i}", flight.id, [f"{i}Z"]), move(State.EXPIRED, "superseded")
            )
            for i in range(n)
        )
    )
    commits = store.writer_stats.commits - before
    assert commits < n / 4, f"{n} holds took {commits} commits"
    assert len(await store.live_seats(flight.id)) == n
