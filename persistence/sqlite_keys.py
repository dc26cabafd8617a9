"""Idempotency keys and process heartbeats in SQLite: who ran a keyed request, and its answer.

A claim names its process (``<instance id>:<token>``); the process's heartbeat row says whether
it is alive, so a key whose process died can be taken over instead of blocking its retries.
"""

from __future__ import annotations

import sqlite3

from persistence.records import Claim, ClaimResult, now_ms
from persistence.sqlite_ops import execute
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
        "SELECT k.fingerprint, k.status, k.body, k.started_at, k.owner, i.heartbeat_at"
        " FROM idempotency_keys k LEFT JOIN instances i"
        " ON i.id = substr(k.owner, 1, instr(k.owner, ':') - 1)"
        " WHERE k.key = ?",
        (key,),
    ).fetchone()
    if row is not None and row[3] >= at - ttl_ms:
        stored_fp, status, body, _, holder, heartbeat = row
        if bytes(stored_fp) != fingerprint:
            return ClaimResult(Claim.MISMATCH)
        if status is not None:
            return ClaimResult(Claim.REPLAY, status, bytes(body))
        if heartbeat is not None and heartbeat >= at - stale_ms:
            return ClaimResult(Claim.RUNNING)
        del holder  # a dead holder's claim is taken over below
    conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, status, body,"
        " started_at, owner) VALUES (?, ?, NULL, NULL, ?, ?)",
        (key, fingerprint, at, owner),
    )
    return ClaimResult(Claim.NEW)


class SqliteKeys:
    """The idempotency-key and heartbeat half of :class:`~persistence.sqlite_store.SqlStore`."""

    _writer: GroupCommitWriter

    async def claim_key(
        self, key: str, fingerprint: bytes, *, owner: str, stale_ms: int, ttl_ms: int
    ) -> ClaimResult:
        # owner is "<instance id>:<claim token>"; the instance's heartbeat says it is alive.
        """Take an idempotency key for a new request, or say what the first request left.

        A key still running under a process whose heartbeat stopped ``stale_ms`` ago (it
        crashed) is taken over, so the retry runs instead of waiting forever.
        """
        at = now_ms()

        return await self._writer.submit(
            Call(claim_key_op, (key, fingerprint, owner, at, stale_ms, ttl_ms))
        )

    async def heartbeat(self, instance: str) -> None:
        at = now_ms()

        await self._writer.submit(
            Call(
                execute,
                (
                    "INSERT INTO instances (id, heartbeat_at) VALUES (?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                    (instance, at),
                ),
            )
        )

    async def retire(self, instance: str) -> None:
        await self._writer.submit(
            Call(execute, ("DELETE FROM instances WHERE id = ?", (instance,)))
        )

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
