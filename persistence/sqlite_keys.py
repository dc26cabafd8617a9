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
        "SELECT fingerprint, status, body, started_at, alive_at, outcome, record"
        " FROM idempotency_keys WHERE key = ?",
        (key,),
    ).fetchone()
    if row is not None and row[3] >= at - ttl_ms:
        stored_fp, status, body, _, alive_at, outcome, record = row
        if bytes(stored_fp) != fingerprint:
            return ClaimResult(Claim.MISMATCH)
        if outcome is not None:
            return ClaimResult(Claim.REPLAY, outcome=outcome, record=bytes(record))
        if status is not None:
            return ClaimResult(Claim.REPLAY, status, bytes(body))
        if alive_at is not None and alive_at >= at - stale_ms:
            return ClaimResult(Claim.RUNNING)
        # Nobody renews this claim any more: its request ended with no answer kept, or its
        # process died. The retry takes it over and runs; the effect it may have left is
        # recognised by its key (a payment, a refund), or a compare-and-set refuses it.
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
