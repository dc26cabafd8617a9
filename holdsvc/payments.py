"""The payment gateway holdsvc talks to: an in-process mock with Stripe-like test methods.

``pm_card_visa`` (and any other ``pm_…``) captures; a method containing ``chargeDeclined``
(e.g. ``pm_card_chargeDeclined``) declines. Refunds are idempotent per payment id, as a real
gateway's are with an idempotency key, so a retried refund never returns money twice.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

DEFAULT_METHOD = "pm_card_visa"


@dataclass(frozen=True, slots=True)
class Charge:
    payment_id: str
    captured: bool
    reason: str | None = None


@dataclass(slots=True)
class MockGateway:
    captured: dict[str, str] = field(default_factory=dict)
    refunded: set[str] = field(default_factory=set)

    async def charge(self, reference: str, amount: str, currency: str, method: str) -> Charge:
        payment_id = "pi_" + secrets.token_hex(8)
        if "chargeDeclined" in method:
            return Charge(payment_id, captured=False, reason="card_declined")
        self.captured[payment_id] = f"{amount} {currency} for {reference}"
        return Charge(payment_id, captured=True)

    async def refund(self, payment_id: str) -> None:
        if payment_id not in self.captured:
            raise ValueError(f"no captured payment {payment_id}")
        self.refunded.add(payment_id)
