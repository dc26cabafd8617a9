"""Idempotency keys: a keyed request is claimed before it runs and its answer kept after.

A claim is "in progress" only while this process renews it: every 0.5 s it renews the claims
of the requests still running here, so a claim whose request ended without an answer kept (a
5xx, a store that failed) or whose process died lapses within ``lease_ms``, and its retry runs
instead of waiting for it. A request whose effect is in SQL stores its answer in the effect's
own commit (``KeyRef`` carries the key down to the store), so a retry finds the first answer
or no trace of the first request, never an effect without its answer.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from holdsvc.domain.records import BookingRecord, ClaimResult, KeyAnswer, Moved, now_ms
from holdsvc.domain.store import BookingStore

# A process renews the claims of its running requests this often; a claim not renewed for
# Settings.takeover_after is taken over.
RENEW_EVERY_S = 0.5


@dataclass(slots=True)
class KeyRef:
    """The Idempotency-Key of the request being run, handed to the domain so the operation
    that commits its effect stores its answer in the same commit."""

    key: str
    owner: str
    # Set once the answer is committed with the effect: the middleware stores nothing more.
    stored: bool = False
    record: BookingRecord | None = field(default=None)

    def answer(self, outcome: str) -> KeyAnswer:
        return KeyAnswer(self.key, outcome)

    def note(self, moved: Moved) -> None:
        """Note that the answer committed with ``moved``, if the move carried it."""
        if moved.moved and moved.record is not None:
            self.stored, self.record = True, moved.record


class IdempotencyKeys:
    def __init__(self, store: BookingStore, instance_id: str, lease_ms: int, ttl_ms: int) -> None:
        self._store = store
        self.instance_id = instance_id
        self._lease_ms = lease_ms
        self._ttl_ms = ttl_ms
        # Owner tokens of the claims whose requests are running in this process.
        self._running: set[str] = set()

    async def claim(self, key: str, fingerprint: bytes) -> tuple[ClaimResult, str]:
        """Claim ``key`` for a new request; returns what the store said and this claim's owner
        token (only the claim's holder may answer into it, even after a takeover). The caller
        must call :meth:`finish` with the token once the request is over."""
        owner = f"{self.instance_id}:{secrets.token_hex(6)}"
        self._running.add(owner)
        try:
            claim = await self._store.claim_key(
                key, fingerprint, owner=owner, stale_ms=self._lease_ms, ttl_ms=self._ttl_ms
            )
        except BaseException:
            self._running.discard(owner)
            raise
        return claim, owner

    def finish(self, owner: str) -> None:
        """The request is over: its claim is renewed no more (and lapses, unless answered)."""
        self._running.discard(owner)

    async def complete(self, key: str, owner: str, status: int, body: bytes) -> bool:
        return await self._store.complete_key(key, owner, status, body)

    async def release(self, key: str, owner: str) -> None:
        await self._store.release_key(key, owner)

    async def renew(self) -> None:
        """Keep the claims of the requests running here alive (no write when there are none)."""
        if self._running:
            await self._store.renew_claims(sorted(self._running))

    async def purge(self) -> int:
        return await self._store.purge_keys(now_ms() - self._ttl_ms)
