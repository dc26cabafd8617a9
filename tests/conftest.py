"""Fixtures: every test owns its Redis server (a real one, on a free port) and its SQLite file."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from holdsvc.app import create_app
from holdsvc.embedded_redis import EmbeddedRedis, find_binary, free_port
from holdsvc.settings import Settings

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]

SMALL_FLIGHT = {
    "flight_number": "HS1",
    "origin": "DEL",
    "destination": "BOM",
    "departure_time": "2026-12-01T09:30:00Z",
    "rows": 2,
    "seat_letters": "ABCDE",
    "price": "100.00",
    "currency": "INR",
}


# pytest-timeout prints the threads' stacks when it kills a test; for a hang in async code
# (a teardown waiting on a task) what matters is where each event-loop task waits. Printed
# this long before the timeout, into the test's captured stderr.
TASK_DUMP_BEFORE_TIMEOUT_S = 5.0


_DUMP_TIMERS: dict[str, threading.Timer] = {}


def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Beside pytest-timeout's own timer (returning None lets it set that), with the timeout
    it resolved from the ini, --timeout and markers."""
    timeout = float(settings.timeout or 0)
    if timeout > TASK_DUMP_BEFORE_TIMEOUT_S:
        timer = threading.Timer(timeout - TASK_DUMP_BEFORE_TIMEOUT_S, _dump_tasks, [item.nodeid])
        timer.daemon = True
        timer.start()
        _DUMP_TIMERS[item.nodeid] = timer


def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    timer = _DUMP_TIMERS.pop(item.nodeid, None)
    if timer is not None:
        timer.cancel()


def _dump_tasks(nodeid: str) -> None:
    lines = [f"--- {nodeid}: about to time out; event-loop tasks:"]
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
    for loop in loops:
        if loop.is_closed() or not loop.is_running():
            continue
        for task in list(asyncio.all_tasks(loop)):
            lines.append(f"{task!r}")
            lines.extend("  " + line.rstrip() for f in task.get_stack() for line in
                         traceback.format_stack(f, limit=1))  # fmt: skip
    print("\n".join(lines), file=sys.stderr, flush=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", binary=find_binary("auto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def settings(tmp_path: Path, redis_server: EmbeddedRedis) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        data_dir=tmp_path,
        db=tmp_path / "holdsvc.sqlite3",
    )


@pytest.fixture
def make_client(
    redis_server: EmbeddedRedis, aiohttp_client: AiohttpClient
) -> Callable[[Settings], Awaitable[TestClient[Any, Any]]]:
    # Depends on redis_server so that the apps close before their Redis stops.
    async def make(settings: Settings) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(settings))

    return make


@pytest.fixture
async def client(
    make_client: Callable[[Settings], Awaitable[TestClient[Any, Any]]], settings: Settings
) -> TestClient[Any, Any]:
    return await make_client(settings)


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
        self.env = {**os.environ, **(env or {})}
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


@pytest.fixture
def services() -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(
        args: list[str], env: dict[str, str] | None = None, command: str = "serve"
    ) -> ServiceProcess:
        service = ServiceProcess(args, env, command)
        started.append(service)
        service.start()
        return service

    try:
        yield start
    finally:
        for service in started:
            if service.proc is not None and service.proc.poll() is None:
                service.stop(signal.SIGKILL)
            service.log.unlink(missing_ok=True)
