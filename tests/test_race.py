"""Invariant 1 under contention: racing clients, across two service processes sharing one
Redis and one database (SQLite or PostgreSQL), never get one seat into two bookings."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from redis.crc import key_slot

from holdsvc.embedded_redis import EmbeddedRedis, LocalCluster
from tests.helpers import SMALL_FLIGHT, ServiceProcess, slot_owner
from tests.sql import query

CLIENTS = 240
SEATS = [f"{r}{c}" for r in (1, 2) for c in "ABCDE"]


async def test_racing_clients_across_processes_never_share_a_seat(
    tmp_path: Path,
    db: str,
    redis_server: EmbeddedRedis,
    redis: Redis,
    services: Callable[..., ServiceProcess],
) -> None:
    args = ["--redis-url", redis_server.url, "--db", db, "--data-dir", str(tmp_path)]

    async def the_one(flight_id: int) -> Redis:
        return redis

    await _race(db, [services(args), services(args)], the_one)


async def test_racing_clients_across_processes_on_a_cluster_never_share_a_seat(
    tmp_path: Path, db: str, cluster: LocalCluster, services: Callable[..., ServiceProcess]
) -> None:
    args = ["--redis-url", cluster.url, "--redis-cluster", "--db", db,
            "--data-dir", str(tmp_path)]  # fmt: skip
    nodes = [services(args), services(args)]
    opened: list[Redis] = []

    async def flight_node(flight_id: int) -> Redis:
        # Every key of the flight lives on the node that serves its slot.
        slot = key_slot(f"{{f:{flight_id}}}".encode())
        opened.append(Redis(port=await slot_owner(cluster.nodes[0].port, slot)))
        return opened[-1]

    try:
        await _race(db, nodes, flight_node)
    finally:
        for client in opened:
            await client.aclose()


async def _race(
    db: str, nodes: list[ServiceProcess], redis_of: Callable[[int], Awaitable[Redis]]
) -> None:
    rng = random.Random(7)
    gate = asyncio.Event()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async with http.post(f"{nodes[0].base}/api/flights/", json=SMALL_FLIGHT) as resp:
            assert resp.status == 201
            flight_id = (await resp.json())["id"]
        redis = await redis_of(flight_id)

        async def attempt(i: int) -> tuple[int, dict[str, Any], list[str]]:
            start = rng.randrange(len(SEATS))
            wanted = SEATS[start : start + rng.randint(1, 3)]
            node = nodes[i % 2]
            await gate.wait()
            async with http.post(
                f"{node.base}/api/bookings/",
                json={"flight_id": flight_id, "user_id": f"u{i}", "seats": wanted},
            ) as resp:
                return resp.status, await resp.json(), wanted

        tasks = [asyncio.create_task(attempt(i)) for i in range(CLIENTS)]
        await asyncio.sleep(0.2)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)

        statuses = Counter(status for status, _, _ in results)
        assert set(statuses) <= {201, 409}, statuses
        winners = [body for status, body, _ in results if status == 201]
        assert winners, "somebody must win"
        for status, body, wanted in results:
            if status == 409:
                assert body["error"] == "Seats not available"
                assert set(body["seats"]) <= set(wanted)

        held = Counter(seat for w in winners for seat in w["seats"])
        assert all(n == 1 for n in held.values()), held

        # Redis: every seat a winner got holds that winner's id; no other seat is held.
        for w in winners:
            for seat in w["seats"]:
                assert await redis.get(f"{{f:{flight_id}}}:{seat}") == w["id"].encode()
        taken = {k.decode() async for k in redis.scan_iter(match=f"{{f:{flight_id}}}:[0-9]*")}
        assert taken == {f"{{f:{flight_id}}}:{s}" for s in held}

        # Every winner pays, half through each node; all confirm.
        for n, w in enumerate(winners):
            async with http.post(f"{nodes[n % 2].base}/api/bookings/{w['id']}/pay/") as resp:
                assert resp.status == 200
                assert (await resp.json())["state"] == "CONFIRMED"

    doubled = query(
        db,
        "SELECT flight_id, seat, count(*) FROM booking_seats WHERE live"
        " GROUP BY flight_id, seat HAVING count(*) > 1",
    )
    assert doubled == []
    confirmed = query(
        db,
        "SELECT bs.seat FROM booking_seats bs JOIN bookings b ON b.id = bs.booking_id"
        " WHERE b.state = 'CONFIRMED'",
    )
    assert sorted(s for (s,) in confirmed) == sorted(held)
    [(booked_rows,)] = query(db, "SELECT count(*) FROM bookings")
    assert booked_rows == len(winners)
