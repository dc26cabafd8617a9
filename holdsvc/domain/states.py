"""The two state machines, each one table of allowed moves: bookings and their payments.

Handlers never compare states themselves; they ask :func:`require` before acting and pass
:func:`move` / :func:`payment_move` to the store, whose compare-and-set applies the same table
under the writer.
"""

from __future__ import annotations

from holdsvc.domain.errors import InvalidTransition
from holdsvc.domain.records import Move, PaymentChange, PaymentStatus, State

__all__ = [
    "ENDED",
    "HOLDING",
    "HOLDS_SEATS",
    "PAYMENT_TRANSITIONS",
    "TRANSITIONS",
    "PaymentStatus",
    "State",
    "move",
    "new_payment",
    "payment_move",
    "require",
    "sources",
]


TRANSITIONS: dict[State, frozenset[State]] = {
    State.INITIATED: frozenset({State.SEAT_HELD}),
    # The customer releases the hold (CANCELLED), or nobody pays in time (EXPIRED).
    State.SEAT_HELD: frozenset({State.PAYMENT_PENDING, State.EXPIRED, State.CANCELLED}),
    # CANCELLED here is a failed payment.
    State.PAYMENT_PENDING: frozenset({State.CONFIRMED, State.CANCELLED, State.EXPIRED}),
    State.CONFIRMED: frozenset({State.CANCELLED}),
    State.CANCELLED: frozenset({State.REFUNDED}),
    State.REFUNDED: frozenset(),
    State.EXPIRED: frozenset(),
}

# States whose seats are taken: their rows count in SQL's one-live-booking-per-seat index.
HOLDS_SEATS: frozenset[State] = frozenset({State.SEAT_HELD, State.PAYMENT_PENDING, State.CONFIRMED})

# States whose booking has a live hold in Redis (a deadline, seat keys with a TTL).
HOLDING: frozenset[str] = frozenset({State.SEAT_HELD.value, State.PAYMENT_PENDING.value})
# States a booking never leaves holding or owning seats again.
ENDED: frozenset[str] = frozenset(
    {State.CANCELLED.value, State.REFUNDED.value, State.EXPIRED.value}
)

_SOURCES: dict[State, frozenset[State]] = {
    target: frozenset(s for s, targets in TRANSITIONS.items() if target in targets)
    for target in State
}


def require(current: State, target: State) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> target`` is in the table."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current.value, target.value)


def sources(target: State) -> frozenset[State]:
    """Every state from which ``target`` may be entered (the compare-and-set's ``IN`` list)."""
    return _SOURCES[target]


def move(target: State, cause: str, *, only_from: State | None = None) -> Move:
    """The compare-and-set for entering ``target``, its sources taken from the one table.

    ``only_from`` narrows the sources to the state the caller saw, for a move that is right
    only if nothing happened to the booking meanwhile.
    """
    allowed = sources(target)
    if only_from is not None:
        allowed = allowed & {only_from}
    return Move(
        target=target.value,
        sources=frozenset(s.value for s in allowed),
        cause=cause,
        seats_live=target in HOLDS_SEATS,
    )


# A payment is created ``pending`` when its booking enters PAYMENT_PENDING.
PAYMENT_TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    # REFUNDED straight from pending: the charge went through but the seats were lost before
    # SQL recorded the capture, so the money goes back at once.
    PaymentStatus.PENDING: frozenset(
        {PaymentStatus.CAPTURED, PaymentStatus.FAILED, PaymentStatus.REFUNDED}
    ),
    # A refund is claimed (REFUNDING) before the gateway is asked, so only one runs.
    PaymentStatus.CAPTURED: frozenset({PaymentStatus.REFUNDING}),
    # Recorded failed by a recovery that found no capture, then found captured after all.
    PaymentStatus.FAILED: frozenset({PaymentStatus.REFUNDED}),
    PaymentStatus.REFUNDING: frozenset({PaymentStatus.REFUNDED}),
    PaymentStatus.REFUNDED: frozenset(),
}

_PAYMENT_SOURCES: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    target: frozenset(s for s, targets in PAYMENT_TRANSITIONS.items() if target in targets)
    for target in PaymentStatus
}


def payment_move(
    target: PaymentStatus,
    *,
    only_from: PaymentStatus | frozenset[PaymentStatus] | None = None,
    payment_id: str | None = None,
    idem_key: str | None = None,
) -> PaymentChange:
    """The compare-and-set for moving a payment to ``target``, sources from the one table.

    ``only_from`` narrows them, for a move that is right only from the status the caller
    knows the payment is in; a narrowing the table does not allow is a bug.
    """
    allowed = _PAYMENT_SOURCES[target]
    if only_from is not None:
        narrow = frozenset({only_from}) if isinstance(only_from, PaymentStatus) else only_from
        if not narrow <= allowed:
            raise ValueError(f"payment cannot move from {set(narrow)} to {target}")
        allowed = narrow
    return PaymentChange(target.value, frozenset(s.value for s in allowed), payment_id=payment_id)


def new_payment(method: str, amount: str, currency: str, idem_key: str | None) -> PaymentChange:
    """The payment row a pay creates (no sources: it must not exist yet)."""
    return PaymentChange(
        PaymentStatus.PENDING.value,
        method=method,
        amount=amount,
        currency=currency,
        idem_key=idem_key,
    )
