"""Idempotency keys in SQLite: who ran a keyed request, and its answer.

A claim is "in progress" only while its process renews it (``alive_at``, every 0.5 s for the
requests it is still running): a claim whose request ended without an
answer stored (a 5xx, a failed write) or whose process died lapses within a lease, and the
retry runs instead of waiting.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from persistence.records import Claim, ClaimResult, now_ms
from persistence.rows import KEY_COLUMNS, claimed_key
from persistence.sqlite_ops import execute, marks
from persistence.writer import Call, GroupCommitWriter


def claim_key_op(
    conn: sqlite3.Connection,
    key: str,
    fingerprint: bytes,
    owner: str,
    at: int,
    stale_ms: int,
    ttl_ms: int,
) -> ClaimResult:
    row = conn.execute(
        f"SELECT {KEY_COLUMNS} FROM idempotency_keys WHERE key = ?", (key,)
    ).fetchone()
    found = claimed_key(row, fingerprint, at, stale_ms, ttl_ms)
    if found is not None:
        return found
    conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, status, body,"
        " started_at, owner, alive_at) VALUES (?, ?, NULL, NULL, ?, ?, ?)",
        (key, fingerprint, at, owner, at),
    )
    return ClaimResult(Claim.NEW)


def renew_claims_op(conn: sqlite3.Connection, running: list[str], at: int) -> None:
    for start in range(0, len(running), 500):
        chunk = running[start : start + 500]
        conn.execute(
            f"UPDATE idempotency_keys SET alive_at = ? WHERE owner IN ({marks(chunk)})"
            " AND status IS NULL AND outcome IS NULL",
            (at, *chunk),
        )


class SqliteKeys:
    """The idempotency-key half of :class:`~persistence.sqlite_store.SqlStore`."""

    _writer: GroupCommitWriter

    async def claim_key(
        self, key: str, fingerprint: bytes, *, owner: str, stale_ms: int, ttl_ms: int
    ) -> ClaimResult:
        """Take an idempotency key for a new request, or say what the first request left.

        A claim its owner has not renewed for ``stale_ms`` (the request ended without an
        answer kept, or its process died) is taken over, so the retry runs instead of waiting.
        """
        at = now_ms()

        return await self._writer.submit(
            Call(claim_key_op, (key, fingerprint, owner, at, stale_ms, ttl_ms))
        )

    async def renew_claims(self, owners: Collection[str]) -> None:
        """The requests holding these claims (their owner tokens) are still running."""
        await self._writer.submit(Call(renew_claims_op, (list(owners), now_ms())))

    async def complete_key(self, key: str, owner: str, status: int, body: bytes) -> bool:
        """Store the answer, if ``owner`` still holds the key; False if it was taken over."""

        changed: int = await self._writer.submit(
            Call(
                execute,
                (
                    "UPDATE idempotency_keys SET status = ?, body = ?"
                    " WHERE key = ? AND owner = ? AND status IS NULL",
                    (status, body, key, owner),
                ),
            )
        )
        return changed == 1

    async def release_key(self, key: str, owner: str) -> None:
        """Forget a key whose request failed unexpectedly, so that a retry runs again."""

        await self._writer.submit(
            Call(
                execute,
                (
                    "DELETE FROM idempotency_keys WHERE key = ? AND owner = ? AND status IS NULL",
                    (key, owner),
                ),
            )
        )

    async def purge_keys(self, older_than_ms: int) -> int:
        deleted: int = await self._writer.submit(
            Call(execute, ("DELETE FROM idempotency_keys WHERE started_at < ?", (older_than_ms,)))
        )
        return deleted
