"""Flights: created once, never changed, so each process caches them after the first read."""

from __future__ import annotations

from dataclasses import dataclass

from holdsvc.errors import NotFound
from persistence.sqlite_store import FlightRecord, NewFlight, SqlStore


@dataclass(frozen=True, slots=True)
class Flight:
    record: FlightRecord
    seats: list[str]
    seat_set: frozenset[str]

    @property
    def id(self) -> int:
        return self.record.id

    @classmethod
    def of(cls, record: FlightRecord) -> Flight:
        seats = [
            f"{row}{letter}" for row in range(1, record.rows + 1) for letter in record.seat_letters
        ]
        return cls(record, seats, frozenset(seats))


class Flights:
    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._cache: dict[int, Flight] = {}

    async def create(self, new: NewFlight) -> Flight:
        flight = Flight.of(await self._store.create_flight(new))
        self._cache[flight.id] = flight
        return flight

    async def get(self, flight_id: int) -> Flight:
        flight = self._cache.get(flight_id)
        if flight is None:
            record = await self._store.get_flight(flight_id)
            if record is None:
                raise NotFound("Flight not found")
            flight = self._cache[flight_id] = Flight.of(record)
        return flight

    async def all(self) -> list[Flight]:
        flights = []
        for record in await self._store.list_flights():
            flight = self._cache.get(record.id)
            if flight is None:
                flight = self._cache[record.id] = Flight.of(record)
            flights.append(flight)
        return flights
