"""Shared pieces of the benchmark harness: timing, percentiles, worker processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]


@dataclass
class Load:
    """What one closed-loop load run did: counts by outcome and per-call latencies (ms)."""

    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def rate(self, *outcomes: str) -> float:
        total = sum(self.counts.get(o, 0) for o in outcomes)
        return total / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_ms)
        return {
            "p50_ms": round(percentile(lat, 0.50), 3),
            "p99_ms": round(percentile(lat, 0.99), 3),
        }


async def closed_loop(
    call: Callable[[int], Awaitable[str]], concurrency: int, seconds: float, max_calls: int
) -> Load:
    """``concurrency`` tasks call ``call(i)`` back to back until ``seconds`` or ``max_calls``.

    ``call`` returns the outcome's name (e.g. "held", "refused"); both bounds always apply.
    """
    load = Load()
    issued = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal issued
        while issued < max_calls and time.perf_counter() < stop_at:
            n = issued
            issued += 1
            t0 = time.perf_counter()
            outcome = await call(n)
            load.latencies_ms.append((time.perf_counter() - t0) * 1000)
            load.counts[outcome] = load.counts.get(outcome, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    load.seconds = time.perf_counter() - started
    return load


def in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh process: the load never shares the harness's event loop."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result(timeout=600)


def flushall_sync(client: Any) -> Any:
    """``FLUSHALL SYNC`` through a redis-py client (sync: returns the reply; asyncio: an
    awaitable). SYNC said outright: Valkey frees a plain FLUSHALL's data in the background
    (lazyfree-lazy-user-flush), and the next measurement paid for it (a negative memory figure,
    slower scenarios)."""
    return client.execute_command("FLUSHALL", "SYNC")
