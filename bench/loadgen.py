"""A load generator of our own, for machines without wrk: the same requests as
``holds.lua``/``holds_best.lua``, from separate processes, so the ratio against the do-nothing
endpoint stays fair (both are driven by the same generator). Bounded in time and count.

It is slower than wrk (Python on the same 2 cores), so its absolute numbers are lower; the
report names the generator that ran.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import aiohttp
import orjson

MAX_REQUESTS_PER_WORKER = 2_000_000


def _body(rng: random.Random, flights: int, rows: int, letters: str, best: bool) -> bytes:
    flight = rng.randint(1, flights)
    n = rng.randint(1, 4)
    if best:
        return orjson.dumps({"flight_id": flight, "user_id": _user(rng), "seat_count": n})
    start = rng.randint(0, len(letters) - n)
    row = rng.randint(1, rows)
    seats = [f"{row}{letters[start + i]}" for i in range(n)]
    return orjson.dumps({"flight_id": flight, "user_id": _user(rng), "seats": seats})


def _user(rng: random.Random) -> str:
    # A customer a hold, as wrk's scripts do: the per-customer seat limit is on by default.
    return f"u{rng.randint(1, 1_000_000)}"


async def _worker(
    url: str, seconds: float, connections: int, flights: int, rows: int, letters: str, best: bool
) -> dict[str, Any]:
    rng = random.Random()
    ok = refused = errors = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def loop() -> None:
            nonlocal ok, refused, errors
            while time.monotonic() < deadline and ok + refused < MAX_REQUESTS_PER_WORKER:
                body = _body(rng, flights, rows, letters, best)
                t0 = time.perf_counter()
                try:
                    async with http.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                if 200 <= status < 300:
                    ok += 1
                else:
                    refused += 1

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.monotonic() - started
    return {"ok": ok, "refused": refused, "errors": errors, "seconds": elapsed,
            "latencies": latencies}  # fmt: skip


def _run(*args: Any) -> dict[str, Any]:
    return asyncio.run(_worker(*args))


def load(
    port: int,
    seconds: float,
    connections: int,
    flights: int,
    rows: int,
    letters: str,
    best: bool = False,
    workers: int = 2,
) -> dict[str, Any]:
    """POST /api/bookings/ from ``workers`` processes, ``connections`` in all; wrk's fields."""
    url = f"http://127.0.0.1:{port}/api/bookings/"
    each = max(1, connections // workers)
    ctx = multiprocessing.get_context("spawn")
    job = (url, seconds, each, flights, rows, letters, best)
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        parts = [f.result() for f in [pool.submit(_run, *job) for _ in range(workers)]]
    ok = sum(p["ok"] for p in parts)
    refused = sum(p["refused"] for p in parts)
    secs = max(p["seconds"] for p in parts)
    lat = sorted(x for p in parts for x in p["latencies"])

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(len(lat) * q))] * 1000, 3) if lat else None

    return {
        "requests": ok + refused,
        "seconds": round(secs, 2),
        "ok_per_s": round(ok / secs) if secs else 0,
        "requests_per_s": round((ok + refused) / secs) if secs else 0,
        "non_2xx": refused,
        "socket_errors": sum(p["errors"] for p in parts) or None,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }
