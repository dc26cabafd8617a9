"""http_holds: POST /api/bookings/ end to end, next to a do-nothing aiohttp endpoint served the
same way, under the same load generator in separate processes: wrk when it is installed, else
bench/loadgen.py (the report says which ran)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.common import flushall_sync
from holdsvc import free_port

HERE = Path(__file__).resolve().parent
LETTERS = "ABCDEFGHIJKL"
ROWS = 150
# The flights both HTTP scenarios create: 1,800 seats each.
_FLIGHT = (
    b'{"flight_number":"BX1","origin":"DEL","destination":"BOM",'
    b'"departure_time":"2030-01-01T09:30:00Z","rows":150,"seat_letters":"ABCDEFGHIJKL",'
    b'"price":"10.00","currency":"INR"}'
)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            return
        except OSError as exc:
            if "404" in str(exc):  # the no-op server has no /healthz: it is up
                return
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on {port} within {timeout}s")


def _post(url: str, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        import json

        data: dict[str, Any] = json.loads(resp.read())
        return data


def wrk(
    port: int, seconds: int, connections: int, flights: int, script: str = "holds.lua"
) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_FLIGHTS": str(flights),
        "BENCH_ROWS": str(ROWS),
        "BENCH_LETTERS": LETTERS,
    }
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(HERE / script), f"http://127.0.0.1:{port}/api/bookings/"],
        env=env, capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    total = int(re.search(r"(\d+) requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    secs = float(re.search(r"requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M) and [
        (p, _ms(v, u)) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)
    ])  # fmt: skip
    refused = int(non2xx.group(1)) if non2xx else 0
    return {
        "requests": total,
        "seconds": secs,
        "ok_per_s": round((total - refused) / secs),
        "requests_per_s": round(total / secs),
        "non_2xx": refused,
        "socket_errors": errors.group(1) if errors else None,
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
    }


def _admin(command: str, where: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "holdsvc", command, *where],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise RuntimeError(f"holdsvc {command} failed: {done.stderr.strip()}")
    return done.stdout


def _ms(value: str, unit: str) -> float:
    return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


def http_holds(redis_url: str, workdir: Path, seconds: int, flights: int) -> dict[str, Any]:
    use_wrk = shutil.which("wrk") is not None and not os.environ.get("HOLDSVC_BENCH_NO_WRK")

    def drive(port: int, script: str = "holds.lua") -> dict[str, Any]:
        if use_wrk:
            return wrk(port, seconds, 64, flights, script)
        return loadgen.load(
            port, seconds, 64, flights, ROWS, LETTERS, best=script == "holds_best.lua"
        )

    generator = "wrk -t2 -c64" if use_wrk else "bench/loadgen.py, 2 processes, 64 connections"
    db = workdir / "http.sqlite3"
    hold_port, noop_port, bare_port = free_port(), free_port(), free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "holdsvc", "serve", "--redis-url", redis_url, "--db", str(db),
         "--data-dir", str(workdir), "--port", str(hold_port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    noop = subprocess.Popen(
        [sys.executable, str(HERE / "noop_server.py"), str(noop_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_hold_server", str(bare_port), redis_url, str(flights)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=HERE.parent,
    )  # fmt: skip
    try:
        _wait_listening(hold_port, service)
        _wait_listening(noop_port, noop)
        _wait_listening(bare_port, bare)
        ids = [
            _post(f"http://127.0.0.1:{hold_port}/api/flights/", _FLIGHT)["id"]
            for _ in range(flights)
        ]
        assert ids == list(range(1, flights + 1)), ids
        noop_result = drive(noop_port)
        bare_result = drive(bare_port)
        hold_result = drive(hold_port)
        # Best-available holds (seat_count 1-4) on the same 1,800-seat flights, right after.
        best_result = drive(hold_port, "holds_best.lua")
    finally:
        for proc in (service, noop, bare):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    where = ["--redis-url", redis_url, "--db", str(db), "--data-dir", str(workdir)]
    # Through the admin CLI, as an operator would: how many holds Redis keeps (a hold enters
    # SQL only at its first money step), and whether any seat's Redis value disagrees with
    # SQL (a seat held or sold twice would).
    status = _admin("status", where)
    live_holds = int(re.findall(r"^live holds +(\d+)$", status, re.M)[0])
    differences = int(re.findall(r"^(\d+) differences", _admin("audit", where), re.M)[0])
    holds_per_s = hold_result["ok_per_s"]
    noop_per_s = noop_result["ok_per_s"]
    bare_per_s = bare_result["ok_per_s"]
    return {
        "holds_per_s": holds_per_s,
        "noop_per_s": noop_per_s,
        "ratio_vs_noop": round(holds_per_s / noop_per_s, 3) if noop_per_s else None,
        # The anchor's endpoint (hold script only, no SQL): what the Redis hold costs over HTTP.
        "bare_hold_per_s": bare_per_s,
        "bare_ratio_vs_noop": round(bare_per_s / noop_per_s, 3) if noop_per_s else None,
        "ratio_vs_bare": round(holds_per_s / bare_per_s, 3) if bare_per_s else None,
        "p50_ms": hold_result["p50_ms"],
        "p99_ms": hold_result["p99_ms"],
        "noop_p99_ms": noop_result["p99_ms"],
        "refused_per_s": round(hold_result["non_2xx"] / hold_result["seconds"]),
        "live_holds": live_holds,
        "audit_differences": differences,
        "generator": generator,
        "workers": 1,
        "hold": hold_result,
        "noop": noop_result,
        "bare_hold": bare_result,
        "best": {
            "holds_per_s": best_result["ok_per_s"],
            "ratio_vs_http_holds": (
                round(best_result["ok_per_s"] / holds_per_s, 3) if holds_per_s else None
            ),
            "p50_ms": best_result["p50_ms"],
            "p99_ms": best_result["p99_ms"],
            "refused_per_s": round(best_result["non_2xx"] / best_result["seconds"]),
            "seats_per_flight": ROWS * len(LETTERS),
            "generator": generator,
            "hold": best_result,
        },
    }


def _both_listening(port: int, workers: int, timeout: float = 30) -> None:
    """Every worker of a `serve --workers N` answers (each new connection picks one)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/healthz", headers={"Connection": "close"}
        )
        try:
            with urllib.request.urlopen(request, timeout=1) as resp:
                seen.add(resp.headers.get("X-Holdsvc-Worker", "0"))
        except OSError:
            time.sleep(0.1)
    if len(seen) < workers:
        raise RuntimeError(f"only workers {sorted(seen)} of {workers} answered")


def workers(redis_url: str, workdir: Path, seconds: int, flights: int) -> dict[str, Any]:
    """HTTP holds/s from `serve --workers 1` and `--workers 2`, one after the other, same load."""
    use_wrk = shutil.which("wrk") is not None and not os.environ.get("HOLDSVC_BENCH_NO_WRK")
    import redis

    results: dict[str, Any] = {}
    for n in (1, 2):
        with redis.Redis.from_url(redis_url) as client:
            flushall_sync(client)
        port = free_port()
        where = workdir / f"workers-{n}"
        service = subprocess.Popen(
            [sys.executable, "-m", "holdsvc", "serve", "--workers", str(n), "--redis-url",
             redis_url, "--data-dir", str(where), "--port", str(port), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_listening(port, service)
            _both_listening(port, n)
            for _ in range(flights):
                _post(f"http://127.0.0.1:{port}/api/flights/", _FLIGHT)
            if use_wrk:
                results[str(n)] = wrk(port, seconds, 64, flights)
            else:
                results[str(n)] = loadgen.load(port, seconds, 64, flights, ROWS, LETTERS)
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(30)
            except subprocess.TimeoutExpired:
                service.kill()
    one, two = results["1"]["ok_per_s"], results["2"]["ok_per_s"]
    return {
        "holds_per_s_1": one,
        "holds_per_s_2": two,
        "ratio_2_vs_1": round(two / one, 3) if one else None,
        "p99_ms_1": results["1"]["p99_ms"],
        "p99_ms_2": results["2"]["p99_ms"],
        "generator": "wrk -t2 -c64" if use_wrk else "bench/loadgen.py, 2 processes, 64 connections",
        "runs": results,
    }
