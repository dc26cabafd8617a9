"""Failure scenario 14: SQL write contention. Two service processes (each with its persister
and sweeper) and a standalone persister write one SQLite file at once, through thousands of
mixed transitions: no "database is locked" reaches anyone, no 5xx, every move applied once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from holdsvc.embedded_redis import EmbeddedRedis
from tests.helpers import ServiceProcess, eventually

BOOKINGS = 3400  # 10,200 moves
LETTERS = "ABCDEFGHIJKL"
# What each kind of booking goes through, and the moves SQL must record for it, in order.
PATHS = {
    "confirm": ["SEAT_HELD", "PAYMENT_PENDING", "CONFIRMED"],
    "refund": ["SEAT_HELD", "PAYMENT_PENDING", "CONFIRMED", "CANCELLED", "REFUNDED"],
    "release": ["SEAT_HELD", "CANCELLED"],
    "decline": ["SEAT_HELD", "PAYMENT_PENDING", "CANCELLED"],
    "lapse": ["SEAT_HELD", "EXPIRED"],
}
KINDS = list(PATHS)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_three_writers_on_one_file_apply_every_move_once(
    tmp_path: Path, redis_server: EmbeddedRedis, services: Callable[..., ServiceProcess]
) -> None:
    db = tmp_path / "shared.sqlite3"
    args = ["--redis-url", redis_server.url, "--db", str(db), "--data-dir", str(tmp_path)]
    # Long enough that a pay queued behind 63 others on a loaded machine still finds its hold.
    env = {"HOLDSVC_HOLD_TTL": "10"}
    nodes = [services(args, env), services(args, env)]
    persister = services(args, env, command="persister")
    statuses: Counter[int] = Counter()
    kinds: dict[str, str] = {}
    limit = asyncio.Semaphore(64)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def post(node: ServiceProcess, path: str, body: object = None) -> dict[str, str]:
            async with http.post(f"{node.base}{path}", json=body) as resp:
                statuses[resp.status] += 1
                data: dict[str, str] = await resp.json()
                return data

        flight = {
            "flight_number": "HS9", "origin": "DEL", "destination": "BOM",
            "departure_time": "2030-01-01T09:30:00Z", "rows": 150, "seat_letters": LETTERS,
            "price": "10.00", "currency": "INR",
        }  # fmt: skip
        flights = [(await post(nodes[0], "/api/flights/", flight))["id"] for _ in range(2)]
        seats = [f"{r}{c}" for r in range(1, 151) for c in LETTERS]

        async def booking(i: int) -> None:
            kind = KINDS[i % len(KINDS)]
            # Every step through either process, so the writers interleave on every booking.
            a, b = nodes[i % 2], nodes[(i + 1) % 2]
            async with limit:
                held = await post(
                    a,
                    "/api/bookings/",
                    {"flight_id": flights[i % 2], "user_id": f"u{i}", "seats": [seats[i // 2]]},
                )
                bid = held["id"]
                kinds[bid] = kind
                if kind in ("confirm", "refund"):
                    assert (await post(b, f"/api/bookings/{bid}/pay/"))["state"] == "CONFIRMED"
                if kind == "decline":
                    body = {"payment_method": "pm_card_chargeDeclined"}
                    assert (await post(b, f"/api/bookings/{bid}/pay/", body))["state"] == (
                        "CANCELLED"
                    )
                if kind in ("refund", "release"):
                    assert (await post(a, f"/api/bookings/{bid}/cancel/"))["state"] == "CANCELLED"
                if kind == "refund":
                    assert (await post(b, f"/api/bookings/{bid}/refund/"))["state"] == "REFUNDED"

        await asyncio.wait_for(asyncio.gather(*(booking(i) for i in range(BOOKINGS))), 100)

    assert set(statuses) <= {200, 201, 402}, statuses

    def moves() -> dict[str, list[str]]:
        found: dict[str, list[str]] = defaultdict(list)
        with sqlite3.connect(db) as conn:
            for bid, to_state in conn.execute(
                "SELECT booking_id, to_state FROM transitions ORDER BY id"
            ):
                found[bid].append(to_state)
        return found

    async def lapsed_recorded() -> bool:
        found = moves()
        return all(found[b][-1:] == ["EXPIRED"] for b, k in kinds.items() if k == "lapse")

    await eventually(lapsed_recorded, timeout=25, interval=0.5)
    found = moves()
    assert len(kinds) == BOOKINGS
    wrong = {b: (k, found[b]) for b, k in kinds.items() if found[b] != PATHS[k]}
    assert not wrong, list(wrong.items())[:5]
    assert sum(len(m) for m in found.values()) >= 10_000
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT id, state FROM bookings").fetchall())
    assert all(states[b] == PATHS[k][-1] for b, k in kinds.items())

    outputs = [n.stop() for n in nodes] + [persister.stop()]
    for out in outputs:
        assert "database is locked" not in out
        assert "Traceback" not in out
