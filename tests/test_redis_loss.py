"""Redis loses its data (FLUSHALL, SIGKILL, a restart empty or from its AOF): booked seats are
restored from SQL before any hold, lost holds end EXPIRED, nothing is sold twice."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import time
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from holdsvc.appkeys import RECOVERY, RESTORER, STORE
from holdsvc.embedded_redis import EmbeddedRedis
from holdsvc.seats import keys
from holdsvc.settings import Settings
from tests.helpers import Client, eventually, hold, new_flight, pending_with_charge, seat_map
from tests.invariants import check_invariants, unsettled

MakeClient = Callable[[Settings], Awaitable[Client]]


async def test_flushall_restores_booked_seats_before_any_hold(client: Client, redis: Redis) -> None:
    flight = await new_flight(client)
    sold = await hold(client, flight["id"], ["1A", "1B"])
    assert (await client.post(f"/api/bookings/{sold['id']}/pay/")).status == 200
    held = await hold(client, flight["id"], ["2A"])
    await redis.flushall()

    # The first hold after the loss finds the flight unrestored, restores it, then answers.
    resp = await client.post(
        "/api/bookings/", json={"flight_id": flight["id"], "user_id": "u9", "seats": ["1A"]}
    )
    assert resp.status == 409
    assert await resp.json() == {
        "error": "Seats not available",
        "code": "seats_not_available",
        "seats": ["1A"],
    }
    seats = await seat_map(client, flight["id"])
    assert seats["1A"] == seats["1B"] == "booked"
    assert seats["2A"] == "available"

    # The hold Redis lost never reached SQL (no money was involved): it is gone, and its
    # seat can be held again.
    after = await client.get(f"/api/bookings/{held['id']}/")
    assert after.status == 404 and await after.json() == {
        "error": "Booking not found",
        "code": "not_found",
    }
    assert await client.app[STORE].transitions_of(held["id"]) == []
    assert (await hold(client, flight["id"], ["2A"], user="u9"))["state"] == "SEAT_HELD"


@pytest.mark.parametrize("restart", ["empty", "from-aof"])
async def test_redis_sigkill_under_load(
    restart: str,
    make_client: MakeClient,
    settings: Settings,
    redis_server: EmbeddedRedis,
) -> None:
    client = await make_client(
        settings.replace(
            hold_ttl=2.0,
            payment_window=2.0,
            gateway_timeout=1.0,
            sweep_interval=0.2,
            reconcile_grace=0.5,
        )
    )
    flight = await new_flight(client, rows=6, seat_letters="ABCDEFGHIJ")
    seats = [f"{r}{c}" for r in range(1, 7) for c in "ABCDEFGHIJ"]
    rng = random.Random(11)
    confirmed: set[str] = set()
    statuses: dict[int, int] = {}
    stop_at = time.monotonic() + 6

    async def customer(n: int) -> None:
        for _ in range(25):  # bounded in count and in time
            if time.monotonic() > stop_at:
                return
            start = rng.randrange(len(seats) - 2)
            resp = await client.post(
                "/api/bookings/",
                json={
                    "flight_id": flight["id"],
                    "user_id": f"c{n}",
                    "seats": seats[start : start + 2],
                },
            )
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status == 503:
                assert resp.headers["Retry-After"] == "1"
                assert "error" in await resp.json()
            await asyncio.sleep(0.1)  # spread the load across the outage
            if resp.status != 201:
                continue
            bid = (await resp.json())["id"]
            if rng.random() < 0.6:
                paid = await client.post(f"/api/bookings/{bid}/pay/")
                statuses[paid.status] = statuses.get(paid.status, 0) + 1
                if paid.status == 200:
                    confirmed.add(bid)

    async def chaos() -> None:
        await asyncio.sleep(1.5)
        redis_server.kill(signal.SIGKILL)
        if restart == "empty":
            shutil.rmtree(redis_server.directory)
        await asyncio.sleep(0.5)
        redis_server.start()

    await asyncio.wait_for(asyncio.gather(chaos(), *(customer(n) for n in range(16))), 30)
    assert set(statuses) <= {200, 201, 409, 503}, statuses
    assert statuses.get(200, 0) > 0 and statuses.get(201, 0) > 0
    assert statuses.get(503, 0) > 0, f"the outage must hit requests in flight: {statuses}"

    # Every lapsed hold and every open payment ends within the bound.
    async def all_settled() -> bool:
        return unsettled(settings.db_target) == []

    await eventually(all_settled, timeout=10, interval=0.2)
    async with Redis.from_url(redis_server.url) as redis:
        # The sweeper has restored the flight into the new Redis by now.
        await eventually(lambda: _marker_set(redis, flight["id"]), timeout=5, interval=0.1)
        await check_invariants(
            settings.db_target, settings.gateway_ledger_path, redis, flight["id"]
        )
    for bid in confirmed:
        body = await (await client.get(f"/api/bookings/{bid}/")).json()
        assert body["state"] == "CONFIRMED", body


async def _marker_set(redis: Redis, flight_id: int) -> bool:
    return bool(await redis.exists(f"{{f:{flight_id}}}:e"))


async def test_restore_after_a_restart_keeps_a_booking_confirmed_in_redis_only(
    client: Client, redis: Redis
) -> None:
    # A pay died after booking the seats in Redis; then Redis restarted (a marker from an older
    # run). The restore used to read "!<id>" as a lost hold and expire a paid booking.
    flight = await new_flight(client)
    bid = await pending_with_charge(client, flight["id"], ["1C"])
    await redis.set(keys.marker(flight["id"]), "an-older-run")
    await client.app[RESTORER].check()
    booking = await (await client.get(f"/api/bookings/{bid}/")).json()
    assert booking["state"] == "PAYMENT_PENDING"
    await client.app[RECOVERY].settle(bid)
    booking = await (await client.get(f"/api/bookings/{bid}/")).json()
    assert booking["state"] == "CONFIRMED"


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


async def test_after_a_restart_no_hold_is_served_before_the_flight_is_restored(
    make_client: MakeClient, settings: Settings, redis_server: EmbeddedRedis
) -> None:
    # No sweeper: nothing restores the flight on its own. Redis restarts from its AOF, whose
    # last second held a confirm: the seat is gone from Redis, but the flight's marker (from
    # the earlier run) is back. A hold on that seat must not be served from this Redis.
    client = await make_client(settings.replace(sweep_interval=0))
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["1C"])
    assert (await client.post(f"/api/bookings/{booking['id']}/pay/")).status == 200
    redis_server.kill(signal.SIGKILL)
    redis_server.start()
    async with Redis.from_url(redis_server.url) as redis:
        assert await redis.exists(keys.marker(flight["id"])) == 1
        await redis.delete(keys.seat(flight["id"], "1C"))  # the confirm the AOF lost
    # As a client would: retried while the answer is a retryable 503 (the reconnect).
    for _ in range(10):
        resp = await client.post(
            "/api/bookings/", json={"flight_id": flight["id"], "user_id": "late", "seats": ["1C"]}
        )
        if resp.status != 503:
            break
        await asyncio.sleep(float(resp.headers["Retry-After"]) / 5)
    # The hold script refused the marker of the earlier run; the restore ran first.
    assert resp.status == 409, await resp.text()
    assert (await seat_map(client, flight["id"]))["1C"] == "booked"


async def test_reads_sql_can_answer_still_answer_while_redis_is_down(
    client: Client, redis_server: EmbeddedRedis
) -> None:
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["1D"])
    assert (await client.post(f"/api/bookings/{booking['id']}/pay/")).status == 200
    redis_server.kill(signal.SIGKILL)
    try:
        listed = await client.get("/api/flights/")
        assert listed.status == 200
        [shown] = await listed.json()
        assert shown["id"] == flight["id"] and shown["seats_available"] is None
        one = await client.get(f"/api/flights/{flight['id']}/")
        assert one.status == 200 and (await one.json())["seats_available"] is None
        paid = await client.get(f"/api/bookings/{booking['id']}/")
        assert paid.status == 200 and (await paid.json())["state"] == "CONFIRMED"
        # A hold needs Redis: retryable.
        refused = await client.post(
            "/api/bookings/", json={"flight_id": flight["id"], "user_id": "u", "seats": ["2A"]}
        )
        assert refused.status == 503 and refused.headers["Retry-After"]
    finally:
        redis_server.start()
    assert (await (await client.get("/api/flights/")).json())[0]["seats_available"] is not None
