"""Regressions from a review of settle/restore races: each test names the race it pins."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from holdsvc.appkeys import GATEWAY, RECOVERY, RESTORER, STORE
from holdsvc.domain.states import State, move
from tests.helpers import Client, hold, new_flight, pending_with_charge, seat_map


async def test_two_settlers_of_one_charge_leave_it_confirmed_and_paid(client: Client) -> None:
    # Two sweepers (two processes) settling the same dead pay: the loser used to free the
    # winner's seats and refund a CONFIRMED booking.
    flight = await new_flight(client)
    bid = await pending_with_charge(client, flight["id"], ["1A", "1B"])
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
