"""A service killed with SIGKILL at any instant of a pay: after a restart, the booking ends
CONFIRMED (if the seats were booked for it) or refunded and EXPIRED, never stuck, and a retry
with the same Idempotency-Key gets the answer the first request would have had."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from holdsvc.embedded_redis import EmbeddedRedis
from tests.helpers import SMALL_FLIGHT, ServiceProcess
from tests.invariants import check_invariants, unsettled

# point -> the (final state, status of the pay retried with the same key) it may end in
EXPECTED = {
    "before_charge": {("EXPIRED", 402)},
    # Charged, then killed: recovery confirms it if the hold is still the booking's when it
    # settles (a gateway timeout after the payment's last change), else refunds it.
    "after_charge": {("EXPIRED", 409), ("CONFIRMED", 200)},
    "after_confirm": {("CONFIRMED", 200)},
    "after_commit": {("CONFIRMED", 200)},
}


@pytest.mark.parametrize("point", list(EXPECTED))
async def test_pay_killed_at_each_point_is_settled(
    point: str,
    tmp_path: Path,
    db: str,
    redis_server: EmbeddedRedis,
    redis: Redis,
    services: Callable[..., ServiceProcess],
) -> None:
    args = [
        "--redis-url", redis_server.url,
        "--data-dir", str(tmp_path),
        "--db", db,
        "--hold-ttl", "1.5",
        "--payment-window", "1",
        "--gateway-timeout", "0.5",
        "--reconcile-grace", "0.5",
        "--sweep-interval", "0.2",
    ]  # fmt: skip
    # A dead process's claim on an Idempotency-Key is taken over after 3 s, not 15.
    env = {"HOLDSVC_TAKEOVER_AFTER": "3"}
    doomed = services(args, env={**env, "HOLDSVC_FAULT": point})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{doomed.base}/api/flights/", json=SMALL_FLIGHT) as resp:
            flight_id = (await resp.json())["id"]
        async with http.post(
            f"{doomed.base}/api/bookings/",
            json={"flight_id": flight_id, "user_id": "u1", "seats": ["1A", "1B"]},
        ) as resp:
            bid = (await resp.json())["id"]
        key = {"Idempotency-Key": f"pay-{bid}"}
        with pytest.raises(aiohttp.ClientError):
            async with http.post(f"{doomed.base}/api/bookings/{bid}/pay/", headers=key):
                pass
        doomed.stop(timeout=10)
        assert doomed.proc is not None and doomed.proc.returncode == -9

        survivor = services(args, env=env)
        booking = await _settled(http, survivor, bid, timeout=15)
        final_state = booking["state"]
        status, body = await _retry_pay(http, survivor, bid, key)
        assert (final_state, status) in EXPECTED[point], (booking, status, body)
        if status == 200:
            assert body["message"] == "Payment successful"
            assert {k: v for k, v in body.items() if k != "message"} == booking
        if final_state == "EXPIRED":
            # The seats are free again.
            async with http.post(
                f"{survivor.base}/api/bookings/",
                json={"flight_id": flight_id, "user_id": "u2", "seats": ["1A", "1B"]},
            ) as resp:
                assert resp.status == 201

    assert [u for u in unsettled(db) if u[0] == bid] == []
    await check_invariants(db, tmp_path / "mock-gateway.sqlite3", redis, flight_id)


async def _settled(
    http: aiohttp.ClientSession, node: ServiceProcess, bid: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{node.base}/api/bookings/{bid}/") as resp:
            booking: dict[str, Any] = await resp.json()
        payment = booking["payment"] or {}
        if booking["state"] != "PAYMENT_PENDING" and payment.get("status") != "pending":
            return booking
        assert time.monotonic() < deadline, f"still unsettled: {booking}"
        await asyncio.sleep(0.2)


async def _retry_pay(
    http: aiohttp.ClientSession, node: ServiceProcess, bid: str, key: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    # Until the dead process's claim on the key lapses (it renews it no more), it reads
    # "in progress";
    # while recovery has not settled the booking, the retry is told 503 "still being settled".
    deadline = time.monotonic() + 15
    while True:
        async with http.post(f"{node.base}/api/bookings/{bid}/pay/", headers=key) as resp:
            body: dict[str, Any] = await resp.json()
            in_progress = resp.status == 409 and "in progress" in body.get("error", "")
            if not in_progress and resp.status != 503:
                return resp.status, body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.3)
