"""The seat stream where holdsvc runs wide: across `serve --workers 2` (each worker reads the
stream itself; the persister process appends expiries) and on a 3-primary Redis Cluster
(each flight's stream lives on its flight's node)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from holdsvc.embedded_redis import LocalCluster
from holdsvc.settings import Settings
from tests.helpers import SMALL_FLIGHT, ServiceProcess, hold
from tests.sse import SSE
from tests.test_cluster_service import flights_on_every_node
from tests.test_seat_stream import listening
from tests.test_workers import _all_workers

Client = TestClient[Any, Any]
MakeClient = Callable[[Settings], Awaitable[Client]]
WORKER = "X-Holdsvc-Worker"


async def test_every_worker_streams_every_change_and_stops_promptly(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    node = services(["--workers", "2", "--data-dir", str(tmp_path), "--hold-ttl", "1"])
    async with aiohttp.ClientSession() as http:
        await _all_workers(http, node.base, 2)  # both listen before the streams are opened
        async with http.post(f"{node.base}/api/flights/", json=SMALL_FLIGHT) as resp:
            assert resp.status == 201
            fid = (await resp.json())["id"]
        # Listeners on both workers: each connection's port picks one of the two listeners.
        streams: list[SSE] = []
        workers: set[str] = set()
        for _ in range(40):
            resp = await http.get(
                f"{node.base}/api/flights/{fid}/seats/events", headers={"Connection": "close"}
            )
            assert resp.status == 200
            workers.add(resp.headers[WORKER])
            streams.append(SSE(resp))
            if workers == {"1", "2"} and len(streams) >= 4:
                break
        assert workers == {"1", "2"}
        for s in streams:
            assert (await s.next()).event == "snapshot"
        async with http.post(
            f"{node.base}/api/bookings/", json={"flight_id": fid, "user_id": "u", "seats": ["1A"]}
        ) as resp:
            assert resp.status == 201
        for s in streams:
            assert [e.seat for e in await s.seats(1)] == [("1A", "held")]
        # The persister process records the expiry and appends it: every worker streams it.
        for s in streams:
            assert [e.seat for e in await s.seats(1, timeout=8)] == [("1A", "available")]
        # SIGTERM with streams open: they are ended, and the service stops at once.
        assert node.proc is not None
        started = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(node.proc.wait, 30) == 0, node.output
        assert time.monotonic() - started < 10, node.output
        for s in streams:
            s.close()


async def test_each_flight_streams_from_its_own_node_of_a_cluster(
    make_client: MakeClient, settings: Settings, cluster: LocalCluster
) -> None:
    client = await make_client(
        settings.replace(redis_url=cluster.url, redis_cluster=True, hold_ttl=1.0)
    )
    flights = await flights_on_every_node(client, cluster)
    for flight in flights:
        fid = flight["id"]
        async with listening(client, fid) as stream:
            assert (await stream.next()).event == "snapshot"
            held = await hold(client, fid, ["1A", "1B"])
            assert [e.seat for e in await stream.seats(2)] == [("1A", "held"), ("1B", "held")]
            assert (await client.post(f"/api/bookings/{held['id']}/pay/")).status == 200
            assert [e.seat for e in await stream.seats(2)] == [
                ("1A", "booked"), ("1B", "booked")
            ]  # fmt: skip
            await hold(client, fid, ["2A"])
            assert [e.seat for e in await stream.seats(1)] == [("2A", "held")]
            # The expiry, from that node's own events.
            assert [e.seat for e in await stream.seats(1, timeout=8)] == [("2A", "available")]
