"""Live seat availability, read from Redis, where holds and bookings take seats."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from holdsvc.domain.flights import Flight, Flights
from holdsvc.seats.holds import HoldStore

log = logging.getLogger(__name__)


class SeatMap:
    def __init__(self, holds: HoldStore, flights: Flights) -> None:
        self._holds = holds
        self._flights = flights
        # Said once when counts become unknown and once when they are back, not per request.
        self._unknown = False

    async def statuses(self, flight_id: int) -> tuple[Flight, list[tuple[str, str]]]:
        """The flight and each seat's ``(name, "available"|"held"|"booked")``, in seat order."""
        flight = await self._flights.get(flight_id)
        statuses = await self._holds.seat_statuses(flight.id, flight.seats)
        return flight, [(s, st.value) for s, st in zip(flight.seats, statuses, strict=True)]

    async def free_counts(self, flights: list[Flight]) -> list[int | None]:
        """Free seats of each flight, in one round trip; None for each while Redis does not
        answer: what a flight is lives in SQL, and is shown whatever Redis is doing."""
        try:
            counts = await self._holds.free_counts([(f.id, f.seats) for f in flights])
        except RedisError as exc:
            if not self._unknown:
                log.warning("seat counts unknown until Redis answers again: %s", exc)
                self._unknown = True
            return [None] * len(flights)
        if self._unknown:
            log.warning("seat counts known again: Redis answers")
            self._unknown = False
        return list(counts)
