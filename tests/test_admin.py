"""The admin CLI against a real service's Redis and SQLite: status, audit, flights."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from holdsvc.embedded_redis import EmbeddedRedis
from tests.helpers import ServiceProcess


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "holdsvc", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_flights_status_and_audit(
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    redis: Redis,
    services: Callable[..., ServiceProcess],
) -> None:
    where = ["--redis-url", redis_server.url, "--db", str(tmp_path / "db.sqlite3")]
    created = admin(
        "flights", "create", *where, "--flight-number", "AI202", "--origin", "BOM",
        "--destination", "DEL", "--departure-time", "2026-12-02T10:00:00Z", "--rows", "20",
        "--seat-letters", "ABCD", "--price", "100", "--currency", "INR",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("flight 1 AI202 BOM-DEL") and "80 seats" in created.stdout

    bad = admin(
        "flights", "create", *where, "--flight-number", "AI202", "--origin", "BOM",
        "--destination", "DEL", "--departure-time", "2026-12-02T10:00:00Z", "--rows", "20",
        "--seat-letters", "ABCD", "--price", "1.005", "--currency", "INR",
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("holdsvc flights create:") and "price" in bad.stderr
    assert "Traceback" not in bad.stderr

    node = services(where)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{node.base}/api/bookings/",
            json={"flight_id": 1, "user_id": "u1", "seats": ["1A", "1B"]},
        ) as resp:
            assert resp.status == 201

    listed = admin("flights", "list", *where)
    assert listed.returncode == 0
    assert "78/80 free" in listed.stdout

    status = admin("status", *where)
    assert status.returncode == 0, status.stderr
    assert "live holds   1" in status.stdout
    # A hold lives in Redis only (live holds), until pay or its outcome writes it to SQL.
    assert "SEAT_HELD        0" in status.stdout

    clean = admin("audit", *where)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.strip().endswith("0 differences in 1 flights")

    # A seat booked in Redis for a booking SQL never heard of: reported, exit 1.
    await redis.set("{f:1}:7C", "!ghost")
    dirty = admin("audit", *where)
    assert dirty.returncode == 1
    assert "flight 1 seat 7C: Redis booked by ghost, SQL free" in dirty.stdout


def test_admin_errors_are_one_line(tmp_path: Path) -> None:
    missing = admin("status", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "no database at" in missing.stderr
    assert admin("audit", "--help").returncode == 0
    assert admin("flights", "--help").returncode == 0


async def test_a_persister_shares_the_embedded_redis_of_a_running_serve(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    node = services([*data, "--no-persister"])
    url_file = tmp_path / "data" / "redis.url"
    url = url_file.read_text().strip()
    persister = services(data, command="persister")
    assert "using the embedded Redis already running" in persister.output
    persister.stop()
    assert url_file.read_text().strip() == url, "the serve's Redis is still the one named"
    status = admin("status", *data)
    assert status.returncode == 0, status.stderr
    node.stop()
    assert not url_file.exists()


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    for args in (["--log-level", "bogus"], ["--redis-url", "localhost:1"]):
        run = admin("status", "--data-dir", str(tmp_path), *args)
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
