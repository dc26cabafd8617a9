"""Flights: created once, never changed, so each process caches them after the first read."""

from __future__ import annotations

import re
from dataclasses import dataclass

from holdsvc.domain.errors import NotFound
from holdsvc.domain.idempotency import KeyRef
from holdsvc.domain.records import FlightRecord, NewFlight
from holdsvc.domain.store import BookingStore

# The outcome a keyed flight creation's answer is stored as.
CREATED = "flight"

_SEAT = re.compile(r"([1-9][0-9]{0,2})([A-Z])")


@dataclass(frozen=True, slots=True)
class Flight:
    record: FlightRecord
    # A tuple of strings, not a list or a set: the garbage collector stops tracking such a
    # tuple, while every cached list and set of seat names was traversed by each full
    # collection. With 1,000 flights cached those took 170 ms each, the service's p99.
    seats: tuple[str, ...]

    @property
    def id(self) -> int:
        return self.record.id

    def has_seat(self, name: str) -> bool:
        match = _SEAT.fullmatch(name)
        return (
            match is not None
            and int(match[1]) <= self.record.rows
            and match[2] in self.record.seat_letters
        )

    @classmethod
    def of(cls, record: FlightRecord) -> Flight:
        seats = tuple(
            f"{row}{letter}" for row in range(1, record.rows + 1) for letter in record.seat_letters
        )
        return cls(record, seats)


class Flights:
    def __init__(self, store: BookingStore) -> None:
        self._store = store
        self._cache: dict[int, Flight] = {}
        # Every flight up to this id is listed in _listed. Flights are never changed or
        # deleted, so each sweep round asks SQL only for the ones created since.
        self._listed: list[Flight] = []
        self._listed_upto = 0

    async def create(self, new: NewFlight, key: KeyRef | None = None) -> Flight:
        """A new flight; with ``key``, its answer is stored in the same commit."""
        flight = Flight.of(
            await self._store.create_flight(new, key.answer(CREATED) if key else None)
        )
        if key is not None:
            key.stored = True
        self._cache[flight.id] = flight
        return flight

    def cached(self, flight_id: int) -> Flight | None:
        """The flight if this process has it, without a coroutine: the hold path's lookup."""
        return self._cache.get(flight_id)

    async def get(self, flight_id: int) -> Flight:
        flight = self._cache.get(flight_id)
        if flight is None:
            record = await self._store.get_flight(flight_id)
            if record is None:
                raise NotFound("Flight not found")
            flight = self._cache[flight_id] = Flight.of(record)
        return flight

    async def all(self) -> list[Flight]:
        """Every flight, in id order, including those other processes created."""
        for record in await self._store.list_flights(after_id=self._listed_upto):
            if record.id <= self._listed_upto:  # an overlapping call listed it meanwhile
                continue
            flight = self._cache.get(record.id)
            if flight is None:
                flight = self._cache[record.id] = Flight.of(record)
            self._listed.append(flight)
            self._listed_upto = record.id
        return list(self._listed)
