"""holdsvc on a 3-primary Redis Cluster (`--redis-cluster`): the lifecycle on flights that
live on every node, and expiry from every node's events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from holdsvc.embedded_redis import LocalCluster, find_binary
from holdsvc.seats.redis_client import PipelinedRedis
from holdsvc.settings import Settings
from tests.helpers import eventually, hold, new_flight, seat_map
from tests.sql import query

Client = TestClient[Any, Any]
MakeClient = Callable[[Settings], Awaitable[Client]]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "cluster", binary=find_binary("auto"), primaries=3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


async def node_of_flight(cluster: LocalCluster, flight_id: int) -> int:
    node = PipelinedRedis(cluster.url)
    try:
        slots = await node.execute("CLUSTER", "SLOTS")
    finally:
        await node.close()
    slot = key_slot(f"{{f:{flight_id}}}".encode())
    for first, last, primary, *_ in slots:
        if first <= slot <= last:
            return int(primary[1])
    raise AssertionError("no node")


async def flights_on_every_node(client: Client, cluster: LocalCluster) -> list[dict[str, Any]]:
    flights, nodes = [], set()
    for _ in range(12):
        flight = await new_flight(client)
        flights.append(flight)
        nodes.add(await node_of_flight(cluster, flight["id"]))
        if len(nodes) == 3 and len(flights) >= 6:
            break
    assert len(nodes) == 3, "the flights must live on all three primaries"
    return flights


async def test_the_lifecycle_on_flights_of_every_primary(
    make_client: MakeClient, settings: Settings, cluster: LocalCluster
) -> None:
    client = await make_client(settings.replace(redis_url=cluster.url, redis_cluster=True))
    flights = await flights_on_every_node(client, cluster)
    for flight in flights:
        fid = flight["id"]
        held = await hold(client, fid, ["1A", "1B"])
        assert (await seat_map(client, fid))["1A"] == "held"
        taken = await client.post(
            "/api/bookings/", json={"flight_id": fid, "user_id": "u2", "seats": ["1B"]}
        )
        assert taken.status == 409
        paid = await client.post(f"/api/bookings/{held['id']}/pay/")
        assert paid.status == 200 and (await paid.json())["state"] == "CONFIRMED"
        assert (await seat_map(client, fid))["1A"] == "booked"
        assert (await client.post(f"/api/bookings/{held['id']}/cancel/")).status == 200
        refunded = await client.post(f"/api/bookings/{held['id']}/refund/")
        assert (await refunded.json())["state"] == "REFUNDED"
        assert (await seat_map(client, fid))["1A"] == "available"
        best = await client.post(
            "/api/bookings/", json={"flight_id": fid, "user_id": "u3", "seat_count": 3}
        )
        assert best.status == 201, await best.text()
    listed = await (await client.get("/api/flights/")).json()
    assert [f["seats_available"] for f in listed] == [7] * len(flights)
    health = await client.get("/readyz")
    assert health.status == 200, await health.json()


async def test_holds_expire_from_the_events_of_every_primary(
    make_client: MakeClient, settings: Settings, cluster: LocalCluster
) -> None:
    # The sweeper off: only the three nodes' expiry events can record these.
    client = await make_client(
        settings.replace(redis_url=cluster.url, redis_cluster=True, hold_ttl=1.0, sweep_interval=0)
    )
    flights = await flights_on_every_node(client, cluster)
    ids = [(await hold(client, f["id"], [seat]))["id"] for f in flights for seat in ("1A", "2B")]

    async def expired() -> bool:
        rows = query(settings.db_target, "SELECT id, state FROM bookings")
        return Counter(state for bid, state in rows if bid in ids) == {"EXPIRED": len(ids)}

    await eventually(expired, timeout=10, interval=0.2)
    causes = {
        cause for (cause,) in query(
            settings.db_target, "SELECT cause FROM transitions WHERE to_state = 'EXPIRED'"
        )
    }  # fmt: skip
    assert causes == {"expiry-event"}, causes
    for flight in flights:
        assert set((await seat_map(client, flight["id"])).values()) == {"available"}
