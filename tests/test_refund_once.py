"""Invariant 4: a refund happens at most once, and only for a captured payment."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from holdsvc.appkeys import STORE
from tests.helpers import Client, hold, new_flight


async def test_fifty_concurrent_refunds_refund_once(client: Client) -> None:
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["1A", "1B"])
    bid = booking["id"]
    assert (await client.post(f"/api/bookings/{bid}/pay/")).status == 200
    assert (await client.post(f"/api/bookings/{bid}/cancel/")).status == 200

    async def refund() -> tuple[int, dict[str, Any]]:
        resp = await client.post(f"/api/bookings/{bid}/refund/")
        return resp.status, await resp.json()

    results = await asyncio.gather(*(refund() for _ in range(50)))
    statuses = Counter(status for status, _ in results)
    assert statuses[200] == 1, statuses
    assert set(statuses) == {200, 409}
    for status, body in results:
        if status == 409:
            assert body["error"] in {
                "A refund of this booking is already in progress",
                "Invalid state transition from REFUNDED to REFUNDED",
            }
    history = await client.app[STORE].transitions_of(bid)
    assert [h[1] for h in history].count("REFUNDED") == 1
    final = await (await client.get(f"/api/bookings/{bid}/")).json()
    assert final["state"] == "REFUNDED" and final["payment"]["status"] == "refunded"


async def test_refund_is_refused_unless_cancelled(client: Client) -> None:
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["1A"])
    bid = booking["id"]
    resp = await client.post(f"/api/bookings/{bid}/refund/")
    assert resp.status == 409
    assert await resp.json() == {
        "error": "Invalid state transition from SEAT_HELD to REFUNDED",
        "code": "invalid_transition",
        "from": "SEAT_HELD",
        "to": "REFUNDED",
    }
    assert (await client.post(f"/api/bookings/{bid}/pay/")).status == 200
    resp = await client.post(f"/api/bookings/{bid}/refund/")
    assert resp.status == 409
    assert await resp.json() == {
        "error": "Invalid state transition from CONFIRMED to REFUNDED",
        "code": "invalid_transition",
        "from": "CONFIRMED",
        "to": "REFUNDED",
    }
