"""Which SQL store a database setting names, opened: a PostgreSQL URL, or a SQLite file."""

from __future__ import annotations

from pathlib import Path

from persistence.pg_store import PgStore, is_postgres
from persistence.sqlite_store import SqlStore

AnyStore = SqlStore | PgStore


async def open_store(db: str) -> AnyStore:
    """Open (and migrate) the store ``db`` names: ``postgresql://…``, or a file's path."""
    if is_postgres(db):
        return await PgStore.open(db)
    return await SqlStore.open(Path(db))


__all__ = ["AnyStore", "PgStore", "SqlStore", "open_store"]
