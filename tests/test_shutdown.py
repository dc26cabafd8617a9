"""SIGTERM stops the service gracefully: requests in flight finish, and every hold that was
answered 201 is in SQL after a restart."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp

from holdsvc.embedded_redis import EmbeddedRedis
from tests.helpers import SMALL_FLIGHT, ServiceProcess


async def test_sigterm_loses_no_answered_request(
    tmp_path: Path, redis_server: EmbeddedRedis, services: Callable[..., ServiceProcess]
) -> None:
    args = ["--redis-url", redis_server.url, "--db", str(tmp_path / "db.sqlite3")]
    node = services(args)
    answered: list[str] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async with http.post(
            f"{node.base}/api/flights/", json={**SMALL_FLIGHT, "rows": 50, "seat_letters": "ABCDEF"}
        ) as resp:
            flight_id = (await resp.json())["id"]

        async def hold(n: int) -> None:
            seat = f"{n // 6 + 1}{'ABCDEF'[n % 6]}"
            try:
                async with http.post(
                    f"{node.base}/api/bookings/",
                    json={"flight_id": flight_id, "user_id": f"u{n}", "seats": [seat]},
                ) as resp:
                    if resp.status == 201:
                        answered.append((await resp.json())["id"])
            except aiohttp.ClientError:
                pass  # refused once the listener closed: never answered, nothing promised

        tasks = [asyncio.create_task(hold(n)) for n in range(300)]
        await asyncio.sleep(0.05)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        # No second signal: one SIGTERM must be enough to stop, after finishing what it has.
        await asyncio.to_thread(node.proc.wait, 30)
        output = node.stop(timeout=30)
        assert node.proc.returncode == 0, output
        assert answered, "some holds must have been answered before the stop"

        restarted = services(args)
        for bid in answered:
            async with http.get(f"{restarted.base}/api/bookings/{bid}/") as resp:
                assert resp.status == 200, bid
                assert (await resp.json())["state"] == "SEAT_HELD"
