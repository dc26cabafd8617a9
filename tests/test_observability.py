"""Request ids, JSON logs (one line per request, one per transition) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from holdsvc.appkeys import RESTORER
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


async def test_liveness_and_readiness_are_told_apart(
    make_client: MakeClient, settings: Settings, redis_server: EmbeddedRedis
) -> None:
    # No sweeper: after the restart nothing restores the flights until asked.
    client = await make_client(settings.replace(sweep_interval=0))
    flight = await new_flight(client)
    for path in ("/livez", "/readyz", "/healthz"):
        resp = await client.get(path)
        assert (resp.status, await resp.json()) == (200, {"status": "ok"}), path

    # Redis gone: the process is alive, and neither ready nor healthy.
    redis_server.kill(signal.SIGKILL)
    assert (await client.get("/livez")).status == 200
    for path in ("/readyz", "/healthz"):
        resp = await client.get(path)
        assert resp.status == 503 and (await resp.json())["redis"] == "unavailable", path

    # Back, from its AOF: healthy (both stores answer), not ready until its flights are
    # restored into this Redis process.
    redis_server.start()
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert (resp.status, await resp.json()) == (
        503,
        {"status": "unavailable", "restore": "in progress"},
    )
    await client.app[RESTORER].check()
    assert (await client.get("/readyz")).status == 200
    assert (await hold(client, flight["id"], ["1A"]))["state"] == "SEAT_HELD"


async def test_a_redis_outage_is_logged_once_and_its_end_with_how_long(
    tmp_path: Path, redis_server: EmbeddedRedis, services: Callable[..., ServiceProcess]
) -> None:
    node = services(["--redis-url", redis_server.url, "--db", str(tmp_path / "db.sqlite3")])
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.base}/api/flights/", json=SMALL_FLIGHT) as resp:
            flight = (await resp.json())["id"]
        redis_server.kill(signal.SIGKILL)
        for _ in range(15):
            async with http.post(
                f"{node.base}/api/bookings/",
                json={"flight_id": flight, "user_id": "u", "seats": ["1A"]},
            ) as resp:
                assert resp.status == 503
            await asyncio.sleep(0.1)
        redis_server.start()

        async def back() -> bool:
            return "sweep rounds: works again after" in node.output

        await eventually(back, timeout=10)
    output = node.output
    # One line each when it started failing, however many requests and rounds failed.
    assert output.count("Redis, as requests see it: failing") == 1, output
    assert output.count("sweep rounds: failing") == 1, output
    assert output.count("Redis unavailable") == 0 and output.count("still failing") == 0
