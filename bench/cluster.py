"""cluster: 4-seat store holds through the cluster client (routed by slot, one pipelined
connection per primary) against the one-server client, in one run: a standalone server, a
cluster of 1 primary, a cluster of 3. With the CPU each side spent, since this machine has 2
cores for the client and every Redis process together. In a worker process."""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import closed_loop
from bench.store import META, SEATS, TTL_MS, four_seat_holds
from holdsvc import (
    EmbeddedRedis,
    HoldStore,
    LocalCluster,
    connect_hold_store,
    find_binary,
    load_scripts,
    seat_keys,
)

TICKS = os.sysconf("SC_CLK_TCK")
ROUNDS = 3


def _at(run: int, max_calls: int) -> int:
    """The first flight id of the scenario's ``run``-th run: no two runs share a flight."""
    return 100_000 + run * (max_calls // (len(SEATS) // 4) + 10)


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


async def _library(
    url: str,
    seconds: float,
    max_calls: int,
    c: int,
    first_flight: int,
    send: Callable[[list[Any]], Awaitable[Any]],
) -> dict[str, Any]:
    """A library client's holds/s: the hold script, with the same keys and arguments as the
    hold store sends, through ``send`` (one whole EVALSHA command, routed by the client)."""
    from redis.asyncio import Redis

    holds = await connect_hold_store(url, cluster=True)
    flights = range(first_flight, first_flight + max_calls // (len(SEATS) // 4) + 2)
    run_ids: dict[int, str] = {}
    for f in flights:
        run_ids[f] = await holds.run_id_of_flight(f)
        await holds.restore(f, [], run_ids[f])
    await holds.close()
    async with Redis.from_url(url) as seed:
        sha = (await load_scripts(seed)).hold_seats.sha
    per_flight = len(SEATS) // 4

    async def hold(n: int) -> str:
        flight, slot = divmod(n, per_flight)
        f = flights[flight]
        seats = SEATS[slot * 4 : slot * 4 + 4]
        keys = [
            seat_keys.deadlines(f), seat_keys.marker(f), seat_keys.records(f),
            seat_keys.idempotency(f, ""), *seat_keys.index(f), seat_keys.stream(f),
            seat_keys.customers(f), *seat_keys.seats(f, seats),
        ]  # fmt: skip
        args = [
            f"l{n}", str(TTL_MS), META.user_id, META.amount, META.currency, "", "0", run_ids[f],
            str(holds.stream_length), "0",
        ]  # fmt: skip
        reply = await send(["EVALSHA", sha, str(len(keys)), *keys, *args])
        return "held" if reply[0] == 1 else "refused"

    load = await closed_loop(hold, c, seconds, max_calls)
    return {
        "holds_per_s": round(load.rate("held")),
        "refused": load.counts.get("refused", 0),
        **load.summary(),
    }


async def _redis_py(
    url: str, seconds: float, max_calls: int, c: int, first_flight: int
) -> dict[str, Any]:
    """redis-py's RedisCluster: each call alone (its cluster pipelines refuse EVALSHA)."""
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster.from_url(url, max_connections=c)
    try:
        return await _library(
            url, seconds, max_calls, c, first_flight, lambda cmd: client.execute_command(*cmd)
        )
    finally:
        await client.aclose()


async def _glide(
    url: str, seconds: float, max_calls: int, c: int, first_flight: int
) -> dict[str, Any]:
    """valkey-glide (a Rust core, cluster-aware), when installed."""
    try:
        from glide import (  # type: ignore[import-not-found, unused-ignore]
            GlideClusterClient,
            GlideClusterClientConfiguration,
            NodeAddress,
        )
    except ImportError:
        return {"skipped": "valkey-glide is not installed (pip install valkey-glide)"}
    host, port = url.split("//")[1].split("/")[0].split(":")
    client = await GlideClusterClient.create(
        GlideClusterClientConfiguration([NodeAddress(host, int(port))])
    )
    try:
        return await _library(url, seconds, max_calls, c, first_flight, client.custom_command)
    finally:
        await client.close()


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

            # Alternated, three rounds each, and compared by medians: this machine's rate
            # drifts by a third within a minute, so one run of each compares two moments.
            third = max(1.0, seconds / 3)
            args = (third, max_calls, concurrency)
            alone, on_one = [], []
            for n in range(ROUNDS):
                at = _at(2 * n, max_calls), _at(2 * n + 1, max_calls)
                alone.append(
                    await _run(single.url, pids([single]), False, *args, first_flight=at[0])
                )
                on_one.append(await _run(one.url, pids(one.nodes), True, *args, first_flight=at[1]))
            on_three = await _run(three.url, pids(three.nodes), True, *args)
            official = await _redis_py(one.url, *args, first_flight=_at(2 * ROUNDS, max_calls))
            glide = await _glide(one.url, *args, first_flight=_at(2 * ROUNDS + 1, max_calls))
        finally:
            for server in (single, one, three):
                server.stop()
    base = statistics.median(r["holds_per_s"] for r in alone)
    one_rate = statistics.median(r["holds_per_s"] for r in on_one)
    return {
        "single_node_per_s": round(base),
        "one_primary_per_s": round(one_rate),
        "three_primaries_per_s": on_three["holds_per_s"],
        "ratio_one_primary_vs_single": round(one_rate / base, 3) if base else None,
        "ratio_three_vs_one": round(on_three["holds_per_s"] / one_rate, 3) if one_rate else None,
        "redis_py_cluster_one_primary_per_s": official["holds_per_s"],
        "rounds": {
            "single": [r["holds_per_s"] for r in alone],
            "one_primary": [r["holds_per_s"] for r in on_one],
        },
        "single": alone[-1],
        "one_primary": on_one[-1],
        "three_primaries": on_three,
        "redis_py_cluster": official,
        "glide_one_primary_per_s": glide.get("holds_per_s"),
        "glide": glide,
        "cores": os.cpu_count(),
        "concurrency": concurrency,
    }
