"""Unpaid holds end EXPIRED in SQL, exactly once, with their seats free again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from holdsvc.appkeys import STORE
from holdsvc.settings import Settings
from tests.helpers import Client, eventually, hold, new_flight, seat_map

MakeClient = Callable[[Settings], Awaitable[Client]]


async def state_of(client: Client, booking_id: str) -> str:
    body = await (await client.get(f"/api/bookings/{booking_id}/")).json()
    return str(body["state"])


def unwatched(settings: Settings) -> Settings:
    """Holds of 0.3 s that nothing expires on its own: no persister, no sweeper."""
    return settings.replace(hold_ttl=0.3, persister_enabled=False, sweep_interval=0)


async def seat_lapses(client: Client, flight_id: int, seat: str) -> None:
    async def free() -> bool:
        return (await seat_map(client, flight_id))[seat] == "available"

    await eventually(free, timeout=5)


async def test_hold_expires_through_the_keyspace_event(
    make_client: MakeClient, settings: Settings, redis: Redis
) -> None:
    # No sweeper: the event alone must do it.
    client = await make_client(settings.replace(hold_ttl=1.0, sweep_interval=0))
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["1A", "1B"])
    assert (await seat_map(client, flight["id"]))["1A"] == "held"

    async def expired() -> bool:
        # Polled in SQL, not by GET: a read of a lapsed hold would record its expiry itself.
        states: dict[str, str] = await client.app[STORE].states_of([booking["id"]])
        return states.get(booking["id"]) == "EXPIRED"

    await eventually(expired, timeout=5)
    history = await client.app[STORE].transitions_of(booking["id"])
    assert history == [
        ("INITIATED", "SEAT_HELD", "hold"),
        ("SEAT_HELD", "EXPIRED", "expiry-event"),
    ]
    seats = await seat_map(client, flight["id"])
    assert seats["1A"] == seats["1B"] == "available"
    assert await redis.zcard(f"{{f:{flight['id']}}}:d") == 0
    assert await client.app[STORE].live_seats(flight["id"]) == []

    # The seats can be held again at once, and paying the expired booking is refused.
    again = await hold(client, flight["id"], ["1A", "1B"], user="u2")
    assert again["state"] == "SEAT_HELD"
    resp = await client.post(f"/api/bookings/{booking['id']}/pay/")
    assert resp.status == 409
    assert await resp.json() == {
        "error": "Invalid state transition from EXPIRED to PAYMENT_PENDING",
        "code": "invalid_transition",
        "from": "EXPIRED",
        "to": "PAYMENT_PENDING",
    }


async def test_many_holds_expire_exactly_once(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(settings.replace(hold_ttl=1.0))
    flight = await new_flight(client, rows=20, seat_letters="ABCDEF")
    bookings = [await hold(client, flight["id"], [f"{r}{c}"]) for r in range(1, 21) for c in "AB"]

    async def all_expired() -> bool:
        states = [await state_of(client, b["id"]) for b in bookings]
        return all(s == "EXPIRED" for s in states)

    await eventually(all_expired, timeout=8, interval=0.2)
    store = client.app[STORE]
    for b in bookings:
        history = await store.transitions_of(b["id"])
        assert [h[1] for h in history].count("EXPIRED") == 1


async def test_pay_after_lapse_records_expiry_when_nothing_else_did(
    make_client: MakeClient, settings: Settings
) -> None:
    # Nothing hears the expiry; the pay that finds the hold gone records it, and answers as
    # for any expired booking.
    client = await make_client(unwatched(settings))
    flight = await new_flight(client)
    booking = await hold(client, flight["id"], ["1A"])
    await seat_lapses(client, flight["id"], "1A")
    assert await client.app[STORE].get_booking(booking["id"]) is None  # nothing recorded it
    resp = await client.post(f"/api/bookings/{booking['id']}/pay/")
    assert resp.status == 409
    assert await resp.json() == {
        "error": "Invalid state transition from EXPIRED to PAYMENT_PENDING",
        "code": "invalid_transition",
        "from": "EXPIRED",
        "to": "PAYMENT_PENDING",
    }
    assert await state_of(client, booking["id"]) == "EXPIRED"
    body = await (await client.get(f"/api/bookings/{booking['id']}/")).json()
    assert body["payment"] is None


async def test_a_lapsed_hold_is_recorded_when_read_and_its_seat_goes_to_the_next(
    make_client: MakeClient, settings: Settings
) -> None:
    # Nothing watching: A's hold lapses in Redis and nothing records it. B holds the same
    # seat; reading A records its expiry (from its record); B's pay writes B into SQL, where
    # A no longer owns the seat.
    client = await make_client(unwatched(settings))
    flight = await new_flight(client)
    first = await hold(client, flight["id"], ["1A"])
    await seat_lapses(client, flight["id"], "1A")
    second = await hold(client, flight["id"], ["1A"], user="u2")
    assert await state_of(client, first["id"]) == "EXPIRED"
    assert await state_of(client, second["id"]) == "SEAT_HELD"
    assert (await client.post(f"/api/bookings/{second['id']}/pay/")).status == 200
    live = await client.app[STORE].live_seats(flight["id"])
    assert live == [("1A", second["id"], "CONFIRMED")]
