"""Holds and their release: each action checks the state machine, does its atomic Redis step
and, where money or an outcome is involved, its compare-and-set in SQL, in the order that keeps
a seat from ever being sold twice. The money steps are in :mod:`holdsvc.domain.payments`.

Ordering rules, and why:
- A hold is one Redis script: the seats, the deadline index, the booking's record and the
  Idempotency-Key's entry, all or nothing. SQL does not see it until its first money step
  (pay) or its outcome (cancel, expiry), which is written from the record.
- A cancel commits CANCELLED in SQL before Redis frees the seats (and drops the record), so a
  crash in between can leave a seat blocked until its TTL, never sold twice.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from redis.exceptions import RedisError

from holdsvc.domain.access import OPEN, Principal, may_see
from holdsvc.domain.errors import (
    Conflict,
    IdempotencyMismatch,
    InvalidTransition,
    NotFound,
    RateLimited,
    SeatsNotAvailable,
    Unavailable,
    ValidationError,
)
from holdsvc.domain.flights import Flight, Flights
from holdsvc.domain.idempotency import KeyRef
from holdsvc.domain.records import BookingRecord, NewBooking, iso_ms, now_ms
from holdsvc.domain.restore import Restorer
from holdsvc.domain.states import State, move, require
from holdsvc.domain.store import BookingStore
from holdsvc.metrics import Metrics
from holdsvc.seats.holds import (
    ExtensionRefused,
    Held,
    HoldMeta,
    HoldRecord,
    HoldStore,
    KeyClaim,
    KeyMismatch,
    NotEnough,
    NotRestored,
    OverCustomerLimit,
    Replayed,
    Taken,
    who,
)
from holdsvc.settings import Settings
from holdsvc.tasks import stop

log = logging.getLogger(__name__)

# The outcome a keyed cancel's answer is stored as, in the cancel's commit.
CANCELLED = "cancel"
# Said on an answer that is a key's first answer given again (the IETF draft's and Stripe's
# name).
REPLAYED_HEADER = "Idempotent-Replayed"
# Built once: every write of a booking into SQL carries it, and a frozenset per call showed
# in profiles.
SUPERSEDE = move(State.EXPIRED, "superseded")
# Attempts, 1 s apart doubling to 30 s, to take back a hold whose Redis reply was lost; past
# them the hold's own TTL frees the seats.
COMPENSATE_TRIES = 8


class _Entropy:
    """os.urandom read a block at a time: one getrandom() system call per 512 booking ids
    instead of one per hold. A forked child drops the block it inherited, so two processes
    never hand out the same bytes."""

    SIZE = 9
    BLOCK = SIZE * 512

    def __init__(self) -> None:
        self._block = b""
        self._at = 0
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._block, self._at = b"", 0

    def take(self) -> bytes:
        at = self._at
        if at + self.SIZE > len(self._block):
            self._block, at = os.urandom(self.BLOCK), 0
        self._at = at + self.SIZE
        return self._block[at : at + self.SIZE]


_entropy = _Entropy()


def new_booking_id(flight_id: int) -> str:
    """48 bits of milliseconds and 72 random bits (20 characters), then ``.`` and the flight.

    The random part makes it unguessable; the time prefix makes SQL's primary-key inserts
    land at the end of their B-trees instead of at random pages (with random ids each group
    commit dirtied a page per booking in every index). The flight id lets a read find the
    booking's Redis record, which lives in its flight's slot, before SQL has the booking.
    Short, because it is every held seat's value in Redis.
    """
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + _entropy.take()
    return f"{base64.urlsafe_b64encode(raw).decode()}.{flight_id}"


def flight_of_booking(booking_id: str) -> int | None:
    """The flight a booking id names, or None for an id that names none (an older id, junk)."""
    _, dot, flight = booking_id.rpartition(".")
    return int(flight) if dot and flight.isdigit() and len(flight) < 10 else None


@dataclass(frozen=True, slots=True)
class HoldRequest:
    flight_id: int
    user_id: str
    seats: list[str] | None
    seat_count: int | None


@dataclass(frozen=True, slots=True)
class HoldKey:
    """An Idempotency-Key on a hold: the key and the request's fingerprint (hex)."""

    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class HoldAnswer:
    booking: BookingRecord
    # The key's first answer, given again: nothing was held now.
    replayed: bool = False


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

    async def get(self, booking_id: str, actor: Principal = OPEN) -> BookingRecord:
        """From SQL once the booking is there; before that, from its hold's Redis record.
        Another key's booking is not found, so a client cannot probe which ids exist."""
        booking = await self._store.get_booking(booking_id)
        if booking is not None:
            if not may_see(actor, booking):
                raise NotFound("Booking not found")
            return booking
        flight_id = flight_of_booking(booking_id)
        record = None if flight_id is None else await self._holds.record(flight_id, booking_id)
        if record is None and flight_id is not None:
            # A record is removed only after its booking's outcome is committed: one that
            # went between the two reads (an expiry, a pay elsewhere) left the booking in SQL.
            booking = await self._store.get_booking(booking_id)
            if booking is not None and may_see(actor, booking):
                return booking
        if record is None or not may_see(actor, held := held_booking(record)):
            raise NotFound("Booking not found")
        if record.deadline_ms > now_ms():
            return held
        # Lapsed, and nothing has recorded it yet (an expiry event missed, the sweeper not
        # round yet): whoever sees it first records it, so no reader is told SEAT_HELD.
        await self.record_lapsed(held, "read-after-expiry")
        booking = await self._store.get_booking(booking_id)
        if booking is None:  # impossible once end_holds committed; never guessed past
            raise RuntimeError(f"lapsed hold {booking_id} was not written to SQL")
        return booking

    def redis_now_ms(self) -> float:
        """Now by Redis's clock, the one that expires holds (as its scripts last read it)."""
        return self._holds.redis_now_ms()

    async def extend(
        self, booking_id: str, seconds: float | None, actor: Principal = OPEN
    ) -> BookingRecord:
        """Move a held booking's deadline ``seconds`` (default: the hold time) past its
        current one: its seats, deadline entry and record together, in one script that also
        checks the caps (--max-hold from its creation, --max-extensions). A request past
        either is refused whole."""
        booking = await self.get(booking_id, actor)
        if booking.state != State.SEAT_HELD.value:
            raise InvalidTransition(booking.state, State.SEAT_HELD.value)
        add_ms = round(seconds * 1000) if seconds is not None else self._settings.hold_ttl_ms
        result = await self._holds.extend(
            booking.flight_id,
            booking.seats,
            booking_id,
            add_ms,
            self._settings.max_hold_ms,
            self._settings.max_extensions,
        )
        if result is None:
            # Lapsed (its expiry not recorded yet), released, or paid meanwhile: as it is now.
            state = (await self.get(booking_id, actor)).state
            raise InvalidTransition(
                State.EXPIRED.value if state == State.SEAT_HELD.value else state,
                State.SEAT_HELD.value,
            )
        if isinstance(result, ExtensionRefused):
            latest = iso_ms(result.max_deadline_ms)
            if result.extensions is not None:
                raise HoldExtensionLimit(
                    f"This hold was extended {result.extensions} times, the most allowed",
                    max_extensions=self._settings.max_extensions,
                    max_hold_expires_at=latest,
                )
            raise HoldExtensionLimit(
                "The extension would make the hold last longer than allowed",
                max_hold_seconds=self._settings.max_hold,
                max_hold_expires_at=latest,
            )
        return dataclasses.replace(booking, hold_expires_at=result.deadline_ms)

    async def record_lapsed(self, booking: BookingRecord, cause: str) -> None:
        """Record EXPIRED for a hold whose deadline passed: a compare-and-set from the state
        seen if SQL has the booking, else its row written from its Redis record; the record
        and its deadline entry go only once that is committed."""
        expire = move(State.EXPIRED, cause, only_from=State(booking.state))
        if booking.in_sql:
            await self._store.transition(booking.id, expire)
            return
        await self._store.end_holds([booking.id], {booking.id: new_booking(booking)}, expire)
        await self._holds.forget(booking.flight_id, [booking.id], booking.seats)

    async def hold(
        self,
        req: HoldRequest,
        key: HoldKey | None = None,
        actor: Principal = OPEN,
        client: str = "",
    ) -> HoldAnswer:
        """``client`` names who asks, for --hold-rate: the API key, or the address."""
        rate = self._settings.hold_rate
        if rate > 0:
            # A second round trip, only when the limit is on: the bucket is the client's,
            # in its own slot, never a flight's.
            wait_ms = await self._holds.take_token(client or actor.name, rate, max(1.0, rate))
            if wait_ms is not None:
                raise RateLimited(
                    f"More than {rate:g} hold attempts a second; retry after the wait",
                    retry_after_s=max(1, -(-wait_ms // 1000)),
                    limit_per_s=rate,
                )
        flight = self._flights.cached(req.flight_id) or await self._flights.get(req.flight_id)
        if time.time() * 1000 >= flight.departs_ms:
            raise Conflict(
                "The flight has departed", "flight_departed",
                departure_time=flight.record.departure_time,
            )  # fmt: skip
        if req.seats is not None:
            unknown = [s for s in req.seats if not flight.has_seat(s)]
            if unknown:
                raise ValidationError(
                    "Unknown seats for this flight", "unknown_seats", field="$.seats", seats=unknown
                )
        count = len(req.seats) if req.seats is not None else req.seat_count
        assert count is not None
        meta = HoldMeta(req.user_id, _amount(flight, count), flight.record.currency, actor.name)
        claim = None
        if key is not None:
            claim = KeyClaim(key.key, key.fingerprint, self._settings.idempotency_ttl_ms)
        booking_id = new_booking_id(flight.id)
        try:
            result = await self._grant(flight, req, booking_id, meta, claim)
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
            result = await self._grant(flight, req, booking_id, meta, claim)
        if isinstance(result, NotRestored):
            raise Unavailable("Seat data is being restored after a Redis restart; retry")
        if isinstance(result, KeyMismatch):
            raise IdempotencyMismatch("Idempotency-Key was already used with a different request")
        if isinstance(result, OverCustomerLimit):
            self._metrics.holds_refused.inc()
            limit = self._settings.max_seats_per_user
            raise Conflict(
                f"At most {limit} seats of a flight per customer: {result.held} already",
                "customer_seat_limit",
                limit=limit,
                held=result.held,
            )
        replayed = isinstance(result, Replayed)
        if isinstance(result, Replayed):
            booking_id, first = result.booking_id, result.first
            meta = result.meta or meta
        else:
            first = result
        if isinstance(first, (Taken, NotEnough)):
            self._metrics.holds_refused.inc()
            exc = (
                SeatsNotAvailable(seats=first.seats)
                if isinstance(first, Taken)
                else SeatsNotAvailable(requested=req.seat_count, available=first.free)
            )
            if replayed:
                exc.headers = {REPLAYED_HEADER: "true"}
            raise exc
        if not replayed:
            self._metrics.holds_created.inc()
        record = HoldRecord(
            booking_id, flight.id, meta.user_id, first.seats, meta.amount, meta.currency,
            first.created_ms, first.deadline_ms, meta.owner,
        )  # fmt: skip
        return HoldAnswer(held_booking(record), replayed)

    async def close(self) -> None:
        """Stop background compensations (the hold's TTL frees what they did not)."""
        await asyncio.gather(*(stop(t) for t in list(self._background)), return_exceptions=True)

    async def free_seats(self, booking: BookingRecord) -> None:
        """Free the seats of a booking whose end SQL has committed (only those still this
        booking's: release_seats compares). The end is durable already, so a Redis that does
        not answer now (a slot migrating, a restart) gets the release again in the
        background, with backoff, instead of failing the request: otherwise the seats stayed
        held for nobody until their TTL, and a retried cancel found nothing to cancel."""
        who = who_of(booking)
        try:
            await self._holds.release(booking.flight_id, booking.seats, booking.id, who)
        except RedisError as exc:
            log.warning("booking %s: freeing its seats failed, retrying: %s", booking.id, exc)
            self._release_later(booking.flight_id, booking.seats, booking.id, who, 0.25)

    def _compensate(self, flight: Flight, booking_id: str) -> None:
        # Every seat of the flight: a best-seat hold's seats are not known here (release
        # frees only this booking's). Its first try waits a second: the script may still run.
        self._release_later(flight.id, flight.seats, booking_id, "", 1.0)

    def _release_later(
        self, flight_id: int, seats: Sequence[str], booking_id: str, who: str, first_s: float
    ) -> None:
        """Release in the background, with backoff from ``first_s`` (up to 30 s between
        tries); what no try freed, the hold's TTL or the sweeper's reconcile does."""

        async def run() -> None:
            for attempt in range(COMPENSATE_TRIES):
                await asyncio.sleep(min(first_s * 2**attempt, 30))
                try:
                    freed = await self._holds.release(flight_id, seats, booking_id, who)
                except RedisError:
                    continue
                if freed:
                    log.warning("booking %s: freed %d seats in the background", booking_id, freed)
                return
            log.error("booking %s: its seats could not be freed", booking_id)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _grant(
        self,
        flight: Flight,
        req: HoldRequest,
        booking_id: str,
        meta: HoldMeta,
        claim: KeyClaim | None,
    ) -> Held | Taken | NotEnough | NotRestored | Replayed | KeyMismatch | OverCustomerLimit:
        ttl = self._settings.hold_ttl_ms
        limit = self._settings.max_seats_per_user
        if req.seats is not None:
            return await self._holds.hold(flight.id, req.seats, booking_id, ttl, meta, claim, limit)
        assert req.seat_count is not None
        return await self._holds.hold_best(
            flight.id,
            req.seat_count,
            flight.record.rows,
            flight.record.seat_letters,
            booking_id,
            ttl,
            meta,
            claim,
            limit,
        )

    async def cancel(
        self, booking_id: str, key: KeyRef | None = None, actor: Principal = OPEN
    ) -> BookingRecord:
        booking = await self.get(booking_id, actor)
        require(State(booking.state), State.CANCELLED)
        cancel = move(State.CANCELLED, "customer-cancel")
        answer = key.answer(CANCELLED) if key else None
        if booking.in_sql:
            moved = await self._store.transition(booking_id, cancel, answer=answer)
        else:
            moved, _ = await self._store.insert_booking(
                new_booking(booking), cancel, SUPERSEDE, answer=answer
            )
        if not moved.moved:
            raise InvalidTransition(str(moved.state), State.CANCELLED.value)
        if key is not None:
            key.note(moved)
        await self.free_seats(booking)
        return moved.record or await self.get(booking_id)


class HoldExtensionLimit(Conflict):
    code = "hold_extension_limit"


def who_of(booking: BookingRecord) -> str:
    """The customer a booking counts against (the hold scripts' ARGV[3])."""
    return who(booking.user_id, booking.owner)


def held_booking(record: HoldRecord) -> BookingRecord:
    """The view of a hold that lives only in Redis so far: SEAT_HELD, no payment."""
    return BookingRecord(
        id=record.booking_id,
        flight_id=record.flight_id,
        user_id=record.user_id,
        state=State.SEAT_HELD.value,
        seats=record.seats,
        amount=record.amount,
        currency=record.currency,
        hold_expires_at=record.deadline_ms,
        created_at=record.created_ms,
        updated_at=record.created_ms,
        payment=None,
        in_sql=False,
        owner=record.owner,
    )


def new_booking(booking: BookingRecord | HoldRecord) -> NewBooking:
    """The SQL row of a booking that so far lived only in Redis."""
    if isinstance(booking, HoldRecord):
        booking = held_booking(booking)
    return NewBooking(
        id=booking.id,
        flight_id=booking.flight_id,
        user_id=booking.user_id,
        state=booking.state,
        seats=booking.seats,
        amount=booking.amount,
        currency=booking.currency,
        hold_expires_at=booking.hold_expires_at,
        created_at=booking.created_at,
        owner=booking.owner,
    )


@functools.lru_cache(maxsize=4096)
def _total(price: str, seats: int) -> str:
    unit = Decimal(price)
    return str((unit * seats).quantize(unit))


def _amount(flight: Flight, seats: int) -> str:
    # Decimal arithmetic showed in the hold path's profile; prices and counts repeat.
    return _total(flight.record.price, seats)
