"""The shapes of holdsvc's answers, for the OpenAPI document. Request shapes are the msgspec
types in requests.py that decode and validate them; these describe what responses.py builds,
and the schemathesis test checks every real answer against them."""

from __future__ import annotations

from typing import Literal

import msgspec


class Error(msgspec.Struct):
    """Every refusal: ``error`` names the problem; some add the seats or the limit at fault."""

    error: str


class Flight(msgspec.Struct):
    id: int
    flight_number: str
    origin: str
    destination: str
    departure_time: str
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
    status: Literal["pending", "captured", "failed", "refunding", "refunded"]
    amount: str
    currency: str


State = Literal[
    "INITIATED", "SEAT_HELD", "PAYMENT_PENDING", "CONFIRMED", "CANCELLED", "REFUNDED", "EXPIRED"
]


class Booking(msgspec.Struct):
    id: str
    state: State
    flight_id: int
    user_id: str
    seats: list[str]
    amount: str
    currency: str
    hold_expires_at: str | None
    created_at: str
    updated_at: str
    payment: Payment | None


class BookingAction(Booking):
    """The booking after pay, cancel or refund, with what happened in words."""

    message: str


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
