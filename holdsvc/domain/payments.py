"""The money flow: pay, settle a charge, refund, and the recovery of pays that died midway.

Ordering rules, and why:
- A payment starts only after Redis fenced it to this booking's hold and extended the hold.
- A confirm books the seats in Redis (inside the script that checks the hold is still ours)
  before SQL says CONFIRMED, and the answer waits for the SQL commit.
- A refund is claimed in SQL (``refunding``) before the gateway is asked, so it runs once.

Recovery settles what a dead or stalled pay left open, so nobody is charged for a seat they
did not get and no booking stays PAYMENT_PENDING: the gateway's own ledger says whether money
was taken, and from there the same steps as a live pay finish the job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from enum import Enum

from redis.exceptions import RedisError

from holdsvc.domain.access import OPEN, Principal
from holdsvc.domain.bookings import CANCELLED, SUPERSEDE, Bookings, new_booking
from holdsvc.domain.errors import (
    Conflict,
    DomainError,
    InvalidTransition,
    SeatsNotAvailable,
    Unavailable,
    ValidationError,
)
from holdsvc.domain.faults import crash_point
from holdsvc.domain.idempotency import KeyRef
from holdsvc.domain.records import BookingRecord, PaymentChanged, SeatOwnedInSql, now_ms
from holdsvc.domain.states import (
    PaymentStatus,
    State,
    move,
    new_payment,
    payment_move,
    require,
)
from holdsvc.domain.store import BookingStore
from holdsvc.gateway import TEST_CARDS, Charge, MockGateway
from holdsvc.gateway import knows as gateway_knows
from holdsvc.seats.holds import Confirm, HoldStore
from holdsvc.settings import Settings

log = logging.getLogger(__name__)

ALL_STATES = frozenset(s.value for s in State)
PAY = move(State.PAYMENT_PENDING, "pay")
# Unsettled payments one recovery round takes on.
RECOVERY_BATCH = 200
# A capture whose seats were lost is refunded from what SQL last knew of it; a refund in
# progress (REFUNDING) is the refund flow's own and is left to it.
LOST_CAPTURE_FROM = frozenset({PaymentStatus.PENDING, PaymentStatus.FAILED})


# The outcomes a keyed request's answer is stored as, in its effect's commit.
CONFIRMED = "pay.confirmed"
DECLINED = "pay.declined"
REFUNDED = "refund"
# A payment whose money is held: what a refund may take back.
REFUNDABLE = frozenset({PaymentStatus.CAPTURED.value, PaymentStatus.REFUNDING.value})


class PayOutcome(Enum):
    CONFIRMED = "confirmed"
    DECLINED = "declined"


class HoldLostDuringPayment(Conflict):
    code = "hold_expired_during_payment"

    def __init__(self, state: str) -> None:
        super().__init__(
            "The hold expired before the payment completed; the payment was refunded",
            state=state,
        )


class Payments:
    def __init__(
        self,
        settings: Settings,
        store: BookingStore,
        holds: HoldStore,
        bookings: Bookings,
        gateway: MockGateway,
    ) -> None:
        self._settings = settings
        self._store = store
        self._holds = holds
        self._bookings = bookings
        self._gateway = gateway
        # What leaves a taken charge unsettled for now (recovery settles it later).
        self._unavailable: tuple[type[Exception], ...] = (RedisError, OSError, *store.failures)

    async def pay(
        self, booking_id: str, method: str, key: KeyRef | None = None, actor: Principal = OPEN
    ) -> tuple[PayOutcome, BookingRecord]:
        """Charge for a held booking and confirm it; answered only after the SQL commit.

        ``key`` is the request's Idempotency-Key: the pay's outcome is stored under it in the
        commit that settles the booking, and a retry of a pay whose first attempt left its
        payment behind (its process died) is recognised by it, never charged again.
        """
        if not gateway_knows(method):
            raise ValidationError(
                f"Unknown payment method {method!r}",
                "unknown_payment_method",
                field="$.payment_method",
                known=sorted(TEST_CARDS),
            )
        idem_key = key.key if key is not None else None
        booking = await self._bookings.get(booking_id, actor)
        payment = booking.payment
        if idem_key is not None and payment is not None and payment.idem_key == idem_key:
            return self._pay_again(booking)
        require(State(booking.state), State.PAYMENT_PENDING)
        deadline = await self._holds.begin_payment(
            booking.flight_id, booking.seats, booking_id, self._settings.payment_window_ms
        )
        if deadline is None:
            # The hold lapsed and its expiry is not recorded yet: record it now. Only from
            # the state seen: a concurrent pay of the same booking may be confirming it.
            await self._bookings.record_lapsed(booking, "pay-after-expiry")
            state = (await self._bookings.get(booking_id)).state
            raise InvalidTransition(state, State.PAYMENT_PENDING.value)
        started = new_payment(method, booking.amount, booking.currency, idem_key)
        if booking.in_sql:
            moved = await self._store.transition(
                booking_id, PAY, payment=started, hold_expires_at=deadline
            )
        else:
            # The booking enters SQL here, its first money step, through the one-live-booking-
            # per-seat fence: SQL refuses a seat it knows is sold, whatever Redis said.
            row = dataclasses.replace(new_booking(booking), hold_expires_at=deadline)
            try:
                moved, _ = await self._store.insert_booking(row, PAY, SUPERSEDE, started)
            except SeatOwnedInSql as exc:
                log.error("pay of %s refused by SQL's seat fence: %s", booking_id, exc)
                await self._bookings.free_seats(booking)
                raise SeatsNotAvailable(seats=booking.seats) from exc
        if not moved.moved:
            raise InvalidTransition(str(moved.state), State.PAYMENT_PENDING.value)

        crash_point(self._settings.fault, "before_charge")
        try:
            charge = await asyncio.wait_for(
                self._gateway.charge(booking_id, booking.amount, booking.currency, method),
                self._settings.gateway_timeout,
            )
        except TimeoutError as exc:
            # Recovery voids the charge at the gateway (or settles it, if it went through).
            raise Unavailable(
                "The payment gateway did not answer; the booking will be settled shortly",
                retry_after_s=5,
            ) from exc
        crash_point(self._settings.fault, "after_charge")
        try:
            outcome = await self.settle_charge(booking, charge, key)
        except self._unavailable as exc:
            # Recovery settles it once the payment window is over; the booking says how.
            log.error("booking %s: charge taken, settling failed: %s", booking_id, exc)
            raise Unavailable(
                "The payment went through but the booking could not be settled yet;"
                " it will be confirmed or refunded shortly",
                retry_after_s=2,
            ) from exc
        if key is not None and key.record is not None:
            return outcome, key.record  # as its commit left it, as a replay will show it
        return outcome, await self._bookings.get(booking_id)

    def _pay_again(self, booking: BookingRecord) -> tuple[PayOutcome, BookingRecord]:
        """The answer to a retried pay, from what the first attempt left behind."""
        assert booking.payment is not None
        status, state = PaymentStatus(booking.payment.status), booking.state
        if status is PaymentStatus.FAILED:
            return PayOutcome.DECLINED, booking
        if state == State.PAYMENT_PENDING.value or status is PaymentStatus.PENDING:
            # Not final: answered 503, which the idempotency store does not keep.
            raise Unavailable("The payment of this booking is still being settled", retry_after_s=2)
        if status is PaymentStatus.REFUNDED and state == State.EXPIRED.value:
            raise HoldLostDuringPayment(state)
        if status is PaymentStatus.REFUNDED:
            raise Conflict("This payment was refunded", "payment_refunded", state=state)
        return PayOutcome.CONFIRMED, booking

    async def settle_charge(
        self, booking: BookingRecord, charge: Charge, key: KeyRef | None = None
    ) -> PayOutcome:
        """Turn a charge of a PAYMENT_PENDING booking into CONFIRMED, or undo it all.

        Used by pay, and by the recovery of a pay whose process died after charging.
        """
        booking_id = booking.id
        if not charge.captured:
            declined = await self._store.transition(
                booking_id,
                move(State.CANCELLED, "payment-failed"),
                payment=payment_move(PaymentStatus.FAILED, payment_id=charge.payment_id),
                answer=key.answer(DECLINED) if key else None,
            )
            if key is not None:
                key.note(declined)
            await self._bookings.free_seats(booking)
            return PayOutcome.DECLINED

        confirmed = await self._holds.confirm(booking.flight_id, booking.seats, booking_id)
        crash_point(self._settings.fault, "after_confirm")
        if confirmed is Confirm.HOLD_LOST:
            await self.refund_lost(booking, charge.payment_id, "hold-lost-during-payment")
            raise HoldLostDuringPayment((await self._bookings.get(booking_id)).state)
        moved = await self._store.transition(
            booking_id,
            move(State.CONFIRMED, "payment-captured"),
            payment=payment_move(PaymentStatus.CAPTURED, payment_id=charge.payment_id),
            answer=key.answer(CONFIRMED) if key else None,
        )
        if key is not None:
            key.note(moved)
        if not moved.moved:
            if moved.state == State.CONFIRMED.value:
                # Another settler of the same charge (a recovery, a retry) got there first.
                return PayOutcome.CONFIRMED
            # Cancelled or expired while the charge ran: give the seats and the money back.
            await self.refund_lost(booking, charge.payment_id, "changed-during-payment")
            raise InvalidTransition(str(moved.state), State.CONFIRMED.value)
        crash_point(self._settings.fault, "after_commit")
        return PayOutcome.CONFIRMED

    async def refund_lost(self, booking: BookingRecord, payment_id: str, cause: str) -> None:
        """Refund a capture whose seats could not be booked, free whatever seats the booking
        still has, and record the booking's end. Safe to run twice for one charge."""
        await self._gateway.refund(payment_id)
        await self._bookings.free_seats(booking)
        refunded = payment_move(
            PaymentStatus.REFUNDED, only_from=LOST_CAPTURE_FROM, payment_id=payment_id
        )
        moved = await self._store.transition(
            booking.id,
            move(State.EXPIRED, cause, only_from=State.PAYMENT_PENDING),
            payment=refunded,
        )
        if not moved.moved:
            try:
                await self._store.change_payment(booking.id, refunded, booking_in=ALL_STATES)
            except PaymentChanged as exc:
                if exc.status != PaymentStatus.REFUNDED.value:
                    raise
        log.warning("booking %s: captured payment refunded (%s)", booking.id, cause)

    async def cancel(
        self,
        booking_id: str,
        refund: bool,
        key: KeyRef | None = None,
        actor: Principal = OPEN,
    ) -> tuple[str, BookingRecord]:
        """Cancel; with ``refund``, refund a captured payment in the same call, ending
        REFUNDED. Returns what happened (CANCELLED or REFUNDED) and the booking.

        With both, the Idempotency-Key's answer is stored by the refund's commit, the last
        effect: a retry after a crash between the two finds the booking CANCELLED with its
        refund open, skips the cancel and refunds.
        """
        if not refund:
            return CANCELLED, await self._bookings.cancel(booking_id, key, actor)
        booking = await self._bookings.get(booking_id, actor)
        captured = booking.payment is not None and booking.payment.status in REFUNDABLE
        if not captured:
            return CANCELLED, await self._bookings.cancel(booking_id, key, actor)
        if booking.state != State.CANCELLED.value:
            await self._bookings.cancel(booking_id, None, actor)
        return REFUNDED, await self.refund(booking_id, key, actor)

    async def refund(
        self, booking_id: str, key: KeyRef | None = None, actor: Principal = OPEN
    ) -> BookingRecord:
        booking = await self._bookings.get(booking_id, actor)
        payment = booking.payment
        if key is not None and payment is not None and payment.refund_key == key.key:
            # This request's own refund, claimed by an attempt whose answer was lost.
            if payment.status == PaymentStatus.REFUNDED.value:
                return booking
            raise Unavailable("The refund of this booking is being completed", retry_after_s=2)
        require(State(booking.state), State.REFUNDED)
        if payment is None or payment.status not in REFUNDABLE:
            raise Conflict(
                "No captured payment to refund",
                "nothing_to_refund",
                payment_status=payment.status if payment else None,
            )
        try:
            claimed = await self._store.change_payment(
                booking_id,
                payment_move(PaymentStatus.REFUNDING, idem_key=key.key if key else None),
                booking_in=move(State.REFUNDED, "refund").sources,
            )
        except PaymentChanged as exc:
            if exc.status == PaymentStatus.REFUNDING.value:
                raise Conflict(
                    "A refund of this booking is already in progress", "refund_in_progress"
                ) from exc
            raise Conflict(
                "No captured payment to refund", "nothing_to_refund", payment_status=exc.status
            ) from exc
        if not claimed.moved:
            raise InvalidTransition(str(claimed.state), State.REFUNDED.value)
        assert payment.payment_id is not None
        try:
            await asyncio.wait_for(
                self._gateway.refund(payment.payment_id), self._settings.gateway_timeout
            )
        except TimeoutError as exc:
            raise Unavailable(
                "The payment gateway did not answer; the refund will complete shortly",
                retry_after_s=5,
            ) from exc
        moved = await self._store.transition(
            booking_id,
            move(State.REFUNDED, "refund"),
            payment=payment_move(PaymentStatus.REFUNDED, only_from=PaymentStatus.REFUNDING),
            answer=key.answer(REFUNDED) if key else None,
        )
        # REFUNDED already: recovery finished this same refund while the gateway was slow.
        if not moved.moved and moved.state != State.REFUNDED.value:
            raise InvalidTransition(str(moved.state), State.REFUNDED.value)
        if key is not None:
            key.note(moved)
        return moved.record or await self._bookings.get(booking_id)


class PaymentRecovery:
    """Settles payments a dead or stalled pay left open: a PAYMENT_PENDING booking past its
    window, a ``pending`` payment on a booking that ended meanwhile, a refund claimed and
    never finished."""

    def __init__(
        self,
        payments: Payments,
        bookings: Bookings,
        store: BookingStore,
        gateway: MockGateway,
        gateway_timeout_ms: int,
    ) -> None:
        self._payments = payments
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
            now - grace_ms, now - grace_ms - self._gateway_timeout_ms, RECOVERY_BATCH
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
        status = PaymentStatus(payment.status) if payment is not None else None
        if status is PaymentStatus.REFUNDING:
            charge = await self._gateway.find(booking_id)
        else:
            # Closes the reference to charges: a charge still in flight now declines.
            charge = await self._gateway.void(booking_id)
        log.warning(
            "settling booking %s left %s with payment %s (gateway: %s)",
            booking_id,
            booking.state,
            status,
            charge,
        )
        if status is PaymentStatus.REFUNDING:
            await self._finish_refund(booking_id, charge.payment_id if charge else None)
            return
        if booking.state == State.PAYMENT_PENDING.value:
            if charge is None:
                # Never charged, and now never will be: the pay died before the gateway saw it.
                moved = await self._store.transition(
                    booking_id,
                    move(State.EXPIRED, "payment-abandoned", only_from=State.PAYMENT_PENDING),
                    payment=payment_move(PaymentStatus.FAILED),
                )
                if moved.moved:
                    # The pay extended the hold through its window; ended, it holds nothing.
                    await self._bookings.free_seats(booking)
                return
            await self._payments.settle_charge(booking, charge)
            return
        if status is not PaymentStatus.PENDING:
            return  # settled meanwhile (a slow pay confirmed it): nothing left to do
        # The booking ended (expired, cancelled) while its payment was still pending.
        if charge is not None and charge.captured:
            await self._payments.refund_lost(booking, charge.payment_id, "recovery")
        else:
            await self._store.change_payment(
                booking_id, payment_move(PaymentStatus.FAILED), booking_in=[booking.state]
            )

    async def _finish_refund(self, booking_id: str, payment_id: str | None) -> None:
        if payment_id is not None:
            await self._gateway.refund(payment_id)
        await self._store.transition(
            booking_id,
            move(State.REFUNDED, "refund-recovered"),
            payment=payment_move(PaymentStatus.REFUNDED, only_from=PaymentStatus.REFUNDING),
        )
