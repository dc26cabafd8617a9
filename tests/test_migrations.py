"""The SQLite file's schema versions, through the CLI: `holdsvc migrate`, and `serve` refusing
a file newer than itself."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from holdsvc.embedded_redis import EmbeddedRedis, free_port
from persistence.sqlite_schema import LATEST
from persistence.sqlite_store import SqlStore


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "holdsvc", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def columns_of(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def columns(db: Path, table: str) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return columns_of(conn, table)
    finally:
        conn.close()


def user_version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def test_a_new_file_is_created_at_the_latest_version(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite3"
    code, out, err = finish(cli("migrate", "--db", str(db)))
    assert code == 0, err
    assert out.strip() == f"schema version 0 -> {LATEST} ({db})"
    code, out, err = finish(cli("migrate", "--db", str(db)))
    assert code == 0 and out.startswith(f"schema version {LATEST}: up to date"), (out, err)
    store = await SqlStore.open(db)
    try:
        assert await store.schema_version() == LATEST
    finally:
        await store.close()


def test_a_file_from_before_versions_is_migrated_once_by_racing_processes(
    tmp_path: Path,
) -> None:
    # A file as holdsvc made it before versions: user_version 0, and without the columns
    # added since (the baseline adds them with ALTER TABLE, which fails if run twice).
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")  # as holdsvc always opened it
    conn.executescript(resources.files("persistence").joinpath("schema.sql").read_text("utf-8"))
    # Rebuilt without them (DROP COLUMN trips over the comments in the tables' definitions).
    for table, dropped in (
        ("payments", {"refund_key"}),
        ("idempotency_keys", {"alive_at", "outcome", "record"}),
    ):
        kept = ", ".join(c for c in sorted(columns_of(conn, table)) if c not in dropped)
        conn.execute(f"CREATE TABLE old_{table} AS SELECT {kept} FROM {table}")
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE old_{table} RENAME TO {table}")
    conn.execute(
        "INSERT INTO flights (flight_number, origin, destination, departure_time, seat_rows,"
        " seat_letters, price, currency, created_at)"
        " VALUES ('AI1', 'DEL', 'BOM', '2030-01-01T09:30:00Z', 10, 'ABC', '10.00', 'INR', 1)"
    )
    conn.commit()
    conn.close()
    assert user_version(db) == 0 and "refund_key" not in columns(db, "payments")

    # Four processes start on it at once, as several services started together would. The
    # test holds the write lock until all four have started, so they reach it together.
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    racing = [cli("migrate", "--db", str(db)) for _ in range(4)]
    time.sleep(3)
    holder.execute("COMMIT")
    holder.close()
    results = [finish(proc) for proc in racing]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], [err for _, _, err in results]
    outs = sorted(out.strip() for _, out, _ in results)
    # Exactly one applied it; the others waited for its lock and found nothing to do.
    assert outs[0] == f"schema version 0 -> {LATEST} ({db})", outs
    assert all(o.startswith(f"schema version {LATEST}: up to date") for o in outs[1:]), outs
    assert user_version(db) == LATEST
    assert "refund_key" in columns(db, "payments")
    assert {"alive_at", "outcome", "record"} <= columns(db, "idempotency_keys")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT flight_number FROM flights").fetchall() == [("AI1",)]
    conn.close()


def test_a_file_newer_than_the_code_is_refused_and_left_alone(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    db = tmp_path / "newer.sqlite3"
    assert finish(cli("migrate", "--db", str(db)))[0] == 0
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.commit()
    conn.close()

    serve = cli(
        "serve", "--db", str(db), "--redis-url", redis_server.url, "--port", str(free_port()),
        "--data-dir", str(tmp_path),
    )  # fmt: skip
    code, _, err = finish(serve)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[-1] == (
        f"holdsvc: cannot start: the database's schema is version {LATEST + 1}, newer than"
        f" this holdsvc's (version {LATEST}): run the holdsvc that migrated it, or a newer one"
    ), err
    assert "Traceback" not in err

    code, _, err = finish(cli("migrate", "--db", str(db)))
    assert code == 2 and "holdsvc: migrate failed: the database's schema is version" in err
    assert "Traceback" not in err
    assert user_version(db) == LATEST + 1
