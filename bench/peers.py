"""peers: the same hold workload (random 1-4 adjacent seats of flights of 180 seats) through
holdsvc's store, PostgreSQL row locks (asyncpg, SELECT ... FOR UPDATE) and SQLite
(BEGIN IMMEDIATE, WAL, synchronous=FULL). Each runs in its own worker process."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import closed_loop
from bench.store import META, SEATS, TTL_MS, mark_flights, open_store
from holdsvc import Held

FLIGHTS = 2000
CONCURRENCY = 64


def workload(n: int, seed: int = 1) -> list[tuple[int, list[str]]]:
    rng = random.Random(seed)
    attempts = []
    for _ in range(n):
        size = rng.randint(1, 4)
        row = rng.randint(1, 30)
        start = rng.randint(0, 6 - size)
        attempts.append(
            (rng.randint(1, FLIGHTS), [f"{row}{'ABCDEF'[start + i]}" for i in range(size)])
        )
    return attempts


def _result(
    load: Any, concurrency: int, won: dict[str, int], holders: Counter[str]
) -> dict[str, Any]:
    return {
        "attempts_per_s": round(load.rate("held", "refused")),
        "held_per_s": round(load.rate("held")),
        "concurrency": concurrency,
        **load.summary(),
        # All or nothing: every winner holds all its seats and a loser none (a holder whose
        # count of seats differs from what it won, either way, is one violation).
        "wrong_holders": sum(1 for h in set(won) | set(holders) if won.get(h) != holders[h]),
    }


def holdsvc_peer(url: str, seconds: float, max_calls: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        holds = await open_store(url)
        await mark_flights(holds, range(1, FLIGHTS + 1))
        attempts = workload(max_calls)
        won: dict[str, int] = {}

        async def attempt(n: int) -> str:
            flight, seats = attempts[n]
            result = await holds.hold(flight, seats, f"p{n}", TTL_MS, META)
            if isinstance(result, Held):
                won[f"p{n}"] = len(seats)
                return "held"
            return "refused"

        load = await closed_loop(attempt, CONCURRENCY, seconds, max_calls)
        await holds.close()
        holders: Counter[str] = Counter()
        async with Redis.from_url(url, decode_responses=True) as redis:
            keys = [k async for k in redis.scan_iter(match="{f:*}:[0-9]*", count=10_000)]
            for start in range(0, len(keys), 10_000):
                values = await redis.mget(keys[start : start + 10_000])
                holders.update(str(v) for v in values if v is not None)
        return _result(load, CONCURRENCY, won, holders)

    return asyncio.run(run())


PG_SCHEMA = """
DROP TABLE IF EXISTS bench_seats;
CREATE TABLE bench_seats (
    flight_id integer NOT NULL,
    seat text NOT NULL,
    holder text,
    expires_at timestamptz,
    PRIMARY KEY (flight_id, seat)
);
"""


def postgres_peer(dsn: str, seconds: float, max_calls: int, pool: int) -> dict[str, Any]:
    import asyncpg  # the bench extra; only this peer needs it

    async def run() -> dict[str, Any]:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute(PG_SCHEMA)
            await conn.copy_records_to_table(
                "bench_seats",
                records=[(f, s, None, None) for f in range(1, FLIGHTS + 1) for s in SEATS],
                columns=["flight_id", "seat", "holder", "expires_at"],
            )
        finally:
            await conn.close()
        attempts = workload(max_calls)
        won: dict[str, int] = {}
        async with asyncpg.create_pool(dsn, min_size=pool, max_size=pool) as db:

            async def attempt(n: int) -> str:
                flight, seats = attempts[n]
                async with db.acquire() as c, c.transaction():
                    rows = await c.fetch(
                        "SELECT seat FROM bench_seats WHERE flight_id = $1 AND seat = ANY($2)"
                        " AND (holder IS NULL OR expires_at < now()) ORDER BY seat FOR UPDATE",
                        flight,
                        seats,
                    )
                    if len(rows) != len(seats):
                        return "refused"
                    await c.execute(
                        "UPDATE bench_seats SET holder = $3, expires_at = now() + interval '600 s'"
                        " WHERE flight_id = $1 AND seat = ANY($2)",
                        flight,
                        seats,
                        f"p{n}",
                    )
                won[f"p{n}"] = len(seats)  # committed
                return "held"

            load = await closed_loop(attempt, CONCURRENCY, seconds, max_calls)
            rows = await db.fetch(
                "SELECT holder, count(*) FROM bench_seats WHERE holder IS NOT NULL GROUP BY holder"
            )
        holders = Counter({str(r[0]): int(r[1]) for r in rows})
        return {**_result(load, CONCURRENCY, won, holders), "pool": pool}

    return asyncio.run(run())


def sqlite_peer(path: str, seconds: float, max_calls: int) -> dict[str, Any]:
    import aiosqlite

    Path(path).unlink(missing_ok=True)

    async def run() -> dict[str, Any]:
        async with aiosqlite.connect(path, isolation_level=None) as db:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute(
                "CREATE TABLE seats (flight_id INTEGER, seat TEXT, holder TEXT, expires_at REAL,"
                " PRIMARY KEY (flight_id, seat)) WITHOUT ROWID"
            )
            await db.execute("BEGIN")
            await db.executemany(
                "INSERT INTO seats VALUES (?, ?, NULL, NULL)",
                [(f, s) for f in range(1, FLIGHTS + 1) for s in SEATS],
            )
            await db.execute("COMMIT")
            attempts = workload(max_calls)
            won: dict[str, int] = {}
            lock = asyncio.Lock()  # one connection: one transaction at a time

            async def attempt(n: int) -> str:
                flight, seats = attempts[n]
                marks = ",".join("?" * len(seats))
                async with lock:
                    await db.execute("BEGIN IMMEDIATE")
                    try:
                        cur = await db.execute(
                            f"SELECT count(*) FROM seats WHERE flight_id = ? AND seat IN ({marks})"
                            " AND (holder IS NULL OR expires_at < ?)",
                            (flight, *seats, time.time()),
                        )
                        row = await cur.fetchone()
                        if row is None or row[0] != len(seats):
                            return "refused"
                        await db.execute(
                            f"UPDATE seats SET holder = ?, expires_at = ?"
                            f" WHERE flight_id = ? AND seat IN ({marks})",
                            (f"p{n}", time.time() + 600, flight, *seats),
                        )
                    finally:
                        await db.execute("COMMIT")
                won[f"p{n}"] = len(seats)  # committed
                return "held"

            load = await closed_loop(attempt, CONCURRENCY, seconds, max_calls)
            cur = await db.execute(
                "SELECT holder, count(*) FROM seats WHERE holder IS NOT NULL GROUP BY holder"
            )
            holders = Counter({str(h): int(c) for h, c in await cur.fetchall()})
        return _result(load, CONCURRENCY, won, holders)

    return asyncio.run(run())
