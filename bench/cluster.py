"""cluster: 4-seat store holds through the cluster client (routed by slot, one pipelined
connection per primary) against the one-server client, in one run: a standalone server, a
cluster of 1 primary, a cluster of 3. With the CPU each side spent, since this machine has 2
cores for the client and every Redis process together. In a worker process."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import closed_loop
from bench.store import SEATS, four_seat_holds
from holdsvc import EmbeddedRedis, HoldStore, LocalCluster, connect_hold_store, find_binary

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def cluster(redis_server: str, seconds: float, max_calls: int, concurrency: int) -> dict[str, Any]:
    return asyncio.run(_cluster(redis_server, seconds, max_calls, concurrency))


async def _run(
    url: str,
    pids: list[int],
    cluster_mode: bool,
    seconds: float,
    max_calls: int,
    c: int,
    first_flight: int = 40_000,
) -> dict[str, Any]:
    holds: HoldStore = await connect_hold_store(url, cluster=cluster_mode)
    flights = range(first_flight, first_flight + max_calls // (len(SEATS) // 4) + 2)
    warm = range(flights.stop, flights.stop + 64)
    for f in (*flights, *warm):
        await holds.restore(f, [], await holds.run_id_of_flight(f))
    # Warm-up holds on flights of every node: the scripts load there (NOSCRIPT once each).
    per_flight = len(SEATS) // 4
    warm_up = four_seat_holds(holds, warm, "w")
    await asyncio.gather(*(warm_up(n * per_flight) for n in range(len(warm))))
    redis_before = sum(_cpu_s(p) for p in pids)
    client_before = time.process_time()
    load = await closed_loop(four_seat_holds(holds, flights, "h"), c, seconds, max_calls)
    client_cpu = time.process_time() - client_before
    redis_cpu = sum(_cpu_s(p) for p in pids) - redis_before
    await holds.close()
    rate = load.rate("held")
    calls = sum(load.counts.values())
    return {
        "holds_per_s": round(rate),
        "refused": load.counts.get("refused", 0),
        "client_cpu_us_per_hold": round(client_cpu / calls * 1e6, 1) if calls else None,
        "redis_cpu_us_per_hold": round(redis_cpu / calls * 1e6, 1) if calls else None,
        **load.summary(),
    }


async def _cluster(
    redis_server: str, seconds: float, max_calls: int, concurrency: int
) -> dict[str, Any]:
    binary = find_binary(redis_server)
    with tempfile.TemporaryDirectory(prefix="holdsvc-cluster-") as tmp:
        single = EmbeddedRedis(Path(tmp) / "single", binary=binary)
        one = LocalCluster(Path(tmp) / "one", binary=binary, primaries=1)
        three = LocalCluster(Path(tmp) / "three", binary=binary, primaries=3)
        for server in (single, one, three):
            server.start()
        try:

            def pids(nodes: list[EmbeddedRedis]) -> list[int]:
                return [n.process.pid for n in nodes if n.process is not None]

            args = (seconds, max_calls, concurrency)
            # The single-node client before and after the clusters; the ratio is taken against
            # the better of the two (the first run of a fresh worker and server is the slower
            # one here), so the cluster client is never flattered by a slow baseline.
            first = await _run(single.url, pids([single]), False, *args)
            on_one = await _run(one.url, pids(one.nodes), True, *args)
            on_three = await _run(three.url, pids(three.nodes), True, *args)
            second = await _run(single.url, pids([single]), False, *args, first_flight=60_000)
        finally:
            for server in (single, one, three):
                server.stop()
    base = max(first["holds_per_s"], second["holds_per_s"])
    return {
        "single_node_per_s": round(base),
        "one_primary_per_s": on_one["holds_per_s"],
        "three_primaries_per_s": on_three["holds_per_s"],
        "ratio_one_primary_vs_single": round(on_one["holds_per_s"] / base, 3) if base else None,
        "ratio_three_vs_one": (
            round(on_three["holds_per_s"] / on_one["holds_per_s"], 3)
            if on_one["holds_per_s"]
            else None
        ),
        "single": first,
        "single_again": second,
        "one_primary": on_one,
        "three_primaries": on_three,
        "cores": os.cpu_count(),
        "concurrency": concurrency,
    }
