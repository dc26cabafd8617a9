"""The mock gateway's own promises: one charge per reference, however many ask at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from holdsvc.payments import MockGateway


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
        gateway.close()
