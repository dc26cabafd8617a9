"""Idempotency keys: a keyed request is claimed before it runs and its answer kept after.

The claim names this process (``<instance id>:<token>``); the process's heartbeat says it is
alive, so a key whose process died is taken over instead of blocking its retries.
"""

from __future__ import annotations

import secrets

from holdsvc.domain.records import ClaimResult, now_ms
from holdsvc.domain.store import BookingStore

# A process writes its heartbeat this often; Settings.takeover_after says when it is dead.
HEARTBEAT_EVERY_S = 1.0


class IdempotencyKeys:
    def __init__(
        self, store: BookingStore, instance_id: str, takeover_after_ms: int, ttl_ms: int
    ) -> None:
        self._store = store
        self.instance_id = instance_id
        self._stale_ms = takeover_after_ms
        self._ttl_ms = ttl_ms

    async def claim(self, key: str, fingerprint: bytes) -> tuple[ClaimResult, str]:
        """Claim ``key`` for a new request; returns what the store said and this claim's owner
        token (only the claim's holder may answer into it, even after a takeover)."""
        owner = f"{self.instance_id}:{secrets.token_hex(6)}"
        claim = await self._store.claim_key(
            key, fingerprint, owner=owner, stale_ms=self._stale_ms, ttl_ms=self._ttl_ms
        )
        return claim, owner

    async def complete(self, key: str, owner: str, status: int, body: bytes) -> bool:
        return await self._store.complete_key(key, owner, status, body)

    async def release(self, key: str, owner: str) -> None:
        await self._store.release_key(key, owner)

    async def heartbeat(self) -> None:
        await self._store.heartbeat(self.instance_id)

    async def purge(self) -> int:
        return await self._store.purge_keys(now_ms() - self._ttl_ms)

    async def retire(self) -> None:
        await self._store.retire(self.instance_id)
