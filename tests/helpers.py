"""Helpers the tests share: a small flight, HTTP shortcuts, polling, a real service process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from redis.exceptions import ResponseError

from holdsvc import appkeys
from holdsvc.domain.bookings import new_booking
from holdsvc.domain.states import State, move
from holdsvc.embedded_redis import free_port
from persistence.records import Move, NewBooking, PaymentChange
from persistence.stores import AnyStore

Client = TestClient[Any, Any]

SMALL_FLIGHT = {
    "flight_number": "HS1",
    "origin": "DEL",
    "destination": "BOM",
    "departure_time": "2030-01-01T09:30:00Z",
    "rows": 2,
    "seat_letters": "ABCDE",
    "price": "100.00",
    "currency": "INR",
}


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.05
) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def new_flight(client: TestClient[Any, Any], **overrides: Any) -> dict[str, Any]:
    resp = await client.post("/api/flights/", json={**SMALL_FLIGHT, **overrides})
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def hold(
    client: TestClient[Any, Any], flight_id: int, seats: list[str], user: str = "u1"
) -> dict[str, Any]:
    resp = await client.post(
        "/api/bookings/", json={"flight_id": flight_id, "user_id": user, "seats": seats}
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def seat_map(client: TestClient[Any, Any], flight_id: int) -> dict[str, str]:
    resp = await client.get(f"/api/flights/{flight_id}/seats/")
    assert resp.status == 200
    return {s["seat"]: s["status"] for s in (await resp.json())["seats"]}


class ServiceProcess:
    """``holdsvc serve`` (or another command) as a real child process, for restart and
    multi-process tests. Its output goes to a file, never a pipe nobody reads: a service that
    logs every request would block on a full pipe."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, command: str = "serve"
    ) -> None:
        self.port = free_port()
        self.command = command
        listen = ["--port", str(self.port)] if command == "serve" else []
        self.args = [sys.executable, "-m", "holdsvc", command, *listen, *args]
        # No per-customer seat limit unless a test sets one (as the settings fixture).
        self.env = {**os.environ, "HOLDSVC_MAX_SEATS_PER_USER": "0", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix=f"holdsvc-{command}-", suffix=".log")[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def start(self, timeout: float = 20.0) -> None:
        offset = self.log.stat().st_size  # a restart's readiness is read from its own output
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        ready = f"holdsvc {self.command} running"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"holdsvc exited early:\n{self.stop()}")
            if self.command != "serve":
                # A headless process says when it is ready; its start-up sweep has run then.
                if ready.encode() in self.log.read_bytes()[offset:]:
                    return
            else:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"holdsvc did not start within {timeout}s:\n{self.stop()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> str:
        """Signal the process, wait for it, and return everything it printed."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.output


async def pending_with_charge(client: Client, flight_id: int, seats: list[str]) -> str:
    """A booking a pay left PAYMENT_PENDING after charging and booking its seats in Redis."""
    booking = await hold(client, flight_id, seats)
    bid = booking["id"]
    store, holds = client.app[appkeys.STORE], client.app[appkeys.HOLDS]
    # As a pay writes it: the booking enters SQL PAYMENT_PENDING with its payment.
    held = await client.app[appkeys.BOOKINGS].get(bid)
    moved, _ = await store.insert_booking(
        new_booking(held),
        move(State.PAYMENT_PENDING, "pay"),
        move(State.EXPIRED, "superseded"),
        PaymentChange("pending", method="pm_card_visa", amount="200.00", currency="INR"),
    )
    assert moved.moved
    charge = await client.app[appkeys.GATEWAY].charge(bid, "200.00", "INR", "pm_card_visa")
    assert charge.captured
    await holds.confirm(flight_id, seats, bid)
    return str(bid)


HELD = move(State.SEAT_HELD, "hold")


async def insert_held(
    store: AnyStore, booking: NewBooking, supersede: Move | None = None
) -> list[str]:
    """Write a booking into SQL still SEAT_HELD, as a write-behind copy of a hold would: the
    store's API, for tests of the store itself (the service writes bookings from pay on)."""
    _, superseded = await store.insert_booking(
        booking, HELD, supersede or move(State.EXPIRED, "superseded")
    )
    return superseded


async def children_of(pid: int, named: str | None = None) -> list[int]:
    """The process ids of ``pid``'s children (whose command line matches ``named``)."""
    match = ["-f", named] if named else []
    listed = await asyncio.to_thread(
        subprocess.run,
        ["pgrep", "-P", str(pid), *match], capture_output=True, text=True, check=False,
    )  # fmt: skip
    return [int(p) for p in listed.stdout.split()]


# A service's embedded Redis, among its children.
REDIS_SERVER = "valkey-server|redis-server"


async def paid_over_http(
    http: Any, base: str, seats: list[str], flight: dict[str, Any] = SMALL_FLIGHT
) -> tuple[int, str, dict[str, Any]]:
    """A new flight of a service process, and a booking of ``seats`` on it held and paid:
    (flight id, booking id, the pay's answer)."""
    async with http.post(f"{base}/api/flights/", json=flight) as resp:
        assert resp.status == 201, await resp.text()
        flight_id = int((await resp.json())["id"])
    async with http.post(
        f"{base}/api/bookings/", json={"flight_id": flight_id, "user_id": "u1", "seats": seats}
    ) as resp:
        assert resp.status == 201, await resp.text()
        booking_id = str((await resp.json())["id"])
    async with http.post(f"{base}/api/bookings/{booking_id}/pay/") as resp:
        assert resp.status == 200, await resp.text()
        return flight_id, booking_id, await resp.json()


async def node_command(port: int, *args: Any) -> Any:
    """One command to one Redis node, whatever slots it serves (cluster tests)."""
    from holdsvc.seats.redis_client import PipelinedRedis

    node = PipelinedRedis(f"redis://127.0.0.1:{port}/0")
    try:
        return await node.execute(*args)
    finally:
        await node.close()


async def slot_owner(port: int, slot: int) -> int:
    """The port of the primary that serves ``slot``, as the node on ``port`` says."""
    for first, last, primary, *_ in await node_command(port, "CLUSTER", "SLOTS"):
        if first <= slot <= last:
            return int(primary[1])
    raise AssertionError(f"no node serves slot {slot}")


async def migrate_slot(ports: list[int], slot: int, target: int, batch: int = 10) -> None:
    """Move ``slot`` to the primary on ``target`` as redis-cli's reshard does: IMPORTING,
    MIGRATING, the keys a few at a time (calls meanwhile meet ASK), then NODE on every node
    (calls after meet MOVED)."""
    source = await slot_owner(ports[0], slot)
    ids = {p: (await node_command(p, "CLUSTER", "MYID")).decode() for p in ports}
    await node_command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    await node_command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    while keys := await node_command(source, "CLUSTER", "GETKEYSINSLOT", slot, batch):
        await node_command(source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        await asyncio.sleep(0.01)
    for port in ports:
        try:
            await node_command(port, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        except ResponseError as exc:
            # A primary left with no slot turns itself into a replica of the node that took
            # its last one (cluster-allow-replica-migration): it needs no telling.
            if "only with masters" not in str(exc):
                raise
