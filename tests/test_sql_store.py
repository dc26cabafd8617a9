"""The SQL store: durability pragmas, the one-live-booking-per-seat fence, group commit, its
writer process (death, restart, bad messages), and what the service answers meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from holdsvc.appkeys import STORE
from holdsvc.domain.flights import Flights
from holdsvc.domain.states import State, move
from holdsvc.settings import Settings
from persistence.records import (
    Moved,
    NewBooking,
    NewFlight,
    PaymentChange,
    PaymentChanged,
    SeatOwnedInSql,
    now_ms,
)
from persistence.sqlite_store import SqlStore
from persistence.stores import AnyStore, PgStore, open_store
from persistence.writer import Call, GroupCommitWriter, WriterClosed
from tests.helpers import eventually, hold, insert_held, new_flight, seat_map
from tests.sql import execute

SUPERSEDE = move(State.EXPIRED, "superseded")
FLIGHT = NewFlight("HS9", "DEL", "BOM", "2030-01-01T09:30:00Z", 2, "AB", "10.00", "INR")


@pytest.fixture
async def store(db: str) -> AsyncIterator[AnyStore]:
    s = await open_store(db)
    try:
        yield s
    finally:
        await s.close()


def booking(bid: str, flight_id: int, seats: list[str]) -> NewBooking:
    return NewBooking(
        id=bid,
        flight_id=flight_id,
        user_id="u",
        state="SEAT_HELD",
        seats=seats,
        amount="10.00",
        currency="INR",
        hold_expires_at=now_ms() + 60_000,
        created_at=now_ms(),
    )


@pytest.mark.sqlite_only
async def test_every_connection_is_wal_and_synchronous_full(store: SqlStore) -> None:
    # Asked on the store's own connections: the writer process's and the reader's.
    wanted = {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 10_000}
    assert await store.pragmas() == {"writer": wanted, "reader": wanted}


async def test_a_sold_seat_cannot_be_written_to_a_second_booking(store: AnyStore, db: str) -> None:
    flight = await store.create_flight(FLIGHT)
    supersede = move(State.EXPIRED, "superseded")
    await insert_held(store, booking("a", flight.id, ["1A"]), supersede)
    assert (await store.transition("a", move(State.PAYMENT_PENDING, "pay"))).moved
    assert (await store.transition("a", move(State.CONFIRMED, "paid"))).moved

    # A stale holder (Redis lost its data, or a GC pause) cannot sell the seat again.
    with pytest.raises(SeatOwnedInSql):
        await insert_held(store, booking("b", flight.id, ["1B", "1A"]), supersede)
    assert await store.get_booking("b") is None
    assert await store.live_seats(flight.id) == [("1A", "a", "CONFIRMED")]

    # Below the store's own check, the unique index refuses it too.
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        execute(
            db,
            "INSERT INTO booking_seats (booking_id, pos, flight_id, seat, live)"
            " VALUES ('a', 9, ?, '1A', ?)",
            (flight.id, True),
        )


async def test_compare_and_set_refuses_moves_outside_the_table(store: AnyStore) -> None:
    flight = await store.create_flight(FLIGHT)
    await insert_held(store, booking("c", flight.id, ["2A"]), move(State.EXPIRED, "superseded"))
    refused = await store.transition("c", move(State.REFUNDED, "refund"))
    assert not refused.moved and refused.state == "SEAT_HELD"
    assert (await store.transition("c", move(State.EXPIRED, "test"))).moved
    again = await store.transition("c", move(State.EXPIRED, "test"))
    assert not again.moved and again.state == "EXPIRED"
    assert await store.transitions_of("c") == [
        ("INITIATED", "SEAT_HELD", "hold"),
        ("SEAT_HELD", "EXPIRED", "test"),
    ]
    missing = await store.transition("nope", move(State.EXPIRED, "test"))
    assert missing == type(missing)(False, None)


async def test_concurrent_writes_share_commits(store: AnyStore) -> None:
    flight = await store.create_flight(FLIGHT)
    before = store.writer_stats.commits
    n = 200
    await asyncio.gather(
        *(
            insert_held(
                store, booking(f"g{i}", flight.id, [f"{i}Z"]), move(State.EXPIRED, "superseded")
            )
            for i in range(n)
        )
    )
    commits = store.writer_stats.commits - before
    assert commits < n / 4, f"{n} holds took {commits} commits"
    assert len(await store.live_seats(flight.id)) == n


async def test_a_failing_commit_observer_does_not_stop_the_writer(store: AnyStore) -> None:
    def broken(batch: int, seconds: float) -> None:
        raise RuntimeError("observer bug")

    store.on_commit(broken)
    flight = await store.create_flight(FLIGHT)
    # Every write after the broken observer still commits and answers.
    await asyncio.wait_for(store.renew_claims(["i1:t"]), 5)
    await asyncio.wait_for(insert_held(store, booking("a", flight.id, ["1A"]), SUPERSEDE), 5)
    assert (await store.get_booking("a")) is not None


SELECT_1 = Call(sqlite3.Connection.execute, ("SELECT 1",))
# A statement that keeps the writer process busy for seconds.
BUSY = Call(
    sqlite3.Connection.execute,
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1e8)"
     " SELECT count(*) FROM c",),
)  # fmt: skip
CREATE_T = Call(sqlite3.Connection.execute, ("CREATE TABLE IF NOT EXISTS t (x)",))


async def test_a_dead_writer_process_fails_its_callers_and_is_replaced(tmp_path: Path) -> None:
    writer = GroupCommitWriter(tmp_path / "w.sqlite3")
    await writer.start(CREATE_T)
    try:
        first = asyncio.create_task(writer.submit(BUSY))
        await asyncio.sleep(0.2)  # the first group is now running in the writer process
        queued = asyncio.create_task(writer.submit(SELECT_1))
        await asyncio.sleep(0.05)
        dead = writer.pid
        assert dead is not None and writer.alive
        os.kill(dead, signal.SIGKILL)
        # Neither caller waits for ever: both hear that the outcome is unknown.
        for waiting in (first, queued):
            with pytest.raises(WriterClosed):
                await asyncio.wait_for(waiting, 5)

        # A new writer process takes over, and writes commit again.
        async def replaced() -> bool:
            return writer.alive and writer.pid not in (None, dead)

        await eventually(replaced, timeout=10, interval=0.05)
        await writer.submit(Call(_insert_t))
        assert await writer.submit(Call(_count_t)) == 1
    finally:
        await writer.close()
    assert not writer.alive and writer.pid is None


class _Unloadable:
    """Pickles in the service, fails to unpickle in the writer process."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_refuse, ("no",))

    def __call__(self, conn: sqlite3.Connection) -> None:
        raise AssertionError("never runs")


def _refuse(text: str) -> None:
    raise ValueError(text)


async def test_an_operation_that_does_not_load_fails_alone(tmp_path: Path) -> None:
    writer = GroupCommitWriter(tmp_path / "w.sqlite3")
    await writer.start(CREATE_T)
    try:
        bad = asyncio.create_task(writer.submit(_Unloadable()))
        good = asyncio.create_task(writer.submit(Call(_count_t)))
        with pytest.raises(RuntimeError, match="cannot load"):
            await bad
        assert await good == 0
        assert writer.alive
    finally:
        await writer.close()


def _insert_t(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO t VALUES (1)")


def _count_t(conn: sqlite3.Connection) -> int:
    count: int = conn.execute("SELECT count(*) FROM t").fetchone()[0]
    return count


def test_the_writer_process_ends_with_its_service(tmp_path: Path) -> None:
    # The service SIGKILLed: nothing tells the writer, but its socket closes and it exits.
    script = (
        "import asyncio\n"
        "from pathlib import Path\n"
        "from persistence.sqlite_store import SqlStore\n"
        "async def main():\n"
        f"    store = await SqlStore.open(Path({str(tmp_path / 's.sqlite3')!r}))\n"
        "    print(store.writer_pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as svc:
        assert svc.stdout is not None
        writer_pid = int(svc.stdout.readline())
        svc.kill()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(writer_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"writer process {writer_pid} outlived its service")


async def test_concurrent_reads_each_get_their_own_booking(store: AnyStore) -> None:
    flight = await store.create_flight(FLIGHT)
    await insert_held(store, booking("a", flight.id, ["1A", "2B"]), SUPERSEDE)
    await insert_held(store, booking("b", flight.id, ["1B"]), SUPERSEDE)
    # Issued in one loop turn, so they share queries; duplicates and a miss included.
    got = await asyncio.gather(*(store.get_booking(i) for i in ["a", "b", "nope", "a", "b"]))
    assert [g.id if g else None for g in got] == ["a", "b", None, "a", "b"]
    assert got[0] is not None and got[0].seats == ["1A", "2B"]
    assert got[1] is not None and got[1].seats == ["1B"]
    # A read issued after a commit sees it.
    assert (await store.transition("a", move(State.PAYMENT_PENDING, "pay"))).moved
    after = await store.get_booking("a")
    assert after is not None and after.state == "PAYMENT_PENDING"


async def test_an_id_sqlite_cannot_encode_is_not_found_and_harms_no_other_read(
    store: AnyStore,
) -> None:
    flight = await store.create_flight(FLIGHT)
    await insert_held(store, booking("a", flight.id, ["1A"]), SUPERSEDE)
    # A lone surrogate cannot be encoded for SQLite; it is asked in the same turn as "a".
    good, bad = await asyncio.gather(store.get_booking("a"), store.get_booking("\udcff"))
    assert good is not None and good.id == "a"
    assert bad is None


async def test_overlapping_flight_listings_list_each_flight_once(store: AnyStore) -> None:
    flights = Flights(store)
    for _ in range(3):
        await store.create_flight(FLIGHT)  # as another process would: not in this cache
    listed = await asyncio.gather(flights.all(), flights.all(), flights.all())
    assert [[f.id for f in one] for one in listed] == [[1, 2, 3]] * 3
    await store.create_flight(FLIGHT)
    assert [f.id for f in await flights.all()] == [1, 2, 3, 4]


async def test_transitions_queued_together_each_get_their_own_answer(store: AnyStore) -> None:
    flight = await store.create_flight(FLIGHT)
    for bid, seat in (("a", "1A"), ("b", "1B"), ("c", "2A"), ("d", "2B")):
        await insert_held(store, booking(bid, flight.id, [seat]), SUPERSEDE)
    pending = PaymentChange("pending", method="pm_card_visa", amount="10.00", currency="INR")
    # All valid: they share one group and its statements.
    first = await asyncio.gather(
        store.transition("a", move(State.PAYMENT_PENDING, "pay"), payment=pending),
        store.transition("b", move(State.PAYMENT_PENDING, "pay"), payment=pending),
        store.transition("c", move(State.EXPIRED, "sweep")),
    )
    assert [(m.moved, m.state, m.previous) for m in first] == [
        (True, "PAYMENT_PENDING", "SEAT_HELD"),
        (True, "PAYMENT_PENDING", "SEAT_HELD"),
        (True, "EXPIRED", "SEAT_HELD"),
    ]
    captured = PaymentChange("captured", {"pending"}, payment_id="pi_1")
    # One refused move and one payment in the wrong status among valid ones: each answers
    # for itself, and nothing of the refused ones is written.
    second = asyncio.gather(
        store.transition("a", move(State.CONFIRMED, "paid"), payment=captured),
        store.transition("c", move(State.CONFIRMED, "paid")),  # EXPIRED: not a source
        store.transition("d", move(State.PAYMENT_PENDING, "pay"), payment=captured),
        return_exceptions=True,
    )
    a, c, d = await second
    assert isinstance(a, Moved) and (a.moved, a.state) == (True, "CONFIRMED")
    assert isinstance(c, Moved) and (c.moved, c.state) == (False, "EXPIRED")
    assert isinstance(d, PaymentChanged)
    got = {bid: await store.get_booking(bid) for bid in "abcd"}
    assert {bid: b.state for bid, b in got.items() if b} == {
        "a": "CONFIRMED", "b": "PAYMENT_PENDING", "c": "EXPIRED", "d": "SEAT_HELD",
    }  # fmt: skip
    assert got["a"] is not None and got["a"].payment is not None
    assert (got["a"].payment.status, got["a"].payment.payment_id) == ("captured", "pi_1")
    assert got["d"] is not None and got["d"].payment is None
    assert await store.live_seats(flight.id) == [
        ("1A", "a", "CONFIRMED"), ("1B", "b", "PAYMENT_PENDING"), ("2B", "d", "SEAT_HELD"),
    ]  # fmt: skip
    assert [t[1] for t in await store.transitions_of("a")] == [
        "SEAT_HELD", "PAYMENT_PENDING", "CONFIRMED",
    ]  # fmt: skip
    assert [t[1] for t in await store.transitions_of("d")] == ["SEAT_HELD"]


async def test_a_writer_that_never_opened_does_not_keep_restarting(tmp_path: Path) -> None:
    writer = GroupCommitWriter(tmp_path / "w.sqlite3")
    with pytest.raises(sqlite3.OperationalError):
        await writer.start(Call(sqlite3.Connection.execute, ("THIS IS NOT SQL",)))
    await asyncio.sleep(0.5)  # a restart would have begun by now
    assert writer.pid is None and not writer.alive and writer.restarts == 0
    with pytest.raises(WriterClosed):
        await writer.submit(SELECT_1)
    await writer.close()


async def test_close_during_a_restart_waits_for_the_process(tmp_path: Path) -> None:
    writer = GroupCommitWriter(tmp_path / "w.sqlite3")
    await writer.start(CREATE_T)
    dead = writer.pid
    assert dead is not None
    os.kill(dead, signal.SIGKILL)

    async def restarting() -> bool:  # the loss is seen; a replacement is being started
        return not writer.alive

    await eventually(restarting, timeout=5, interval=0.005)
    await writer.close()
    assert writer.pid is None and not writer.alive
    await asyncio.sleep(0.5)
    assert writer.pid is None  # nothing started after close


@pytest.mark.sqlite_only  # the SQLite writer process and its file
async def test_the_service_answers_503_while_its_writer_is_replaced(
    client: TestClient[Any, Any], settings: Settings
) -> None:
    flight = await new_flight(client)
    first = await hold(client, flight["id"], ["1A"])
    store = client.app[STORE]
    db = settings.db_path
    files = [Path(f"{db}{suffix}") for suffix in ("", "-wal", "-shm")]
    # The writer dies, and its replacement cannot open the file for now.
    for f in files:
        f.rename(f.with_name(f.name + ".away"))
    db.mkdir()
    dead = store.writer_pid
    assert dead is not None
    os.kill(dead, signal.SIGKILL)

    async def refused() -> bool:
        resp = await client.post(f"/api/bookings/{first['id']}/pay/")
        return resp.status == 503 and resp.headers["Retry-After"] == "1"

    # A pay needs SQL: 503. A hold does not: it still answers, from Redis alone.
    await eventually(refused, timeout=5)
    health = await client.get("/healthz")
    assert health.status == 503 and (await health.json())["sql"] == "unavailable"
    second = await hold(client, flight["id"], ["1B"], user="u2")
    assert (await seat_map(client, flight["id"]))["1A"] == "held"

    db.rmdir()
    for f in files:
        f.with_name(f.name + ".away").rename(f)

    async def healthy() -> bool:
        return (await client.get("/healthz")).status == 200

    await eventually(healthy, timeout=15)
    for booking in (first, second):
        paid = await client.post(f"/api/bookings/{booking['id']}/pay/")
        assert paid.status == 200, await paid.text()


async def test_an_operation_the_database_rejects_fails_alone_in_its_group(
    store: AnyStore,
) -> None:
    flight = await store.create_flight(FLIGHT)
    good = [booking(f"ok{i}", flight.id, [f"{i}A"]) for i in range(10)]
    # PostgreSQL refuses a NUL in text (SQLite stores it): queued in the same turn as the
    # good ones, so they share a group commit.
    bad = dataclasses.replace(booking("bad", flight.id, ["1B"]), user_id="u\x00")
    results = await asyncio.gather(
        *(insert_held(store, b, SUPERSEDE) for b in [*good[:5], bad, *good[5:]]),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == (1 if isinstance(store, PgStore) else 0), results
    assert isinstance(results[5], BaseException) or not failed
    for b in good:
        written = await store.get_booking(b.id)
        assert written is not None and written.state == "SEAT_HELD", b.id
