"""Fixtures: every test owns its Redis server (a real one, on a free port) and its SQLite file."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from holdsvc.app import create_app
from holdsvc.embedded_redis import EmbeddedRedis, LocalCluster, find_binary
from holdsvc.settings import Settings
from tests.helpers import ServiceProcess
from tests.pg_server import PgServer, running_pg

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_pg = callspec is not None and callspec.params.get("db") == "postgresql"
        (drop if on_pg and item.get_closest_marker("sqlite_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the run (started when a test first asks for it); each test
    gets a database of its own. A test that kills its server starts one of its own."""
    with running_pg() as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A Redis Cluster of 3 primaries of the test's own, on free ports."""
    c = LocalCluster(tmp_path / "cluster", binary=find_binary("auto"), primaries=3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


_databases = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database a test runs against: every test that touches SQL runs on both stores."""
    if request.param == "sqlite":
        return str(tmp_path / "holdsvc.sqlite3")
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database(f"t{os.getpid()}_{next(_databases)}")


@pytest.fixture
def settings(tmp_path: Path, redis_server: EmbeddedRedis, db: str) -> Settings:
    # No per-customer seat limit: most tests hold many seats as one user. The limit's own
    # tests (test_checkout.py) set it, and check its default.
    return Settings(redis_url=redis_server.url, data_dir=tmp_path, db=db, max_seats_per_user=0)


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
