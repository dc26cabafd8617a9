"""The admin CLI against a real service's Redis and SQLite: status, audit, flights."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from holdsvc.embedded_redis import EmbeddedRedis
from tests.helpers import ServiceProcess, paid_over_http


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
        "--destination", "DEL", "--departure-time", "2030-12-02T10:00:00Z", "--rows", "20",
        "--seat-letters", "ABCD", "--price", "100", "--currency", "INR",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("flight 1 AI202 BOM-DEL") and "80 seats" in created.stdout

    bad = admin(
        "flights", "create", *where, "--flight-number", "AI202", "--origin", "BOM",
        "--destination", "DEL", "--departure-time", "2030-12-02T10:00:00Z", "--rows", "20",
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
    report = json.loads(admin("audit", "--json", *where).stdout)
    assert report["differences"] == [
        {"flight_id": 1, "seat": "7C", "redis": {"status": "booked", "booking_id": "ghost"},
         "sql": {"state": "free", "booking_id": None}}
    ]  # fmt: skip


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


async def test_status_and_flights_list_answer_from_sql_when_the_service_is_down(
    tmp_path: Path, services: Callable[..., ServiceProcess]
) -> None:
    data = tmp_path / "data"
    node = services(["--data-dir", str(data)])
    async with aiohttp.ClientSession() as http:
        flight, booking, _ = await paid_over_http(http, node.base, ["1A"])
        async with http.post(
            f"{node.base}/api/bookings/",
            json={"flight_id": flight, "user_id": "u2", "seats": ["2A"]},
        ) as resp:
            held = (await resp.json())["id"]
    # The flags before the command's name, as an operator types them.
    up = admin("--data-dir", str(data), "status")
    assert up.returncode == 0 and "redis        ok" in up.stdout, up.stdout + up.stderr
    report = json.loads(admin("status", "--json", "--data-dir", str(data)).stdout)
    assert report["live_holds"] == 1 and report["bookings"]["CONFIRMED"] == 1, report
    shown = admin("bookings", "show", booking, "--data-dir", str(data))
    assert shown.returncode == 0, shown.stderr
    assert "state        CONFIRMED" in shown.stdout
    assert "history      PAYMENT_PENDING -> CONFIRMED (payment-captured)" in shown.stdout
    # A hold that only Redis has yet is read through the domain, as GET reads it.
    as_json = json.loads(admin("bookings", "show", held, "--json", "--data-dir", str(data)).stdout)
    assert as_json["state"] == "SEAT_HELD" and as_json["seats"] == ["2A"], as_json
    missing = admin("bookings", "show", "nope.1", "--data-dir", str(data))
    assert missing.returncode == 2 and "not found in SQL or Redis" in missing.stderr

    # Cancel and refund by the domain's rules: a hold released, a paid booking refunded once.
    released = admin("bookings", "cancel", held, "--data-dir", str(data))
    assert released.returncode == 0 and released.stdout.strip() == f"booking {held}: CANCELLED"
    again = admin("bookings", "cancel", held, "--data-dir", str(data))
    assert again.returncode == 2, again.stdout + again.stderr
    assert "Invalid state transition from CANCELLED to CANCELLED" in again.stderr
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{node.base}/api/bookings/",
            json={"flight_id": flight, "user_id": "u3", "seats": ["2B"]},
        ) as resp:
            paid = (await resp.json())["id"]
        async with http.post(f"{node.base}/api/bookings/{paid}/pay/") as resp:
            assert resp.status == 200
        refunded = admin("bookings", "cancel", paid, "--refund", "--data-dir", str(data))
        assert refunded.returncode == 0, refunded.stdout + refunded.stderr
        assert refunded.stdout.split() == [
            "booking",
            f"{paid}:",
            "CANCELLED",
            "booking",
            f"{paid}:",
            "REFUNDED",
        ]
        twice = admin("bookings", "cancel", paid, "--refund", "--data-dir", str(data))
        assert twice.returncode == 2 and "from REFUNDED" in twice.stderr, twice.stderr
        async with http.get(f"{node.base}/api/bookings/{paid}/") as resp:
            view = await resp.json()
        assert view["state"] == "REFUNDED" and view["payment"]["status"] == "refunded", view
    # SQL's bookings by user and by state; the released hold was written CANCELLED.
    mine = admin("bookings", "list", "--user", "u3", "--data-dir", str(data))
    assert mine.returncode == 0 and paid in mine.stdout and booking not in mine.stdout
    assert mine.stdout.strip().endswith(
        "1 bookings (SQL's: a hold enters SQL at its first money step)"
    )
    cancelled = json.loads(
        admin("bookings", "list", "--state", "CANCELLED", "--json", "--data-dir", str(data)).stdout
    )
    assert [b["id"] for b in cancelled] == [held], cancelled
    bad = admin("bookings", "list", "--state", "GONE", "--data-dir", str(data))
    assert bad.returncode == 2 and "state must be one of" in bad.stderr
    node.stop()

    # The service (and its embedded Redis) stopped: SQL still answers, exit 4.
    down = admin("--data-dir", str(data), "status")
    assert down.returncode == 4, down.stdout + down.stderr
    assert "redis        unavailable: no running holdsvc" in down.stdout
    assert "CONFIRMED        1" in down.stdout and "live holds   unknown" in down.stdout
    listed = admin("flights", "list", "--data-dir", str(data))
    assert listed.returncode == 4 and "?/10 free" in listed.stdout, listed.stdout
    assert "1 flights" in listed.stdout
    [view] = json.loads(admin("flights", "list", "--json", "--data-dir", str(data)).stdout)
    assert view["seats_available"] is None and view["seats_total"] == 10
    # A booking SQL has is shown from SQL alone; the exit code says Redis was not asked.
    offline = admin("bookings", "show", booking, "--data-dir", str(data))
    assert offline.returncode == 4 and "state        CONFIRMED" in offline.stdout
    # A Redis named but not answering is another exit code.
    dead = admin("status", "--data-dir", str(data), "--redis-url", "redis://127.0.0.1:9/0")
    assert dead.returncode == 3 and "does not answer" in dead.stdout, dead.stdout
    assert "CONFIRMED        1" in dead.stdout
    # Auditing compares with Redis: without it, it says so and what SQL holds, same code.
    audit = admin("audit", "--data-dir", str(data))
    assert audit.returncode == 4, audit.stdout + audit.stderr
    assert audit.stdout.startswith("cannot compare: Redis unavailable: no running holdsvc")
    assert "SQL has 1 live bookings on 1 flights" in audit.stdout
    audited = json.loads(admin("audit", "--json", "--data-dir", str(data)).stdout)
    assert audited["differences"] is None and audited["live_bookings_in_sql"] == 1


def test_version_and_exit_codes_are_documented() -> None:
    version = admin("--version")
    assert version.returncode == 0 and version.stdout.startswith("holdsvc "), version
    helped = admin("--help")
    assert all(f"{code} " in helped.stdout for code in range(5)), helped.stdout
    assert "Redis does not answer" in helped.stdout
