"""Every refused move is answered 409 {"error": "Invalid state transition from X to Y"} and
changes nothing.

Bookings are driven through the HTTP API into each state a client can observe at rest, then
every action the table in holdsvc/states.py refuses from that state is tried. The answer must be
exactly the 409 body, and the booking's GET body (byte for byte) and the flight's seat map must
be what they were before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from holdsvc.domain.states import TRANSITIONS, State
from holdsvc.settings import Settings
from tests.helpers import Client, eventually, hold, new_flight, seat_map

MakeClient = Callable[[Settings], Awaitable[Client]]

SEATS = ["1A", "1B"]
VISA = {"payment_method": "pm_card_visa"}
DECLINED = {"payment_method": "pm_card_chargeDeclined"}

# Each action and the state it asks the booking to enter.
ACTIONS: dict[str, State] = {
    "pay": State.PAYMENT_PENDING,
    "cancel": State.CANCELLED,
    "refund": State.REFUNDED,
}
# The body each action is sent with: one the service would accept if the move were allowed.
ACTION_BODIES: dict[str, dict[str, str] | None] = {"pay": VISA, "cancel": None, "refund": None}


@dataclass(frozen=True, slots=True)
class Scenario:
    """How to reach a state through the API, and what the booking looks like there."""

    state: State
    steps: tuple[tuple[str, dict[str, str] | None, int], ...]
    payment: str | None
    seat_status: str
    expire: bool = False


SCENARIOS: dict[str, Scenario] = {
    "SEAT_HELD": Scenario(State.SEAT_HELD, (), None, "held"),
    "CONFIRMED": Scenario(State.CONFIRMED, (("pay", VISA, 200),), "captured", "booked"),
    "CANCELLED_FROM_HELD": Scenario(State.CANCELLED, (("cancel", None, 200),), None, "available"),
    "CANCELLED_FROM_CONFIRMED": Scenario(
        State.CANCELLED, (("pay", VISA, 200), ("cancel", None, 200)), "captured", "available"
    ),
    "CANCELLED_AFTER_DECLINE": Scenario(
        State.CANCELLED, (("pay", DECLINED, 402),), "failed", "available"
    ),
    "REFUNDED": Scenario(
        State.REFUNDED,
        (("pay", VISA, 200), ("cancel", None, 200), ("refund", None, 200)),
        "refunded",
        "available",
    ),
    "EXPIRED": Scenario(State.EXPIRED, (), None, "available", expire=True),
}

# Every (scenario, action) whose move the table refuses, written out to be read and reviewed;
# test_refused_cases_are_what_the_table_refuses keeps it equal to the table.
REFUSED: list[tuple[str, str]] = [
    ("SEAT_HELD", "refund"),
    ("CONFIRMED", "pay"),
    ("CONFIRMED", "refund"),
    ("CANCELLED_FROM_HELD", "pay"),
    ("CANCELLED_FROM_HELD", "cancel"),
    ("CANCELLED_FROM_CONFIRMED", "pay"),
    ("CANCELLED_FROM_CONFIRMED", "cancel"),
    ("CANCELLED_AFTER_DECLINE", "pay"),
    ("CANCELLED_AFTER_DECLINE", "cancel"),
    ("REFUNDED", "pay"),
    ("REFUNDED", "cancel"),
    ("REFUNDED", "refund"),
    ("EXPIRED", "pay"),
    ("EXPIRED", "cancel"),
    ("EXPIRED", "refund"),
]


def test_transition_table_is_the_documented_machine() -> None:
    assert TRANSITIONS == {
        State.INITIATED: {State.SEAT_HELD},
        State.SEAT_HELD: {State.PAYMENT_PENDING, State.EXPIRED, State.CANCELLED},
        State.PAYMENT_PENDING: {State.CONFIRMED, State.CANCELLED, State.EXPIRED},
        State.CONFIRMED: {State.CANCELLED},
        State.CANCELLED: {State.REFUNDED},
        State.REFUNDED: set(),
        State.EXPIRED: set(),
    }
    assert set(TRANSITIONS) == set(State)


def test_refused_cases_are_what_the_table_refuses() -> None:
    derived = {
        (name, action)
        for name, scenario in SCENARIOS.items()
        for action, target in ACTIONS.items()
        if target not in TRANSITIONS[scenario.state]
    }
    assert sorted(REFUSED) == sorted(derived)
    assert len(set(REFUSED)) == len(REFUSED)
    # Every state a booking can rest in is driven into by some scenario.
    resting = set(State) - {State.INITIATED, State.PAYMENT_PENDING}
    assert {s.state for s in SCENARIOS.values()} == resting


async def act(
    client: Client, booking_id: str, action: str, body: dict[str, str] | None
) -> tuple[int, Any]:
    path = f"/api/bookings/{booking_id}/{action}/"
    resp = await (client.post(path, json=body) if body is not None else client.post(path))
    assert resp.content_type == "application/json", await resp.text()
    return resp.status, await resp.json()


async def booking_bytes(client: Client, booking_id: str) -> bytes:
    resp = await client.get(f"/api/bookings/{booking_id}/")
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def reach(make_client: MakeClient, settings: Settings, name: str) -> tuple[Client, int, str]:
    """A new client, flight and booking on SEATS, driven into scenario ``name``'s state."""
    scenario = SCENARIOS[name]
    client = await make_client(settings.replace(hold_ttl=0.5) if scenario.expire else settings)
    flight_id: int = (await new_flight(client))["id"]
    booking_id: str = (await hold(client, flight_id, SEATS))["id"]
    for action, body, status in scenario.steps:
        got_status, got = await act(client, booking_id, action, body)
        assert got_status == status, got
    if scenario.expire:

        async def expired() -> bool:
            resp = await client.get(f"/api/bookings/{booking_id}/")
            state: str = (await resp.json())["state"]
            return state == State.EXPIRED.value

        await eventually(expired, timeout=5.0)

    resp = await client.get(f"/api/bookings/{booking_id}/")
    booking = await resp.json()
    assert booking["state"] == scenario.state.value, booking
    payment = booking["payment"]
    assert (payment["status"] if payment else None) == scenario.payment, booking
    seats = await seat_map(client, flight_id)
    assert [seats[s] for s in SEATS] == [scenario.seat_status] * len(SEATS), seats
    return client, flight_id, booking_id


@pytest.mark.parametrize(("start", "action"), REFUSED)
async def test_refused_move_is_409_and_changes_nothing(
    make_client: MakeClient, settings: Settings, start: str, action: str
) -> None:
    client, flight_id, booking_id = await reach(make_client, settings, start)
    booking_before = await booking_bytes(client, booking_id)
    seats_before = await seat_map(client, flight_id)

    status, body = await act(client, booking_id, action, ACTION_BODIES[action])

    current, target = SCENARIOS[start].state, ACTIONS[action]
    assert status == 409, body
    assert body == {
        "error": f"Invalid state transition from {current} to {target}",
        "code": "invalid_transition",
        "from": current,
        "to": target,
    }
    assert await booking_bytes(client, booking_id) == booking_before
    assert await seat_map(client, flight_id) == seats_before


@pytest.mark.parametrize(
    ("start", "payment_status"),
    [("CANCELLED_FROM_HELD", None), ("CANCELLED_AFTER_DECLINE", "failed")],
)
async def test_refund_without_a_captured_payment_is_409_and_changes_nothing(
    make_client: MakeClient, settings: Settings, start: str, payment_status: str | None
) -> None:
    """CANCELLED -> REFUNDED is a legal move, so the refusal names the missing payment."""
    assert State.REFUNDED in TRANSITIONS[SCENARIOS[start].state]
    client, flight_id, booking_id = await reach(make_client, settings, start)
    booking_before = await booking_bytes(client, booking_id)
    seats_before = await seat_map(client, flight_id)

    status, body = await act(client, booking_id, "refund", None)

    assert status == 409, body
    assert body == {
        "error": "No captured payment to refund",
        "code": "nothing_to_refund",
        "payment_status": payment_status,
    }
    assert await booking_bytes(client, booking_id) == booking_before
    assert await seat_map(client, flight_id) == seats_before


async def test_refund_of_a_cancelled_confirmed_booking_is_allowed(
    make_client: MakeClient, settings: Settings
) -> None:
    """The one move out of CANCELLED the refusals above leave: it must not be refused."""
    client, flight_id, booking_id = await reach(make_client, settings, "CANCELLED_FROM_CONFIRMED")
    seats_before = await seat_map(client, flight_id)

    status, body = await act(client, booking_id, "refund", None)

    assert status == 200, body
    assert body["state"] == "REFUNDED" and body["payment"]["status"] == "refunded"
    assert await seat_map(client, flight_id) == seats_before
