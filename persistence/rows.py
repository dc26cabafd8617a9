"""What both SQL stores make of what they read: a booking from its row, a flight's fields,
and what a row of an Idempotency-Key already claimed says to its retry. Each store selects
its columns in the one order ``booking_of`` reads (``BOOKING_COLUMNS`` in each)."""

from __future__ import annotations

import dataclasses
from typing import Any

from persistence.records import BookingRecord, Claim, ClaimResult, NewFlight, PaymentRecord


def booking_of(row: Any, seats: list[str]) -> BookingRecord:
    return BookingRecord(
        id=row[0],
        flight_id=row[1],
        user_id=row[2],
        state=row[3],
        seats=seats,
        amount=row[4],
        currency=row[5],
        hold_expires_at=row[6],
        created_at=row[7],
        updated_at=row[8],
        payment=PaymentRecord(*row[9:16]) if row[11] is not None else None,
        owner=row[16],
    )


def flight_fields(flight: NewFlight) -> dict[str, Any]:
    return {f.name: getattr(flight, f.name) for f in dataclasses.fields(flight)}


# The columns claimed_key() reads, in its order.
KEY_COLUMNS = "fingerprint, status, body, started_at, alive_at, outcome, record"


def claimed_key(
    row: Any, fingerprint: bytes, at: int, stale_ms: int, ttl_ms: int
) -> ClaimResult | None:
    """What an existing key's row answers its retry: a mismatch, the first answer, or "still
    running"; None when the retry takes the key over (it expired, or nobody renews it any
    more: its request ended with no answer kept, or its process died; the effect it may have
    left is recognised by its key, or a compare-and-set refuses it)."""
    if row is None or row[3] < at - ttl_ms:
        return None
    stored_fp, status, body, _, alive_at, outcome, record = row
    if bytes(stored_fp) != fingerprint:
        return ClaimResult(Claim.MISMATCH)
    if outcome is not None:
        return ClaimResult(Claim.REPLAY, outcome=outcome, record=bytes(record))
    if status is not None:
        return ClaimResult(Claim.REPLAY, status, bytes(body))
    if alive_at is not None and alive_at >= at - stale_ms:
        return ClaimResult(Claim.RUNNING)
    return None
