"""The SQL store the domain needs, declared by the domain: a SQLite or a PostgreSQL store
implements it, and nothing in the domain names either."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from holdsvc.domain.records import (
    BookingRecord,
    ClaimResult,
    FlightRecord,
    KeyAnswer,
    Move,
    Moved,
    NewBooking,
    NewFlight,
    PaymentChange,
)


class BookingStore(Protocol):
    # The exceptions that mean "the store could not do it now" (outcome unknown): the domain
    # answers them with 503, never as a refusal.
    failures: tuple[type[Exception], ...]

    async def ping(self) -> bool: ...

    async def create_flight(
        self, flight: NewFlight, answer: KeyAnswer | None = None
    ) -> FlightRecord: ...
    async def get_flight(self, flight_id: int) -> FlightRecord | None: ...
    async def list_flights(self, after_id: int = 0) -> list[FlightRecord]: ...

    async def insert_booking(
        self,
        booking: NewBooking,
        move: Move,
        supersede: Move,
        payment: PaymentChange | None = None,
        answer: KeyAnswer | None = None,
    ) -> tuple[Moved, list[str]]: ...
    async def end_holds(
        self, booking_ids: Sequence[str], records: dict[str, NewBooking], move: Move
    ) -> list[str]: ...
    async def transition(
        self,
        booking_id: str,
        move: Move,
        *,
        payment: PaymentChange | None = None,
        hold_expires_at: int | None = None,
        answer: KeyAnswer | None = None,
    ) -> Moved: ...
    async def transition_many(self, booking_ids: Sequence[str], move: Move) -> list[str]: ...
    async def change_payment(
        self, booking_id: str, change: PaymentChange, *, booking_in: Collection[str]
    ) -> Moved: ...

    async def get_booking(self, booking_id: str) -> BookingRecord | None: ...
    async def unsettled_payments(
        self, deadline_before_ms: int, touched_before_ms: int, limit: int
    ) -> list[str]: ...
    async def overdue(self, states: Collection[str], before_ms: int, limit: int) -> list[str]: ...
    async def count_by_state(self) -> dict[str, int]: ...
    async def states_of(self, booking_ids: Collection[str]) -> dict[str, str]: ...
    async def transitions_of(self, booking_id: str) -> list[tuple[str, str, str]]: ...
    async def live_bookings(self, flight_id: int) -> list[tuple[str, str, list[str]]]: ...
    async def live_seats(self, flight_id: int) -> list[tuple[str, str, str]]: ...

    async def claim_key(
        self, key: str, fingerprint: bytes, *, owner: str, stale_ms: int, ttl_ms: int
    ) -> ClaimResult: ...
    async def complete_key(self, key: str, owner: str, status: int, body: bytes) -> bool: ...
    async def release_key(self, key: str, owner: str) -> None: ...
    async def renew_claims(self, owners: Collection[str]) -> None: ...
    async def purge_keys(self, older_than_ms: int) -> int: ...
