"""Regressions from a review of settle/restore races: each test names the race it pins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from holdsvc.appkeys import GATEWAY, HOLDS, RECOVERY, RESTORER, STORE
from holdsvc.domain.states import State, move
from holdsvc.seats import keys
from persistence.records import PaymentChange
from tests.conftest import hold, new_flight, seat_map

Client = TestClient[Any, Any]


async def _pending_with_charge(client: Client, flight_id: int, seats: list[str]) -> str:
    """A booking a pay left PAYMENT_PENDING after charging and booking its seats in Redis."""
    booking = await hold(client, flight_id, seats)
    bid = booking["id"]
    store, holds = client.app[STORE], client.app[HOLDS]
    await store.transition(
        bid,
        move(State.PAYMENT_PENDING, "pay"),
        payment=PaymentChange("pending", method="pm_card_visa", amount="200.00", currency="INR"),
    )
    charge = await client.app[GATEWAY].charge(bid, "200.00", "INR", "pm_card_visa")
    assert charge.captured
    await holds.confirm(flight_id, seats, bid)
    return str(bid)


async def test_two_settlers_of_one_charge_leave_it_confirmed_and_paid(client: Client) -> None:
    # Two sweepers (two processes) settling the same dead pay: the loser used to free the
    # winner's seats and refund a CONFIRMED booking.
    flight = await new_flight(client)
    bid = await _pending_with_charge(client, flight["id"], ["1A", "1B"])
    recovery = client.app[RECOVERY]
    await asyncio.gather(recovery.settle(bid), recovery.settle(bid))
    booking = await (await client.get(f"/api/bookings/{bid}/")).json()
    assert booking["state"] == "CONFIRMED"
    assert booking["payment"]["status"] == "captured"
    assert client.app[GATEWAY].captured_unrefunded() == [bid]
    seats = await seat_map(client, flight["id"])
    assert seats["1A"] == seats["1B"] == "booked"


async def test_a_charge_arriving_after_recovery_voided_it_is_declined(client: Client) -> None:
    gateway = client.app[GATEWAY]
    assert await gateway.void("late-1") is None
    late = await gateway.charge("late-1", "10.00", "INR", "pm_card_visa")
    assert not late.captured
    assert "late-1" not in gateway.captured_unrefunded()


async def test_seats_of_a_cancel_whose_redis_step_failed_are_freed(
    client: Client, redis: Redis
) -> None:
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["2C"])
    assert (await client.post(f"/api/bookings/{booking['id']}/pay/")).status == 200
    # The cancel committed in SQL; its Redis release never ran.
    moved = await client.app[STORE].transition(
        booking["id"], move(State.CANCELLED, "customer-cancel")
    )
    assert moved.moved
    assert (await seat_map(client, flight["id"]))["2C"] == "booked"
    assert await client.app[RESTORER].reconcile_all() == 1
    assert (await seat_map(client, flight["id"]))["2C"] == "available"


async def test_restore_after_a_restart_keeps_a_booking_confirmed_in_redis_only(
    client: Client, redis: Redis
) -> None:
    # A pay died after booking the seats in Redis; then Redis restarted (a marker from an older
    # run). The restore used to read "!<id>" as a lost hold and expire a paid booking.
    flight = await new_flight(client)
    bid = await _pending_with_charge(client, flight["id"], ["1C"])
    await redis.set(keys.marker(flight["id"]), "an-older-run")
    await client.app[RESTORER].check()
    booking = await (await client.get(f"/api/bookings/{bid}/")).json()
    assert booking["state"] == "PAYMENT_PENDING"
    await client.app[RECOVERY].settle(bid)
    booking = await (await client.get(f"/api/bookings/{bid}/")).json()
    assert booking["state"] == "CONFIRMED"


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


async def test_a_confirmed_seat_missing_from_redis_is_booked_again(
    client: Client, redis: Redis
) -> None:
    # A confirm lost with the last second of an AOF: SQL says CONFIRMED, Redis has nothing.
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["2D"])
    assert (await client.post(f"/api/bookings/{booking['id']}/pay/")).status == 200
    await redis.delete(keys.seat(flight["id"], "2D"))
    assert (await seat_map(client, flight["id"]))["2D"] == "available"
    assert await client.app[RESTORER].reconcile_all() == 1
    assert (await seat_map(client, flight["id"]))["2D"] == "booked"
