"""Idempotency-Key: the first answer is replayed, a changed body is refused, keys survive a
restart, and concurrent duplicates never run twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from holdsvc.appkeys import STORE
from holdsvc.settings import Settings
from tests.helpers import Client, hold, new_flight

MakeClient = Callable[[Settings], Awaitable[Client]]


async def test_same_key_same_body_replays_the_first_answer(client: Client) -> None:
    flight = await new_flight(client)
    body = {"flight_id": flight["id"], "user_id": "u1", "seats": ["1A"]}
    headers = {"Idempotency-Key": "hold-1"}
    first = await client.post("/api/bookings/", json=body, headers=headers)
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    first_body = await first.read()

    again = await client.post("/api/bookings/", json=body, headers=headers)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == first_body

    # Only one booking exists: the seat map shows one held seat and 1B is free.
    seats = await (await client.get(f"/api/flights/{flight['id']}/")).json()
    assert seats["seats_available"] == 9


async def test_errors_are_replayed_too(client: Client) -> None:
    flight = await new_flight(client)
    await hold(client, flight["id"], ["1A"])
    body = {"flight_id": flight["id"], "user_id": "u2", "seats": ["1A"]}
    headers = {"Idempotency-Key": "taken-1"}
    first = await client.post("/api/bookings/", json=body, headers=headers)
    assert first.status == 409
    again = await client.post("/api/bookings/", json=body, headers=headers)
    assert again.status == 409
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()


async def test_same_key_different_body_is_422(client: Client) -> None:
    flight = await new_flight(client)
    headers = {"Idempotency-Key": "k-422"}
    first = await client.post(
        "/api/bookings/",
        json={"flight_id": flight["id"], "user_id": "u1", "seats": ["1A"]},
        headers=headers,
    )
    assert first.status == 201
    other = await client.post(
        "/api/bookings/",
        json={"flight_id": flight["id"], "user_id": "u1", "seats": ["1B"]},
        headers=headers,
    )
    assert other.status == 422
    assert "different request" in (await other.json())["error"]
    seats = await (await client.get(f"/api/flights/{flight['id']}/")).json()
    assert seats["seats_available"] == 9


async def test_pay_retry_with_same_key_gets_the_first_answer(client: Client) -> None:
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["1A"])
    headers = {"Idempotency-Key": "pay-1"}
    first = await client.post(f"/api/bookings/{booking['id']}/pay/", headers=headers)
    assert first.status == 200
    again = await client.post(f"/api/bookings/{booking['id']}/pay/", headers=headers)
    assert again.status == 200
    assert await again.read() == await first.read()
    history = await client.app[STORE].transitions_of(booking["id"])
    assert [h[1] for h in history].count("CONFIRMED") == 1
    # Without the key, a second pay is a refused move, not a second charge.
    resp = await client.post(f"/api/bookings/{booking['id']}/pay/")
    assert resp.status == 409


async def test_concurrent_duplicates_run_once(client: Client) -> None:
    flight = await new_flight(client)
    body = {"flight_id": flight["id"], "user_id": "u1", "seat_count": 2}
    headers = {"Idempotency-Key": "dup-1"}

    async def send() -> tuple[int, bytes]:
        resp = await client.post("/api/bookings/", json=body, headers=headers)
        return resp.status, await resp.read()

    results = await asyncio.gather(*(send() for _ in range(20)))
    statuses = Counter(status for status, _ in results)
    # The hold script claims the key in the same atomic step as the seats: one runs, and
    # every duplicate gets its answer, never an "in progress".
    assert statuses == Counter({201: 20}), statuses
    created = {payload for status, payload in results if status == 201}
    assert len(created) == 1, "every 201 is the same booking, replayed"
    seats = await (await client.get(f"/api/flights/{flight['id']}/")).json()
    assert seats["seats_available"] == 8


async def test_keys_survive_a_restart(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(settings)
    flight = await new_flight(client)
    body = {"flight_id": flight["id"], "user_id": "u1", "seats": ["2E"]}
    headers = {"Idempotency-Key": "restart-1"}
    first = await client.post("/api/bookings/", json=body, headers=headers)
    assert first.status == 201
    first_body = await first.read()
    await client.close()

    restarted = await make_client(settings)
    again = await restarted.post("/api/bookings/", json=body, headers=headers)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == first_body
