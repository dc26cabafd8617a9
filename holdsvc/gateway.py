"""The payment gateway holdsvc talks to: a mock that speaks Stripe's test-card vocabulary.

``pm_card_visa``, ``pm_card_mastercard`` and ``pm_card_amex`` capture;
``pm_card_chargeDeclined`` declines with ``card_declined``,
``pm_card_chargeDeclinedInsufficientFunds`` with ``insufficient_funds`` and
``pm_card_chargeDeclinedExpiredCard`` with ``expired_card``. Any other method is unknown:
refused before anything moves.

It stands in for an external provider, so its ledger is its own SQLite file that outlives
holdsvc's processes: a service killed after a charge finds the charge again by its reference
(the booking id), as one would look a payment up by idempotency key. Charges and refunds are
idempotent per reference and per payment id: a retry never moves money twice.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from persistence.coalesce import Coalescer

T = TypeVar("T")

DEFAULT_METHOD = "pm_card_visa"
# method -> the decline code its charges get (None: captured), as Stripe's test cards.
TEST_CARDS: dict[str, str | None] = {
    "pm_card_visa": None,
    "pm_card_mastercard": None,
    "pm_card_amex": None,
    "pm_card_chargeDeclined": "card_declined",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
}


def knows(method: str) -> bool:
    return method in TEST_CARDS


def decline_code(method: str) -> str:
    """Why a charge with ``method`` was declined (a method that no longer declines, or one
    from before the vocabulary, says card_declined)."""
    return TEST_CARDS.get(method) or "card_declined"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    reference   TEXT PRIMARY KEY,
    payment_id  TEXT NOT NULL UNIQUE,
    method      TEXT NOT NULL,
    amount      TEXT NOT NULL,
    currency    TEXT NOT NULL,
    status      TEXT NOT NULL,  -- captured, declined, refunded, voided
    at          INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Charge:
    payment_id: str
    captured: bool
    refunded: bool = False
    reason: str | None = None


class GatewayError(Exception):
    pass


class MockGateway:
    def __init__(self, ledger: Path) -> None:
        ledger.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(ledger, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: the ledger survives a killed process, which is what the crash tests need;
        # FULL would make every charge wait for an fsync under one lock, a bottleneck no real
        # provider has.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        # One thread of its own: the ledger is one connection under one lock, and the shared
        # default pool's threads only queued on that lock (the lifecycle bench's profile).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mock-gateway")
        self._charges: Coalescer[str, tuple[str, str, str], Charge] = Coalescer(self._charge_many)

    async def close(self) -> None:
        """Calls not started yet are dropped: at shutdown their callers are gone (a timeout
        abandoned them), and recovery voids a charge whose outcome it does not know. The one
        running is waited for off the event loop: it may sit in the ledger's busy timeout."""
        await asyncio.to_thread(self._thread.shutdown, True, cancel_futures=True)
        with self._lock:  # the direct readers (captured_unrefunded) take it too
            self._conn.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def charge(self, reference: str, amount: str, currency: str, method: str) -> Charge:
        """Charge once per reference; a repeated call answers with the first charge."""
        charge = await self._charges.get(reference, (amount, currency, method))
        assert charge is not None
        return charge

    async def _charge_many(self, wanted: dict[str, tuple[str, str, str]]) -> dict[str, Charge]:
        # Charges asked for in the same loop turn share one thread hop and one commit.
        return await self._run(self._charge_all, wanted)

    async def find(self, reference: str) -> Charge | None:
        return await self._run(self._find, reference)

    async def void(self, reference: str) -> Charge | None:
        """Close ``reference`` to charges: the charge it already has, or None and no charge
        will ever be taken under it (a late ``charge`` then declines)."""
        return await self._run(self._void, reference)

    async def refund(self, payment_id: str) -> None:
        await self._run(self._refund, payment_id)

    def captured_unrefunded(self) -> list[str]:
        """References whose money the gateway holds: for audits and tests."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT reference FROM charges WHERE status = 'captured'"
            ).fetchall()
        return [r[0] for r in rows]

    def _charge_all(self, wanted: dict[str, tuple[str, str, str]]) -> dict[str, Charge]:
        at = time.time_ns() // 1_000_000
        rows = [
            (
                reference,
                "pi_" + secrets.token_hex(8),
                method,
                amount,
                currency,
                "declined" if TEST_CARDS.get(method) else "captured",
                at,
            )
            for reference, (amount, currency, method) in wanted.items()
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO charges (reference, payment_id, method, amount,"
                    " currency, status, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                found = {ref: self._find_locked(ref) for ref in wanted}
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        return {ref: charge for ref, charge in found.items() if charge is not None}

    def _void(self, reference: str) -> Charge | None:
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO charges (reference, payment_id, method, amount, currency,"
                " status, at) VALUES (?, ?, '', '', '', 'voided', ?)",
                (reference, "pi_" + secrets.token_hex(8), time.time_ns() // 1_000_000),
            )
        found = self._find(reference)
        return found if found is not None and found.reason != "voided" else None

    def _find(self, reference: str) -> Charge | None:
        with self._lock:
            return self._find_locked(reference)

    def _find_locked(self, reference: str) -> Charge | None:
        row = self._conn.execute(
            "SELECT payment_id, status, method FROM charges WHERE reference = ?", (reference,)
        ).fetchone()
        if row is None:
            return None
        payment_id, status, method = row
        return Charge(
            payment_id,
            captured=status in ("captured", "refunded"),
            refunded=status == "refunded",
            reason={"declined": decline_code(method), "voided": "voided"}.get(status),
        )

    def _refund(self, payment_id: str) -> None:
        with self._lock:
            row = self._conn.execute(
                "SELECT status FROM charges WHERE payment_id = ?", (payment_id,)
            ).fetchone()
            if row is None or row[0] in ("declined", "voided"):
                raise GatewayError(f"no captured payment {payment_id}")
            self._conn.execute(
                "UPDATE charges SET status = 'refunded' WHERE payment_id = ?", (payment_id,)
            )
