"""Settles payments that a dead or stalled pay left open, so nobody is charged for a seat they
did not get and no booking stays PAYMENT_PENDING.

A pay that died after charging left either a PAYMENT_PENDING booking (its payment window has
now passed), a ``pending`` payment on a booking that expired meanwhile, or a refund claimed
and never finished. The gateway's own ledger says whether money was taken; from there the
same steps as a live pay finish the job: confirm if the seats are still this booking's (or
were booked for it before the crash), else refund.
"""

from __future__ import annotations

import logging

from holdsvc.domain.bookings import Bookings
from holdsvc.domain.errors import DomainError
from holdsvc.domain.records import PaymentChange, now_ms
from holdsvc.domain.states import State, move
from holdsvc.domain.store import BookingStore
from holdsvc.gateway import MockGateway

log = logging.getLogger(__name__)

BATCH = 200


class PaymentRecovery:
    def __init__(
        self, bookings: Bookings, store: BookingStore, gateway: MockGateway, gateway_timeout_ms: int
    ) -> None:
        self._bookings = bookings
        self._store = store
        self._gateway = gateway
        self._gateway_timeout_ms = gateway_timeout_ms

    async def run(self, grace_ms: int) -> int:
        """Settle everything left open past its bound; returns how many."""
        settled = 0
        now = now_ms()
        # A payment touched less than a gateway timeout ago may still have a live call.
        open_ids = await self._store.unsettled_payments(
            now - grace_ms, now - grace_ms - self._gateway_timeout_ms, BATCH
        )
        for booking_id in open_ids:
            try:
                await self.settle(booking_id)
            except DomainError as exc:
                # The outcome of settling (a refund, a refused move) is the answer a live pay
                # would have sent; here it is only logged.
                log.info("booking %s settled: %s", booking_id, exc.message)
            except Exception:
                # One booking that cannot be settled now must not stop the others.
                log.exception("settling booking %s failed; retried next round", booking_id)
                continue
            settled += 1
        return settled

    async def settle(self, booking_id: str) -> None:
        booking = await self._bookings.get(booking_id)
        payment = booking.payment
        if payment is not None and payment.status == "refunding":
            charge = await self._gateway.find(booking_id)
        else:
            # Closes the reference to charges: a charge still in flight now declines.
            charge = await self._gateway.void(booking_id)
        log.warning(
            "settling booking %s left %s with payment %s (gateway: %s)",
            booking_id,
            booking.state,
            payment.status if payment else None,
            charge,
        )
        if payment is not None and payment.status == "refunding":
            await self._finish_refund(booking_id, charge.payment_id if charge else None)
            return
        if booking.state == State.PAYMENT_PENDING.value:
            if charge is None:
                # Never charged, and now never will be: the pay died before the gateway saw it.
                await self._store.transition(
                    booking_id,
                    move(State.EXPIRED, "payment-abandoned", only_from=State.PAYMENT_PENDING),
                    payment=PaymentChange("failed", {"pending"}),
                )
                return
            await self._bookings.settle_charge(booking, charge)
            return
        if payment is None or payment.status != "pending":
            return  # settled meanwhile (a slow pay confirmed it): nothing left to do
        # The booking ended (expired, cancelled) while its payment was still pending.
        if charge is not None and charge.captured:
            await self._bookings.refund_lost(booking, charge.payment_id, "recovery")
        else:
            await self._store.change_payment(
                booking_id,
                PaymentChange("failed", {"pending"}),
                booking_in=[booking.state],
            )

    async def _finish_refund(self, booking_id: str, payment_id: str | None) -> None:
        if payment_id is not None:
            await self._gateway.refund(payment_id)
        await self._store.transition(
            booking_id,
            move(State.REFUNDED, "refund-recovered"),
            payment=PaymentChange("refunded", {"refunding"}),
        )
