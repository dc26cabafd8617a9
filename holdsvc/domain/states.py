"""The booking state machine: the one table of allowed moves.

Handlers never compare states themselves; they ask :func:`require` before acting and pass
:func:`sources` to the store, whose compare-and-set applies the same table under the writer.
"""

from __future__ import annotations

from enum import StrEnum

from holdsvc.domain.errors import InvalidTransition
from holdsvc.domain.records import Move


class State(StrEnum):
    INITIATED = "INITIATED"
    SEAT_HELD = "SEAT_HELD"
    PAYMENT_PENDING = "PAYMENT_PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    REFUNDED = "REFUNDED"
    EXPIRED = "EXPIRED"


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
