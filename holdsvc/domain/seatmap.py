"""Live seat availability, read from Redis, where holds and bookings take seats."""

from __future__ import annotations

from holdsvc.domain.flights import Flight, Flights
from holdsvc.seats.holds import HoldStore


class SeatMap:
    def __init__(self, holds: HoldStore, flights: Flights) -> None:
        self._holds = holds
        self._flights = flights

    async def statuses(self, flight_id: int) -> tuple[Flight, list[tuple[str, str]]]:
        """The flight and each seat's ``(name, "available"|"held"|"booked")``, in seat order."""
        flight = await self._flights.get(flight_id)
        statuses = await self._holds.seat_statuses(flight.id, flight.seats)
        return flight, [(s, st.value) for s, st in zip(flight.seats, statuses, strict=True)]

    async def free_counts(self, flights: list[Flight]) -> list[int]:
        """Free seats of each flight, in one round trip."""
        return await self._holds.free_counts([(f.id, f.seats) for f in flights])
