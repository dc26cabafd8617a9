"""holdsvc on a 3-primary Redis Cluster (`--redis-cluster`): the lifecycle on flights that
live on every node, and expiry from every node's events."""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from holdsvc.app import TOPOLOGY_EVERY_S
from holdsvc.embedded_redis import LocalCluster
from holdsvc.settings import Settings
from tests.helpers import eventually, hold, migrate_slot, new_flight, seat_map, slot_owner
from tests.sql import query

Client = TestClient[Any, Any]
MakeClient = Callable[[Settings], Awaitable[Client]]


async def node_of_flight(cluster: LocalCluster, flight_id: int) -> int:
    return await slot_owner(cluster.nodes[0].port, key_slot(f"{{f:{flight_id}}}".encode()))


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


async def test_a_primary_restarted_empty_under_load_keeps_every_sale(
    make_client: MakeClient, settings: Settings, cluster: LocalCluster
) -> None:
    client = await make_client(
        settings.replace(redis_url=cluster.url, redis_cluster=True, sweep_interval=0.2)
    )
    flights = await flights_on_every_node(client, cluster)
    confirmed = {}
    for flight in flights:
        booking = await hold(client, flight["id"], ["1A"])
        paid = await client.post(f"/api/bookings/{booking['id']}/pay/")
        assert paid.status == 200
        confirmed[flight["id"]] = booking["id"]
    victim_port = await node_of_flight(cluster, flights[0]["id"])
    victim = next(n for n in cluster.nodes if n.port == victim_port)
    on_victim = {f["id"] for f in flights if await node_of_flight(cluster, f["id"]) == victim_port}
    statuses: dict[bool, Counter[int]] = {True: Counter(), False: Counter()}
    stop = asyncio.Event()

    async def customer(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            flight = flights[rng.randrange(len(flights))]["id"]
            seat = f"{rng.randint(1, 2)}{'ABCDE'[rng.randrange(5)]}"
            resp = await client.post(
                "/api/bookings/", json={"flight_id": flight, "user_id": f"c{n}", "seats": [seat]}
            )
            statuses[flight in on_victim][resp.status] += 1
            if resp.status == 201:
                bid = (await resp.json())["id"]
                await client.post(f"/api/bookings/{bid}/cancel/")
            await asyncio.sleep(0.005)

    load = [asyncio.create_task(customer(n)) for n in range(8)]
    try:
        await asyncio.sleep(0.5)
        # The victim dies and comes back with its cluster identity and slots, but no data.
        victim.kill(signal.SIGKILL)
        shutil.rmtree(victim.directory / "appendonlydir", ignore_errors=True)
        await asyncio.sleep(0.5)
        victim.start()
        before = statuses[True][201]

        async def victim_holds_again() -> bool:
            return statuses[True][201] > before

        await eventually(victim_holds_again, timeout=15, interval=0.1)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*load)
    # Only the victim's flights saw 503s; the others were never refused but for taken seats.
    assert set(statuses[False]) <= {201, 409}, statuses
    assert set(statuses[True]) <= {201, 409, 503}, statuses
    assert statuses[True][503] > 0, statuses
    # Every sale survived: each flight's 1A is booked in Redis for its confirmed booking,
    # and SQL has one live booking a seat.
    for flight in flights:
        seats = await seat_map(client, flight["id"])
        assert seats["1A"] == "booked", (flight["id"], seats)
        again = await client.post(
            "/api/bookings/", json={"flight_id": flight["id"], "user_id": "x", "seats": ["1A"]}
        )
        assert again.status == 409
        got = await (await client.get(f"/api/bookings/{confirmed[flight['id']]}/")).json()
        assert got["state"] == "CONFIRMED"
    doubled = query(
        settings.db_target,
        "SELECT flight_id, seat FROM booking_seats WHERE live GROUP BY flight_id, seat"
        " HAVING count(*) > 1",
    )
    assert doubled == []


async def test_a_flights_slot_migrated_under_hold_traffic(
    make_client: MakeClient, settings: Settings, cluster: LocalCluster
) -> None:
    client = await make_client(settings.replace(redis_url=cluster.url, redis_cluster=True))
    flight = await new_flight(client, rows=20, seat_letters="ABCDEF")
    fid = flight["id"]
    source = await node_of_flight(cluster, fid)
    target = next(n.port for n in cluster.nodes if n.port != source)
    winners: dict[str, list[str]] = {}
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def customer(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            if rng.random() < 0.5:
                row = rng.randint(1, 20)
                body: dict[str, Any] = {"seats": [f"{row}{c}" for c in rng.sample("ABCDEF", 2)]}
            else:
                body = {"seat_count": rng.randint(1, 3)}
            resp = await client.post(
                "/api/bookings/", json={"flight_id": fid, "user_id": f"c{n}", **body}
            )
            statuses[resp.status] += 1
            if resp.status == 201:
                booking = await resp.json()
                winners[booking["id"]] = booking["seats"]
                if rng.random() < 0.7:  # most let go again: the flight never fills up
                    cancel = await client.post(f"/api/bookings/{booking['id']}/cancel/")
                    statuses[cancel.status] += 1
            await asyncio.sleep(0.002)

    load = [asyncio.create_task(customer(n)) for n in range(8)]
    try:
        await asyncio.sleep(0.3)
        slot = key_slot(f"{{f:{fid}}}".encode())
        await asyncio.wait_for(migrate_slot([n.port for n in cluster.nodes], slot, target), 30)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert await node_of_flight(cluster, fid) == target
    # Besides taken seats (409) and released holds (200), only a retryable 503.
    assert set(statuses) <= {200, 201, 409, 503}, statuses
    assert statuses[201] > 100, statuses
    # A 503's hold may have been granted; its compensation takes it back within seconds
    # (its first try after 1 s, then 2 s, 4 s: a try that meets the migration's last
    # redirections waits for the next).
    live: dict[str, list[str]] = {}
    for bid, held in winners.items():
        got = await (await client.get(f"/api/bookings/{bid}/")).json()
        assert got["seats"] == held
        if got["state"] == "SEAT_HELD":
            live[bid] = held
        else:
            assert got["state"] == "CANCELLED", got
    # Each live hold holds every one of its seats, no seat is in two of them, and no other
    # seat is held: nothing half-held, nothing held for nobody.
    taken = Counter(seat for held in live.values() for seat in held)
    assert not taken or max(taken.values()) == 1, taken.most_common(3)

    async def nothing_held_for_nobody() -> bool:
        seats = await seat_map(client, fid)
        return {seat for seat, status in seats.items() if status == "held"} == set(taken)

    await eventually(nothing_held_for_nobody, timeout=8, interval=0.2)


async def test_expiry_events_follow_a_primary_that_joins(
    make_client: MakeClient,
    settings: Settings,
    cluster: LocalCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="holdsvc.app")
    # The sweeper off: only the new node's own events can expire the hold on it.
    client = await make_client(
        settings.replace(redis_url=cluster.url, redis_cluster=True, hold_ttl=1.0, sweep_interval=0)
    )
    flight = await new_flight(client)
    newcomer = cluster.add_primary()
    slot = key_slot(f"{{f:{flight['id']}}}".encode())
    await migrate_slot([n.port for n in cluster.nodes], slot, newcomer.port)
    assert await node_of_flight(cluster, flight["id"]) == newcomer.port
    # Within one topology refresh the service consumes the newcomer's events too.
    joined = f"consuming expiry events of primary redis://127.0.0.1:{newcomer.port}/0"

    async def consuming() -> bool:
        return joined in caplog.text

    await eventually(consuming, timeout=TOPOLOGY_EVERY_S + 2)
    held = await hold(client, flight["id"], ["1A"])
    # The newcomer had its scripts loaded when the map first showed it: no hold there found
    # it bare.
    assert "NOSCRIPT" not in caplog.text

    async def expired() -> bool:
        rows = query(
            settings.db_target,
            "SELECT cause FROM transitions WHERE booking_id = ? AND to_state = 'EXPIRED'",
            (held["id"],),
        )
        return rows == [("expiry-event",)]

    await eventually(expired, timeout=5, interval=0.1)


def test_the_admin_commands_on_a_cluster(tmp_path: Path, cluster: LocalCluster) -> None:
    where = ["--redis-cluster", "--redis-url", cluster.url, "--db", str(tmp_path / "a.sqlite3")]

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "holdsvc", *args, *where],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    for n in range(6):  # flights on every node
        made = admin(
            "flights", "create", "--flight-number", f"CL{n}", "--origin", "DEL",
            "--destination", "BOM", "--departure-time", "2030-12-20T10:00:00Z", "--rows", "2",
            "--seat-letters", "AB", "--price", "10", "--currency", "INR",
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    listed = admin("flights", "list")
    assert listed.returncode == 0 and listed.stdout.count("4/4 free") == 6, listed.stdout
    audit = admin("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert audit.stdout.strip().endswith("0 differences in 6 flights")
    status = admin("status")
    assert status.returncode == 0 and "live holds   0" in status.stdout, status.stdout


async def test_expiry_consumers_let_go_of_a_primary_that_leaves(
    make_client: MakeClient,
    settings: Settings,
    cluster: LocalCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="holdsvc.app")
    client = await make_client(settings.replace(redis_url=cluster.url, redis_cluster=True))
    flight = await new_flight(client)
    slot = key_slot(f"{{f:{flight['id']}}}".encode())
    home = await node_of_flight(cluster, flight["id"])
    newcomer = cluster.add_primary()
    ports = [n.port for n in cluster.nodes]
    await migrate_slot(ports, slot, newcomer.port)
    joined = f"consuming expiry events of primary redis://127.0.0.1:{newcomer.port}/0"

    async def logged(line: str) -> bool:
        return line in caplog.text

    await eventually(lambda: logged(joined), timeout=TOPOLOGY_EVERY_S + 2)
    # It gives its only slot back (and becomes a replica): its events are no longer read...
    await migrate_slot(ports, slot, home)
    left = f"primary redis://127.0.0.1:{newcomer.port}/0 left the cluster"
    await eventually(lambda: logged(left), timeout=TOPOLOGY_EVERY_S + 2)
    assert caplog.text.count(left) == 1
    # ...and once it is gone for good, nothing keeps trying to subscribe to it.
    newcomer.stop()
    caplog.clear()
    await asyncio.sleep(1.5)
    assert str(newcomer.port) not in caplog.text, caplog.text
    held = await hold(client, flight["id"], ["1A"])
    assert (await client.get(f"/api/bookings/{held['id']}/")).status == 200
