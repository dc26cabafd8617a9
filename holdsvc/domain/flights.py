"""Flights: created once, never changed, so each process caches them after the first read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from holdsvc.domain.errors import NotFound
from holdsvc.domain.idempotency import KeyRef
from holdsvc.domain.records import FlightRecord, NewFlight
from holdsvc.domain.store import BookingStore

# The outcome a keyed flight creation's answer is stored as.
CREATED = "flight"


@dataclass(frozen=True, slots=True)
class Flight:
    record: FlightRecord
    # A tuple of strings, not a list or a set: the garbage collector stops tracking such a
    # tuple, while every cached list and set of seat names was traversed by each full
    # collection. With 1,000 flights cached those took 170 ms each, the service's p99.
    seats: tuple[str, ...]
    # Its departure, Unix ms: a hold on a departed flight is refused.
    departs_ms: float = float("inf")

    @property
    def id(self) -> int:
        return self.record.id

    def has_seat(self, name: str) -> bool:
        # A row of 1-3 ASCII digits without a leading zero, up to the flight's rows, then
        # one of its letters: checked without a regex, a match per seat on the hold path.
        row, letter = name[:-1], name[-1:]
        return (
            letter != ""
            and letter in self.record.seat_letters
            and 0 < len(row) <= 3
            and row.isascii()
            and row.isdigit()
            and row[0] != "0"
            and int(row) <= self.record.rows
        )

    @classmethod
    def of(cls, record: FlightRecord) -> Flight:
        seats = tuple(
            f"{row}{letter}" for row in range(1, record.rows + 1) for letter in record.seat_letters
        )
        departs = datetime.fromisoformat(record.departure_time.replace("Z", "+00:00"))
        return cls(record, seats, departs.timestamp() * 1000)


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
