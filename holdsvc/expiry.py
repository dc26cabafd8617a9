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

from holdsvc import keys
from holdsvc.bookings import move
from holdsvc.flights import Flights
from holdsvc.holds import HoldStore
from holdsvc.states import State
from persistence.sqlite_store import SqlStore

log = logging.getLogger(__name__)

BATCH = 500


class Expirer:
    def __init__(self, holds: HoldStore, store: SqlStore, flights: Flights) -> None:
        self._holds = holds
        self._store = store
        self._flights = flights
        # One pass per flight at a time: events for the seats of one booking arrive together.
        self._locks: dict[int, asyncio.Lock] = {}
        self.expired = 0

    async def on_expired_keys(self, expired: Iterable[bytes]) -> None:
        """The persister's callback: the keys Redis reported expired."""
        flights = {f for f in (keys.flight_of(k) for k in expired) if f is not None}
        for flight_id in sorted(flights):
            await self.expire_due(flight_id, "expiry-event")

    async def sweep(self, cause: str = "sweep") -> int:
        """Expire every due hold of every flight; returns how many were recorded now."""
        total = 0
        for flight in await self._flights.all():
            total += await self.expire_due(flight.id, cause)
        return total

    async def expire_due(self, flight_id: int, cause: str) -> int:
        lock = self._locks.setdefault(flight_id, asyncio.Lock())
        recorded = 0
        async with lock:
            while True:
                due = await self._holds.due(flight_id, BATCH)
                if not due:
                    break
                moved = await self._store.transition_many(due, move(State.EXPIRED, cause))
                await self._holds.forget(flight_id, due)
                recorded += len(moved)
                if len(due) < BATCH:
                    break
        if recorded:
            self.expired += recorded
            log.info("flight %d: %d holds expired (%s)", flight_id, recorded, cause)
        return recorded
