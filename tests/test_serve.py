"""`holdsvc serve` as a person runs it: real processes, restarts, the fresh-machine path."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from holdsvc.embedded_redis import EmbeddedRedis
from tests.helpers import (
    REDIS_SERVER,
    SMALL_FLIGHT,
    ServiceProcess,
    children_of,
    eventually,
    paid_over_http,
)
from tests.invariants import check_invariants, unsettled


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


async def test_serve_demo_with_the_pip_shipped_server(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    # CI machines may have a redis-server on PATH; this forces the path a fresh machine takes.
    data = tmp_path / "data"
    node = services(["--demo", "--redis-server", "bundled", "--data-dir", str(data)])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{node.base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{node.base}/api/flights/") as resp:
            [demo] = await resp.json()
        assert demo["flight_number"] == "AI101" and demo["seats_total"] == 180
        async with http.post(
            f"{node.base}/api/bookings/",
            json={"flight_id": demo["id"], "user_id": "u1", "seats": ["1A", "1B"]},
        ) as resp:
            assert resp.status == 201
    output = node.stop(signal.SIGTERM)
    assert node.proc is not None and node.proc.returncode == 0, output
    assert "curl -s -X POST" in output and '"seats": ["1A", "1B"]' in output
    log = (data / "redis" / "server.log").read_text()
    assert "Valkey" in log or "valkey" in log
    match = re.search(r"on port (\d+)", output)
    assert match, output
    assert not port_open(int(match.group(1))), "the embedded server must stop with the service"
    assert (data / "holdsvc.sqlite3").exists()


async def test_confirmed_bookings_survive_a_service_restart(
    tmp_path: Path, redis_server: EmbeddedRedis, services: Callable[..., ServiceProcess]
) -> None:
    args = ["--redis-url", redis_server.url, "--db", str(tmp_path / "db.sqlite3")]
    first = services(args)
    async with aiohttp.ClientSession() as http:
        flight_id, bid, confirmed = await paid_over_http(http, first.base, ["1C"])
        first.stop(signal.SIGTERM)

        second = services(args)
        async with http.get(f"{second.base}/api/bookings/{bid}/") as resp:
            after = await resp.json()
        assert after["state"] == "CONFIRMED"
        assert {k: v for k, v in after.items()} == {
            k: v for k, v in confirmed.items() if k != "message"
        }
        async with http.post(
            f"{second.base}/api/bookings/",
            json={"flight_id": flight_id, "user_id": "u2", "seats": ["1C"]},
        ) as resp:
            assert resp.status == 409


async def test_start_up_fails_clearly_without_redis(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    node = ServiceProcess(["--redis-url", "redis://127.0.0.1:1/0", "--data-dir", str(tmp_path)])
    try:
        node.start(timeout=15)
    except AssertionError as exc:
        text = str(exc)
    else:  # pragma: no cover - it must not listen
        node.stop(signal.SIGKILL)
        raise AssertionError("holdsvc listened without a Redis")
    assert "holdsvc exited early" in text
    assert node.proc is not None and node.proc.returncode == 1
    assert "holdsvc: cannot start: Error 111 connecting to 127.0.0.1:1" in text
    assert "Traceback" not in text
    node.log.unlink(missing_ok=True)


async def test_the_embedded_redis_killed_comes_back_and_holds_resume(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    data = tmp_path / "data"
    node = services(["--data-dir", str(data)])
    url = (data / "redis.url").read_text().strip()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    async with aiohttp.ClientSession() as http:
        flight, _, _ = await paid_over_http(http, node.base, ["1A"])
        assert node.proc is not None
        [redis_pid] = await children_of(node.proc.pid, REDIS_SERVER)
        os.kill(redis_pid, signal.SIGKILL)
        killed = time.monotonic()

        # Holds answer 503 (retryable) until the server is back and the flight restored.
        statuses = []
        while time.monotonic() - killed < 10:
            async with http.post(
                f"{node.base}/api/bookings/",
                json={"flight_id": flight, "user_id": "u2", "seats": ["1B"]},
            ) as resp:
                statuses.append(resp.status)
                if resp.status == 201:
                    break
                assert resp.status == 503 and resp.headers["Retry-After"], await resp.text()
            await asyncio.sleep(0.1)
        back = time.monotonic() - killed
        assert statuses[-1] == 201, statuses
        assert back < 3.0, f"holds came back {back:.1f} s after the kill"
        # The same port, a new process; the paid seat is still sold.
        assert port_open(port)
        async with http.post(
            f"{node.base}/api/bookings/",
            json={"flight_id": flight, "user_id": "u3", "seats": ["1A"]},
        ) as resp:
            assert resp.status == 409
    output = node.stop(signal.SIGTERM)
    assert "exited with -9: started again on port" in output, output
    assert not port_open(port)


async def test_an_embedded_redis_that_keeps_dying_is_given_up_on(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    data = tmp_path / "data"
    node = services(["--data-dir", str(data), "--redis-restarts", "2"])
    assert node.proc is not None
    # Its AOF made unreadable while it runs: every start from it fails from now on.
    [manifest] = (data / "redis" / "appendonlydir").glob("*.manifest")
    manifest.write_text("not a manifest\n")
    [redis_pid] = await children_of(node.proc.pid, REDIS_SERVER)
    os.kill(redis_pid, signal.SIGKILL)
    code = await asyncio.to_thread(node.proc.wait, 30)
    assert code == 1, node.output
    lines = node.output.strip().splitlines()
    assert lines[-1].startswith("holdsvc: stopped: the embedded Redis died 3 times within a"), (
        node.output
    )
    assert "Traceback" not in node.output


async def test_the_embedded_redis_killed_under_hold_traffic(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    data = tmp_path / "data"
    # Short payment bounds: a pay the kill caught between its charge and its confirm is
    # settled by recovery (confirmed or refunded) within seconds, not minutes.
    node = services([
        "--data-dir", str(data), "--hold-ttl", "30", "--payment-window", "2",
        "--gateway-timeout", "1",
    ])  # fmt: skip
    url = (data / "redis.url").read_text().strip()
    flight_body = {**SMALL_FLIGHT, "rows": 10, "seat_letters": "ABCDEF"}
    seats = [f"{r}{c}" for r in range(1, 11) for c in "ABCDEF"]
    rng = random.Random(5)
    confirmed: dict[str, list[str]] = {}
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.base}/api/flights/", json=flight_body) as resp:
            flight = (await resp.json())["id"]
        stop_at = time.monotonic() + 6

        async def customer(n: int) -> None:
            for _ in range(40):  # bounded in count and in time
                if time.monotonic() > stop_at:
                    return
                pair = rng.sample(seats, 2)
                async with http.post(
                    f"{node.base}/api/bookings/",
                    json={"flight_id": flight, "user_id": f"c{n}", "seats": pair},
                ) as resp:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    body = await resp.json()
                await asyncio.sleep(0.05)
                if resp.status != 201:
                    continue
                async with http.post(f"{node.base}/api/bookings/{body['id']}/pay/") as paid:
                    statuses[paid.status] = statuses.get(paid.status, 0) + 1
                    if paid.status == 200:
                        confirmed[body["id"]] = pair

        async def chaos() -> None:
            await asyncio.sleep(1.5)
            assert node.proc is not None
            [redis_pid] = await children_of(node.proc.pid, REDIS_SERVER)
            os.kill(redis_pid, signal.SIGKILL)

        await asyncio.wait_for(asyncio.gather(chaos(), *(customer(n) for n in range(12))), 40)
        assert set(statuses) <= {200, 201, 409, 503}, statuses
        assert statuses.get(503, 0) > 0, f"the kill must hit requests: {statuses}"
        # Holds work again after it, and every paid seat is still sold.
        for bid, pair in confirmed.items():
            async with http.get(f"{node.base}/api/bookings/{bid}/") as resp:
                assert (await resp.json())["state"] == "CONFIRMED"
            async with http.post(
                f"{node.base}/api/bookings/",
                json={"flight_id": flight, "user_id": "late", "seats": pair[:1]},
            ) as resp:
                assert resp.status == 409, await resp.text()
    db = str(data / "holdsvc.sqlite3")

    async def settled() -> bool:
        # Whatever the kill left paying is settled: no pay is PAYMENT_PENDING any more.
        return all(state != "PAYMENT_PENDING" for _, state in unsettled(db))

    await eventually(settled, timeout=20, interval=0.2)
    async with Redis.from_url(url) as redis:
        await check_invariants(db, data / "mock-gateway.sqlite3", redis, flight)
    node.stop()
