"""The PostgreSQL store's schema, in numbered versions, as the SQLite file's (sqlite_schema.py).

The version is the one row of ``holdsvc_schema``. Every process that opens the database runs
:func:`migrate` first, in one transaction under a transaction-level advisory lock: two
processes starting together (two machines' services, a persister) queue on the lock, and
the second finds nothing left to do. PostgreSQL's DDL is transactional, so a migration that
fails leaves nothing half-applied. A database newer than this code is refused.

The tables mean what SQLite's mean: times are Unix milliseconds (``bigint``); money is
``numeric``, read back as the decimal string it was written as; the one-live-booking-per-seat
fence is a partial unique index.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import asyncpg

from persistence.records import SchemaTooNew

# pg_advisory_xact_lock's key: "holdsvc" in ASCII, so no other application's lock meets it.
MIGRATION_LOCK = 0x686F6C6473766300

_BASELINE = """
CREATE TABLE flights (
    id              bigserial PRIMARY KEY,
    flight_number   text NOT NULL,
    origin          text NOT NULL,
    destination     text NOT NULL,
    departure_time  text NOT NULL,
    seat_rows       integer NOT NULL,
    seat_letters    text NOT NULL,
    price           numeric NOT NULL,
    currency        text NOT NULL,
    created_at      bigint NOT NULL
);
CREATE INDEX flights_by_number ON flights (flight_number, departure_time);

CREATE TABLE bookings (
    id               text PRIMARY KEY,
    flight_id        bigint NOT NULL REFERENCES flights (id),
    user_id          text NOT NULL,
    state            text NOT NULL,
    amount           numeric NOT NULL,
    currency         text NOT NULL,
    hold_expires_at  bigint NOT NULL,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL
);
CREATE INDEX bookings_by_state ON bookings (state, hold_expires_at);
CREATE INDEX bookings_by_user ON bookings (user_id, created_at);

-- live while the booking holds or owns the seat (SEAT_HELD, PAYMENT_PENDING, CONFIRMED).
CREATE TABLE booking_seats (
    booking_id  text NOT NULL REFERENCES bookings (id),
    pos         integer NOT NULL,
    flight_id   bigint NOT NULL,
    seat        text NOT NULL,
    live        boolean NOT NULL,
    PRIMARY KEY (booking_id, pos)
);
-- The SQL fence: two live bookings of one seat cannot both be written, whatever Redis said.
CREATE UNIQUE INDEX one_live_booking_per_seat ON booking_seats (flight_id, seat) WHERE live;

CREATE TABLE transitions (
    id          bigserial PRIMARY KEY,
    booking_id  text NOT NULL REFERENCES bookings (id),
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    cause       text NOT NULL,
    at          bigint NOT NULL
);
CREATE INDEX transitions_by_booking ON transitions (booking_id, id);

CREATE TABLE payments (
    booking_id  text PRIMARY KEY REFERENCES bookings (id),
    payment_id  text,
    method      text NOT NULL,
    status      text NOT NULL,
    amount      numeric NOT NULL,
    currency    text NOT NULL,
    idem_key    text,
    updated_at  bigint NOT NULL,
    refund_key  text
);
CREATE INDEX payments_by_status ON payments (status, updated_at);

CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    fingerprint  bytea NOT NULL,
    status       integer,
    body         bytea,
    started_at   bigint NOT NULL,
    owner        text NOT NULL,
    alive_at     bigint,
    outcome      text,
    record       bytea
);
CREATE INDEX idempotency_by_age ON idempotency_keys (started_at);
CREATE INDEX idempotency_by_owner ON idempotency_keys (owner) WHERE status IS NULL;
"""

_BOOKING_OWNER = "ALTER TABLE bookings ADD COLUMN owner text NOT NULL DEFAULT ''"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# The same versions as SQLite's, so "schema version N" means one thing whatever the store.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline", _BASELINE),
    Migration(2, "booking owner", _BOOKING_OWNER),
)
LATEST = MIGRATIONS[-1].version


async def version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('holdsvc_schema') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT version FROM holdsvc_schema") or 0)


def functions_sql() -> str:
    return resources.files("persistence").joinpath("pg_functions.sql").read_text("utf-8")


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Bring the database to :data:`LATEST` and install this code's functions
    (pg_functions.sql); returns the versions applied. Functions are code, not data: each
    start installs its own (CREATE OR REPLACE), under the same lock, so two processes never
    replace one at once."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        found = await version(conn)
        if found > LATEST:
            raise SchemaTooNew(
                f"the database's schema is version {found}, newer than this holdsvc's"
                f" (version {LATEST}): run the holdsvc that migrated it, or a newer one"
            )
        if found == 0:
            await conn.execute(
                "CREATE TABLE holdsvc_schema (version integer NOT NULL);"
                " INSERT INTO holdsvc_schema VALUES (0)"
            )
        applied = []
        for migration in MIGRATIONS:
            if migration.version > found:
                await conn.execute(migration.sql)
                applied.append(migration.version)
        if applied:
            await conn.execute("UPDATE holdsvc_schema SET version = $1", LATEST)
        await conn.execute(functions_sql())
    return applied
