"""Turns lapsed holds into EXPIRED bookings.

The deadline index in Redis says which holds are due; SQL's compare-and-set records each
expiry once, whoever asks first (the keyspace event, a pay that found its hold gone, or a
sweep); only then is the hold dropped from the index, so a crash in between repeats the work
instead of losing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from holdsvc.domain.bookings import new_booking
from holdsvc.domain.flights import Flights
from holdsvc.domain.records import now_ms
from holdsvc.domain.states import State, move
from holdsvc.domain.store import BookingStore
from holdsvc.seats import keys
from holdsvc.seats.holds import HoldStore

log = logging.getLogger(__name__)

# Expiries due together commit together: up to this many in one SQL commit.
BATCH = 2000
RECONCILE_BATCH = 1000
FLIGHTS_PER_ROUND_TRIP = 500


class Expirer:
    def __init__(self, holds: HoldStore, store: BookingStore, flights: Flights) -> None:
        self._holds = holds
        self._store = store
        self._flights = flights
        # One pass per flight at a time: events for the seats of one booking arrive together.
        self._locks: dict[int, asyncio.Lock] = {}

    async def on_expired_keys(self, expired: Iterable[bytes]) -> None:
        """The persister's callback: the keys Redis reported expired."""
        flights = {f for f in (keys.flight_of(k) for k in expired) if f is not None}
        for flight_id in sorted(flights):
            await self.expire_due(flight_id, "expiry-event")

    async def sweep(self, cause: str = "sweep") -> int:
        """Expire every due hold of every flight; returns how many were recorded now."""
        flights = [f.id for f in await self._flights.all()]
        total = 0
        for start in range(0, len(flights), FLIGHTS_PER_ROUND_TRIP):
            chunk = flights[start : start + FLIGHTS_PER_ROUND_TRIP]
            for flight_id in await self._holds.flights_with_due_holds(chunk):
                total += await self.expire_due(flight_id, cause)
        return total

    async def reconcile(self, grace_ms: int) -> int:
        """Expire holds that SQL still calls live well past their deadline.

        The deadline index lives in Redis; when Redis lost it (a restart without its AOF, the
        last second of an AOF), only SQL still knows these holds. Their seat keys carried the
        same deadline, so once it has passed they are free in Redis: no Redis check is needed.
        """
        overdue = await self._store.overdue(
            [State.SEAT_HELD.value], now_ms() - grace_ms, RECONCILE_BATCH
        )
        if not overdue:
            return 0
        moved = await self._store.transition_many(
            overdue, move(State.EXPIRED, "reconcile", only_from=State.SEAT_HELD)
        )
        if moved:
            log.warning("%d holds lost from Redis expired from SQL", len(moved))
        return len(moved)

    async def expire_due(self, flight_id: int, cause: str) -> int:
        lock = self._locks.setdefault(flight_id, asyncio.Lock())
        recorded = 0
        async with lock:
            while True:
                due = await self._holds.due(flight_id, BATCH)
                if not due:
                    break
                # A hold SQL never saw is written from its Redis record, in the same commit
                # as the others' compare-and-sets; the record goes only after that commit.
                records = await self._holds.records(flight_id, due)
                moved = await self._store.end_holds(
                    due,
                    {bid: new_booking(r) for bid, r in records.items()},
                    move(State.EXPIRED, cause),
                )
                lapsed = [seat for r in records.values() for seat in r.seats]
                await self._holds.forget(flight_id, due, lapsed)
                recorded += len(moved)
                if len(due) < BATCH:
                    break
        if recorded:
            log.info("flight %d: %d holds expired (%s)", flight_id, recorded, cause)
        return recorded
