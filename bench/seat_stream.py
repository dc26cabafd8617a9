"""seat_stream: 1,000 Server-Sent Events clients of one flight's live seat map while wrk drives
HTTP holds on 1,000 other flights. Reports each change's delivery lag (p50/p99/max, from its
commit), whether every listener got every change, and what the stream costs the hold rate,
measured in one run: the same hold load with the stream off (``--seat-stream-length 0``),
with it on and nobody listening, and with the 1,000 listeners connected.

The service runs with a 3 s hold TTL, so the probe's holds expire during the run and their
expiries are measured too; the wrk holds lapse as well, the same in every phase.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from redis import Redis

from bench.cluster import _cpu_s
from bench.common import flushall_sync
from bench.http_holds import _FLIGHT, HERE, _post, _wait_listening, wrk
from holdsvc import free_port

HOLD_TTL_S = 3
_WATCHED = (
    b'{"flight_number":"SS1","origin":"DEL","destination":"BOM",'
    b'"departure_time":"2030-01-01T09:30:00Z","rows":30,"seat_letters":"ABCDEF",'
    b'"price":"10.00","currency":"INR"}'
)


def _serve(redis_url: str, workdir: Path, name: str, stream_length: int) -> tuple[Any, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "holdsvc", "serve", "--redis-url", redis_url,
         "--db", str(workdir / f"{name}.sqlite3"), "--data-dir", str(workdir),
         "--port", str(port), "--log-level", "WARNING", "--hold-ttl", str(HOLD_TTL_S),
         "--seat-stream-length", str(stream_length)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_listening(port, proc)
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _flights(port: int, flights: int) -> int:
    ids = [_post(f"http://127.0.0.1:{port}/api/flights/", _FLIGHT)["id"] for _ in range(flights)]
    assert ids == list(range(1, flights + 1)), ids
    watched: int = _post(f"http://127.0.0.1:{port}/api/flights/", _WATCHED)["id"]
    return watched


def seat_stream(
    redis_url: str, workdir: Path, seconds: int, flights: int, listeners: int = 1000
) -> dict[str, Any]:
    redis = Redis.from_url(redis_url)
    # The stream off: the hold script's XADD is the difference.
    proc, port = _serve(redis_url, workdir, "stream-off", 0)
    try:
        _flights(port, flights)
        off = wrk(port, seconds, 64, flights)
    finally:
        _stop(proc)
    flushall_sync(redis)
    proc, port = _serve(redis_url, workdir, "stream-on", 10_000)
    try:
        watched = _flights(port, flights)
        cpu0 = _cpu_s(proc.pid)
        quiet = wrk(port, seconds, 64, flights)
        cpu_quiet = _cpu_s(proc.pid) - cpu0
        time.sleep(HOLD_TTL_S + 1)  # the quiet phase's holds lapse before the next
        crowd = subprocess.Popen(
            [sys.executable, "-m", "bench.sse_listeners", str(port), str(watched),
             str(listeners), "5", str(seconds + 120)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=HERE.parent,
        )  # fmt: skip
        try:
            assert crowd.stdout is not None and crowd.stdin is not None
            line = crowd.stdout.readline().decode().strip()
            if line != "ready":
                raise RuntimeError(f"the listeners did not connect: {line!r}")
            cpu0, crowd0 = _cpu_s(proc.pid), _cpu_s(crowd.pid)
            loud = wrk(port, seconds, 64, flights)
            cpu_loud, cpu_crowd = _cpu_s(proc.pid) - cpu0, _cpu_s(crowd.pid) - crowd0
            # The last probe holds lapse (TTL, then the expiry path) and reach the listeners.
            time.sleep(HOLD_TTL_S + 2)
            crowd.stdin.write(b"stop\n")
            crowd.stdin.flush()
            out, err = crowd.communicate(timeout=60)
        finally:
            if crowd.poll() is None:
                crowd.kill()
        lines = out.decode().strip().splitlines()
        if not lines:
            raise RuntimeError(f"the listeners reported nothing: {err.decode()[-500:]}")
        heard: dict[str, Any] = json.loads(lines[-1])
        # What the stream itself carried for the watched flight: every listener owes all of it.
        entries: Any = redis.xrange(f"{{f:{watched}}}:s")
        changes = sum(len(fields[b"s"].split(b",")) for _, fields in entries)
        memory = redis.memory_usage(f"{{f:{watched}}}:s")
    finally:
        _stop(proc)
        redis.close()
    expected = changes * listeners
    rates = {
        "off": off["ok_per_s"],
        "no_listeners": quiet["ok_per_s"],
        "listeners": loud["ok_per_s"],
    }
    return {
        "listeners": listeners,
        "connect_s": heard["connect_s"],
        "changes": changes,
        "deliveries": heard["deliveries"],
        "missed": expected - heard["deliveries"],
        "lag_p50_ms": heard["lag_p50_ms"],
        "lag_p99_ms": heard["lag_p99_ms"],
        "lag_max_ms": heard["lag_max_ms"],
        "holds_per_s_stream_off": rates["off"],
        "holds_per_s_no_listeners": rates["no_listeners"],
        "holds_per_s_listeners": rates["listeners"],
        "ratio_stream_vs_off": (
            round(rates["no_listeners"] / rates["off"], 3) if rates["off"] else None
        ),
        "ratio_listeners_vs_none": (
            round(rates["listeners"] / rates["no_listeners"], 3) if rates["no_listeners"] else None
        ),
        "p99_ms_listeners": loud["p99_ms"],
        "p99_ms_no_listeners": quiet["p99_ms"],
        "watched_stream_bytes": memory,
        # CPU seconds a phase of wrk cost: the service, and the listeners' own process (on
        # these 2 cores it competes with the service for the same CPU).
        "cpu_s_service_no_listeners": round(cpu_quiet, 2),
        "cpu_s_service_listeners": round(cpu_loud, 2),
        "cpu_s_listener_process": round(cpu_crowd, 2),
        "wrk_seconds": seconds,
        "hold_ttl_s": HOLD_TTL_S,
        "generator": "wrk -t2 -c64",
    }
