"""The shapes of holdsvc's answers, for the OpenAPI document. Request shapes are the msgspec
types in requests.py that decode and validate them; these describe what responses.py builds,
and the schemathesis test checks every real answer against them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

# The domain's own enums, one type each, shared by every schema that names them.
from holdsvc.domain.records import PaymentStatus, State

# A timestamp: "2026-12-03T13:16:25.123Z" (msgspec's own schema for datetime leaves out the
# format, and a generated client would see a plain string).
Timestamp = Annotated[datetime, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class FieldError(msgspec.Struct):
    field: str
    message: str


class Error(msgspec.Struct):
    """Every refusal: ``error`` names the problem in a sentence, ``code`` is stable for
    programs (README lists them); some add details (the seats or the limit at fault, the
    states of a refused move, every problem of bad input as ``errors``)."""

    error: str
    code: str
    errors: list[FieldError] | None = None


class Flight(msgspec.Struct):
    id: int
    flight_number: str
    origin: str
    destination: str
    departure_time: Timestamp
    rows: int
    seat_letters: str
    price: str
    currency: str
    seats_total: int
    # null while Redis does not answer: the flight itself is read from SQL.
    seats_available: int | None


class Seat(msgspec.Struct):
    seat: str
    status: Literal["available", "held", "booked"]


class SeatMap(msgspec.Struct):
    flight_id: int
    seats: list[Seat]


class Payment(msgspec.Struct):
    status: PaymentStatus
    amount: str
    currency: str


class Booking(msgspec.Struct):
    id: str
    state: State
    flight_id: int
    user_id: str
    seats: list[str]
    amount: str
    currency: str
    hold_expires_at: Timestamp | None
    # Seconds the hold has left by Redis's clock (the one that expires it); null unless held.
    expires_in_seconds: int | None
    created_at: Timestamp
    updated_at: Timestamp
    payment: Payment | None


class BookingAction(Booking):
    """The booking after pay, cancel or refund, with what happened in words. A cancel that
    left a captured payment says ``"refund": "due"``."""

    message: str
    refund: Literal["due"] | None = None


class PaymentDeclined(BookingAction):
    """402: the booking, CANCELLED and its seats freed, and why the card was declined."""

    error: str = ""
    code: Literal["payment_declined"] = "payment_declined"
    decline_code: Literal["card_declined", "insufficient_funds", "expired_card"] = "card_declined"


class Health(msgspec.Struct):
    status: str


class SeatStreamEvent(msgspec.Struct, omit_defaults=True):
    """One Server-Sent Event of ``/seats/events``: ``snapshot`` (data: JSON ``{flight_id,
    position, seats: [Seat]}``) or ``seat`` (data: a Seat, as JSON), its ``id`` the stream
    position; the first carries only ``retry`` (ms before a browser reconnects)."""

    data: str | None = None
    event: Literal["snapshot", "seat"] | None = None
    id: str | None = None
    retry: int | None = None


# The hold request's three shapes, for the document only: HoldIn (holdsvc/http/bodies.py)
# decodes all three and says which rule a body breaks; a generated client gets one type each,
# so an empty request no longer type-checks.
class HoldSeats(msgspec.Struct, forbid_unknown_fields=True):
    """Hold these seats, all of them or none."""

    flight_id: int
    user_id: str
    seats: list[str]


class HoldCount(msgspec.Struct, forbid_unknown_fields=True):
    """Hold the best ``seat_count`` seats: side by side in a row, else in one row, else any."""

    flight_id: int
    user_id: str
    seat_count: int


class HoldSeed(msgspec.Struct, forbid_unknown_fields=True):
    """The Node seed system's names for a seat-count hold."""

    flightId: int
    userId: str
    noOfSeats: int


HOLD_SHAPES = (HoldSeats, HoldCount, HoldSeed)
