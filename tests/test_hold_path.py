"""The hold path: one Redis script, no SQL until the first money step or the hold's outcome."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from holdsvc import EmbeddedRedis, Settings
from holdsvc.appkeys import STORE
from holdsvc.seats import keys
from tests.helpers import Client, eventually, hold, new_flight, seat_map

MakeClient = Callable[[Settings], Awaitable[Client]]


async def test_holds_answer_while_the_sql_writer_is_stopped(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings.replace(hold_ttl=1.0, sweep_interval=0.2))
    flight = await new_flight(client)
    store = client.app[STORE]
    assert store.writer_pid is not None
    os.kill(store.writer_pid, signal.SIGSTOP)
    try:
        held = [await hold(client, flight["id"], [seat]) for seat in ("1A", "1B", "1C")]
        for booking in held:
            resp = await client.get(f"/api/bookings/{booking['id']}/")
            assert resp.status == 200
            assert await resp.json() == booking
        assert (await seat_map(client, flight["id"]))["1A"] == "held"
    finally:
        os.kill(store.writer_pid, signal.SIGCONT)
    cancelled = await client.post(f"/api/bookings/{held[0]['id']}/cancel/")
    assert cancelled.status == 200
    assert (await cancelled.json())["state"] == "CANCELLED"

    # Each hold ends in SQL with its outcome: the cancel, and the two expiries.
    async def ended() -> bool:
        states: dict[str, str] = await store.states_of([b["id"] for b in held])
        return states == {
            held[0]["id"]: "CANCELLED",
            held[1]["id"]: "EXPIRED",
            held[2]["id"]: "EXPIRED",
        }

    await eventually(ended, timeout=10)
    for booking in held:
        history = await store.transitions_of(booking["id"])
        assert history[:1] == [("INITIATED", "SEAT_HELD", "hold")]
        assert len(history) == 2
        got = await (await client.get(f"/api/bookings/{booking['id']}/")).json()
        # The SQL row was built from the hold's record: same seats, amount, creation time.
        assert {k: got[k] for k in ("seats", "amount", "user_id", "created_at")} == {
            k: booking[k] for k in ("seats", "amount", "user_id", "created_at")
        }


async def test_a_hold_sql_never_saw_expires_from_its_record(
    make_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    client = await make_client(settings.replace(hold_ttl=0.5, sweep_interval=0.2))
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["2A", "2B"], user="alice")
    store = client.app[STORE]
    assert await store.get_booking(booking["id"]) is None
    record = keys.record(flight["id"], booking["id"])
    assert await redis.hget(record, "u") == b"alice"

    async def expired() -> bool:
        states: dict[str, str] = await store.states_of([booking["id"]])
        return states.get(booking["id"]) == "EXPIRED"

    await eventually(expired, timeout=10)
    row = await store.get_booking(booking["id"])
    assert row is not None and row.seats == ["2A", "2B"] and row.user_id == "alice"
    assert row.amount == booking["amount"] and row.payment is None
    # Its record goes once the outcome is committed; the seats are free again.
    await eventually(lambda: _gone(redis, record))
    assert (await seat_map(client, flight["id"]))["2A"] == "available"


async def _gone(redis: Redis, key: str) -> bool:
    return await redis.exists(key) == 0


async def test_holds_lost_with_redis_data_are_gone_and_took_no_money(
    client: Client, redis: Redis
) -> None:
    flight = await new_flight(client)
    paid = await hold(client, flight["id"], ["1A"])
    assert (await client.post(f"/api/bookings/{paid['id']}/pay/")).status == 200
    unpaid = await hold(client, flight["id"], ["1B", "1C"])
    await redis.flushall()

    resp = await client.get(f"/api/bookings/{unpaid['id']}/")
    assert resp.status == 404
    assert await resp.json() == {"error": "Booking not found"}
    # The confirmed seat is restored from SQL before any hold is served; the lost hold's
    # seats can be held again.
    again = await hold(client, flight["id"], ["1B", "1C"])
    assert again["id"] != unpaid["id"]
    taken = await client.post(
        "/api/bookings/", json={"flight_id": flight["id"], "user_id": "u2", "seats": ["1A"]}
    )
    assert taken.status == 409
    store = client.app[STORE]
    assert await store.get_booking(unpaid["id"]) is None
    assert (await store.count_by_state()).get("CONFIRMED") == 1


async def _keyed_hold(client: Client, key: str, body: str) -> tuple[int, dict[str, Any], str]:
    resp = await client.post(
        "/api/bookings/",
        data=body,
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed", "")


async def test_keyed_hold_replays_first_answer_and_refuses_another_body(client: Client) -> None:
    flight = await new_flight(client)
    fid = flight["id"]
    body = f'{{"flight_id": {fid}, "user_id": "u1", "seats": ["1A", "1B"]}}'
    status, first, replayed = await _keyed_hold(client, "k-1", body)
    assert (status, replayed) == (201, "")
    # Equal JSON, other key order and whitespace: the same request.
    same = f'{{"seats":["1A","1B"],  "user_id":"u1","flight_id":{fid}}}'
    status, again, replayed = await _keyed_hold(client, "k-1", same)
    assert (status, again, replayed) == (201, first, "true")
    # After a pay the replay is still the first answer.
    assert (await client.post(f"/api/bookings/{first['id']}/pay/")).status == 200
    status, again, _ = await _keyed_hold(client, "k-1", body)
    assert (status, again) == (201, first)
    other = f'{{"flight_id": {fid}, "user_id": "u1", "seats": ["2A"]}}'
    status, error, _ = await _keyed_hold(client, "k-1", other)
    assert status == 422 and "different request" in error["error"]
    assert (await seat_map(client, fid))["2A"] == "available"


async def test_keyed_refusal_replays_too(client: Client) -> None:
    flight = await new_flight(client)
    await hold(client, flight["id"], ["1A"])
    body = f'{{"flight_id": {flight["id"]}, "user_id": "u2", "seats": ["1A", "1B"]}}'
    status, first, _ = await _keyed_hold(client, "k-2", body)
    assert status == 409 and first["seats"] == ["1A"]
    status, again, replayed = await _keyed_hold(client, "k-2", body)
    assert (status, again, replayed) == (409, first, "true")
    best = f'{{"flight_id": {flight["id"]}, "user_id": "u3", "seat_count": 2}}'
    status, held, _ = await _keyed_hold(client, "k-3", best)
    assert status == 201 and len(held["seats"]) == 2
    status, again, replayed = await _keyed_hold(client, "k-3", best)
    assert (status, again, replayed) == (201, held, "true")


async def test_keyed_hold_replays_across_a_restart(
    make_client: MakeClient, settings: Settings, redis_server: EmbeddedRedis
) -> None:
    first_app = await make_client(settings)
    flight = await new_flight(first_app)
    body = f'{{"flight_id": {flight["id"]}, "user_id": "u1", "seats": ["2E"]}}'
    status, first, _ = await _keyed_hold(first_app, "k-restart", body)
    assert status == 201
    await first_app.close()
    second_app = await make_client(settings)
    status, again, replayed = await _keyed_hold(second_app, "k-restart", body)
    assert (status, again, replayed) == (201, first, "true")
    await asyncio.sleep(0)
