"""Request ids, JSON logs (one line per request, one per transition) and Prometheus metrics."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from holdsvc.embedded_redis import EmbeddedRedis
from holdsvc.settings import Settings
from tests.helpers import SMALL_FLIGHT, Client, ServiceProcess, eventually, hold, new_flight

MakeClient = Callable[[Settings], Awaitable[Client]]


async def test_request_id_is_kept_or_made(client: Client) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert given.headers["X-Request-ID"] == "trace-123"
    made = await client.get("/api/flights/99/")
    assert made.status == 404
    other = await client.get("/api/flights/99/")
    assert made.headers["X-Request-ID"] != other.headers["X-Request-ID"]
    assert len(made.headers["X-Request-ID"]) >= 14


async def test_metrics_count_holds_transitions_and_expiry_lag(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings.replace(hold_ttl=0.5, sweep_interval=0.2))
    flight = await new_flight(client)
    await hold(client, flight["id"], ["1A"])
    taken = await client.post(
        "/api/bookings/", json={"flight_id": flight["id"], "user_id": "u2", "seats": ["1A"]}
    )
    assert taken.status == 409

    async def expired_counted() -> bool:
        text = await (await client.get("/metrics")).text()
        return "holdsvc_expiry_lag_seconds_count 1.0" in text

    await eventually(expired_counted, timeout=5)
    text = await (await client.get("/metrics")).text()
    assert 'holdsvc_holds_total{outcome="created"} 1.0' in text
    assert 'holdsvc_holds_total{outcome="refused"} 1.0' in text
    assert 'holdsvc_transitions_total{cause="hold",to_state="SEAT_HELD"} 1.0' in text
    assert 'to_state="EXPIRED"} 1.0' in text
    assert 'route="/api/bookings/",status="409"' in text
    assert "holdsvc_sql_commit_seconds_count" in text
    assert "holdsvc_redis_connects_total 1.0" in text


async def test_json_logs_one_line_per_request_and_per_transition(
    tmp_path: Path, redis_server: EmbeddedRedis, services: Callable[..., ServiceProcess]
) -> None:
    node = services(
        ["--redis-url", redis_server.url, "--db", str(tmp_path / "db.sqlite3"),
         "--log-format", "json"]
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.base}/api/flights/", json=SMALL_FLIGHT) as resp:
            flight_id = (await resp.json())["id"]
        async with http.post(
            f"{node.base}/api/bookings/",
            json={"flight_id": flight_id, "user_id": "u1", "seats": ["1A"]},
            headers={"X-Request-ID": "req-42"},
        ) as resp:
            booking_id = (await resp.json())["id"]
        # A hold reaches SQL with its first money step or its outcome: here, a cancel.
        async with http.post(f"{node.base}/api/bookings/{booking_id}/cancel/") as resp:
            assert resp.status == 200
    lines = [json.loads(line) for line in node.stop().splitlines() if line.startswith("{")]
    access = [x for x in lines if x["logger"] == "holdsvc.access"]
    assert any(
        x["request_id"] == "req-42"
        and x["route"] == "/api/bookings/"
        and x["status"] == 201
        and x["method"] == "POST"
        and x["duration_ms"] >= 0
        for x in access
    ), access
    moves = [x for x in lines if x["logger"] == "holdsvc.transitions"]
    assert {
        "booking_id": booking_id,
        "from": "INITIATED",
        "to": "SEAT_HELD",
        "cause": "hold",
    }.items() <= moves[0].items()
    assert {"booking_id": booking_id, "from": "SEAT_HELD", "to": "CANCELLED"}.items() <= (
        moves[1].items()
    )
