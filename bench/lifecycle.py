"""lifecycle: hold -> pay -> CONFIRMED per second through the booking service, SQLite with
synchronous=FULL (group commit), and the fsyncs each confirm cost. In a worker process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.common import closed_loop
from holdsvc import HoldRequest, NewFlight, PayOutcome, Settings, State, create_app
from holdsvc import appkeys as k

LETTERS = "ABCDEFGHIJKL"
ROWS = 150


def lifecycle(
    redis_url: str, workdir: str, seconds: float, max_calls: int, db: str | None = None
) -> dict[str, Any]:
    """On the SQLite store, or on the PostgreSQL database ``db`` names."""
    return asyncio.run(_lifecycle(redis_url, Path(workdir), seconds, max_calls, db))


async def _lifecycle(
    redis_url: str, workdir: Path, seconds: float, max_calls: int, db: str | None
) -> dict[str, Any]:
    settings = Settings(
        redis_url=redis_url,
        data_dir=workdir,
        db=db or str(workdir / "lifecycle.sqlite3"),
        log_level="WARNING",
    )
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        per_flight = ROWS * len(LETTERS)
        flights = []
        for n in range(max_calls // per_flight + 1):
            flight = await app[k.FLIGHTS].create(
                NewFlight(
                    f"LC{n}", "DEL", "BOM", "2030-01-01T09:30:00Z", ROWS, LETTERS, "10.00", "INR"
                )
            )
            await app[k.RESTORER].restore(flight.id, "new flight")
            flights.append(flight)
        bookings = app[k.BOOKINGS]
        stats = app[k.STORE].writer_stats
        commits_before = stats.commits

        errors: list[str] = []

        async def book(n: int) -> str:
            flight, slot = divmod(n, per_flight)
            seat = flights[flight].seats[slot]
            try:
                held = (
                    await bookings.hold(HoldRequest(flights[flight].id, "bench", [seat], None))
                ).booking
                outcome, _ = await app[k.PAYMENTS].pay(held.id, "pm_card_visa")
            except Exception as exc:
                errors.append(repr(exc))
                return "error"
            return "confirmed" if outcome is PayOutcome.CONFIRMED else "declined"

        load = await closed_loop(book, 64, seconds, max_calls)
        commits = stats.commits - commits_before
        store = app[k.STORE]
        confirmed = (await store.count_by_state()).get(State.CONFIRMED.value, 0)
        # A seat SQL holds live for two bookings at once (its fence should make this 0).
        doubled = 0
        for flight in flights:
            seats = [seat for seat, _, _ in await store.live_seats(flight.id)]
            doubled += len(seats) - len(set(seats))
    finally:
        await runner.cleanup()
    done = load.counts.get("confirmed", 0)
    return {
        "confirms_per_s": round(load.rate("confirmed")),
        "confirmed_answers": done,
        "confirmed_in_sql": confirmed,
        "commits_per_confirm": round(commits / done, 3) if done else None,
        "sql_writes_per_confirm": 2,  # PAYMENT_PENDING (booking, seats, payment), CONFIRMED
        "double_booked_seats": doubled,
        "synchronous": "synchronous_commit=on" if db else "FULL",
        "errors": load.counts.get("error", 0),
        "first_error": errors[0] if errors else None,
        **load.summary(),
    }
