"""HTTP handlers: translate requests into calls of the domain and results into JSON."""

from __future__ import annotations

import logging
import re

from aiohttp import web

from holdsvc import requests
from holdsvc.appkeys import (
    BOOKINGS,
    FLIGHTS,
    HOLDS,
    IDEMPOTENCY_KEY,
    REDIS,
    RESTORER,
    SETTINGS,
    STORE,
)
from holdsvc.bookings import PayOutcome
from holdsvc.errors import NotFound
from holdsvc.requests import EmptyIn, FlightIn, HoldIn, PayIn
from holdsvc.responses import booking_view, flight_view, json_response

log = logging.getLogger(__name__)

_FLIGHT_ID = re.compile(r"[0-9]{1,15}")


async def _body(request: web.Request) -> tuple[bytes, str]:
    return await request.read(), request.content_type if request.body_exists else ""


def _flight_id(request: web.Request) -> int:
    text = request.match_info["flight_id"]
    # ASCII digits only: str.isdigit() admits "²", which int() refuses, and U+0661, which it reads.
    if not _FLIGHT_ID.fullmatch(text):
        raise NotFound("Flight not found")
    return int(text)


async def create_flight(request: web.Request) -> web.Response:
    body = requests.decode(*await _body(request), FlightIn)
    flight = await request.app[FLIGHTS].create(requests.flight_from(body))
    # A new flight has nothing booked; restoring it just gives it its Redis marker.
    await request.app[RESTORER].restore(flight.id, "new flight")
    return json_response(flight_view(flight, len(flight.seats)), 201)


async def list_flights(request: web.Request) -> web.Response:
    flights = await request.app[FLIGHTS].all()
    free = await request.app[HOLDS].free_counts([(f.id, f.seats) for f in flights])
    return json_response([flight_view(f, n) for f, n in zip(flights, free, strict=True)])


async def get_flight(request: web.Request) -> web.Response:
    flight = await request.app[FLIGHTS].get(_flight_id(request))
    [free] = await request.app[HOLDS].free_counts([(flight.id, flight.seats)])
    return json_response(flight_view(flight, free))


async def flight_seats(request: web.Request) -> web.Response:
    flight = await request.app[FLIGHTS].get(_flight_id(request))
    statuses = await request.app[HOLDS].seat_statuses(flight.id, flight.seats)
    return json_response(
        {
            "flight_id": flight.id,
            "seats": [
                {"seat": seat, "status": status.value}
                for seat, status in zip(flight.seats, statuses, strict=True)
            ],
        }
    )


async def create_booking(request: web.Request) -> web.Response:
    body = requests.decode(*await _body(request), HoldIn)
    hold = requests.hold_from(body, request.app[SETTINGS].max_seats_per_booking)
    booking = await request.app[BOOKINGS].hold(hold)
    return json_response(booking_view(booking), 201)


async def get_booking(request: web.Request) -> web.Response:
    booking = await request.app[BOOKINGS].get(request.match_info["booking_id"])
    return json_response(booking_view(booking))


async def pay_booking(request: web.Request) -> web.Response:
    body = requests.decode(*await _body(request), PayIn, optional=True)
    outcome, booking = await request.app[BOOKINGS].pay(
        request.match_info["booking_id"], body.payment_method, request.get(IDEMPOTENCY_KEY)
    )
    if outcome is PayOutcome.DECLINED:
        return json_response({"message": "Payment failed", **booking_view(booking)}, 402)
    return json_response({"message": "Payment successful", **booking_view(booking)})


async def cancel_booking(request: web.Request) -> web.Response:
    requests.decode(*await _body(request), EmptyIn, optional=True)
    booking = await request.app[BOOKINGS].cancel(request.match_info["booking_id"])
    return json_response({"message": "Booking cancelled", **booking_view(booking)})


async def refund_booking(request: web.Request) -> web.Response:
    requests.decode(*await _body(request), EmptyIn, optional=True)
    booking = await request.app[BOOKINGS].refund(request.match_info["booking_id"])
    return json_response({"message": "Refund processed", **booking_view(booking)})


async def healthz(request: web.Request) -> web.Response:
    problems = {}
    try:
        await request.app[REDIS].ping()
    except Exception as exc:
        problems["redis"] = str(exc) or type(exc).__name__
    try:
        await request.app[STORE].ping()
    except Exception as exc:
        problems["sql"] = str(exc) or type(exc).__name__
    if problems:
        return json_response({"status": "unavailable", **problems}, 503)
    return json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    routes = [
        ("POST", "/api/flights", create_flight),
        ("GET", "/api/flights", list_flights),
        ("GET", "/api/flights/{flight_id}", get_flight),
        ("GET", "/api/flights/{flight_id}/seats", flight_seats),
        ("POST", "/api/bookings", create_booking),
        ("GET", "/api/bookings/{booking_id}", get_booking),
        ("POST", "/api/bookings/{booking_id}/pay", pay_booking),
        ("POST", "/api/bookings/{booking_id}/cancel", cancel_booking),
        ("POST", "/api/bookings/{booking_id}/refund", refund_booking),
    ]
    for method, path, handler in routes:
        # The seed systems' clients use the trailing slash; curl users often do not.
        app.router.add_route(method, path + "/", handler)
        app.router.add_route(method, path, handler)
    app.router.add_get("/healthz", healthz)
