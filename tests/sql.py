"""Read a test's database directly, whichever store it is: a SQLite file or PostgreSQL.

Queries are written once, with ``?`` placeholders and nothing engine-specific (``live`` is
an integer in SQLite and a boolean in PostgreSQL: test it as ``live``, never ``live = 1``).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import asyncpg

from persistence.pg_store import is_postgres


def _numbered(sql: str) -> str:
    n = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(n)}", sql)


def query(db: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Every row, as tuples. Callable from sync code inside a running event loop (the
    PostgreSQL query runs on a thread of its own)."""
    if not is_postgres(db):
        with sqlite3.connect(db) as conn:
            return [tuple(r) for r in conn.execute(sql, tuple(params))]
    rows: list[tuple[Any, ...]] = []
    failure: list[BaseException] = []

    async def run() -> None:
        conn = await asyncpg.connect(db)
        try:
            rows.extend(tuple(r) for r in await conn.fetch(_numbered(sql), *params))
        finally:
            await conn.close()

    def thread() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return rows


def execute(db: str, sql: str, params: Sequence[Any] = ()) -> None:
    """One statement that changes something (a test's deliberate damage)."""
    if not is_postgres(db):
        with sqlite3.connect(db) as conn:
            conn.execute(sql, tuple(params))
        return
    query(db, sql, params)
