"""The records the domain and every SQL store share: plain values, no SQL.

The domain's store Protocol (``holdsvc.domain.store``) is written in these types and each
store returns them. They live here, beside the stores, because persistence imports nothing
from holdsvc; the domain re-exports them, so the layers above never name persistence.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any


# The names of booking states and payment statuses, spelled once. Which moves between them
# are allowed is the domain's business (holdsvc.domain.states); the stores only spell them.
class State(StrEnum):
    INITIATED = "INITIATED"
    SEAT_HELD = "SEAT_HELD"
    PAYMENT_PENDING = "PAYMENT_PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    REFUNDED = "REFUNDED"
    EXPIRED = "EXPIRED"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    FAILED = "failed"
    REFUNDING = "refunding"
    REFUNDED = "refunded"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@functools.lru_cache(maxsize=1024)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso_ms(ms: int) -> str:
    """2026-12-03T13:16:25.123Z, how every answer shows a time stored in ms. Every answer
    carries two or three of these, and the datetime round trip showed in the hold path's
    profile: the second is formatted once."""
    second, milli = divmod(ms, 1000)
    return f"{_iso_second(second)}.{milli:03d}Z"


@dataclass(frozen=True, slots=True)
class NewFlight:
    flight_number: str
    origin: str
    destination: str
    departure_time: str
    rows: int
    seat_letters: str
    price: str
    currency: str


@dataclass(frozen=True, slots=True)
class FlightRecord:
    id: int
    flight_number: str
    origin: str
    destination: str
    departure_time: str
    rows: int
    seat_letters: str
    price: str
    currency: str
    created_at: int


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    payment_id: str | None
    method: str
    status: str
    amount: str
    currency: str
    idem_key: str | None
    refund_key: str | None = None


@dataclass(frozen=True, slots=True)
class BookingRecord:
    id: str
    flight_id: int
    user_id: str
    state: str
    seats: list[str]
    amount: str
    currency: str
    hold_expires_at: int
    created_at: int
    updated_at: int
    payment: PaymentRecord | None
    # False for a hold that lives only in Redis so far (read from its record).
    in_sql: bool = True
    # The name of the API key that made the hold ("" when the service runs without keys):
    # a client key sees and acts on only its own bookings.
    owner: str = ""


@dataclass(frozen=True, slots=True)
class NewBooking:
    id: str
    flight_id: int
    user_id: str
    state: str
    seats: list[str]
    amount: str
    currency: str
    hold_expires_at: int
    created_at: int
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Move:
    """A compare-and-set of a booking's state: ``sources -> target``, with its seats' liveness."""

    target: str
    sources: Collection[str]
    cause: str
    seats_live: bool

    # Every write crosses to the writer process pickled: a plain tuple pickles in a fraction
    # of the time a slots dataclass takes (its state is built with fields() per object).
    def __reduce__(self) -> tuple[type[Move], tuple[Any, ...]]:
        return Move, (self.target, self.sources, self.cause, self.seats_live)


@dataclass(frozen=True, slots=True)
class PaymentChange:
    """Set the payment to ``status`` if it is now one of ``expect`` (None: create it).

    ``idem_key`` is the Idempotency-Key of the request making the change: the pay's, kept on
    a created payment; the refund's, kept on the change that claims the refund.
    """

    status: str
    expect: Collection[str] | None = None
    payment_id: str | None = None
    method: str = ""
    amount: str = ""
    currency: str = ""
    idem_key: str | None = None

    def __reduce__(self) -> tuple[type[PaymentChange], tuple[Any, ...]]:
        return PaymentChange, (
            self.status, self.expect, self.payment_id, self.method, self.amount, self.currency,
            self.idem_key,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Moved:
    """The outcome of a compare-and-set: ``moved`` or not, and the state the booking is in now."""

    moved: bool
    state: str | None
    # Set when moved: where it came from, and the hold deadline it had (for expiry lag).
    previous: str | None = None
    deadline: int | None = None
    # The booking as the move's commit left it, when an Idempotency-Key answer was stored
    # with it: the first answer is rendered from it, and so is every replay.
    record: BookingRecord | None = None

    def __reduce__(self) -> tuple[type[Moved], tuple[Any, ...]]:
        # Every move's answer crosses from the writer process: a plain tuple, not the slots
        # dataclass's fields() walk on each dump and load (the writer's profile).
        return Moved, (self.moved, self.state, self.previous, self.deadline, self.record)


@dataclass(frozen=True, slots=True)
class Transition:
    """A committed move, as the store reports it to its observer (logs, metrics)."""

    booking_id: str
    from_state: str
    to_state: str
    cause: str
    at: int
    deadline: int | None


class SeatOwnedInSql(Exception):
    """SQL says another booking owns one of these seats for good: Redis must have lost data."""

    def __init__(self, owners: dict[str, str]) -> None:
        super().__init__(f"seats owned in SQL by {owners}")
        self.owners = owners

    def __reduce__(self) -> tuple[type[SeatOwnedInSql], tuple[dict[str, str]]]:
        # Raised in the writer process and re-raised here: pickled by its real arguments.
        return type(self), (self.owners,)


class PaymentChanged(Exception):
    """The payment was not in the expected status: the whole operation is rolled back."""

    def __init__(self, booking_id: str, status: str | None) -> None:
        super().__init__(f"payment of {booking_id} is {status}")
        self.booking_id = booking_id
        self.status = status

    def __reduce__(self) -> tuple[type[PaymentChanged], tuple[str, str | None]]:
        return type(self), (self.booking_id, self.status)


class Claim(Enum):
    NEW = "new"
    REPLAY = "replay"
    RUNNING = "running"
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim
    # A REPLAY is either an answer stored as sent (status, body), or an outcome stored in the
    # same commit as its effect, with the record as that commit left it (JSON).
    status: int | None = None
    body: bytes | None = None
    outcome: str | None = None
    record: bytes | None = None


@dataclass(frozen=True, slots=True)
class KeyAnswer:
    """Store ``outcome`` under Idempotency-Key ``key`` in the same commit as the effect it
    names, with a snapshot of the record the effect left (a booking, or a flight)."""

    key: str
    outcome: str


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer holdsvc than this one."""


class StoreUnavailable(RuntimeError):
    """The store could not take the operation (its writer or connection is gone): the outcome
    of what was waiting is unknown, and the answer is a 503."""
