"""The seat_stream scenario's listeners, a process of their own: N Server-Sent Events clients
of one flight's ``/seats/events``, and a probe that holds one of its seats every
``1 / probe_rate`` s (each hold, and its expiry after the service's hold TTL, is a change every
listener must get).

A change's lag is measured from its commit: the stream entry's id is the Redis clock's
millisecond of the XADD that the changing script (or, for an expiry, the path that committed
EXPIRED) ran, and this machine's clock is the same one. Run as
``python -m bench.sse_listeners PORT FLIGHT LISTENERS PROBE_RATE MAX_SECONDS``: it prints
"ready" once every listener has its snapshot, starts the probe, and stops at "stop" on stdin
(or after MAX_SECONDS), printing one JSON line: the lags' p50/p99/max and what each listener
got against what the stream carried.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import aiohttp


async def _listen(
    http: aiohttp.ClientSession, url: str, lags: list[float], ids: set[str], ready: asyncio.Event
) -> int:
    """Seat events received; each one's lag appended to ``lags`` and its id to ``ids``."""
    got = 0
    async with http.get(url) as resp:
        assert resp.status == 200, resp.status
        kind = b""
        async for line in resp.content:
            if line.startswith(b"event: "):
                kind = line[7:].strip()
            elif line.startswith(b"id: "):
                if kind == b"snapshot":
                    ready.set()
                elif kind == b"seat":
                    event_id = line[4:].strip().decode()
                    lags.append(time.time() * 1000 - int(event_id.split("-", 1)[0]))
                    ids.add(event_id)
                    got += 1
    return got


async def _probe(http: aiohttp.ClientSession, base: str, flight: int, rate: float,
                 seats: list[str], stop: asyncio.Event) -> int:  # fmt: skip
    made = 0
    while not stop.is_set() and made < len(seats):
        body = {"flight_id": flight, "user_id": "probe", "seats": [seats[made]]}
        async with http.post(f"{base}/api/bookings/", json=body) as resp:
            await resp.read()
        made += 1
        try:
            await asyncio.wait_for(stop.wait(), 1 / rate)
        except TimeoutError:
            pass
    return made


async def main(port: int, flight: int, listeners: int, rate: float, max_s: float) -> None:
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/api/flights/{flight}/seats/events"
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    lags: list[float] = []
    ids: set[str] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        async with http.get(f"{base}/api/flights/{flight}/") as resp:
            info = await resp.json()
        seats = [f"{r}{c}" for r in range(1, info["rows"] + 1) for c in info["seat_letters"]]
        readies = [asyncio.Event() for _ in range(listeners)]
        started = time.monotonic()
        tasks = [asyncio.create_task(_listen(http, url, lags, ids, r)) for r in readies]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
        connect_s = time.monotonic() - started
        print("ready", flush=True)
        stop = asyncio.Event()
        probe = asyncio.create_task(_probe(http, base, flight, rate, seats, stop))
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            await asyncio.wait_for(reader.readline(), max_s)
        except TimeoutError:
            pass
        stop.set()
        holds = await probe
        # The last changes (the last probes' expiries) are already in: the harness waited.
        for t in tasks:
            t.cancel()
        counts = []
        for t in tasks:
            try:
                counts.append(await t)
            except (asyncio.CancelledError, aiohttp.ClientError):
                counts.append(-1)
    # Cancelled listeners return no count: what each got is read from the lags instead.
    per_listener = len(lags) / listeners if listeners else 0
    ordered = sorted(lags)
    result: dict[str, Any] = {
        "listeners": listeners,
        "connect_s": round(connect_s, 2),
        "probe_holds": holds,
        "changes": len(ids),
        "deliveries": len(lags),
        "expected_deliveries": len(ids) * listeners,
        "missed": len(ids) * listeners - len(lags),
        "per_listener": round(per_listener, 1),
        "lag_p50_ms": round(statistics.median(ordered), 1) if ordered else None,
        "lag_p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 1) if ordered else None,
        "lag_max_ms": round(ordered[-1], 1) if ordered else None,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    port, flight, listeners = (int(a) for a in sys.argv[1:4])
    asyncio.run(main(port, flight, listeners, float(sys.argv[4]), float(sys.argv[5])))
