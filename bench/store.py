"""Store-level scenarios: holdsvc's hold script over its own Redis client, in a worker process.

store_holds  4-seat holds/s through the hold store, next to the same script sent by a minimal
             client (the ceiling) and bare SET NX PX/s, same connection, same concurrency
contention   64 clients fighting for the same 10 seats; double holds counted
memory       Redis bytes per held seat
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import closed_loop, flushall_sync
from holdsvc import (
    Held,
    HoldMeta,
    HoldStore,
    NotRestored,
    PipelinedRedis,
    Taken,
    connect_hold_store,
    load_scripts,
    seat_keys,
)

LETTERS = "ABCDEF"
ROWS = 30
SEATS = [f"{r}{c}" for r in range(1, ROWS + 1) for c in LETTERS]  # 180, as the seed flights
TTL_MS = 600_000

# Every hold writes its booking record, as the service's holds do.
META = HoldMeta("bench", "10.00", "INR")


async def open_store(url: str) -> HoldStore:
    return await connect_hold_store(url)


async def mark_flights(holds: HoldStore, flights: range) -> None:
    run_id = await holds.server_run_id()
    for f in flights:
        await holds.restore(f, [], run_id)


def four_seat_holds(
    holds: HoldStore, flights: range, prefix: str
) -> Callable[[int], Awaitable[str]]:
    """Call n holds the n-th 4 seats of these flights (each asked for once): "held"."""
    per_flight = len(SEATS) // 4

    async def hold(n: int) -> str:
        flight, slot = divmod(n, per_flight)
        seats = SEATS[slot * 4 : slot * 4 + 4]
        result = await holds.hold(flights[flight], seats, f"{prefix}{n}", TTL_MS, META)
        return "held" if isinstance(result, Held) else "refused"

    return hold


def store_holds(url: str, seconds: float, max_calls: int, concurrency: int) -> dict[str, Any]:
    return asyncio.run(_store_holds(url, seconds, max_calls, concurrency))


async def _store_holds(
    url: str, seconds: float, max_calls: int, concurrency: int
) -> dict[str, Any]:
    holds = await open_store(url)
    per_flight = len(SEATS) // 4
    flights = range(10_000, 10_000 + max_calls // per_flight + 2)
    await mark_flights(holds, flights)
    prefix = secrets.token_hex(3)

    # Redis's own cost, for reference: a bare SET NX PX through the same pipelining client.
    bare = PipelinedRedis(url)

    async def raw(n: int) -> str:
        ok = await bare.execute("SET", f"{{r:{prefix}}}:{n}", b"bench", "NX", "PX", TTL_MS)
        return "set" if ok is not None else "refused"

    # The ceiling for holdsvc's client: the same script with the same keys and arguments,
    # EVALSHA from that minimal client, its reply only checked for success.
    sha = (await load_scripts(holds.redis)).hold_seats.sha
    ceiling_flights = range(flights.stop, flights.stop + len(flights))
    await mark_flights(holds, ceiling_flights)
    run_id = await holds.server_run_id()

    async def script(n: int) -> str:
        flight, slot = divmod(n, per_flight)
        f, bid = ceiling_flights[flight], f"c{prefix}{n}"
        seats = SEATS[slot * 4 : slot * 4 + 4]
        reply = await bare.execute(
            "EVALSHA", sha, 10 + len(seats),
            seat_keys.deadlines(f), seat_keys.marker(f), seat_keys.records(f),
            seat_keys.idempotency(f, ""), *seat_keys.index(f), seat_keys.stream(f),
            seat_keys.customers(f), *seat_keys.seats(f, seats),
            bid, TTL_MS, META.user_id, META.amount, META.currency, "", 0, run_id,
            holds.stream_length, 0,
        )  # fmt: skip
        return "held" if reply[0] == 1 else "refused"

    hold = four_seat_holds(holds, flights, f"b{prefix}")

    raw_load = await closed_loop(raw, concurrency, seconds, max_calls)
    ceiling_load = await closed_loop(script, concurrency, seconds, max_calls)
    hold_load = await closed_loop(hold, concurrency, seconds, max_calls)
    await bare.close()
    await holds.close()
    raw_rate, hold_rate = raw_load.rate("set"), hold_load.rate("held")
    ceiling_rate = ceiling_load.rate("held")
    return {
        "holds_per_s": round(hold_rate),
        "script_ceiling_per_s": round(ceiling_rate),
        "ratio_vs_script_ceiling": round(hold_rate / ceiling_rate, 3) if ceiling_rate else None,
        "raw_per_s": round(raw_rate),
        "ratio_vs_raw": round(hold_rate / raw_rate, 3) if raw_rate else None,
        "seats_per_hold": 4,
        "concurrency": concurrency,
        "hold_refused": hold_load.counts.get("refused", 0) + ceiling_load.counts.get("refused", 0),
        "raw_refused": raw_load.counts.get("refused", 0),
        **{f"hold_{k}": v for k, v in hold_load.summary().items()},
        **{f"raw_{k}": v for k, v in raw_load.summary().items()},
    }


def fsync_always(
    everysec_url: str, always_url: str, seconds: float, max_calls: int, concurrency: int
) -> dict[str, Any]:
    """The same 4-seat holds against a server that fsyncs its AOF every second and one that
    fsyncs on every write (``--redis-fsync always``)."""

    async def rate(url: str) -> tuple[float, Any]:
        holds = await open_store(url)
        flights = range(30_000, 30_000 + max_calls // (len(SEATS) // 4) + 2)
        await mark_flights(holds, flights)
        load = await closed_loop(
            four_seat_holds(holds, flights, "f"), concurrency, seconds, max_calls
        )
        await holds.close()
        return load.rate("held"), load.summary().get("p99_ms")

    async def run() -> dict[str, Any]:
        (every, every_p99), (always, always_p99) = await rate(everysec_url), await rate(always_url)
        return {
            "everysec_per_s": round(every),
            "always_per_s": round(always),
            "always_vs_everysec": round(always / every, 3) if every else None,
            "everysec_p99_ms": every_p99,
            "always_p99_ms": always_p99,
        }

    return asyncio.run(run())


def contention(url: str, seconds: float, max_calls: int, clients: int) -> dict[str, Any]:
    return asyncio.run(_contention(url, seconds, max_calls, clients))


async def _contention(url: str, seconds: float, max_calls: int, clients: int) -> dict[str, Any]:
    holds = await open_store(url)
    flight = 20_000
    await mark_flights(holds, range(flight, flight + 1))
    ten = ["1A", "1B", "1C", "1D", "1E", "2A", "2B", "2C", "2D", "2E"]
    owner: dict[str, str] = {}
    double_held = 0
    rng = random.Random(5)

    async def fight(n: int) -> str:
        nonlocal double_held
        start = rng.randrange(len(ten))
        seats = ten[start : start + rng.randint(1, 3)]
        bid = f"c{n}"
        result = await holds.hold(flight, seats, bid, TTL_MS, META)
        if isinstance(result, Taken):
            return "refused"
        if isinstance(result, NotRestored):
            return "error"
        # Redis says these seats are ours: nobody may be holding any of them right now.
        double_held += sum(1 for s in seats if s in owner)
        owner.update(dict.fromkeys(seats, bid))
        await asyncio.sleep(0)
        # Forget ownership before the release: once released, the next holder is legitimate.
        for s in seats:
            del owner[s]
        await holds.release(flight, seats, bid)
        return "held"

    load = await closed_loop(fight, clients, seconds, max_calls)
    await holds.close()
    return {
        "holds_per_s": round(load.rate("held")),
        "refusals_per_s": round(load.rate("refused")),
        "errors": load.counts.get("error", 0),
        "double_held": double_held,
        "clients": clients,
        **load.summary(),
    }


def memory(url: str, seats: int) -> dict[str, Any]:
    return asyncio.run(_memory(url, seats))


async def _memory(url: str, seat_count: int) -> dict[str, Any]:
    holds = await open_store(url)
    await flushall_sync(holds.redis)
    flights = range(30_000, 30_000 + seat_count // len(SEATS) + 1)
    await mark_flights(holds, flights)
    rng = random.Random(9)
    before = (await holds.redis.info("memory"))["used_memory"]
    held = 0
    jobs: list[tuple[int, list[str]]] = []
    for f in flights:
        i = 0
        while i < len(SEATS) and held < seat_count:
            size = min(rng.randint(1, 4), len(SEATS) - i, seat_count - held)
            jobs.append((f, SEATS[i : i + size]))
            i += size
            held += size
    sem = asyncio.Semaphore(64)

    async def one(f: int, seats: list[str]) -> None:
        async with sem:
            # Booking ids as long as the service makes them: 20 url-safe characters and the flight.
            bid = f"{secrets.token_urlsafe(15)}.{f}"
            result = await holds.hold(f, seats, bid, TTL_MS, META)
            assert isinstance(result, Held)

    await asyncio.gather(*(one(f, s) for f, s in jobs))
    after = (await holds.redis.info("memory"))["used_memory"]
    # The part of it that is the flights' seat streams (one entry a hold, and each stream's
    # own fixed cost, shared by its flight's seats), so the hold's own cost shows apart.
    stream_pipe = holds.redis.pipeline(transaction=False)
    for f in flights:
        stream_pipe.memory_usage(seat_keys.stream(f))
    streams = sum(n or 0 for n in await stream_pipe.execute())
    info = await holds.redis.info("server")
    await holds.close()
    return {
        "held_seats": held,
        "bookings": len(jobs),
        "bytes_per_held_seat": round((after - before) / held, 1),
        "stream_bytes_per_held_seat": round(streams / held, 1),
        "bytes_per_held_seat_without_stream": round((after - before - streams) / held, 1),
        "seats_per_flight": len(SEATS),
        "server": f"{info.get('redis_version', '?')}",
    }
