"""Holds and their release: each action checks the state machine, does its atomic Redis step
and its compare-and-set in SQL, in the order that keeps a seat from ever being sold twice.
The money steps are in :mod:`holdsvc.domain.payments`.

Ordering rules, and why:
- A hold is granted by Redis first (the atomic all-or-nothing step), then recorded in SQL.
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

from redis.exceptions import RedisError

from holdsvc.domain.errors import (
    InvalidTransition,
    NotFound,
    SeatsNotAvailable,
    Unavailable,
    ValidationError,
)
from holdsvc.domain.flights import Flight, Flights
from holdsvc.domain.records import (
    BookingRecord,
    NewBooking,
    SeatOwnedInSql,
    now_ms,
)
from holdsvc.domain.restore import Restorer
from holdsvc.domain.states import State, move, require
from holdsvc.domain.store import BookingStore
from holdsvc.metrics import Metrics
from holdsvc.seats.holds import Held, HoldStore, NotEnough, NotRestored, Taken
from holdsvc.settings import Settings
from holdsvc.tasks import stop

log = logging.getLogger(__name__)

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
        restorer: Restorer,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._holds = holds
        self._flights = flights
        self._restorer = restorer
        self._metrics = metrics or Metrics()
        self._background: set[asyncio.Task[None]] = set()

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

    async def cancel(self, booking_id: str) -> BookingRecord:
        booking = await self.get(booking_id)
        require(State(booking.state), State.CANCELLED)
        moved = await self._store.transition(booking_id, move(State.CANCELLED, "customer-cancel"))
        if not moved.moved:
            raise InvalidTransition(str(moved.state), State.CANCELLED.value)
        await self._holds.release(booking.flight_id, booking.seats, booking_id)
        return await self.get(booking_id)


def _amount(flight: Flight, seats: int) -> str:
    price = Decimal(flight.record.price)
    return str((price * seats).quantize(price))
