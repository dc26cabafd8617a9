"""The mock gateway's own promises: one charge per reference, however many ask at once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from holdsvc.gateway import MockGateway


async def test_concurrent_charges_of_one_reference_take_money_once(tmp_path: Path) -> None:
    gateway = MockGateway(tmp_path / "ledger.sqlite3")
    try:
        charges = await asyncio.gather(
            *(gateway.charge("bk1", "10.00", "INR", "pm_card_visa") for _ in range(20)),
            gateway.charge("bk2", "5.00", "INR", "pm_card_chargeDeclined"),
        )
        first = charges[0]
        assert first.captured
        assert all(c.payment_id == first.payment_id for c in charges[:20])
        assert not charges[20].captured and charges[20].reason == "card_declined"
        assert gateway.captured_unrefunded() == ["bk1"]
        # A later charge of the same reference answers with the first one.
        again = await gateway.charge("bk1", "10.00", "INR", "pm_card_visa")
        assert again.payment_id == first.payment_id
    finally:
        await gateway.close()


async def test_closing_does_not_stall_the_event_loop_behind_a_locked_ledger(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    gateway = MockGateway(ledger)
    other = sqlite3.connect(ledger, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the ledger's write lock
    try:
        for reference in ("bk1", "bk2"):  # callers that gave up waiting
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(gateway.charge(reference, "1.00", "INR", "pm_x"), 0.1)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        asyncio.get_running_loop().call_later(0.5, other.execute, "ROLLBACK")
        started = time.monotonic()
        await gateway.close()
        elapsed = time.monotonic() - started
        ticker.cancel()
        assert elapsed < 5  # the running charge ended with the lock, the queued one was dropped
        assert ticks >= 0.3 / 0.01 * 0.5  # the loop kept running meanwhile
    finally:
        other.close()
    with sqlite3.connect(ledger) as conn:
        assert conn.execute("SELECT reference FROM charges").fetchall() == [("bk1",)]
