"""HTTP handlers: translate requests into calls of the domain and results into JSON."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgspec
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from holdsvc.appkeys import (
    BOOKINGS,
    FLIGHTS,
    HEALTH,
    HOLD_KEY,
    KEY_REF,
    PAYMENTS,
    RESTORER,
    SEAT_MAP,
    SETTINGS,
)
from holdsvc.domain.access import Action
from holdsvc.domain.bookings import REPLAYED_HEADER
from holdsvc.domain.errors import NotFound
from holdsvc.domain.payments import CONFIRMED as PAY_CONFIRMED
from holdsvc.domain.payments import DECLINED as PAY_DECLINED
from holdsvc.domain.payments import REFUNDED, PayOutcome
from holdsvc.http import bodies, schemas
from holdsvc.http.auth import principal_of, requires
from holdsvc.http.bodies import CancelIn, EmptyIn, ExtendIn, FlightIn, HoldIn, PayIn
from holdsvc.http.events import stream_seats
from holdsvc.http.views import (
    booking_action,
    booking_view,
    flight_view,
    json_response,
    new_flight_response,
)

_FLIGHT_ID = re.compile(r"[0-9]{1,15}")


async def _body(request: web.Request) -> tuple[bytes, str]:
    # The raw header, not request.content_type: parsing it showed in the hold path's
    # profile, and bodies.decode reads the media type out of it only when it is unusual.
    return await request.read(), request.headers.get(hdrs.CONTENT_TYPE, "")


def _now(request: web.Request) -> float:
    """Now by Redis's clock (expires_in_seconds is counted by the clock that expires)."""
    return request.app[BOOKINGS].redis_now_ms()


def _flight_id(request: web.Request) -> int:
    text = request.match_info["flight_id"]
    # ASCII digits only: str.isdigit() admits "²", which int() refuses, and U+0661, which it reads.
    if not _FLIGHT_ID.fullmatch(text):
        raise NotFound("Flight not found")
    return int(text)


@requires(Action.CREATE_FLIGHT)
async def create_flight(request: web.Request) -> web.Response:
    body = bodies.decode(*await _body(request), FlightIn)
    flight = await request.app[RESTORER].add_flight(bodies.flight_from(body), request.get(KEY_REF))
    return new_flight_response(flight)


@requires(Action.READ_FLIGHTS)
async def list_flights(request: web.Request) -> web.Response:
    flights = await request.app[FLIGHTS].all()
    free = await request.app[SEAT_MAP].free_counts(flights)
    return json_response([flight_view(f, n) for f, n in zip(flights, free, strict=True)])


@requires(Action.READ_FLIGHTS)
async def get_flight(request: web.Request) -> web.Response:
    flight = await request.app[FLIGHTS].get(_flight_id(request))
    [free] = await request.app[SEAT_MAP].free_counts([flight])
    return json_response(flight_view(flight, free))


@requires(Action.READ_FLIGHTS)
async def flight_seats(request: web.Request) -> web.Response:
    flight, statuses = await request.app[SEAT_MAP].statuses(_flight_id(request))
    return json_response(
        {
            "flight_id": flight.id,
            "seats": [{"seat": seat, "status": status} for seat, status in statuses],
        }
    )


@requires(Action.READ_FLIGHTS)
async def flight_seat_events(request: web.Request) -> web.StreamResponse:
    return await stream_seats(request, _flight_id(request))


@requires(Action.HOLD)
async def create_booking(request: web.Request) -> web.Response:
    body = bodies.decode(*await _body(request), HoldIn)
    hold = bodies.hold_from(body, request.app[SETTINGS].max_seats_per_booking)
    principal = principal_of(request)
    answer = await request.app[BOOKINGS].hold(
        hold, request.get(HOLD_KEY), principal, principal.name or request.remote or ""
    )
    response = json_response(
        # As of the hold itself (its created_at is the script's own Redis time), so that a
        # replay of the key gives the very same body.
        booking_view(answer.booking, answer.booking.created_at),
        201,
        {"Location": f"/api/bookings/{answer.booking.id}/"},
    )
    if answer.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


@requires(Action.ACT_ON_BOOKING)
async def get_booking(request: web.Request) -> web.Response:
    booking = await request.app[BOOKINGS].get(
        request.match_info["booking_id"], principal_of(request)
    )
    return json_response(booking_view(booking, _now(request)))


@requires(Action.ACT_ON_BOOKING)
async def pay_booking(request: web.Request) -> web.Response:
    body = bodies.decode(*await _body(request), PayIn, optional=True)
    outcome, booking = await request.app[PAYMENTS].pay(
        request.match_info["booking_id"],
        body.payment_method,
        request.get(KEY_REF),
        principal_of(request),
    )
    return booking_action(
        PAY_DECLINED if outcome is PayOutcome.DECLINED else PAY_CONFIRMED, booking, _now(request)
    )


@requires(Action.ACT_ON_BOOKING)
async def extend_booking(request: web.Request) -> web.Response:
    body = bodies.decode(*await _body(request), ExtendIn, optional=True)
    booking = await request.app[BOOKINGS].extend(
        request.match_info["booking_id"], body.seconds, principal_of(request)
    )
    return json_response(booking_view(booking, _now(request)))


@requires(Action.ACT_ON_BOOKING)
async def cancel_booking(request: web.Request) -> web.Response:
    body = bodies.decode(*await _body(request), CancelIn, optional=True)
    outcome, booking = await request.app[PAYMENTS].cancel(
        request.match_info["booking_id"], body.refund, request.get(KEY_REF), principal_of(request)
    )
    return booking_action(outcome, booking, _now(request))


@requires(Action.ACT_ON_BOOKING)
async def refund_booking(request: web.Request) -> web.Response:
    bodies.decode(*await _body(request), EmptyIn, optional=True)
    booking = await request.app[PAYMENTS].refund(
        request.match_info["booking_id"], request.get(KEY_REF), principal_of(request)
    )
    return booking_action(REFUNDED, booking, _now(request))


async def healthz(request: web.Request) -> web.Response:
    problems = await request.app[HEALTH].problems()
    if problems:
        return json_response({"status": "unavailable", **problems}, 503)
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[HEALTH].problems(restored=True)
    if problems:
        return json_response({"status": "unavailable", **problems}, 503)
    return json_response({"status": "ok"})


async def livez(request: web.Request) -> web.Response:
    # Answered by the event loop itself: no store is asked, so a dead Redis or SQL never
    # gets a live process restarted.
    return json_response({"status": "ok"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route: what serves it and what the OpenAPI document says of it."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: type[msgspec.Struct] | None = None
    body_optional: bool = False
    # status -> (answer type, description); the error answers every route may give are added
    # by the OpenAPI builder.
    answers: dict[int, tuple[object, str]] = field(default_factory=dict)
    # What the success answers are (the error answers are always JSON).
    media_type: str = "application/json"
    # Request headers the route reads: (name, description).
    request_headers: tuple[tuple[str, str], ...] = ()


_BOOKING_ERRORS: dict[int, tuple[object, str]] = {
    404: (schemas.Error, "Booking not found"),
    409: (schemas.Error, "Invalid state transition from X to Y, or why the move is refused"),
}

ENDPOINTS = [
    Endpoint("POST", "/api/flights/", create_flight, "Create a flight", FlightIn,
             answers={201: (schemas.Flight, "The flight, all seats available")}),
    Endpoint("GET", "/api/flights/", list_flights, "List flights with live free seats",
             answers={200: (list[schemas.Flight], "Every flight")}),
    Endpoint("GET", "/api/flights/{flight_id}/", get_flight, "One flight",
             answers={200: (schemas.Flight, "The flight"),
                      404: (schemas.Error, "Flight not found")}),
    Endpoint("GET", "/api/flights/{flight_id}/seats/", flight_seats, "The flight's seat map",
             answers={200: (schemas.SeatMap, "Every seat and its status"),
                      404: (schemas.Error, "Flight not found")}),
    Endpoint("GET", "/api/flights/{flight_id}/seats/events", flight_seat_events,
             "The flight's seats, live: a snapshot event, then a seat event a change",
             answers={200: (schemas.SeatStreamEvent,
                            "text/event-stream: `event: snapshot` (every seat, `id` the"
                            " stream position), then `event: seat` `{seat, status}`"
                            " a change, each with its position as `id`; a"
                            " `: keep-alive` comment every 15 s"),
                      404: (schemas.Error, "Flight not found")},
             media_type="text/event-stream",
             request_headers=(("Last-Event-ID", "The id of the last event received: the"
                               " changes after it, or a fresh snapshot when the stream no"
                               " longer has it"),)),
    Endpoint("POST", "/api/bookings/", create_booking, "Hold seats: all of them or none",
             HoldIn,
             answers={201: (schemas.Booking, "SEAT_HELD until hold_expires_at"),
                      404: (schemas.Error, "Flight not found"),
                      409: (schemas.Error, "Seats not available (the taken ones named),"
                                           " customer_seat_limit, or flight_departed"),
                      429: (schemas.Error, "rate_limited: over --hold-rate")}),
    Endpoint("GET", "/api/bookings/{booking_id}/", get_booking, "One booking",
             answers={200: (schemas.Booking, "The booking and its payment"),
                      404: (schemas.Error, "Booking not found")}),
    Endpoint("POST", "/api/bookings/{booking_id}/pay/", pay_booking, "Pay and confirm",
             PayIn, body_optional=True,
             answers={200: (schemas.BookingAction, "Payment successful: CONFIRMED"),
                      402: (schemas.PaymentDeclined, "Payment failed: CANCELLED, seats freed"),
                      **_BOOKING_ERRORS}),
    Endpoint("POST", "/api/bookings/{booking_id}/extend/", extend_booking,
             "Extend a SEAT_HELD hold: its deadline moves `seconds` (default the hold time)"
             " past the current one, within --max-hold and --max-extensions",
             ExtendIn, body_optional=True,
             answers={200: (schemas.Booking, "The hold, with its new hold_expires_at"),
                      404: (schemas.Error, "Booking not found"),
                      409: (schemas.Error, "hold_extension_limit (max_hold_expires_at), or"
                                           " invalid_transition: not SEAT_HELD")}),
    Endpoint("POST", "/api/bookings/{booking_id}/cancel/", cancel_booking,
             "Cancel a held or confirmed booking; its seats are freed. With"
             " {\"refund\": true}, a captured payment is refunded in the same call", CancelIn,
             body_optional=True,
             answers={200: (schemas.BookingAction, "Booking cancelled"), **_BOOKING_ERRORS}),
    Endpoint("POST", "/api/bookings/{booking_id}/refund/", refund_booking,
             "Refund a cancelled booking's captured payment, once", EmptyIn, body_optional=True,
             answers={200: (schemas.BookingAction, "Refund processed"), **_BOOKING_ERRORS}),
    Endpoint("GET", "/healthz", healthz, "Redis and SQL both answer",
             answers={200: (schemas.Health, "ok"), 503: (schemas.Health, "unavailable")}),
    Endpoint("GET", "/readyz", readyz,
             "Ready for traffic: Redis and SQL answer, and every flight is restored into Redis",
             answers={200: (schemas.Health, "ok"), 503: (schemas.Health, "unavailable")}),
    Endpoint("GET", "/livez", livez, "The process is up and its event loop answers",
             answers={200: (schemas.Health, "ok")}),
]  # fmt: skip


def add_routes(app: web.Application) -> None:
    for e in ENDPOINTS:
        app.router.add_route(e.method, e.path, e.handler)
        if e.path.endswith("/") and e.path != "/":
            # The seed systems' clients use the trailing slash; curl users often do not.
            app.router.add_route(e.method, e.path.rstrip("/"), e.handler)
