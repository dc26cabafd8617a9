"""Puts a flight's booked seats back into a Redis that lost them, from SQL, before any hold.

Every flight has a marker key in Redis whose value is the run id of the Redis process that
was given the flight's booked seats. A missing marker (Redis came back empty, or FLUSHALL)
makes the hold scripts refuse, atomically, until the flight is restored; a marker from an
earlier run id (Redis restarted from its AOF, which may miss its last second) makes the
restore run again, to put back any confirm that the AOF lost. Holds whose keys vanished are
recorded EXPIRED on the way.
"""

from __future__ import annotations

import asyncio
import logging

from holdsvc.domain.flights import Flight, Flights
from holdsvc.domain.idempotency import KeyRef
from holdsvc.domain.records import NewFlight
from holdsvc.domain.states import ENDED, HOLDING, State, move
from holdsvc.domain.store import BookingStore
from holdsvc.seats.holds import HoldStore

log = logging.getLogger(__name__)


class Restorer:
    def __init__(self, holds: HoldStore, store: BookingStore, flights: Flights) -> None:
        self._holds = holds
        self._store = store
        self._flights = flights
        # The run id of the Redis process that the last check() left every flight restored
        # into. Readiness (/readyz) waits until it is the running one's.
        self.restored_run: str | None = None
        self._locks: dict[int, asyncio.Lock] = {}

    async def add_flight(self, new: NewFlight, key: KeyRef | None = None) -> Flight:
        """Create a flight and give it its Redis marker (it has nothing booked to restore), so
        holds on it are served at once."""
        flight = await self._flights.create(new, key)
        await self.restore(flight.id, "new flight")
        return flight

    async def check(self) -> int:
        """Restore every flight whose marker is missing or older than the Redis process that
        serves it (on a cluster, only the flights of a node that lost its data)."""
        run_id = await self._holds.server_run_id()
        flights = [f.id for f in await self._flights.all()]
        stale = await self._holds.stale_markers(flights)
        for flight_id in stale:
            await self.restore(flight_id, "marker missing or from an earlier Redis run")
        self.restored_run = run_id
        return len(stale)

    async def restore_unless_running(self, flight_id: int, reason: str) -> bool:
        """Restore now, or return False at once when this process is already restoring it."""
        if self._lock(flight_id).locked():
            return False
        await self.restore(flight_id, reason)
        return True

    async def restore(self, flight_id: int, reason: str) -> None:
        async with self._lock(flight_id):
            run_id = await self._holds.run_id_of_flight(flight_id)
            bookings = await self._store.live_bookings(flight_id)
            booked = [
                (seat, bid)
                for bid, state, seats in bookings
                if state == State.CONFIRMED.value
                for seat in seats
            ]
            holding = [(bid, state, seats) for bid, state, seats in bookings if state in HOLDING]
            intact = await self._holds.holders(flight_id, [(b, seats) for b, _, seats in holding])
            lost = 0
            for (bid, state, _), ok in zip(holding, intact, strict=True):
                if not ok:
                    # Only from the state read: a pay that is confirming it must not be undone.
                    cas = move(State.EXPIRED, "redis-data-lost", only_from=State(state))
                    lost += (await self._store.transition(bid, cas)).moved
            await self._holds.restore(flight_id, booked, run_id)
            # After the booked seats, from the seat keys themselves: holds made meanwhile too.
            flight = await self._flights.get(flight_id)
            await self._holds.index(flight_id, flight.record.rows, flight.record.seat_letters)
            # SQL was read before the writes: a booking cancelled meanwhile must not stay booked.
            await self._reconcile_seats(flight_id)
            log.log(
                logging.WARNING if booked or lost else logging.DEBUG,
                "flight %d restored into Redis (%s): %d booked seats, %d lost holds expired",
                flight_id,
                reason,
                len(booked),
                lost,
            )

    async def reconcile_all(self) -> int:
        """Make every flight's booked seats in Redis agree with SQL; returns seats fixed."""
        fixed = 0
        for flight in await self._flights.all():
            async with self._lock(flight.id):
                fixed += await self._reconcile_seats(flight.id)
        return fixed

    async def _reconcile_seats(self, flight_id: int) -> int:
        """Free seats booked in Redis for bookings SQL says have ended (a cancel whose Redis
        step failed, a restore that read SQL just before a cancel), and book again the seats
        of CONFIRMED bookings that Redis lacks (a confirm lost with the AOF's last second)."""
        flight = await self._flights.get(flight_id)
        redis_booked = await self._holds.booked_values(flight_id, flight.seats)
        states = await self._store.states_of(set(redis_booked.values()))
        orphans: dict[str, list[str]] = {}
        for seat, bid in redis_booked.items():
            if states.get(bid) in ENDED:
                orphans.setdefault(bid, []).append(seat)
        for bid, seats in orphans.items():
            await self._holds.release(flight_id, seats, bid)
        missing = [
            (seat, bid)
            for bid, state, seats in await self._store.live_bookings(flight_id)
            if state == State.CONFIRMED.value
            for seat in seats
            if redis_booked.get(seat) != bid
        ]
        if missing:
            await self._holds.restore(flight_id, missing, run_id=None)
            # A booking cancelled between the reads above and this write must not stay booked
            # (its cancel committed in SQL first, so this re-read sees it).
            states = await self._store.states_of({bid for _, bid in missing})
            for bid in {bid for _, bid in missing if states.get(bid) in ENDED}:
                await self._holds.release(flight_id, [seat for seat, b in missing if b == bid], bid)
        fixed = sum(len(s) for s in orphans.values()) + len(missing)
        if fixed:
            log.warning(
                "flight %d: freed %d seats of ended bookings, booked %d seats again",
                flight_id,
                fixed - len(missing),
                len(missing),
            )
        return fixed

    def _lock(self, flight_id: int) -> asyncio.Lock:
        return self._locks.setdefault(flight_id, asyncio.Lock())
