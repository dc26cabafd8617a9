"""Checks of the invariants over Redis, SQL and the gateway's ledger, for the fault tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from tests.sql import query


async def check_invariants(db: str, ledger: Path, redis: Redis, flight_id: int) -> None:
    """No seat with two owners, Redis agrees with SQL, no money taken without a seat."""
    doubled = query(
        db,
        "SELECT seat FROM booking_seats WHERE flight_id = ? AND live"
        " GROUP BY seat HAVING count(*) > 1",
        (flight_id,),
    )
    assert doubled == [], f"seats with two live bookings: {doubled}"
    live = {
        seat: (bid, state)
        for seat, bid, state in query(
            db,
            "SELECT bs.seat, bs.booking_id, b.state FROM booking_seats bs"
            " JOIN bookings b ON b.id = bs.booking_id WHERE bs.flight_id = ? AND bs.live",
            (flight_id,),
        )
    }
    states: dict[str, str] = dict(query(db, "SELECT id, state FROM bookings"))
    payments: dict[str, str] = dict(query(db, "SELECT booking_id, status FROM payments"))

    # Redis: a booked seat belongs to a CONFIRMED booking; a held one to a live hold.
    prefix = f"{{f:{flight_id}}}:"
    async for key in redis.scan_iter(match=prefix + "[0-9]*"):
        value = await redis.get(key)
        if value is None:
            continue
        seat = key.decode()[len(prefix) :]
        owner = value.decode() if isinstance(value, bytes) else value
        if owner.startswith("!"):
            assert live.get(seat) == (owner[1:], "CONFIRMED"), f"{seat} booked by {owner}"
        else:
            assert states.get(owner) in {None, "SEAT_HELD", "PAYMENT_PENDING"}, (
                seat, owner, states.get(owner), await redis.pttl(key),
                query(db, "SELECT from_state, to_state, cause, at FROM transitions"
                      " WHERE booking_id = ? ORDER BY id", (owner,)),
                query(db, "SELECT status, updated_at FROM payments WHERE booking_id = ?", (owner,)),
            )  # fmt: skip
    # SQL: every CONFIRMED seat is booked in Redis for that booking.
    for seat, (bid, state) in live.items():
        if state == "CONFIRMED":
            assert await redis.get(prefix + seat) == b"!" + bid.encode(), seat

    # Money: every captured, unrefunded charge belongs to a CONFIRMED booking, or to a
    # CANCELLED one whose refund is still open.
    with sqlite3.connect(ledger) as gw:
        captured = [
            r[0] for r in gw.execute("SELECT reference FROM charges WHERE status = 'captured'")
        ]
    for bid in captured:
        ok = states.get(bid) == "CONFIRMED" or (
            states.get(bid) == "CANCELLED" and payments.get(bid) in {"captured", "refunding"}
        )
        assert ok, f"{bid} charged but {states.get(bid)} / payment {payments.get(bid)}"


def unsettled(db: str) -> list[tuple[Any, ...]]:
    """Bookings still holding or paying, and payments still open."""
    return query(
        db,
        "SELECT b.id, b.state FROM bookings b LEFT JOIN payments p ON p.booking_id = b.id"
        " WHERE b.state IN ('SEAT_HELD', 'PAYMENT_PENDING')"
        " OR p.status IN ('pending', 'refunding')",
    )
