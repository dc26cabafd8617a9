"""Measures expiry lag under a large live-hold load, and the time to restore booked seats
into a Redis that came back empty.

    python -m bench.recovery --live 100000 --short 1000 --booked 100000

Runs in-process against its own Redis server (free port) and its own SQLite file; prints one
JSON object. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from bench.common import flushall_sync
from holdsvc import (
    EmbeddedRedis,
    HoldRequest,
    NewFlight,
    PayOutcome,
    Settings,
    State,
    create_app,
    find_binary,
)
from holdsvc import appkeys as k

LETTERS = "ABCDEFGHIJKL"
ROWS = 150  # 1,800 seats a flight, the most a flight may have


def flight(n: int) -> NewFlight:
    return NewFlight(f"BX{n}", "DEL", "BOM", "2030-01-01T09:30:00Z", ROWS, LETTERS, "10.00", "INR")


async def make_flights(app: web.Application, count: int) -> list[int]:
    ids = []
    for n in range(count):
        f = await app[k.FLIGHTS].create(flight(n))
        await app[k.RESTORER].restore(f.id, "new flight")
        ids.append(f.id)
    return ids


async def hold_everything(app: web.Application, flights: list[int], per_booking: int) -> int:
    """Hold every seat of these flights, ``per_booking`` seats a booking, 64 at a time."""
    bookings = app[k.BOOKINGS]
    seats = [f"{r}{c}" for r in range(1, ROWS + 1) for c in LETTERS]
    groups = [seats[i : i + per_booking] for i in range(0, len(seats), per_booking)]
    jobs = [(f, g) for f in flights for g in groups]
    held = 0
    todo = iter(jobs)

    # 64 workers taking jobs in turn, not a task per job: a million tasks waiting on one
    # semaphore took the loop seconds to make and, after any error, far longer to cancel.
    async def worker() -> None:
        nonlocal held
        for flight_id, group in todo:
            await bookings.hold(HoldRequest(flight_id, "bench", group, None))
            held += len(group)

    await asyncio.gather(*(worker() for _ in range(64)))
    return held


async def expiry_lag(base: Settings, live: int, short: int) -> dict[str, Any]:
    app = create_app(base.replace(hold_ttl=600.0))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        started = time.monotonic()
        live_flights = await make_flights(app, -(-live // (ROWS * len(LETTERS))))
        held = await hold_everything(app, live_flights, 1)
        setup_s = time.monotonic() - started
    finally:
        await runner.cleanup()

    # The short holds are made by an app whose holds last 2 s; the same Redis keeps the live
    # ones. A second app serves and expires.
    app = create_app(base.replace(hold_ttl=2.0))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        [short_flight] = await make_flights(app, 1)
        seats = [f"{r}{c}" for r in range(1, ROWS + 1) for c in LETTERS][:short]
        ids = [
            (await app[k.BOOKINGS].hold(HoldRequest(short_flight, "bench", [s], None))).booking.id
            for s in seats
        ]
        store = app[k.STORE]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            # A hold reaches SQL only with its outcome: every id must be there, and EXPIRED.
            states = await store.states_of(ids)
            if len(states) == len(ids) and all(s == State.EXPIRED.value for s in states.values()):
                break
        rows: list[tuple[int, str]] = []
        for booking_id in ids:
            # An EXPIRED booking's last change is its expiry: lag = that commit - its deadline.
            booking = await app[k.BOOKINGS].get(booking_id)
            if booking.state != State.EXPIRED.value:
                continue
            history = await store.transitions_of(booking_id)
            cause = [c for _, to, c in history if to == State.EXPIRED.value][-1]
            rows.append((booking.updated_at - booking.hold_expires_at, cause))
    finally:
        await runner.cleanup()
    lags = sorted(r[0] for r in rows)
    causes: dict[str, int] = {}
    for _, cause in rows:
        causes[cause] = causes.get(cause, 0) + 1
    return {
        "live_holds": held,
        "live_setup_s": round(setup_s, 1),
        "short_holds": len(ids),
        "expired": len(lags),
        "stuck": len(ids) - len(lags),
        "lag_p50_ms": lags[len(lags) // 2] if lags else None,
        "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
        "lag_max_ms": lags[-1] if lags else None,
        "lag_mean_ms": round(statistics.fmean(lags), 1) if lags else None,
        "expired_by": causes,
    }


async def restore_time(base: Settings, booked: int, redis_url: str) -> dict[str, Any]:
    app = create_app(base)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        flights = await make_flights(app, -(-booked // (ROWS * len(LETTERS))))
        bookings = app[k.BOOKINGS]
        seats = [f"{r}{c}" for r in range(1, ROWS + 1) for c in LETTERS]
        count = 0
        for f in flights:
            for i in range(0, len(seats), 10):
                if count >= booked:
                    break
                group = seats[i : i + 10]
                # Through the domain, as a customer books: hold, then pay (the mock gateway).
                held = (await bookings.hold(HoldRequest(f, "bench", group, None))).booking
                outcome, _ = await app[k.PAYMENTS].pay(held.id, "pm_card_visa")
                if outcome is not PayOutcome.CONFIRMED:
                    raise RuntimeError(f"restore_time: booking {held.id} was {outcome}")
                count += len(group)
        async with Redis.from_url(redis_url) as redis:
            await flushall_sync(redis)
            started = time.monotonic()
            restored = await app[k.RESTORER].check()
            elapsed = time.monotonic() - started
            keys = await redis.dbsize()
    finally:
        await runner.cleanup()
    return {
        "booked_seats": count,
        "flights_restored": restored,
        "restore_s": round(elapsed, 3),
        "redis_keys_after": keys,
    }


def expiry_only(redis_url: str, workdir: str, live: int, short: int) -> dict[str, Any]:
    """The harness's expiry scenario, in a worker process."""
    base = Settings(
        redis_url=redis_url,
        data_dir=Path(workdir),
        db=str(Path(workdir) / "expiry.sqlite3"),
        log_level="WARNING",
    )
    return asyncio.run(expiry_lag(base, live, short))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--short", type=int, default=1_000)
    parser.add_argument("--booked", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", binary=find_binary("auto"))
        server.start()
        try:
            base = Settings(
                redis_url=server.url, data_dir=Path(tmp), db=str(Path(tmp) / "a.sqlite3")
            )
            result: dict[str, Any] = {"expiry": await expiry_lag(base, args.live, args.short)}
            async with Redis.from_url(server.url) as redis:
                await flushall_sync(redis)
            base = base.replace(db=str(Path(tmp) / "b.sqlite3"))
            result["restore"] = await restore_time(base, args.booked, server.url)
            result["redis_server"] = server.binary.name
        finally:
            server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
