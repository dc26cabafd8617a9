"""The seed systems' lifecycle, end to end through the HTTP API, with their exact bodies."""

from __future__ import annotations

import base64
import itertools
import time
from typing import Any

from redis.asyncio import Redis

from tests.helpers import Client, hold, new_flight, seat_map

FLIGHT = {
    "flight_number": "AI101",
    "origin": "DEL",
    "destination": "BOM",
    "departure_time": "2030-01-01T09:30:00Z",
    "rows": 30,
    "seat_letters": "ABCDEF",
    "price": "4999.00",
    "currency": "INR",
}


async def test_create_and_read_flight(client: Client) -> None:
    resp = await client.post("/api/flights/", json=FLIGHT)
    assert resp.status == 201
    flight = await resp.json()
    assert flight == {**FLIGHT, "id": flight["id"], "seats_total": 180, "seats_available": 180}

    got = await client.get(f"/api/flights/{flight['id']}/")
    assert await got.json() == flight
    listed = await (await client.get("/api/flights/")).json()
    assert listed == [flight]
    seats = await seat_map(client, flight["id"])
    assert len(seats) == 180 and seats["1A"] == "available" and seats["30F"] == "available"


async def test_full_lifecycle_hold_pay_cancel_refund(client: Client, redis: Redis) -> None:
    flight = await new_flight(client, **FLIGHT)
    resp = await client.post(
        "/api/bookings/", json={"flight_id": flight["id"], "user_id": "u1", "seats": ["1A", "1B"]}
    )
    assert resp.status == 201
    booking = await resp.json()
    assert set(booking) == {
        "id", "state", "flight_id", "user_id", "seats", "amount", "currency",
        "hold_expires_at", "expires_in_seconds", "created_at", "updated_at", "payment",
    }  # fmt: skip
    assert booking["state"] == "SEAT_HELD"
    assert booking["seats"] == ["1A", "1B"]
    assert booking["amount"] == "9998.00" and booking["currency"] == "INR"
    assert booking["payment"] is None and booking["hold_expires_at"] is not None
    bid = booking["id"]
    assert (await seat_map(client, flight["id"]))["1A"] == "held"
    flight_now = await (await client.get(f"/api/flights/{flight['id']}/")).json()
    assert flight_now["seats_available"] == 178

    resp = await client.post(f"/api/bookings/{bid}/pay/", json={"payment_method": "pm_card_visa"})
    assert resp.status == 200
    paid = await resp.json()
    assert paid["message"] == "Payment successful" and paid["state"] == "CONFIRMED"
    assert paid["payment"] == {"status": "captured", "amount": "9998.00", "currency": "INR"}
    assert (await seat_map(client, flight["id"]))["1B"] == "booked"
    # A booked seat has no TTL in Redis: expiry can never free it.
    assert await redis.pttl(f"{{f:{flight['id']}}}:1A") == -1

    resp = await client.post(f"/api/bookings/{bid}/cancel/")
    assert resp.status == 200
    cancelled = await resp.json()
    assert cancelled["message"] == "Booking cancelled" and cancelled["state"] == "CANCELLED"
    assert (await seat_map(client, flight["id"]))["1A"] == "available"

    resp = await client.post(f"/api/bookings/{bid}/refund/")
    assert resp.status == 200
    refunded = await resp.json()
    assert refunded["message"] == "Refund processed" and refunded["state"] == "REFUNDED"
    assert refunded["payment"]["status"] == "refunded"

    got = await (await client.get(f"/api/bookings/{bid}/")).json()
    assert got["state"] == "REFUNDED"

    # The seed system could never book a cancelled seat again; here it can.
    again = await hold(client, flight["id"], ["1A", "1B"], user="u2")
    assert again["state"] == "SEAT_HELD"


async def test_declined_payment_cancels_and_frees_seats(client: Client) -> None:
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["1A"])
    resp = await client.post(
        f"/api/bookings/{booking['id']}/pay/", json={"payment_method": "pm_card_chargeDeclined"}
    )
    assert resp.status == 402
    body = await resp.json()
    assert body["message"] == "Payment failed" and body["state"] == "CANCELLED"
    assert body["payment"]["status"] == "failed"
    assert (await seat_map(client, flight["id"]))["1A"] == "available"

    resp = await client.post(f"/api/bookings/{booking['id']}/refund/")
    assert resp.status == 409
    assert (await resp.json())["error"] == "No captured payment to refund"


async def test_releasing_a_hold_frees_seats_with_nothing_to_refund(client: Client) -> None:
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["2C", "2D"])
    resp = await client.post(f"/api/bookings/{booking['id']}/cancel/")
    assert resp.status == 200
    assert (await resp.json())["state"] == "CANCELLED"
    seats = await seat_map(client, flight["id"])
    assert seats["2C"] == seats["2D"] == "available"
    resp = await client.post(f"/api/bookings/{booking['id']}/refund/")
    assert resp.status == 409
    assert (await resp.json())["error"] == "No captured payment to refund"


async def test_taken_seats_are_named_and_nothing_is_held(client: Client) -> None:
    flight = await new_flight(client)
    await hold(client, flight["id"], ["1B", "1C"])
    resp = await client.post(
        "/api/bookings/",
        json={"flight_id": flight["id"], "user_id": "u2", "seats": ["1A", "1B", "1C"]},
    )
    assert resp.status == 409
    assert await resp.json() == {
        "error": "Seats not available",
        "code": "seats_not_available",
        "seats": ["1B", "1C"],
    }
    assert (await seat_map(client, flight["id"]))["1A"] == "available"


async def test_seat_count_picks_adjacent_seats_in_one_row(client: Client) -> None:
    flight = await new_flight(client)  # 2 rows of ABCDE
    await hold(client, flight["id"], ["1B", "1D"])
    resp = await client.post(
        "/api/bookings/", json={"flight_id": flight["id"], "user_id": "u1", "seat_count": 3}
    )
    assert resp.status == 201
    assert (await resp.json())["seats"] == ["2A", "2B", "2C"]

    # The Node seed system's payload works too.
    resp = await client.post(
        "/api/bookings/", json={"flightId": flight["id"], "userId": "u2", "noOfSeats": 2}
    )
    assert resp.status == 201
    assert (await resp.json())["seats"] == ["2D", "2E"]

    # Three free seats remain (1A, 1C, 1E), none adjacent: still served, all or nothing.
    resp = await client.post(
        "/api/bookings/", json={"flight_id": flight["id"], "user_id": "u3", "seat_count": 4}
    )
    assert resp.status == 409
    body = await resp.json()
    assert body["error"] == "Seats not available" and body["available"] == 3
    resp = await client.post(
        "/api/bookings/", json={"flight_id": flight["id"], "user_id": "u3", "seat_count": 3}
    )
    assert resp.status == 201
    assert sorted((await resp.json())["seats"]) == ["1A", "1C", "1E"]


async def test_unknown_booking_and_flight_are_404(client: Client) -> None:
    for method, path in [
        ("GET", "/api/bookings/nope/"),
        ("POST", "/api/bookings/nope/pay/"),
        ("POST", "/api/bookings/nope/cancel/"),
        ("POST", "/api/bookings/nope/refund/"),
    ]:
        resp = await client.request(method, path)
        assert resp.status == 404
        assert await resp.json() == {"error": "Booking not found", "code": "not_found"}
    for path in ["/api/flights/99/", "/api/flights/99/seats/", "/api/flights/x/"]:
        resp = await client.get(path)
        assert resp.status == 404
        assert await resp.json() == {"error": "Flight not found", "code": "not_found"}
    resp = await client.post(
        "/api/bookings/", json={"flight_id": 99, "user_id": "u1", "seats": ["1A"]}
    )
    assert resp.status == 404
    assert await resp.json() == {"error": "Flight not found", "code": "not_found"}


async def test_booking_ids_are_random(client: Client) -> None:
    flight = await new_flight(client, rows=6)
    before_ms = time.time_ns() // 1_000_000
    seats = [f"{r}{c}" for r in range(1, 7) for c in "ABCDE"]
    ids = [(await hold(client, flight["id"], [seat]))["id"] for seat in seats]
    # <20 characters of base64>.<flight id>: the flight names the slot of the hold's record.
    assert all(i.endswith(f".{flight['id']}") for i in ids)
    raw = [base64.urlsafe_b64decode(i.split(".")[0]) for i in ids]
    assert len(set(ids)) == len(ids) and all(len(r) == 15 for r in raw)
    # 48 bits of creation time, then 72 random bits. A counter (or a clock) in the tail would
    # differ from its neighbour in a few bits; random tails differ in about half of 72.
    assert all(before_ms - 1 <= int.from_bytes(r[:6], "big") <= before_ms + 60_000 for r in raw)
    tails = [int.from_bytes(r[6:], "big") for r in raw]
    flips = [(a ^ b).bit_count() for a, b in itertools.pairwise(tails)]
    assert sum(flips) / len(flips) > 24, flips


async def test_healthz(client: Client, redis_server: Any) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    redis_server.stop()
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["status"] == "unavailable"


async def test_redis_refusing_writes_answers_503_not_500(client: Client, redis: Redis) -> None:
    flight = await new_flight(client)
    await redis.config_set("maxmemory", 1)
    try:
        resp = await client.post(
            "/api/bookings/", json={"flight_id": flight["id"], "user_id": "u1", "seats": ["1A"]}
        )
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert "unavailable" in (await resp.json())["error"]
    finally:
        await redis.config_set("maxmemory", 0)
    resp = await client.get("/healthz")
    assert resp.status == 200
