"""Bad input gets a clear 4xx JSON error naming the problem, never a 500 or a traceback, and
changes nothing.

Each case is one bad request against the real HTTP API. Every case's body differs from a body
the service accepts (see ``test_the_valid_baselines_are_accepted``) only in the named defect, so
each refusal is for the stated reason. After the request, the flight's seat map, the flights
list and any booking's GET body must be exactly what they were before.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import msgspec.inspect
import pytest
from aiohttp import ClientResponse

from holdsvc.http.bodies import PATTERN_WORDS, EmptyIn, FlightIn, HoldIn, PayIn
from tests.helpers import SMALL_FLIGHT, Client, hold, new_flight, seat_map

Body = Callable[[int], Any]

MAX_BODY = 64 * 1024
LONG_KEY = "k" * 256


@dataclass(frozen=True, slots=True)
class Bad:
    """One bad request: what is sent, and the refusal expected."""

    status: int
    # A substring the "error" message must contain (case-insensitive): the field or problem.
    error: str
    # A JSON body built from the flight's id, raw bytes sent as they are, or no body at all.
    body: Body | bytes | None
    content_type: str | None = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    # Further keys the error body must carry, with these values.
    extra: Mapping[str, Any] = field(default_factory=dict)


def the_flight_id(flight_id: int) -> int:
    return flight_id


def the_flight_id_as_text(flight_id: int) -> str:
    return str(flight_id)


def hold_with(*, drop: tuple[str, ...] = (), **over: Any) -> Body:
    """A valid hold body for the flight, with ``drop`` removed and ``over`` changed.

    A value in ``over`` that is a function is called with the flight's id.
    """

    def build(flight_id: int) -> dict[str, Any]:
        base: dict[str, Any] = {"flight_id": flight_id, "user_id": "u1", "seats": ["1A"]}
        for key in drop:
            del base[key]
        for key, value in over.items():
            base[key] = value(flight_id) if callable(value) else value
        return base

    return build


def counted(**over: Any) -> Body:
    """A valid hold body that asks for a seat count instead of named seats."""
    return hold_with(drop=("seats",), **{"seat_count": 1, **over})


def flight_with(*, drop: tuple[str, ...] = (), **over: Any) -> Body:
    """A valid flight body, with ``drop`` removed and ``over`` changed."""

    def build(_: int) -> dict[str, Any]:
        base: dict[str, Any] = {**SMALL_FLIGHT, "flight_number": "XY42", **over}
        for key in drop:
            del base[key]
        return base

    return build


def fixed(body: Any) -> Body:
    """A JSON body that does not depend on the flight."""

    def build(_: int) -> Any:
        return body

    return build


def oversize_json() -> bytes:
    """Valid JSON, just larger than the body limit."""
    return b'{"user_id": "' + b"x" * MAX_BODY + b'"}'


HOLD_CASES = [
    pytest.param(Bad(400, "malformed json", b'{"flight_id": 1,'), id="malformed-json"),
    pytest.param(Bad(400, "malformed json", b"{bad}"), id="malformed-json-bare-word"),
    pytest.param(Bad(400, "object", b"[]"), id="json-array"),
    pytest.param(Bad(400, "object", b"42"), id="json-number"),
    pytest.param(Bad(400, "object", b'"hold"'), id="json-string"),
    pytest.param(Bad(400, "object", b"null"), id="json-null"),
    pytest.param(
        Bad(400, "flight_id", hold_with(flight_id=the_flight_id_as_text)), id="flight_id-string"
    ),
    pytest.param(Bad(400, "flight_id", hold_with(flight_id=0)), id="flight_id-zero"),
    pytest.param(Bad(400, "seats", hold_with(seats="1A")), id="seats-string"),
    pytest.param(Bad(400, "seats", hold_with(seats=[1])), id="seats-of-numbers"),
    pytest.param(Bad(400, "seat_count", counted(seat_count=True)), id="seat_count-bool"),
    pytest.param(Bad(400, "seat_count", counted(seat_count=2.0)), id="seat_count-float"),
    pytest.param(Bad(400, "seat_count", counted(seat_count=1.5)), id="seat_count-fraction"),
    pytest.param(Bad(400, "seat_count", counted(seat_count="2")), id="seat_count-string"),
    pytest.param(Bad(400, "seat_count", counted(seat_count=0)), id="seat_count-zero"),
    pytest.param(Bad(400, "seat_count", counted(seat_count=-1)), id="seat_count-negative"),
    pytest.param(
        Bad(400, "at most 10 seats", counted(seat_count=10**30), extra={"limit": 10}),
        id="seat_count-huge",
    ),
    pytest.param(
        Bad(400, "at most 10 seats", counted(seat_count=11), extra={"limit": 10}),
        id="seat_count-over-limit",
    ),
    pytest.param(
        Bad(
            400,
            "at most 10 seats",
            hold_with(seats=[f"{row}{letter}" for row in (1, 2, 3) for letter in "ABCD"]),
            extra={"limit": 10},
        ),
        id="seats-over-limit",
    ),
    pytest.param(Bad(400, "user_id", hold_with(drop=("user_id",))), id="missing-user_id"),
    pytest.param(Bad(400, "flight_id", hold_with(drop=("flight_id",))), id="missing-flight_id"),
    pytest.param(
        Bad(400, "exactly one of seats, seat_count", hold_with(drop=("seats",))),
        id="neither-seats-nor-seat_count",
    ),
    pytest.param(
        Bad(400, "exactly one of seats, seat_count", hold_with(seat_count=1)),
        id="both-seats-and-seat_count",
    ),
    pytest.param(
        Bad(400, "$.cabin is not a field", hold_with(cabin="business")), id="unknown-field"
    ),
    pytest.param(Bad(400, "seats must not be empty", hold_with(seats=[])), id="seats-empty"),
    pytest.param(
        Bad(400, "must not repeat", hold_with(seats=["1A", "1B", "1A"]), extra={"seats": ["1A"]}),
        id="seats-duplicate",
    ),
    *[
        pytest.param(
            Bad(400, "$.seats[1]", hold_with(seats=["1B", name])), id=f"seat-name-{name!r}"
        )
        for name in ["1a", "0A", "A1", "", "1000A", "1AB"]
    ],
    pytest.param(
        Bad(400, "unknown seats", hold_with(seats=["1A", "99A"]), extra={"seats": ["99A"]}),
        id="seat-not-on-flight",
    ),
    pytest.param(
        Bad(
            400, "unknown seats", hold_with(seats=["3A", "2E", "1F"]), extra={"seats": ["3A", "1F"]}
        ),
        id="seats-not-on-flight-named-all",
    ),
    pytest.param(Bad(400, "user_id", hold_with(user_id="")), id="user_id-empty"),
    pytest.param(Bad(400, "user_id", hold_with(user_id="u" * 65)), id="user_id-65-chars"),
    pytest.param(Bad(400, "user_id", hold_with(user_id="a b")), id="user_id-with-space"),
    pytest.param(Bad(400, "user_id", hold_with(user_id=7)), id="user_id-number"),
    pytest.param(
        Bad(415, "content-type", hold_with(), content_type="text/plain"),
        id="content-type-text-plain",
    ),
    pytest.param(
        Bad(415, "content-type", hold_with(), content_type=None), id="content-type-missing"
    ),
    pytest.param(Bad(400, "body is required", None), id="no-body"),
    pytest.param(Bad(400, "body is required", b"  \n"), id="blank-body"),
    pytest.param(Bad(413, "too large", oversize_json()), id="oversize-body"),
    pytest.param(
        Bad(400, "flightId", hold_with(flightId=the_flight_id)), id="flight_id-and-flightId"
    ),
    pytest.param(Bad(400, "userId", hold_with(userId="u2")), id="user_id-and-userId"),
    pytest.param(
        Bad(400, "exactly one of seats, seat_count", hold_with(noOfSeats=1)),
        id="seats-and-noOfSeats",
    ),
    pytest.param(
        Bad(400, "idempotency-key", hold_with(), headers={"Idempotency-Key": LONG_KEY}),
        id="idempotency-key-256-chars",
    ),
    pytest.param(
        Bad(400, "idempotency-key", hold_with(), headers={"Idempotency-Key": "caf\u00e9 key"}),
        id="idempotency-key-not-visible-ascii",
    ),
]

FLIGHT_CASES = [
    *[
        pytest.param(Bad(400, name, flight_with(drop=(name,))), id=f"missing-{name}")
        for name in ["flight_number", "origin", "departure_time", "rows", "price", "currency"]
    ],
    pytest.param(Bad(400, "object", fixed([SMALL_FLIGHT])), id="json-array"),
    pytest.param(Bad(400, "malformed json", b'{"rows": 2'), id="malformed-json"),
    pytest.param(Bad(400, "price", flight_with(price=100.5)), id="price-float-number"),
    pytest.param(Bad(400, "price", flight_with(price=100)), id="price-int-number"),
    pytest.param(Bad(400, "price", flight_with(price="100.005")), id="price-3-decimals"),
    pytest.param(Bad(400, "price", flight_with(price="-5.00")), id="price-negative"),
    pytest.param(Bad(400, "price", flight_with(price="0.00")), id="price-zero"),
    pytest.param(Bad(400, "price", flight_with(price="1e3")), id="price-exponent"),
    pytest.param(Bad(400, "price", flight_with(price="")), id="price-empty"),
    pytest.param(Bad(400, "price", flight_with(price="١٢٣")), id="price-non-ascii-digits"),
    pytest.param(Bad(400, "rows", flight_with(rows=0)), id="rows-0"),
    pytest.param(Bad(400, "rows", flight_with(rows=151)), id="rows-151"),
    pytest.param(Bad(400, "rows", flight_with(rows="2")), id="rows-string"),
    pytest.param(Bad(400, "seat_letters", flight_with(seat_letters="ABCA")), id="seat-letters-dup"),
    pytest.param(
        Bad(400, "seat_letters", flight_with(seat_letters="abc")), id="seat-letters-lower"
    ),
    pytest.param(Bad(400, "origin", flight_with(origin="del")), id="origin-lowercase"),
    pytest.param(Bad(400, "destination", flight_with(destination="BOMB")), id="destination-4"),
    pytest.param(
        Bad(400, "origin and destination must differ", flight_with(destination="DEL")),
        id="origin-equals-destination",
    ),
    pytest.param(
        Bad(400, "departure_time", flight_with(departure_time="2030-12-01T09:30:00")),
        id="departure-time-without-timezone",
    ),
    pytest.param(
        Bad(400, "departure_time", flight_with(departure_time="next tuesday")),
        id="departure-time-not-a-date",
    ),
    pytest.param(Bad(400, "$.gate is not a field", flight_with(gate="7")), id="unknown-field"),
    pytest.param(
        Bad(415, "content-type", flight_with(), content_type="text/plain"), id="content-type"
    ),
    pytest.param(Bad(400, "body is required", None), id="no-body"),
]

ACTION_CASES = [
    pytest.param(
        "pay", Bad(400, "payment_method", fixed({"payment_method": 4242})), id="pay-method-number"
    ),
    pytest.param(
        "pay", Bad(400, "payment_method", fixed({"payment_method": None})), id="pay-method-null"
    ),
    pytest.param(
        "pay",
        Bad(400, "payment_method", fixed({"payment_method": "card_visa"})),
        id="pay-method-without-pm-prefix",
    ),
    pytest.param(
        "pay",
        Bad(400, "payment_method", fixed({"payment_method": "pm_card-visa"})),
        id="pay-method-bad-character",
    ),
    pytest.param(
        "pay", Bad(400, "payment_method", fixed({"payment_method": "pm_"})), id="pay-method-empty"
    ),
    pytest.param(
        "pay",
        Bad(400, "$.amount is not a field", fixed({"payment_method": "pm_card_visa", "amount": 1})),
        id="pay-unknown-field",
    ),
    pytest.param("pay", Bad(400, "malformed json", b"{payment_method}"), id="pay-malformed-json"),
    pytest.param("pay", Bad(400, "object", b'"pm_card_visa"'), id="pay-json-string"),
    pytest.param(
        "pay",
        Bad(
            415,
            "content-type",
            fixed({"payment_method": "pm_card_visa"}),
            content_type="text/plain",
        ),
        id="pay-content-type",
    ),
    pytest.param(
        "pay",
        Bad(
            400,
            "idempotency-key",
            fixed({"payment_method": "pm_card_visa"}),
            headers={"Idempotency-Key": LONG_KEY},
        ),
        id="pay-idempotency-key-256-chars",
    ),
    *[
        pytest.param(action, bad, id=f"{action}-{name}")
        for action in ["cancel", "refund"]
        for name, bad in [
            ("unknown-field", Bad(400, "$.reason is not a field", fixed({"reason": "changed"}))),
            ("json-array", Bad(400, "object", fixed([]))),
            ("malformed-json", Bad(400, "malformed json", b"{")),
            (
                "idempotency-key-256-chars",
                Bad(400, "idempotency-key", None, headers={"Idempotency-Key": LONG_KEY}),
            ),
        ]
    ],
    pytest.param("pay", Bad(413, "too large", oversize_json()), id="pay-oversize-body"),
]


async def send(client: Client, path: str, bad: Bad, flight_id: int) -> ClientResponse:
    headers = dict(bad.headers)
    data = json.dumps(bad.body(flight_id)).encode() if callable(bad.body) else bad.body
    if data is not None and bad.content_type is not None:
        headers["Content-Type"] = bad.content_type
    return await client.post(path, data=data, headers=headers)


async def assert_clear_error(resp: ClientResponse, bad: Bad) -> None:
    text = await resp.text()
    assert resp.status == bad.status, text
    assert resp.content_type == "application/json", text
    assert "Traceback" not in text and 'File "' not in text, text
    body = json.loads(text)
    assert isinstance(body, dict), text
    error = body.get("error")
    assert isinstance(error, str) and error, text
    assert bad.error.lower() in error.lower(), f"{bad.error!r} not in {error!r}"
    # A stable code a program can act on, and for bad input each problem in words.
    code = body.get("code")
    assert isinstance(code, str) and re.fullmatch(r"[a-z][a-z0-9_]*", code), text
    if resp.status == 400:
        problems = body.get("errors")
        assert isinstance(problems, list) and problems, text
        for problem in problems:
            assert set(problem) == {"field", "message"}, text
            assert problem["field"].startswith("$"), text
            assert "regex" not in problem["message"] and "^" not in problem["message"], text
    for key, value in bad.extra.items():
        assert body.get(key) == value, text


async def read(client: Client, path: str) -> bytes:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    return await resp.read()


@pytest.mark.parametrize("bad", HOLD_CASES)
async def test_bad_hold_request_is_refused_and_holds_nothing(client: Client, bad: Bad) -> None:
    flight = await new_flight(client)
    fid = flight["id"]
    flight_before = await read(client, f"/api/flights/{fid}/")
    assert set((await seat_map(client, fid)).values()) == {"available"}

    await assert_clear_error(await send(client, "/api/bookings/", bad, fid), bad)

    assert set((await seat_map(client, fid)).values()) == {"available"}
    assert await read(client, f"/api/flights/{fid}/") == flight_before


@pytest.mark.parametrize("bad", FLIGHT_CASES)
async def test_bad_flight_request_is_refused_and_creates_nothing(client: Client, bad: Bad) -> None:
    flight = await new_flight(client)
    listed_before = await read(client, "/api/flights/")

    await assert_clear_error(await send(client, "/api/flights/", bad, flight["id"]), bad)

    assert await read(client, "/api/flights/") == listed_before
    assert set((await seat_map(client, flight["id"])).values()) == {"available"}


async def booking_for(client: Client, flight_id: int, action: str) -> str:
    """A booking on which ``action`` with a valid body would succeed."""
    booking = await hold(client, flight_id, ["1A", "1B"])
    bid: str = booking["id"]
    if action == "refund":
        for step in ("pay", "cancel"):
            resp = await client.post(f"/api/bookings/{bid}/{step}/")
            assert resp.status == 200, await resp.text()
    return bid


@pytest.mark.parametrize(("action", "bad"), ACTION_CASES)
async def test_bad_action_body_is_refused_and_changes_nothing(
    client: Client, action: str, bad: Bad
) -> None:
    flight = await new_flight(client)
    fid = flight["id"]
    bid = await booking_for(client, fid, action)
    booking_before = await read(client, f"/api/bookings/{bid}/")
    seats_before = await seat_map(client, fid)

    await assert_clear_error(await send(client, f"/api/bookings/{bid}/{action}/", bad, fid), bad)

    assert await read(client, f"/api/bookings/{bid}/") == booking_before
    assert await seat_map(client, fid) == seats_before


async def test_the_valid_baselines_are_accepted(client: Client) -> None:
    """The bodies the cases above start from are good: each case fails for its one defect."""
    flight = await new_flight(client)
    for body in (hold_with(), counted()):
        resp = await client.post("/api/bookings/", json=body(flight["id"]))
        assert resp.status == 201, await resp.text()
    resp = await client.post("/api/flights/", json=flight_with()(flight["id"]))
    assert resp.status == 201, await resp.text()
    for action, payload in [
        ("pay", {"payment_method": "pm_card_visa"}),
        ("cancel", {}),
        ("refund", {}),
    ]:
        fid = (await new_flight(client))["id"]
        bid = await booking_for(client, fid, action)
        resp = await client.post(f"/api/bookings/{bid}/{action}/", json=payload)
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(
    "path",
    [
        "/api/flights/%C2%B2/",  # "²": SUPERSCRIPT TWO, which str.isdigit() accepted -> was 500
        "/api/flights/1%C2%B2/seats/",  # "1²"
        "/api/flights/%D9%A1/",  # Arabic-Indic one, which int() read as flight 1
    ],
)
async def test_flight_id_with_a_non_ascii_digit_is_404(client: Client, path: str) -> None:
    await new_flight(client)  # flight 1 exists, so reading U+0661 as 1 would answer 200
    resp = await client.get(path)
    text = await resp.text()
    assert resp.status == 404, text
    assert await resp.json() == {"error": "Flight not found", "code": "not_found"}


async def test_an_oversized_seat_list_is_refused_at_once(client: Client) -> None:
    flight = await new_flight(client)
    body = {
        "flight_id": flight["id"],
        "user_id": "u1",
        "seats": ["1A"] * 10000,
    }  # just under 64 KiB
    started = time.monotonic()
    resp = await client.post("/api/bookings/", json=body)
    assert resp.status == 400
    assert "seats" in (await resp.json())["error"]
    assert time.monotonic() - started < 1.0


async def test_a_validation_error_lists_every_problem_in_words(client: Client) -> None:
    body = {**SMALL_FLIGHT, "rows": 500, "origin": "de", "price": 12, "seat_letters": "",
            "extra": 1}  # fmt: skip
    del body["currency"]
    resp = await client.post("/api/flights/", json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["code"] == "validation_error"
    assert sorted(answer["errors"], key=lambda p: p["field"]) == [
        {"field": "$.currency", "message": "is required"},
        {"field": "$.extra", "message": "is not a field of this request"},
        {"field": "$.origin", "message": "must be 3 capital letters, like DEL"},
        {"field": "$.price", "message": "must be a string, not an integer"},
        {"field": "$.rows", "message": "must be at most 150"},
        {"field": "$.seat_letters", "message": "must be 1 to 12 capital letters, like ABCDEF"},
    ]
    assert answer["error"].startswith("Invalid request: ") and "(and 5 more)" in answer["error"]
    # A problem inside a list names its element.
    resp = await client.post(
        "/api/bookings/", json={"flight_id": 1, "user_id": "u", "seats": ["1A", "01B", 3]}
    )
    assert sorted((p["field"], p["message"]) for p in (await resp.json())["errors"]) == [
        ("$.seats[1]", "must be a seat like 12C: a row from 1, then a capital letter")
    ]


def test_every_pattern_of_every_request_type_has_its_words() -> None:
    """An error shows a pattern's words (bodies.PATTERN_WORDS), never the regex itself."""

    def patterns(t: Any) -> Iterator[str]:
        if isinstance(t, msgspec.inspect.StructType):
            for f in t.fields:
                yield from patterns(f.type)
        elif isinstance(t, msgspec.inspect.StrType) and t.pattern is not None:
            yield t.pattern
        for inner in ("item_type", "types"):
            value = getattr(t, inner, None)
            if isinstance(value, tuple):
                for v in value:
                    yield from patterns(v)
            elif value is not None:
                yield from patterns(value)

    used = {p for kind in (FlightIn, HoldIn, PayIn, EmptyIn)
            for p in patterns(msgspec.inspect.type_info(kind))}  # fmt: skip
    assert used and used <= set(PATTERN_WORDS), used - set(PATTERN_WORDS)
