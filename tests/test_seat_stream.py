"""The live seat map's stream, ``GET /api/flights/{id}/seats/events``: a snapshot, then every
seat change in order, replayable with Last-Event-ID, read once per process however many
clients listen; through the public surface, on a real Redis and real SQL."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from holdsvc import appkeys
from holdsvc.embedded_redis import EmbeddedRedis
from holdsvc.settings import Settings
from tests.helpers import eventually, hold, new_flight, seat_map
from tests.sql import query
from tests.sse import SSE

Client = TestClient[Any, Any]
MakeClient = Callable[[Settings], Awaitable[Client]]


@asynccontextmanager
async def listening(
    client: Client, flight_id: int, last_event_id: str | None = None
) -> AsyncIterator[SSE]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    resp = await client.get(f"/api/flights/{flight_id}/seats/events", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    stream = SSE(resp)
    try:
        yield stream
    finally:
        stream.close()


async def xread_clients(redis: Redis) -> int:
    """Connections of this Redis blocked reading a stream now (flag b: blocked)."""
    return sum(
        1 for c in await redis.client_list() if c.get("cmd") == "xread" and "b" in c["flags"]
    )


async def test_a_snapshot_then_every_change_of_the_lifecycle_in_order(client: Client) -> None:
    flight = await new_flight(client)
    fid = flight["id"]
    before = await hold(client, fid, ["2A"])
    async with listening(client, fid) as stream:
        snap = await stream.next()
        assert snap.event == "snapshot" and snap.id == snap.data["position"]
        seats = {s["seat"]: s["status"] for s in snap.data["seats"]}
        assert seats == await seat_map(client, fid) and seats["2A"] == "held"
        assert len(seats) == 10 and snap.data["flight_id"] == fid

        held = await hold(client, fid, ["1A", "1B"])
        a, b = await stream.seats(2)
        assert (a.seat, b.seat) == (("1A", "held"), ("1B", "held"))
        # An entry's seats before its last carry "<entry>.<i>"; the last the entry's id.
        assert a.id == f"{b.id}.0" and b.id is not None and b.id > (snap.id or "")
        resp = await client.post(f"/api/bookings/{held['id']}/pay/")
        assert resp.status == 200
        assert [e.seat for e in await stream.seats(2)] == [("1A", "booked"), ("1B", "booked")]
        resp = await client.post(f"/api/bookings/{held['id']}/cancel/")
        assert resp.status == 200
        assert [e.seat for e in await stream.seats(2)] == [
            ("1A", "available"), ("1B", "available")
        ]  # fmt: skip
        resp = await client.post(f"/api/bookings/{before['id']}/cancel/")
        assert [e.seat for e in await stream.seats(1)] == [("2A", "available")]
        # A refused hold changes nothing, so it says nothing: the next event is the next hold.
        await hold(client, fid, ["2B"])
        resp = await client.post(
            "/api/bookings/", json={"flight_id": fid, "user_id": "u2", "seats": ["2B", "2C"]}
        )
        assert resp.status == 409
        await hold(client, fid, ["2E"])
        assert [e.seat for e in await stream.seats(2)] == [("2B", "held"), ("2E", "held")]


async def test_an_expiry_says_available_once_sql_has_it_expired(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings.replace(hold_ttl=0.5))
    fid = (await new_flight(client))["id"]
    async with listening(client, fid) as stream:
        await stream.next()
        held = await hold(client, fid, ["1C"])
        assert (await stream.seats(1))[0].seat == ("1C", "held")
        [freed] = await stream.seats(1, timeout=5)
        assert freed.seat == ("1C", "available")
        # Appended by the path that records EXPIRED, after its commit: never before.
        [(state,)] = query(
            settings.db_target, "SELECT state FROM bookings WHERE id = ?", (held["id"],)
        )
        assert state == "EXPIRED"


async def test_a_best_available_hold_names_the_seats_it_chose(client: Client) -> None:
    fid = (await new_flight(client))["id"]
    async with listening(client, fid) as stream:
        await stream.next()
        resp = await client.post(
            "/api/bookings/", json={"flight_id": fid, "user_id": "u1", "seat_count": 3}
        )
        assert resp.status == 201
        chosen = (await resp.json())["seats"]
        assert [e.seat for e in await stream.seats(3)] == [(s, "held") for s in chosen]


async def test_reconnecting_with_last_event_id_replays_exactly_what_was_missed(
    client: Client,
) -> None:
    fid = (await new_flight(client))["id"]
    async with listening(client, fid) as stream:
        await stream.next()
        await hold(client, fid, ["1A"])
        [seen] = await stream.seats(1)
    # Missed while away: a 3-seat hold and a release.
    away = await hold(client, fid, ["1B", "1C", "1D"])
    await client.post(f"/api/bookings/{away['id']}/cancel/")
    async with listening(client, fid, seen.id) as stream:
        got = await stream.seats(6)
        assert [e.seat for e in got] == [
            ("1B", "held"), ("1C", "held"), ("1D", "held"),
            ("1B", "available"), ("1C", "available"), ("1D", "available"),
        ]  # fmt: skip
        middle = got[1].id  # "<entry>.1": 1B and 1C of that hold were received
    async with listening(client, fid, middle) as stream:
        assert [e.seat for e in await stream.seats(4)] == [
            ("1D", "held"), ("1B", "available"), ("1C", "available"), ("1D", "available")
        ]  # fmt: skip
    # Up to date: nothing comes but what happens next.
    async with listening(client, fid, got[-1].id) as stream:
        await hold(client, fid, ["2A"])
        assert [e.seat for e in await stream.seats(1)] == [("2A", "held")]


@pytest.mark.parametrize("last_event_id", ["garbage", "1-0", "12-x", "-1", "1-0.y", ""])
async def test_a_position_the_stream_does_not_have_gets_a_snapshot(
    client: Client, last_event_id: str
) -> None:
    fid = (await new_flight(client))["id"]
    await hold(client, fid, ["1A"])
    async with listening(client, fid, last_event_id) as stream:
        snap = await stream.next()
        assert snap.event == "snapshot"
        assert {s["seat"]: s["status"] for s in snap.data["seats"]}["1A"] == "held"


async def test_a_trimmed_position_gets_a_fresh_snapshot(
    make_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    client = await make_client(settings.replace(seat_stream_length=10))
    fid = (await new_flight(client, rows=30))["id"]
    async with listening(client, fid) as stream:
        await stream.next()
        first = await hold(client, fid, ["1A"])
        [seen] = await stream.seats(1)
    for row in range(2, 31):
        for letter in "ABCDE":
            await hold(client, fid, [f"{row}{letter}"])
    stream_key = f"{{f:{fid}}}:s"
    # Trimmed to about its length (whole nodes only): the first entry is gone.
    assert await redis.xlen(stream_key) < 150
    assert seen.id is not None and not await redis.xrange(stream_key, seen.id, seen.id)
    async with listening(client, fid, seen.id) as stream:
        snap = await stream.next()
        assert snap.event == "snapshot"
        statuses = {s["seat"]: s["status"] for s in snap.data["seats"]}
        assert statuses["1A"] == statuses["30E"] == "held" and statuses["1B"] == "available"
        assert list(statuses.values()).count("held") == 146, first


async def test_an_unknown_flight_is_a_json_404_before_any_stream(client: Client) -> None:
    for path in ("/api/flights/999999/seats/events", "/api/flights/abc/seats/events"):
        resp = await client.get(path)
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert await resp.json() == {"error": "Flight not found", "code": "not_found"}


async def test_many_listeners_share_one_read_and_leave_nothing_behind(
    make_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    client = await make_client(settings)
    feeds = client.app[appkeys.SEAT_FEEDS]
    fid = (await new_flight(client))["id"]
    streams = []
    for _ in range(40):
        resp = await client.get(f"/api/flights/{fid}/seats/events")
        assert resp.status == 200
        streams.append(SSE(resp))
    for s in streams:
        assert (await s.next()).event == "snapshot"
    await hold(client, fid, ["1A"])
    for s in streams:
        assert [e.seat for e in await s.seats(1)] == [("1A", "held")]

    # One blocking read of the flight's stream for the 40 of them.
    async def one_read() -> bool:
        return await xread_clients(redis) == 1

    await eventually(one_read, timeout=2, interval=0.02)
    for _ in range(5):
        assert await xread_clients(redis) <= 1
        await asyncio.sleep(0.05)
    assert feeds.listening() == 40
    for s in streams:
        s.close()

    async def gone() -> bool:
        return feeds.listening() == 0 and await xread_clients(redis) == 0

    # Each leaves within a read's wait (1 s); then the feed stops reading.
    await eventually(gone, timeout=5, interval=0.1)


async def test_an_idle_stream_gets_keepalive_comments(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings.replace(sse_keepalive=0.2))
    fid = (await new_flight(client))["id"]
    async with listening(client, fid) as stream:
        await stream.next()
        comment = await stream.next(timeout=2, comments=True)
        assert comment.comment == "keep-alive"


async def test_a_redis_that_lost_its_data_gives_listeners_a_fresh_restored_snapshot(
    client: Client, redis_server: EmbeddedRedis
) -> None:
    fid = (await new_flight(client))["id"]
    sold = await hold(client, fid, ["1A"])
    assert (await client.post(f"/api/bookings/{sold['id']}/pay/")).status == 200
    async with listening(client, fid) as stream:
        await stream.next()
        await hold(client, fid, ["2A"])  # lost with Redis's data: not in SQL, no money
        assert [e.seat for e in await stream.seats(1)] == [("2A", "held")]
        redis_server.kill(signal.SIGKILL)
        shutil.rmtree(redis_server.directory)
        await asyncio.sleep(0.3)
        redis_server.start()
        # Once the sweeper has restored the flight: the booked seat booked, the lost hold's
        # seat free.
        snap = await stream.next(timeout=10)
        assert snap.event == "snapshot"
        seats = {s["seat"]: s["status"] for s in snap.data["seats"]}
        assert seats["1A"] == "booked" and seats["2A"] == "available"
        await hold(client, fid, ["2B"])
        assert [e.seat for e in await stream.seats(1, timeout=5)] == [("2B", "held")]


async def test_the_stream_can_be_turned_off(
    make_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    client = await make_client(settings.replace(seat_stream_length=0))
    fid = (await new_flight(client))["id"]
    await hold(client, fid, ["1A"])
    assert await redis.exists(f"{{f:{fid}}}:s") == 0
