"""What an integrator's checkout needs beyond the seed lifecycle: Stripe's test cards and
their decline codes, a cancel that says a refund is due or refunds in the same call, no holds
on a departed flight, and a stable code on every error; through the HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from holdsvc.settings import Settings
from tests.helpers import Client, eventually, hold, new_flight, seat_map
from tests.sql import query

MakeClient = Callable[[Settings], Awaitable[Client]]


@pytest.mark.parametrize(
    ("method", "decline"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ],
)
async def test_a_declined_card_says_why_and_frees_the_seats(
    client: Client, method: str, decline: str
) -> None:
    fid = (await new_flight(client))["id"]
    held = await hold(client, fid, ["1A"])
    resp = await client.post(f"/api/bookings/{held['id']}/pay/", json={"payment_method": method})
    assert resp.status == 402
    body = await resp.json()
    assert body["code"] == "payment_declined" and body["decline_code"] == decline
    assert body["state"] == "CANCELLED" and body["message"] == "Payment failed"
    assert decline in body["error"]
    assert (await seat_map(client, fid))["1A"] == "available"
    # A replay of the keyed pay says the same.
    again = await hold(client, fid, ["1B"])
    path = f"/api/bookings/{again['id']}/pay/"
    first = await client.post(
        path, json={"payment_method": method}, headers={"Idempotency-Key": "d1"}
    )
    replay = await client.post(
        path, json={"payment_method": method}, headers={"Idempotency-Key": "d1"}
    )
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert await replay.json() == await first.json()


@pytest.mark.parametrize("method", ["pm_card_visa", "pm_card_mastercard"])
async def test_the_test_cards_that_succeed(client: Client, method: str) -> None:
    fid = (await new_flight(client))["id"]
    held = await hold(client, fid, ["1A"])
    resp = await client.post(f"/api/bookings/{held['id']}/pay/", json={"payment_method": method})
    assert resp.status == 200
    assert (await resp.json())["state"] == "CONFIRMED"


async def test_an_unknown_payment_method_is_refused_before_anything_moves(
    client: Client, settings: Settings
) -> None:
    fid = (await new_flight(client))["id"]
    held = await hold(client, fid, ["1A"])
    resp = await client.post(
        f"/api/bookings/{held['id']}/pay/", json={"payment_method": "pm_bogus"}
    )
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == "unknown_payment_method" and "pm_card_visa" in body["known"]
    assert body["errors"][0]["field"] == "$.payment_method"
    after = await (await client.get(f"/api/bookings/{held['id']}/")).json()
    assert after["state"] == "SEAT_HELD" and after["payment"] is None
    assert (await seat_map(client, fid))["1A"] == "held"


async def test_cancelling_a_paid_booking_says_its_refund_is_due(client: Client) -> None:
    fid = (await new_flight(client))["id"]
    held = await hold(client, fid, ["1A"])
    assert (await client.post(f"/api/bookings/{held['id']}/pay/")).status == 200
    resp = await client.post(f"/api/bookings/{held['id']}/cancel/")
    body = await resp.json()
    assert resp.status == 200 and body["state"] == "CANCELLED" and body["refund"] == "due"
    refunded = await (await client.post(f"/api/bookings/{held['id']}/refund/")).json()
    assert refunded["state"] == "REFUNDED" and "refund" not in refunded
    # A hold that took no money has nothing due.
    other = await hold(client, fid, ["1B"])
    body = await (await client.post(f"/api/bookings/{other['id']}/cancel/")).json()
    assert body["state"] == "CANCELLED" and "refund" not in body


async def test_cancel_with_refund_ends_refunded_in_one_idempotent_call(
    client: Client, settings: Settings
) -> None:
    fid = (await new_flight(client))["id"]
    held = await hold(client, fid, ["1A", "1B"])
    assert (await client.post(f"/api/bookings/{held['id']}/pay/")).status == 200
    path = f"/api/bookings/{held['id']}/cancel/"
    key = {"Idempotency-Key": "cancel-refund-1"}
    first = await client.post(path, json={"refund": True}, headers=key)
    body = await first.json()
    assert first.status == 200, body
    assert body["state"] == "REFUNDED" and body["payment"]["status"] == "refunded"
    replay = await client.post(path, json={"refund": True}, headers=key)
    assert replay.headers["Idempotent-Replayed"] == "true" and await replay.json() == body
    assert (await seat_map(client, fid))["1A"] == "available"
    # Refunded once: a second cancel-and-refund with another key is refused.
    again = await client.post(path, json={"refund": True}, headers={"Idempotency-Key": "k2"})
    assert again.status == 409
    assert (await again.json())["code"] == "invalid_transition"
    # A hold cancelled with refund asked for, but no money taken, is just cancelled.
    other = await hold(client, fid, ["2A"])
    body = await (await client.post(f"/api/bookings/{other['id']}/cancel/",
                                    json={"refund": True})).json()  # fmt: skip
    assert body["state"] == "CANCELLED"


async def test_a_departed_flight_takes_no_holds(client: Client) -> None:
    fid = (await new_flight(client, departure_time="2020-01-01T09:30:00Z"))["id"]
    resp = await client.post(
        "/api/bookings/", json={"flight_id": fid, "user_id": "u", "seats": ["1A"]}
    )
    assert resp.status == 409
    body = await resp.json()
    assert body["code"] == "flight_departed" and body["departure_time"] == "2020-01-01T09:30:00Z"
    best = await client.post(
        "/api/bookings/", json={"flight_id": fid, "user_id": "u", "seat_count": 1}
    )
    assert best.status == 409
    assert set((await seat_map(client, fid)).values()) == {"available"}


async def test_every_refusal_carries_a_stable_code(client: Client, settings: Settings) -> None:
    fid = (await new_flight(client))["id"]
    held = await hold(client, fid, ["1A"])
    cases = [
        (
            client.post("/api/bookings/", json={"flight_id": fid, "user_id": "u", "seats": ["1A"]}),
            409,
            "seats_not_available",
        ),
        (client.post(f"/api/bookings/{held['id']}/refund/"), 409, "invalid_transition"),
        (client.get("/api/bookings/nope/"), 404, "not_found"),
        (client.get("/api/flights/999999/"), 404, "not_found"),
        (client.post("/api/flights/", json={}), 400, "validation_error"),
        (
            client.post("/api/flights/", data=b"{", headers={"Content-Type": "application/json"}),
            400,
            "validation_error",
        ),
        (
            client.post("/api/flights/", data=b"{}", headers={"Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
        (client.delete("/api/flights/"), 405, "method_not_allowed"),
        (client.get("/api/nowhere"), 404, "not_found"),
    ]
    for request, status, code in cases:
        resp = await request
        body = await resp.json()
        assert (resp.status, body["code"]) == (status, code), body
        assert isinstance(body["error"], str) and body["error"]
    transition = await (await client.post(f"/api/bookings/{held['id']}/refund/")).json()
    assert transition["from"] == "SEAT_HELD" and transition["to"] == "REFUNDED"
    assert transition["error"] == "Invalid state transition from SEAT_HELD to REFUNDED"
    # None of the refusals wrote a booking (the one hold lives in Redis only).
    assert query(settings.db_target, "SELECT count(*) FROM bookings") == [(0,)]


async def extend(client: Client, booking_id: str, seconds: int | None = None) -> Any:
    body = {} if seconds is None else {"seconds": seconds}
    resp = await client.post(f"/api/bookings/{booking_id}/extend/", json=body)
    return resp.status, await resp.json()


async def test_extending_a_hold_moves_its_seats_index_and_record_together(
    make_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    client = await make_client(settings.replace(hold_ttl=60))
    fid = (await new_flight(client))["id"]
    held = await hold(client, fid, ["1A", "1B"])
    assert 55 <= held["expires_in_seconds"] <= 60
    before = datetime.fromisoformat(held["hold_expires_at"].replace("Z", "+00:00"))
    status, body = await extend(client, held["id"], 120)
    assert status == 200, body
    after = datetime.fromisoformat(body["hold_expires_at"].replace("Z", "+00:00"))
    assert (after - before).total_seconds() == 120
    assert 175 <= body["expires_in_seconds"] <= 180 and body["state"] == "SEAT_HELD"
    # The seats' TTL, the deadline index and the record all say the new deadline.
    deadline_ms = int(after.timestamp() * 1000)
    for seat in ("1A", "1B"):
        assert await redis.pexpiretime(f"{{f:{fid}}}:{seat}") == deadline_ms
    assert await redis.zscore(f"{{f:{fid}}}:d", held["id"]) == deadline_ms
    got = await (await client.get(f"/api/bookings/{held['id']}/")).json()
    assert got["hold_expires_at"] == body["hold_expires_at"]
    # No body: the hold time again.
    status, again = await extend(client, held["id"])
    assert status == 200
    assert 235 <= again["expires_in_seconds"] <= 240
    # Paid, it is no longer a hold to extend; the extension count left with the record.
    assert (await client.post(f"/api/bookings/{held['id']}/pay/")).status == 200
    status, body = await extend(client, held["id"])
    assert status == 409 and body["code"] == "invalid_transition"
    assert body["from"] == "CONFIRMED" and body["to"] == "SEAT_HELD"
    assert await redis.hget(f"{{f:{fid}}}:b", f"x:{held['id']}") is None


async def test_an_extension_past_either_cap_is_refused_whole(
    make_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    client = await make_client(settings.replace(hold_ttl=60, max_hold=200, max_extensions=2))
    fid = (await new_flight(client))["id"]
    held = await hold(client, fid, ["1A"])
    created = datetime.fromisoformat(held["created_at"].replace("Z", "+00:00"))
    status, body = await extend(client, held["id"], 200)  # would end at about 260 s
    assert status == 409 and body["code"] == "hold_extension_limit"
    latest = datetime.fromisoformat(body["max_hold_expires_at"].replace("Z", "+00:00"))
    assert abs((latest - created).total_seconds() - 200) < 0.01
    got = await (await client.get(f"/api/bookings/{held['id']}/")).json()
    assert got["hold_expires_at"] == held["hold_expires_at"]  # not shortened to fit: unchanged
    assert (await extend(client, held["id"], 30))[0] == 200
    assert (await extend(client, held["id"], 30))[0] == 200
    status, body = await extend(client, held["id"], 10)
    assert status == 409 and body["code"] == "hold_extension_limit"
    assert body["max_extensions"] == 2
    # Released: the record and its count are gone, and so is the hold to extend.
    assert (await client.post(f"/api/bookings/{held['id']}/cancel/")).status == 200
    assert await redis.hget(f"{{f:{fid}}}:b", f"x:{held['id']}") is None
    status, body = await extend(client, held["id"])
    assert status == 409 and body["from"] == "CANCELLED"


async def test_an_extended_hold_lapses_at_its_new_deadline_not_its_first(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings.replace(hold_ttl=1.0))
    fid = (await new_flight(client))["id"]
    held = await hold(client, fid, ["1A"])
    assert (await extend(client, held["id"], 2))[0] == 200
    await asyncio.sleep(1.6)  # past the first deadline, the sweeper has run since
    got = await (await client.get(f"/api/bookings/{held['id']}/")).json()
    assert got["state"] == "SEAT_HELD" and (await seat_map(client, fid))["1A"] == "held"

    async def expired() -> bool:
        body = await (await client.get(f"/api/bookings/{held['id']}/")).json()
        return bool(body["state"] == "EXPIRED")

    await eventually(expired, timeout=5, interval=0.1)
    assert (await seat_map(client, fid))["1A"] == "available"
    assert (await extend(client, held["id"]))[1]["from"] == "EXPIRED"


async def test_hold_attempts_over_the_rate_answer_429_across_processes(
    make_client: MakeClient, settings: Settings
) -> None:
    limited = settings.replace(hold_rate=4)
    one, two = await make_client(limited), await make_client(limited)
    fid = (await new_flight(one))["id"]
    statuses = []
    for n in range(8):  # both services share the client's bucket in Redis
        client = one if n % 2 else two
        resp = await client.post(
            "/api/bookings/",
            json={"flight_id": fid, "user_id": "u", "seats": [f"{n % 2 + 1}{'ABCDE'[n // 2]}"]},
        )
        statuses.append(resp.status)
        if resp.status == 429:
            body = await resp.json()
            assert body["code"] == "rate_limited" and body["limit_per_s"] == 4
            assert int(resp.headers["Retry-After"]) >= 1
    assert statuses[:4] == [201] * 4 and set(statuses[4:]) == {429}, statuses
    # A token comes back every quarter second.
    await asyncio.sleep(0.3)
    resp = await one.post(
        "/api/bookings/", json={"flight_id": fid, "user_id": "u", "seat_count": 1}
    )
    assert resp.status == 201


async def test_one_customer_holds_at_most_the_limit_and_the_count_stays_exact(
    make_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    assert Settings().max_seats_per_user == 10  # the default
    client = await make_client(settings.replace(max_seats_per_user=10, hold_ttl=1.0))
    fid = (await new_flight(client, rows=5))["id"]
    # Another customer's seats never count against this one.
    await hold(client, fid, ["5A", "5B", "5C"], user="other")

    async def attempt(seats: list[str] | None = None, count: int | None = None) -> Any:
        body: dict[str, Any] = {"flight_id": fid, "user_id": "alice"}
        body.update({"seats": seats} if seats else {"seat_count": count})
        resp = await client.post("/api/bookings/", json=body)
        return resp.status, await resp.json()

    status, paid = await attempt(["1A", "1B", "1C", "1D"])
    assert status == 201
    assert (await client.post(f"/api/bookings/{paid['id']}/pay/")).status == 200
    status, released = await attempt(["2A", "2B"])
    status, lapsing = await attempt(count=3)
    assert status == 201
    status, refused = await attempt(["3A", "3B"])  # 4 booked + 2 + 3 held = 9, +2 > 10
    assert status == 409 and refused["code"] == "customer_seat_limit"
    assert refused["limit"] == 10 and refused["held"] == 9
    assert (await attempt(count=2))[1]["code"] == "customer_seat_limit"
    assert (await seat_map(client, fid))["3A"] == "available"  # refused whole
    # Released: its 2 seats no longer count.
    assert (await client.post(f"/api/bookings/{released['id']}/cancel/")).status == 200
    assert (await attempt(["3A"]))[0] == 201  # 4 + 3 + 1 = 8
    # The lapsed holds' seats come off once their expiry is recorded.

    async def lapsed() -> bool:
        body = await (await client.get(f"/api/bookings/{lapsing['id']}/")).json()
        return bool(body["state"] == "EXPIRED")

    await eventually(lapsed, timeout=5, interval=0.1)
    await eventually(lambda: _count(redis, fid, "alice", 4), timeout=3, interval=0.05)
    # The booked seats count until the booking is cancelled.
    assert (await attempt(count=7))[1]["code"] == "customer_seat_limit"
    status, six = await attempt(count=6)
    assert status == 201

    async def booked_and(extra: int) -> bool:
        # The 6-seat hold counts while it is held (its TTL is 1 s: it may lapse meanwhile).
        state = (await (await client.get(f"/api/bookings/{six['id']}/")).json())["state"]
        held = 6 if state == "SEAT_HELD" else 0
        return await _count(redis, fid, "alice", held + extra)

    assert (await client.post(f"/api/bookings/{paid['id']}/cancel/")).status == 200
    await eventually(lambda: booked_and(0), timeout=3, interval=0.05)
    # A declined payment frees its seats and their count.
    status, declined = await attempt(["4A"])
    assert status == 201
    resp = await client.post(
        f"/api/bookings/{declined['id']}/pay/", json={"payment_method": "pm_card_chargeDeclined"}
    )
    assert resp.status == 402
    await eventually(lambda: booked_and(0), timeout=3, interval=0.05)
    # Every hold ended: nothing counts.
    await eventually(lambda: _count(redis, fid, "alice", 0), timeout=5, interval=0.1)


async def _count(redis: Redis, flight_id: int, who: str, want: int) -> bool:
    value = await redis.hget(f"{{f:{flight_id}}}:u", who)
    return int(value or 0) == want
