"""The booking lifecycle: each action checks the state machine, does its atomic Redis step and
its compare-and-set in SQL, in the order that keeps a seat from ever being sold twice.

Ordering rules, and why:
- A hold is granted by Redis first (the atomic all-or-nothing step), then recorded in SQL.
- A payment starts only after Redis fenced it to this booking's hold and extended the hold.
- A confirm books the seats in Redis (inside the script that checks the hold is still ours)
  before SQL says CONFIRMED, and the answer waits for the SQL commit.
- A cancel commits CANCELLED in SQL before Redis frees the seats, so a crash in between can
  leave a seat blocked, never sold twice.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

from redis.exceptions import RedisError

from holdsvc.domain.errors import (
    Conflict,
    InvalidTransition,
    NotFound,
    SeatsNotAvailable,
    Unavailable,
    ValidationError,
)
from holdsvc.domain.faults import crash_point
from holdsvc.domain.flights import Flight, Flights
from holdsvc.domain.records import (
    BookingRecord,
    NewBooking,
    PaymentChange,
    PaymentChanged,
    SeatOwnedInSql,
    now_ms,
)
from holdsvc.domain.restore import Restorer
from holdsvc.domain.states import State, move, require
from holdsvc.domain.store import BookingStore
from holdsvc.gateway import Charge, MockGateway
from holdsvc.metrics import Metrics
from holdsvc.seats.holds import Confirm, Held, HoldStore, NotEnough, NotRestored, Taken
from holdsvc.settings import Settings
from holdsvc.tasks import stop

log = logging.getLogger(__name__)

ALL_STATES = frozenset(s.value for s in State)
# Built once: a hold's insert carries it, and a frozenset per hold showed in profiles.
SUPERSEDE = move(State.EXPIRED, "superseded")
# Attempts, 1 s apart doubling to 30 s, to take back a hold whose Redis reply was lost; past
# them the hold's own TTL frees the seats.
COMPENSATE_TRIES = 8


def new_booking_id() -> str:
    """48 bits of milliseconds, then 72 random bits: 20 characters.

    The random part makes it unguessable; the time prefix makes SQL's primary-key inserts
    land at the end of their B-trees instead of at random pages. With purely random ids each
    group commit dirtied (and fsync'd) a page per booking in every booking index, and the
    SQL writer, not Redis or HTTP, limited the hold rate. Short, because it is every held
    seat's value in Redis.
    """
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + secrets.token_bytes(9)
    return base64.urlsafe_b64encode(raw).decode()


class PayOutcome(Enum):
    CONFIRMED = "confirmed"
    DECLINED = "declined"


class HoldLostDuringPayment(Conflict):
    def __init__(self, state: str) -> None:
        super().__init__(
            "The hold expired before the payment completed; the payment was refunded",
            state=state,
        )


@dataclass(frozen=True, slots=True)
class HoldRequest:
    flight_id: int
    user_id: str
    seats: list[str] | None
    seat_count: int | None


class Bookings:
    def __init__(
        self,
        settings: Settings,
        store: BookingStore,
        holds: HoldStore,
        flights: Flights,
        gateway: MockGateway,
        restorer: Restorer,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._holds = holds
        self._flights = flights
        self._gateway = gateway
        self._restorer = restorer
        self._metrics = metrics or Metrics()
        self._background: set[asyncio.Task[None]] = set()
        # What leaves a taken charge unsettled for now (the sweeper settles it later).
        self._unavailable: tuple[type[Exception], ...] = (RedisError, OSError, *store.failures)

    async def get(self, booking_id: str) -> BookingRecord:
        booking = await self._store.get_booking(booking_id)
        if booking is None:
            raise NotFound("Booking not found")
        return booking

    async def hold(self, req: HoldRequest) -> BookingRecord:
        flight = await self._flights.get(req.flight_id)
        if req.seats is not None:
            unknown = [s for s in req.seats if not flight.has_seat(s)]
            if unknown:
                raise ValidationError("Unknown seats for this flight", seats=unknown)
        booking_id = new_booking_id()
        try:
            result = await self._grant(flight, req, booking_id)
        except RedisError:
            # Outcome unknown: the script may still run once Redis answers again. Take back
            # whatever it held, so a failed request never leaves seats held for nobody.
            self._compensate(flight, booking_id)
            raise
        if isinstance(result, NotRestored):
            # Redis lost the flight's data: restore it from SQL here, unless another request
            # of this process already is; no seat is held before that is done.
            if not await self._restorer.restore_unless_running(flight.id, "hold-found-no-marker"):
                raise Unavailable("Seat data is being restored after a Redis restart; retry")
            result = await self._grant(flight, req, booking_id)
        if isinstance(result, NotRestored):
            raise Unavailable("Seat data is being restored after a Redis restart; retry")
        if isinstance(result, Taken | NotEnough):
            self._metrics.holds.labels("refused").inc()
            if isinstance(result, Taken):
                raise SeatsNotAvailable(seats=result.seats)
            raise SeatsNotAvailable(requested=req.seat_count, available=result.free)

        new = NewBooking(
            id=booking_id,
            flight_id=flight.id,
            user_id=req.user_id,
            state=State.SEAT_HELD.value,
            seats=result.seats,
            amount=_amount(flight, len(result.seats)),
            currency=flight.record.currency,
            hold_expires_at=result.deadline_ms,
            created_at=now_ms(),
        )
        try:
            superseded = await self._store.insert_hold(new, SUPERSEDE)
        except SeatOwnedInSql as exc:
            # Redis granted seats that SQL says are sold: Redis lost data. Never sell twice.
            log.error("hold %s refused: %s", booking_id, exc)
            await self._holds.release(flight.id, result.seats, booking_id)
            raise SeatsNotAvailable(seats=result.seats) from exc
        except Exception:
            await self._holds.release(flight.id, result.seats, booking_id)
            raise
        if superseded:
            log.info("hold %s superseded expired holds %s", booking_id, superseded)
        self._metrics.holds.labels("created").inc()
        return BookingRecord(
            id=new.id,
            flight_id=new.flight_id,
            user_id=new.user_id,
            state=new.state,
            seats=new.seats,
            amount=new.amount,
            currency=new.currency,
            hold_expires_at=new.hold_expires_at,
            created_at=new.created_at,
            updated_at=new.created_at,
            payment=None,
        )

    async def close(self) -> None:
        """Stop background compensations (the hold's TTL frees what they did not)."""
        await asyncio.gather(*(stop(t) for t in list(self._background)), return_exceptions=True)

    def _compensate(self, flight: Flight, booking_id: str) -> None:
        task = asyncio.create_task(self._release_unknown(flight, booking_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release_unknown(self, flight: Flight, booking_id: str) -> None:
        for attempt in range(COMPENSATE_TRIES):
            await asyncio.sleep(min(2**attempt, 30))
            try:
                # Every seat of the flight: a best-seat hold's seats are not known here.
                freed = await self._holds.release(flight.id, flight.seats, booking_id)
            except RedisError:
                continue
            if freed:
                log.warning(
                    "hold %s: freed %d seats of a hold whose answer was lost", booking_id, freed
                )
            return

    async def _grant(
        self, flight: Flight, req: HoldRequest, booking_id: str
    ) -> Held | Taken | NotEnough | NotRestored:
        ttl = self._settings.hold_ttl_ms
        if req.seats is not None:
            return await self._holds.hold(flight.id, req.seats, booking_id, ttl)
        assert req.seat_count is not None
        return await self._holds.hold_best(
            flight.id,
            req.seat_count,
            flight.record.rows,
            flight.record.seat_letters,
            booking_id,
            ttl,
        )

    async def pay(
        self, booking_id: str, method: str, idem_key: str | None = None
    ) -> tuple[PayOutcome, BookingRecord]:
        """Charge for a held booking and confirm it; answered only after the SQL commit.

        ``idem_key`` is the request's Idempotency-Key: a retry of a pay whose first answer was
        lost (the process died) is recognised by it and answered from the booking's state.
        """
        booking = await self.get(booking_id)
        payment = booking.payment
        if idem_key is not None and payment is not None and payment.idem_key == idem_key:
            return self._pay_again(booking)
        require(State(booking.state), State.PAYMENT_PENDING)
        deadline = await self._holds.begin_payment(
            booking.flight_id, booking.seats, booking_id, self._settings.payment_window_ms
        )
        if deadline is None:
            # The hold lapsed and its expiry is not recorded yet: record it now. Only from
            # SEAT_HELD: a concurrent pay of the same booking may be confirming it.
            moved = await self._store.transition(
                booking_id,
                move(State.EXPIRED, "pay-after-expiry", only_from=State(booking.state)),
            )
            raise InvalidTransition(str(moved.state), State.PAYMENT_PENDING.value)
        moved = await self._store.transition(
            booking_id,
            move(State.PAYMENT_PENDING, "pay"),
            payment=PaymentChange(
                "pending",
                method=method,
                amount=booking.amount,
                currency=booking.currency,
                idem_key=idem_key,
            ),
            hold_expires_at=deadline,
        )
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
            outcome = await self.settle_charge(booking, charge)
        except self._unavailable as exc:
            # The sweeper settles it once the payment window is over; the booking says how.
            log.error("booking %s: charge taken, settling failed: %s", booking_id, exc)
            raise Unavailable(
                "The payment went through but the booking could not be settled yet;"
                " it will be confirmed or refunded shortly",
                retry_after_s=2,
            ) from exc
        return outcome, await self.get(booking_id)

    def _pay_again(self, booking: BookingRecord) -> tuple[PayOutcome, BookingRecord]:
        """The answer to a retried pay, from what the first attempt left behind."""
        assert booking.payment is not None
        status, state = booking.payment.status, booking.state
        if status == "failed":
            return PayOutcome.DECLINED, booking
        if state == State.PAYMENT_PENDING.value or status == "pending":
            # Not final: answered 503, which the idempotency store does not keep.
            raise Unavailable("The payment of this booking is still being settled", retry_after_s=2)
        if status == "refunded" and state == State.EXPIRED.value:
            raise HoldLostDuringPayment(state)
        if status == "refunded":
            raise Conflict("This payment was refunded", state=state)
        return PayOutcome.CONFIRMED, booking

    async def settle_charge(self, booking: BookingRecord, charge: Charge) -> PayOutcome:
        """Turn a charge of a PAYMENT_PENDING booking into CONFIRMED, or undo it all.

        Used by pay, and by the recovery of a pay whose process died after charging.
        """
        booking_id = booking.id
        if not charge.captured:
            await self._store.transition(
                booking_id,
                move(State.CANCELLED, "payment-failed"),
                payment=PaymentChange("failed", {"pending"}, payment_id=charge.payment_id),
            )
            await self._holds.release(booking.flight_id, booking.seats, booking_id)
            return PayOutcome.DECLINED

        confirmed = await self._holds.confirm(booking.flight_id, booking.seats, booking_id)
        crash_point(self._settings.fault, "after_confirm")
        if confirmed is Confirm.HOLD_LOST:
            await self.refund_lost(booking, charge.payment_id, "hold-lost-during-payment")
            raise HoldLostDuringPayment((await self.get(booking_id)).state)
        moved = await self._store.transition(
            booking_id,
            move(State.CONFIRMED, "payment-captured"),
            payment=PaymentChange("captured", {"pending"}, payment_id=charge.payment_id),
        )
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
        await self._holds.release(booking.flight_id, booking.seats, booking.id)
        refunded = PaymentChange("refunded", {"pending", "failed"}, payment_id=payment_id)
        moved = await self._store.transition(
            booking.id,
            move(State.EXPIRED, cause, only_from=State.PAYMENT_PENDING),
            payment=refunded,
        )
        if not moved.moved:
            try:
                await self._store.change_payment(booking.id, refunded, booking_in=ALL_STATES)
            except PaymentChanged as exc:
                if exc.status != "refunded":
                    raise
        log.warning("booking %s: captured payment refunded (%s)", booking.id, cause)

    async def cancel(self, booking_id: str) -> BookingRecord:
        booking = await self.get(booking_id)
        require(State(booking.state), State.CANCELLED)
        moved = await self._store.transition(booking_id, move(State.CANCELLED, "customer-cancel"))
        if not moved.moved:
            raise InvalidTransition(str(moved.state), State.CANCELLED.value)
        await self._holds.release(booking.flight_id, booking.seats, booking_id)
        return await self.get(booking_id)

    async def refund(self, booking_id: str) -> BookingRecord:
        booking = await self.get(booking_id)
        require(State(booking.state), State.REFUNDED)
        payment = booking.payment
        if payment is None or payment.status not in {"captured", "refunding"}:
            raise Conflict(
                "No captured payment to refund",
                payment_status=payment.status if payment else None,
            )
        try:
            claimed = await self._store.change_payment(
                booking_id,
                PaymentChange("refunding", {"captured"}),
                booking_in=move(State.REFUNDED, "refund").sources,
            )
        except PaymentChanged as exc:
            if exc.status == "refunding":
                raise Conflict("A refund of this booking is already in progress") from exc
            raise Conflict("No captured payment to refund", payment_status=exc.status) from exc
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
            payment=PaymentChange("refunded", {"refunding"}),
        )
        # REFUNDED already: recovery finished this same refund while the gateway was slow.
        if not moved.moved and moved.state != State.REFUNDED.value:
            raise InvalidTransition(str(moved.state), State.REFUNDED.value)
        return await self.get(booking_id)


def _amount(flight: Flight, seats: int) -> str:
    price = Decimal(flight.record.price)
    return str((price * seats).quantize(price))
