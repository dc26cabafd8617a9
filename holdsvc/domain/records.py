"""The domain's vocabulary: the records its store Protocol speaks in.

They are defined in ``persistence.records`` (persistence may import nothing from holdsvc, so the
shared types live on its side of the seam); every layer of holdsvc names them through here.
"""

from persistence.records import (
    BookingRecord,
    Claim,
    ClaimResult,
    FlightRecord,
    KeyAnswer,
    Move,
    Moved,
    NewBooking,
    NewFlight,
    PaymentChange,
    PaymentChanged,
    PaymentRecord,
    PaymentStatus,
    SeatOwnedInSql,
    State,
    StoreUnavailable,
    Transition,
    iso_ms,
    now_ms,
)

__all__ = [
    "BookingRecord",
    "Claim",
    "ClaimResult",
    "FlightRecord",
    "KeyAnswer",
    "Move",
    "Moved",
    "NewBooking",
    "NewFlight",
    "PaymentChange",
    "PaymentChanged",
    "PaymentRecord",
    "PaymentStatus",
    "SeatOwnedInSql",
    "State",
    "StoreUnavailable",
    "Transition",
    "iso_ms",
    "now_ms",
]
