"""What only the PostgreSQL store has to prove: migrations raced by processes starting
together, a database newer than the code, the server restarted under pays, and two persisters
(one per machine) sharing one database and one Redis."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from holdsvc.embedded_redis import EmbeddedRedis
from persistence.pg_schema import LATEST
from tests.helpers import SMALL_FLIGHT, ServiceProcess, eventually
from tests.invariants import check_invariants, unsettled
from tests.pg_server import PgServer, running_pg
from tests.sql import execute, query


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "holdsvc", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.fixture
def pg_db(pg_server: PgServer, request: pytest.FixtureRequest) -> str:
    return pg_server.create_database(f"own_{abs(hash(request.node.nodeid)) % 10**9}")


def test_processes_starting_together_migrate_once(pg_db: str) -> None:
    racers = [cli("migrate", "--db", pg_db) for _ in range(4)]
    results = [finish(p) for p in racers]
    assert all(code == 0 for code, _, _ in results), results
    outs = sorted(out.strip() for _, out, _ in results)
    # Exactly one applied the migrations; the others found the schema current.
    assert outs.count(f"schema version 0 -> {LATEST} ({pg_db})") == 1, outs
    assert sum(o.startswith(f"schema version {LATEST}: up to date") for o in outs) == 3, outs
    assert query(pg_db, "SELECT version FROM holdsvc_schema") == [(LATEST,)]
    columns = {c for (c,) in query(
        pg_db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'bookings'"
    )}  # fmt: skip
    assert "owner" in columns
    indexes = dict(query(pg_db, "SELECT indexname, indexdef FROM pg_indexes"))
    fence = indexes["one_live_booking_per_seat"]
    assert "UNIQUE" in fence and "WHERE live" in fence, fence
    kinds = dict(query(
        pg_db, "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = 'payments'"
    ))  # fmt: skip
    assert kinds["amount"] == "numeric" and kinds["updated_at"] == "bigint"


def test_a_database_newer_than_the_code_is_refused(pg_db: str, tmp_path: Path) -> None:
    assert finish(cli("migrate", "--db", pg_db))[0] == 0
    execute(pg_db, "UPDATE holdsvc_schema SET version = ?", (LATEST + 1,))
    code, _, err = finish(cli("migrate", "--db", pg_db))
    assert code == 2 and "Traceback" not in err
    assert f"the database's schema is version {LATEST + 1}, newer than this holdsvc's" in err
    code, _, err = finish(cli("serve", "--db", pg_db, "--data-dir", str(tmp_path)))
    assert code == 1 and "holdsvc: cannot start: the database's schema is version" in err, err
    assert query(pg_db, "SELECT version FROM holdsvc_schema") == [(LATEST + 1,)]


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A server of this test's own: it is killed and started again."""
    with running_pg() as server:
        yield server


async def test_postgres_restarted_under_pays(
    own_pg: PgServer,
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    redis: Redis,
    services: Callable[..., ServiceProcess],
) -> None:
    db = own_pg.create_database("pays")
    node = services(
        ["--redis-url", redis_server.url, "--db", db, "--data-dir", str(tmp_path),
         "--gateway-timeout", "1", "--reconcile-grace", "0.5", "--sweep-interval", "0.2"],
        env={"HOLDSVC_TAKEOVER_AFTER": "1"},
    )  # fmt: skip
    answers: Counter[int] = Counter()
    confirmed: set[str] = set()
    async with aiohttp.ClientSession() as http:
        flight = {**SMALL_FLIGHT, "rows": 21, "seat_letters": "ABCDEF"}
        async with http.post(f"{node.base}/api/flights/", json=flight) as resp:
            flight_id = (await resp.json())["id"]
        stop = asyncio.Event()

        async def customer(n: int) -> None:
            for k in range(20):
                if stop.is_set():
                    return
                seat = f"{(n * 20 + k) // 6 + 1}{'ABCDEF'[(n * 20 + k) % 6]}"
                async with http.post(
                    f"{node.base}/api/bookings/",
                    json={"flight_id": flight_id, "user_id": f"u{n}", "seats": [seat]},
                ) as resp:
                    if resp.status != 201:
                        answers[resp.status] += 1
                        continue
                    bid = (await resp.json())["id"]
                async with http.post(f"{node.base}/api/bookings/{bid}/pay/") as resp:
                    answers[resp.status] += 1
                    if resp.status == 200:
                        assert (await resp.json())["state"] == "CONFIRMED"
                        confirmed.add(bid)
                    else:
                        assert resp.status in (409, 503), await resp.text()
                await asyncio.sleep(0.02)

        async def chaos() -> None:
            await asyncio.sleep(0.4)
            own_pg.kill(signal.SIGKILL)
            await asyncio.sleep(0.3)
            async with http.get(f"{node.base}/healthz") as resp:
                body = await resp.json()
                assert resp.status == 503 and body["sql"] == "unavailable", body
            own_pg.start()

        try:
            await asyncio.wait_for(asyncio.gather(chaos(), *(customer(n) for n in range(6))), 60)
        except AssertionError:
            print(node.output[-6000:])
            raise
        stop.set()
        assert answers[200] > 0 and answers[503] > 0, answers
        assert set(answers) <= {200, 409, 503}, answers

        async def healthy() -> bool:
            async with http.get(f"{node.base}/healthz") as resp:
                return resp.status == 200

        await eventually(healthy, timeout=10)
        # Every CONFIRMED answer is in the database, as CONFIRMED.
        states = dict(query(db, "SELECT id, state FROM bookings"))
        assert {bid: states.get(bid) for bid in confirmed} == dict.fromkeys(confirmed, "CONFIRMED")
        # New pays work after the reconnect.
        async with http.post(
            f"{node.base}/api/bookings/",
            json={"flight_id": flight_id, "user_id": "late", "seats": ["21A"]},
        ) as resp:
            bid = (await resp.json())["id"]
        async with http.post(f"{node.base}/api/bookings/{bid}/pay/") as resp:
            assert resp.status == 200, await resp.text()

    async def settled() -> bool:
        return unsettled(db) == []

    # No charge left without a seat: what the crash left open is settled by recovery.
    await eventually(settled, timeout=15, interval=0.2)
    await check_invariants(db, tmp_path / "mock-gateway.sqlite3", redis, flight_id)


async def test_two_persisters_record_every_expiry_once(
    pg_db: str,
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    services: Callable[..., ServiceProcess],
) -> None:
    where = ["--redis-url", redis_server.url, "--db", pg_db]
    node = services([*where, "--data-dir", str(tmp_path), "--no-persister", "--hold-ttl", "1"])
    persisters = [
        services([*where, "--data-dir", str(tmp_path / f"p{n}"), "--sweep-interval", "0.2"],
                 command="persister")
        for n in range(2)
    ]  # fmt: skip
    ids = []
    async with aiohttp.ClientSession() as http:
        flight = {**SMALL_FLIGHT, "rows": 50, "seat_letters": "ABCDEFGH"}
        async with http.post(f"{node.base}/api/flights/", json=flight) as resp:
            flight_id = (await resp.json())["id"]
        for n in range(400):
            seat = f"{n // 8 + 1}{'ABCDEFGH'[n % 8]}"
            async with http.post(
                f"{node.base}/api/bookings/",
                json={"flight_id": flight_id, "user_id": "u", "seats": [seat]},
            ) as resp:
                assert resp.status == 201
                ids.append((await resp.json())["id"])

    async def all_expired() -> bool:
        rows = query(
            pg_db,
            "SELECT booking_id, count(*) FROM transitions WHERE to_state = 'EXPIRED'"
            " GROUP BY booking_id",
        )
        counts = dict(rows)
        assert all(c == 1 for c in counts.values()), "an expiry was recorded twice"
        return set(counts) >= set(ids)

    await eventually(all_expired, timeout=15, interval=0.2)
    states = Counter(s for (s,) in query(pg_db, "SELECT state FROM bookings"))
    assert states == {"EXPIRED": 400}
    for p in persisters:
        p.stop(signal.SIGTERM)
        assert p.proc is not None and p.proc.returncode == 0
