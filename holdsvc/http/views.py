"""JSON views of the domain, and the one mapping of errors to HTTP responses."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from holdsvc.domain.bookings import CANCELLED
from holdsvc.domain.errors import DomainError
from holdsvc.domain.flights import CREATED as FLIGHT_CREATED
from holdsvc.domain.flights import Flight
from holdsvc.domain.health import Outage
from holdsvc.domain.payments import CONFIRMED as PAY_CONFIRMED
from holdsvc.domain.payments import DECLINED as PAY_DECLINED
from holdsvc.domain.payments import REFUNDABLE, REFUNDED
from holdsvc.domain.records import (
    BookingRecord,
    FlightRecord,
    PaymentRecord,
    StoreUnavailable,
    iso_ms,
)
from holdsvc.domain.states import HOLDING
from holdsvc.gateway import decline_code

log = logging.getLogger(__name__)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def booking_view(b: BookingRecord, now_ms: float | None = None) -> dict[str, Any]:
    """``now_ms`` is Redis's clock, the one that expires holds (this machine's when not
    given): ``expires_in_seconds`` is counted by it, so a client need not trust its own."""
    payment = None
    if b.payment is not None:
        payment = {
            "status": b.payment.status,
            "amount": b.payment.amount,
            "currency": b.payment.currency,
        }
    return {
        "id": b.id,
        "state": b.state,
        "flight_id": b.flight_id,
        "user_id": b.user_id,
        "seats": b.seats,
        "amount": b.amount,
        "currency": b.currency,
        # Only a live hold has a deadline worth showing.
        "hold_expires_at": iso_ms(b.hold_expires_at) if b.state in HOLDING else None,
        "expires_in_seconds": _left(b, now_ms),
        "created_at": iso_ms(b.created_at),
        "updated_at": iso_ms(b.updated_at),
        "payment": payment,
    }


def _left(b: BookingRecord, now_ms: float | None) -> int | None:
    if b.state not in HOLDING or b.hold_expires_at is None:
        return None
    now = time.time() * 1000 if now_ms is None else now_ms
    return max(0, int((b.hold_expires_at - now) // 1000))


# What a keyed request's stored outcome answers: the same status and message whether it is
# the first answer or a replay (both are rendered here, from the record the commit left).
_OUTCOMES: dict[str, tuple[int, str]] = {
    PAY_CONFIRMED: (200, "Payment successful"),
    PAY_DECLINED: (402, "Payment failed"),
    CANCELLED: (200, "Booking cancelled"),
    REFUNDED: (200, "Refund processed"),
}


def booking_action(outcome: str, booking: BookingRecord, now_ms: float) -> web.Response:
    status, message = _OUTCOMES[outcome]
    body = {"message": message, **booking_view(booking, now_ms)}
    payment = booking.payment
    if outcome == PAY_DECLINED:
        # An error answer like every other (error, code), with the gateway's reason.
        reason = decline_code(payment.method) if payment is not None else "card_declined"
        body.update(error=f"Payment declined: {reason}", code="payment_declined",
                    decline_code=reason)  # fmt: skip
    elif outcome == CANCELLED and payment is not None and payment.status in REFUNDABLE:
        # Cancelled with the money still taken: the refund is the caller's next step.
        body["refund"] = "due"
    return json_response(body, status)


def new_flight_response(flight: Flight) -> web.Response:
    return json_response(
        flight_view(flight, len(flight.seats)), 201, {"Location": f"/api/flights/{flight.id}/"}
    )


def stored_outcome(outcome: str, record: bytes, now_ms: float) -> web.Response:
    """The answer an outcome stored with its effect stands for, from that commit's record."""
    data = orjson.loads(record)
    if outcome == FLIGHT_CREATED:
        return new_flight_response(Flight.of(FlightRecord(**data)))
    payment = data.pop("payment")
    booking = BookingRecord(**data, payment=PaymentRecord(**payment) if payment else None)
    return booking_action(outcome, booking, now_ms)


def flight_view(f: Flight, available: int | None) -> dict[str, Any]:
    """``available`` None: unknown, Redis does not answer (the rest comes from SQL)."""
    r = f.record
    return {
        "id": r.id,
        "flight_number": r.flight_number,
        "origin": r.origin,
        "destination": r.destination,
        "departure_time": r.departure_time,
        "rows": r.rows,
        "seat_letters": r.seat_letters,
        "price": r.price,
        "currency": r.currency,
        "seats_total": len(f.seats),
        "seats_available": available,
    }


# As nginx logs it: the client closed the connection before the answer.
CLIENT_GONE = 499
# Redis refusing for a while (out of memory, a replica, loading, a busy script, failover):
# the request may succeed later, so 503, not 500.
_TRANSIENT = (
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
)


def redis_unavailable(exc: Exception) -> bool:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT)


# Requests see only failures, so after its first line this says "still failing" every 10 s;
# the sweeper's and the persister's lines say when Redis works again.
_REDIS_OUTAGE = Outage(log, "Redis, as requests see it")


def error_response(exc: Exception) -> web.Response:
    """The JSON answer for any exception a handler raised; 500s say nothing of the cause."""
    if isinstance(exc, DomainError):
        return json_response(exc.body(), exc.status, exc.headers or None)
    if redis_unavailable(exc):
        _REDIS_OUTAGE.failed(exc)
        return json_response(
            {"error": "Seat store (Redis) unavailable; retry shortly", "code": "unavailable"},
            503,
            {"Retry-After": "1"},
        )
    if isinstance(exc, StoreUnavailable):
        # The SQL writer process is being replaced: what was waiting has an unknown outcome.
        log.warning("SQL writer unavailable: %s", exc)
        return json_response(
            {"error": "Booking store (SQL) unavailable; retry shortly", "code": "unavailable"},
            503,
            {"Retry-After": "1"},
        )
    if isinstance(exc, ConnectionResetError):
        # The client went away mid-request: nobody reads this answer; not a server error.
        log.info("client disconnected: %s", exc)
        return json_response(
            {"error": "Client closed the connection", "code": "client_closed"}, CLIENT_GONE
        )
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = _HTTP_CODES.get(exc.status, "http_error")
        return json_response({"error": exc.reason, "code": code}, exc.status, headers)
    log.error("unexpected error", exc_info=exc)
    return json_response({"error": "Internal server error", "code": "internal_error"}, 500)


# aiohttp's own refusals (no route, a method the route has not, a body over the limit).
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    400: "bad_request",
}
