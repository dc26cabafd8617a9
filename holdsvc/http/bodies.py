"""Request bodies: decoded and validated at the edge into typed values, with errors that name
the field. msgspec does the decoding (strict types, unknown fields refused, ranges checked).
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta

from holdsvc.domain.bookings import HoldRequest
from holdsvc.domain.errors import UnsupportedMediaType, ValidationError
from holdsvc.domain.records import NewFlight
from holdsvc.gateway import DEFAULT_METHOD

MAX_ROWS = 150

Code3 = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
UserId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
FlightId = Annotated[int, Meta(ge=1, le=2**53)]
SeatName = Annotated[str, Meta(pattern=r"^[1-9][0-9]{0,2}[A-Z]$")]
Count = Annotated[int, Meta(ge=1)]


class FlightIn(msgspec.Struct, forbid_unknown_fields=True):
    flight_number: Annotated[str, Meta(pattern=r"^[A-Z0-9]{2,8}$")]
    origin: Code3
    destination: Code3
    departure_time: Annotated[datetime, Meta(tz=True)]
    rows: Annotated[int, Meta(ge=1, le=MAX_ROWS)]
    seat_letters: Annotated[str, Meta(pattern=r"^[A-Z]{1,12}$")]
    # A decimal string, never a float: "4999.00".
    price: Annotated[str, Meta(pattern=r"^[0-9]{1,9}(\.[0-9]{1,2})?$")]
    currency: Code3


class HoldIn(msgspec.Struct, forbid_unknown_fields=True):
    flight_id: FlightId | None = None
    user_id: UserId | None = None
    # Bounded here so an oversized list is refused before any work is done on it.
    seats: Annotated[list[SeatName], Meta(max_length=100)] | None = None
    seat_count: Count | None = None
    # The Node seed system's names for the same request.
    flightId: FlightId | None = None
    userId: UserId | None = None
    noOfSeats: Count | None = None


class PayIn(msgspec.Struct, forbid_unknown_fields=True):
    payment_method: Annotated[str, Meta(pattern=r"^pm_[A-Za-z0-9_]{1,60}$")] = DEFAULT_METHOD


class EmptyIn(msgspec.Struct, forbid_unknown_fields=True):
    pass


S = TypeVar("S", bound=msgspec.Struct)

_JSON = re.compile(r"^application/(?:[\w.+-]+\+)?json$")


def decode(body: bytes, content_type: str, kind: type[S], *, optional: bool = False) -> S:
    """Decode a JSON body into ``kind``; an empty body is ``kind()`` when ``optional``."""
    if not body.strip():
        if optional:
            return kind()
        raise ValidationError("Request body is required (JSON object)")
    if content_type != "application/json" and not _JSON.match(_media_type(content_type)):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {_media_type(content_type) or 'none'}"
        )
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"Invalid request: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ValidationError(f"Malformed JSON: {exc}") from exc


def _media_type(header: str) -> str:
    """The media type of a Content-Type header: "Application/JSON; charset=utf-8" ->
    "application/json"."""
    return header.partition(";")[0].strip().lower()


def flight_from(body: FlightIn) -> NewFlight:
    if body.origin == body.destination:
        raise ValidationError("origin and destination must differ")
    if len(set(body.seat_letters)) != len(body.seat_letters):
        raise ValidationError("seat_letters must not repeat a letter")
    return NewFlight(
        flight_number=body.flight_number,
        origin=body.origin,
        destination=body.destination,
        departure_time=body.departure_time.isoformat().replace("+00:00", "Z"),
        rows=body.rows,
        seat_letters=body.seat_letters,
        price=_money(body.price),
        currency=body.currency,
    )


def _money(text: str) -> str:
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,2})?", text):
        raise ValidationError(
            'price must be a decimal string with at most 2 decimals, like "4999.00"'
        )
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # unreachable after the pattern, kept as a guard
        raise ValidationError("price is not a number") from exc
    if value <= 0:
        raise ValidationError("price must be greater than 0")
    return str(value.quantize(Decimal("0.01")))


def hold_from(body: HoldIn, max_seats: int) -> HoldRequest:
    flight_id = _one("flight_id", body.flight_id, "flightId", body.flightId)
    user_id = _one("user_id", body.user_id, "userId", body.userId)
    given = [
        name
        for name, value in (
            ("seats", body.seats),
            ("seat_count", body.seat_count),
            ("noOfSeats", body.noOfSeats),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise ValidationError("Give exactly one of seats, seat_count (or noOfSeats)")
    if body.seats is not None:
        seats = body.seats
        if not seats:
            raise ValidationError("seats must not be empty")
        _limit(len(seats), max_seats)
        if len(set(seats)) != len(seats):
            duplicates = sorted(s for s, n in Counter(seats).items() if n > 1)
            raise ValidationError("seats must not repeat a seat", seats=duplicates)
        return HoldRequest(flight_id, user_id, list(seats), None)
    count = body.seat_count if body.seat_count is not None else body.noOfSeats
    assert count is not None
    _limit(count, max_seats)
    return HoldRequest(flight_id, user_id, None, count)


V = TypeVar("V", int, str)


def _one(name: str, value: V | None, alias: str, alias_value: V | None) -> V:
    if value is not None and alias_value is not None:
        raise ValidationError(f"Give {name} or {alias}, not both")
    chosen = value if value is not None else alias_value
    if chosen is None:
        raise ValidationError(f"Missing required field: {name}")
    return chosen


def _limit(count: int, max_seats: int) -> None:
    if count > max_seats:
        raise ValidationError(f"At most {max_seats} seats per booking", limit=max_seats)
