"""The SQLite file's schema, in numbered versions.

The version is the file's ``PRAGMA user_version``. Every process that opens the file (a
serve, a persister, an admin command, ``holdsvc migrate``) runs :func:`migrate` first: under
``BEGIN IMMEDIATE`` it reads the version, applies the migrations past it and sets the new
version in the same transaction. So two processes starting together cannot both apply one:
the second waits for the first's write lock, then finds nothing left to do. A file whose
version is newer than this code's last migration is refused: code that does not know a
column must not write rows without it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources

from persistence.records import SchemaTooNew


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _statements(script: str) -> Iterator[str]:
    """The script's statements one by one: executescript() would commit the migration's
    transaction before running them."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                yield pending
            pending = ""
    rest = [line for line in pending.splitlines() if line.strip()[:2] not in ("", "--")]
    if rest:
        raise ValueError(f"an incomplete statement ends the schema: {rest[0]!r}")


def _baseline(conn: sqlite3.Connection) -> None:
    """Version 1: the schema as it was when versions began (schema.sql). Files made before
    that have version 0 and some of it: its tables are created only where missing, and the
    columns added to them without a version are added where missing."""
    for statement in _statements(
        resources.files("persistence").joinpath("schema.sql").read_text("utf-8")
    ):
        conn.execute(statement)
    added = {
        "idempotency_keys": (("alive_at", "INTEGER"), ("outcome", "TEXT"), ("record", "BLOB")),
        "payments": (("refund_key", "TEXT"),),
    }
    for table, columns in added.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column, kind in columns:
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _booking_owner(conn: sqlite3.Connection) -> None:
    """Version 2: which API key made each booking. Bookings made before keys existed were
    made open, by nobody in particular: "" (only an admin key reaches them)."""
    conn.execute("ALTER TABLE bookings ADD COLUMN owner TEXT NOT NULL DEFAULT ''")


# In order; a released version is never edited, only followed by a new one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline", _baseline),
    Migration(2, "booking owner", _booking_owner),
)
LATEST = MIGRATIONS[-1].version


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring the file to :data:`LATEST`; returns the versions applied (none when current)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = version(conn)
        if found > LATEST:
            raise SchemaTooNew(
                f"the database's schema is version {found}, newer than this holdsvc's"
                f" (version {LATEST}): run the holdsvc that migrated it, or a newer one"
            )
        applied = []
        for migration in MIGRATIONS:
            if migration.version > found:
                migration.apply(conn)
                applied.append(migration.version)
        if applied:
            conn.execute(f"PRAGMA user_version = {LATEST}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return applied
