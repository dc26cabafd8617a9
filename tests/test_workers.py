"""`holdsvc serve --workers 2`: two API processes on one port and a persister, supervised;
racing clients across them, a worker killed and replaced, and SIGTERM stopping them all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.helpers import ServiceProcess, children_of, eventually

WORKER = "X-Holdsvc-Worker"


async def _workers(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    """worker number -> pid, as /metrics tells it; each request on a new connection."""
    async with http.get(f"{base}/metrics", headers={"Connection": "close"}) as resp:
        text = await resp.text()
        assert resp.headers[WORKER] != "0"
    return dict(
        (w, p) for p, w in re.findall(r'holdsvc_worker\{pid="(\d+)",worker="(\d+)"\}', text)
    )


async def _all_workers(http: aiohttp.ClientSession, base: str, count: int) -> dict[str, str]:
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while len(seen) < count and time.monotonic() < deadline:
        try:
            seen.update(await _workers(http, base))
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)
    assert len(seen) == count, seen
    return seen


async def _children(node: ServiceProcess, count: int) -> list[int]:
    """The supervisor's children once there are ``count`` of them (a child that died at its
    start is back within a second; the output says so)."""
    assert node.proc is not None
    pid = node.proc.pid
    found: list[int] = []

    async def all_up() -> bool:
        nonlocal found
        found = await children_of(pid)
        return len(found) == count

    try:
        await eventually(all_up, timeout=10, interval=0.1)
    except AssertionError:
        raise AssertionError(f"{len(found)} children, not {count}:\n{node.output}") from None
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_race_for_seats_survive_a_kill_and_stop_together(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    # The embedded Redis, run by the supervisor: no --redis-url.
    node = services(["--workers", "2", "--data-dir", str(tmp_path), "--hold-ttl", "60"])
    async with aiohttp.ClientSession() as http:
        pids = await _all_workers(http, node.base, 2)
        async with http.post(
            f"{node.base}/api/flights/",
            json={
                "flight_number": "WK1", "origin": "DEL", "destination": "BOM",
                "departure_time": "2030-01-01T09:30:00Z", "rows": 2, "seat_letters": "ABCD",
                "price": "10.00", "currency": "INR",
            },
        ) as resp:  # fmt: skip
            assert resp.status == 201
            flight = (await resp.json())["id"]

        # 60 clients, each on its own connection, race for overlapping pairs of 8 seats.
        seats = [f"{r}{c}" for r in (1, 2) for c in "ABCD"]

        async def attempt(n: int) -> tuple[int, str, list[str], str | None]:
            pair = [seats[n % 8], seats[(n + 1) % 8]]
            async with http.post(
                f"{node.base}/api/bookings/",
                json={"flight_id": flight, "user_id": f"u{n}", "seats": pair},
                headers={"Connection": "close"},
            ) as resp:
                body = await resp.json()
                return resp.status, resp.headers[WORKER], pair, body.get("id")

        results = await asyncio.gather(*(attempt(n) for n in range(60)))
        assert {status for status, *_ in results} <= {201, 409}
        won = [(pair, bid) for status, _, pair, bid in results if status == 201]
        held = [seat for pair, _ in won for seat in pair]
        assert len(held) == len(set(held)), "a seat held twice across workers"
        # Pairs around a ring of 8: whatever wins first, at least 3 disjoint pairs get in.
        assert len(won) >= 3
        # Both processes answered: each connection's port picked one of the two listeners.
        assert {worker for _, worker, _, _ in results} == {"1", "2"}

        # Every winner pays, on whichever worker its connection lands.
        for _, bid in won:
            async with http.post(
                f"{node.base}/api/bookings/{bid}/pay/", headers={"Connection": "close"}
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["state"] == "CONFIRMED"

        # A worker killed outright is started again; the other serves meanwhile.
        os.kill(int(pids["1"]), signal.SIGKILL)

        async def replaced() -> bool:
            try:
                now = await _workers(http, node.base)
            except aiohttp.ClientError:
                return False
            return now.get("1") not in (None, pids["1"])

        await eventually(replaced, timeout=20, interval=0.1)
        after = await _all_workers(http, node.base, 2)

    # The seats SQL holds agree with Redis's, across both workers' writes.
    audit = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "holdsvc", "audit", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stdout + audit.stderr

    assert node.proc is not None
    # Its children: the two workers, the persister and the embedded Redis.
    children = await _children(node, 4)
    assert {int(p) for p in after.values()} <= set(children), node.output
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=30) == 0, node.output
    assert not [pid for pid in children if _alive(pid)]


async def test_a_killed_supervisor_takes_its_workers_with_it(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    node = services(["--workers", "2", "--data-dir", str(tmp_path)])
    async with aiohttp.ClientSession() as http:
        await _all_workers(http, node.base, 2)
    assert node.proc is not None
    children = await _children(node, 4)
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(timeout=10)

    async def gone() -> bool:
        return not any(_alive(p) for p in children)

    await eventually(gone, timeout=10)
