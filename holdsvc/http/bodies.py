"""Request bodies: decoded and validated at the edge into typed values, with errors that name
the field. msgspec does the decoding (strict types, unknown fields refused, ranges checked).
"""

from __future__ import annotations

import re
import typing
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

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
_METHOD = r"^pm_[A-Za-z0-9_]{1,60}$"

# Each pattern a request type uses, in words: an error shows these, never the regex.
# (tests/test_bad_input.py checks that every pattern of every request type is here.)
PATTERN_WORDS = {
    r"^[A-Z]{3}$": "must be 3 capital letters, like DEL",
    r"^[\x21-\x7e]+$": "must be visible ASCII characters, no spaces",
    r"^[1-9][0-9]{0,2}[A-Z]$": "must be a seat like 12C: a row from 1, then a capital letter",
    r"^[A-Z0-9]{2,8}$": "must be 2 to 8 capital letters or digits, like AI101",
    r"^[A-Z]{1,12}$": "must be 1 to 12 capital letters, like ABCDEF",
    r"^[0-9]{1,9}(\.[0-9]{1,2})?$": (
        'must be a decimal string with at most 2 decimals, like "4999.00"'
    ),
    _METHOD: "must be a payment method id, like pm_card_visa",
}


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
    payment_method: Annotated[str, Meta(pattern=_METHOD)] = DEFAULT_METHOD


class ExtendIn(msgspec.Struct, forbid_unknown_fields=True):
    # Seconds past the current deadline; none: the hold time (--hold-ttl).
    seconds: Annotated[int, Meta(ge=1, le=86400)] | None = None


class CancelIn(msgspec.Struct, forbid_unknown_fields=True):
    # Refund a captured payment in the same call (the booking ends REFUNDED).
    refund: bool = False


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
        # msgspec stops at the first problem; the client is told every one.
        raise _invalid(msgspec.json.decode(body), kind) from exc
    except msgspec.DecodeError as exc:
        raise ValidationError(f"Malformed JSON: {exc}") from exc


def _invalid(value: Any, kind: type[msgspec.Struct]) -> ValidationError:
    problems = list(_problems(value, kind))
    if not problems:  # a rule of the whole that no field breaks alone: say msgspec's words
        try:
            msgspec.convert(value, type=kind, strict=True)
        except msgspec.ValidationError as exc:
            problems = [{"field": "$", "message": _words(str(exc))}]
    first = problems[0]
    sentence = first["message"] if first["field"] == "$" else f"{first['field']} {first['message']}"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ValidationError(f"Invalid request: {sentence}{more}", errors=problems)


def _problems(value: Any, kind: type[msgspec.Struct]) -> Iterator[dict[str, str]]:
    if not isinstance(value, dict):
        yield {"field": "$", "message": "must be a JSON object"}
        return
    hints = typing.get_type_hints(kind, include_extras=True)
    names = {f.encode_name: f for f in msgspec.structs.fields(kind)}
    for key in value:
        if key not in names:
            yield {"field": f"$.{key}", "message": "is not a field of this request"}
    for name, f in names.items():
        if name not in value:
            if f.required:
                yield {"field": f"$.{name}", "message": "is required"}
            continue
        try:
            msgspec.convert(value[name], type=hints[f.name], strict=True)
        except msgspec.ValidationError as exc:
            text, _, at = str(exc).partition(" - at `$")
            yield {"field": f"$.{name}{at.rstrip('`')}", "message": _words(text)}


_TYPE_WORDS = {
    "int": "an integer",
    "str": "a string",
    "array": "a list",
    "object": "an object",
    "bool": "true or false",
    "float": "a number",
    "datetime": "a date-time with a time zone, like 2026-12-01T09:30:00Z",
    "null": "null",
}


def _words(text: str) -> str:
    """msgspec's message as words: "Expected `int` <= 150" -> "must be at most 150"."""
    if m := re.fullmatch(r"Expected `(\w+)`, got `(\w+)`", text):
        return f"must be {_TYPE_WORDS.get(m[1], m[1])}, not {_TYPE_WORDS.get(m[2], m[2])}"
    if m := re.fullmatch(r"Expected `\w+` (>=|<=|>|<) (-?[\d.]+)", text):
        op = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}[m[1]]
        return f"must be {op} {m[2]}"
    if m := re.fullmatch(r"Expected `(str|array|object)` of length (>=|<=) (\d+)", text):
        unit = {"str": "characters", "array": "items", "object": "fields"}[m[1]]
        op = "at least" if m[2] == ">=" else "at most"
        return f"must have {op} {m[3]} {unit}"
    if m := re.fullmatch(r"Expected `str` matching regex '(.*)'", text):
        return PATTERN_WORDS.get(m[1], "is not in the expected format")
    if text == "Expected `datetime` with a timezone component":
        return "must have a time zone, like 2026-12-01T09:30:00Z"
    if m := re.fullmatch(r"Invalid RFC3339 encoded datetime", text):
        return "must be a date-time, like 2026-12-01T09:30:00Z"
    return text.replace("`", "")


def _media_type(header: str) -> str:
    """The media type of a Content-Type header: "Application/JSON; charset=utf-8" ->
    "application/json"."""
    return header.partition(";")[0].strip().lower()


def flight_from(body: FlightIn) -> NewFlight:
    if body.origin == body.destination:
        raise ValidationError("origin and destination must differ", field="$.destination")
    if len(set(body.seat_letters)) != len(body.seat_letters):
        raise ValidationError("seat_letters must not repeat a letter", field="$.seat_letters")
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
            'price must be a decimal string with at most 2 decimals, like "4999.00"',
            field="$.price",
        )
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # unreachable after the pattern, kept as a guard
        raise ValidationError("price is not a number", field="$.price") from exc
    if value <= 0:
        raise ValidationError("price must be greater than 0", field="$.price")
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
            raise ValidationError("seats must not be empty", field="$.seats")
        _limit(len(seats), max_seats)
        if len(set(seats)) != len(seats):
            duplicates = sorted(s for s, n in Counter(seats).items() if n > 1)
            raise ValidationError("seats must not repeat a seat", field="$.seats", seats=duplicates)
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
        raise ValidationError(f"Missing required field: {name}", field=f"$.{name}")
    return chosen


def _limit(count: int, max_seats: int) -> None:
    if count > max_seats:
        raise ValidationError(
            f"At most {max_seats} seats per booking", "too_many_seats", limit=max_seats
        )
