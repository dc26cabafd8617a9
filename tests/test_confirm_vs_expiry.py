"""Confirm racing expiry: with a 50 ms hold, a pay fired around the deadline ends either
CONFIRMED with its seats booked, or refused with its seats free, the booking EXPIRED and any
charge refunded: never confirmed with free seats, never expired with booked seats."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from holdsvc.settings import Settings
from tests.helpers import Client, eventually, hold, new_flight
from tests.invariants import check_invariants, unsettled

MakeClient = Callable[[Settings], Awaitable[Client]]
ROUNDS = 150


async def test_pay_at_the_deadline_is_all_or_nothing(
    make_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    client = await make_client(
        settings.replace(
            # A 1 ms payment window: a charge that takes longer loses the hold it paid for.
            hold_ttl=0.05,
            payment_window=0.001,
            gateway_timeout=1.0,
            sweep_interval=0.2,
            reconcile_grace=0.3,
        )
    )
    flight = await new_flight(client, rows=15, seat_letters="ABCDEFGHIJ")
    rng = random.Random(3)
    outcomes: Counter[str] = Counter()
    for n in range(ROUNDS):
        seat = f"{n // 10 + 1}{'ABCDEFGHIJ'[n % 10]}"
        booking = await hold(client, flight["id"], [seat])
        await asyncio.sleep(rng.uniform(0.035, 0.06))
        resp = await client.post(f"/api/bookings/{booking['id']}/pay/")
        body = await resp.json()
        after = await (await client.get(f"/api/bookings/{booking['id']}/")).json()
        value = await redis.get(f"{{f:{flight['id']}}}:{seat}")
        if resp.status == 200:
            assert after["state"] == "CONFIRMED"
            assert value == b"!" + booking["id"].encode()
            outcomes["confirmed"] += 1
        else:
            assert resp.status == 409, body
            assert after["state"] == "EXPIRED", after
            assert not (isinstance(value, bytes) and value.startswith(b"!")), value
            payment = after["payment"]
            assert payment is None or payment["status"] in {"refunded", "failed"}, after
            if payment and payment["status"] == "refunded":
                assert "payment was refunded" in body["error"], body
                outcomes["refunded"] += 1
            else:
                assert body == {
                    "error": "Invalid state transition from EXPIRED to PAYMENT_PENDING",
                    "code": "invalid_transition",
                    "from": "EXPIRED",
                    "to": "PAYMENT_PENDING",
                }
                outcomes["expired"] += 1
    # "refunded" (charged, then the hold lapsed before the confirm) happens in a few per cent
    # of rounds here; it is not asserted, to keep the test from depending on timing.
    assert outcomes["confirmed"] > 0 and outcomes["expired"] > 0, outcomes

    async def settled() -> bool:
        return unsettled(settings.db_target) == []

    await eventually(settled, timeout=5)
    await check_invariants(settings.db_target, settings.gateway_ledger_path, redis, flight["id"])
